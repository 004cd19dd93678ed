"""Features of a conversational turn, shared by every scorer and reported in `Decision.features`.

Keyword counts follow the seed's semantics on purpose (case-insensitive *substring* tests, so "api" also
matches "capital"): they are the seed heuristic's inputs, and the learned scorer uses them as a few of its
features, with weights fitted on data (which is how their noise gets discounted).

The seed's keyword lists are elided with "..." in its README; the lists below keep the seed's own words
first and complete each list with terms of the same kind (marked in comments). They are our completion,
not the seed's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Seed: ["api", "database", "cache", "deploy", "architecture", ...]; its docstring also names "algorithm".
TECHNICAL_KEYWORDS: tuple[str, ...] = (
    "api", "database", "cache", "deploy", "architecture",
    # completion (ours):
    "algorithm", "server", "kubernetes", "docker", "latency", "throughput", "schema", "sql", "query",
    "endpoint", "microservice", "authentication", "encryption", "protocol", "framework", "infrastructure",
    "scalab", "concurren", "index", "network", "compiler", "memory",
)
# Seed: ["analyze", "compare", "evaluate", "design", "implement", ...]
REASONING_KEYWORDS: tuple[str, ...] = (
    "analyze", "compare", "evaluate", "design", "implement",
    # completion (ours):
    "analyse", "optimize", "optimise", "explain why", "trade-off", "tradeoff", "assess", "critique",
    "prove", "derive", "justify", "reason about", "pros and cons", "step by step",
)
# Seed: ["show data", "generate report", "create chart", "export", ...]
DATA_KEYWORDS: tuple[str, ...] = (
    "show data", "generate report", "create chart", "export",
    # completion (ours):
    "show me the data", "create a report", "build a report", "plot", "graph", "visualiz", "dashboard",
    "spreadsheet", "csv", "statistics", "pivot table", "summarize the data", "breakdown by",
)
# The seed's four code markers, verbatim.
CODE_MARKERS: tuple[str, ...] = ("```", "def ", "import ", "function ")

_WORD_RE = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class TurnFeatures:
    length_chars: int
    word_count: int
    question_count: int
    has_code: bool
    technical_terms: int
    reasoning_terms: int
    data_terms: int
    conversation_depth: int = 0
    rag_context_chars: int = 0
    vision_context_chars: int = 0


def count_keywords(lowered: str, keywords: tuple[str, ...]) -> int:
    """How many of `keywords` occur in `lowered` (each counted once; substring test, as the seed does)."""
    return sum(1 for kw in keywords if kw in lowered)


def extract_features(
    text: str, *, conversation_depth: int = 0, rag_context_chars: int = 0, vision_context_chars: int = 0
) -> TurnFeatures:
    lowered = text.lower()
    return TurnFeatures(
        length_chars=len(text),
        word_count=len(_WORD_RE.findall(text)),
        question_count=text.count("?"),
        has_code=any(m in text for m in CODE_MARKERS),
        technical_terms=count_keywords(lowered, TECHNICAL_KEYWORDS),
        reasoning_terms=count_keywords(lowered, REASONING_KEYWORDS),
        data_terms=count_keywords(lowered, DATA_KEYWORDS),
        conversation_depth=conversation_depth,
        rag_context_chars=rag_context_chars,
        vision_context_chars=vision_context_chars,
    )
