"""Conversational-structure features and the bundled conversational evaluation set.

The public routing data (frugal.router.evaldata) is benchmark prompts; this product routes voice turns.
This module holds what the scorers need to handle the latter:

- `structure_features(text)`: a dozen cheap, hand-designed measures of what a turn *asks for* (requested
  operations such as compare/design/plan/debug/prove, the number of sub-questions and clauses, constraints,
  technical entities, code, arithmetic, length, and small-talk markers). `hybrid-v2` combines a linear model
  over them with the lexical ridge score (frugal.router.scoring).
- `load_turns()`: `data/conversational-turns.jsonl`, hand-authored voice-assistant turns for a B2B help-desk /
  dev-tools product with a difficulty label 0 (lite suffices), 1 (standard needed), 2 (premium needed). The
  labels are ours (synthetic, written for this project following the guideline in the router README); it is
  not a public benchmark. It is split deterministically by a hash of the text into a calibration part
  (fitting the conversational weights, and the bundled reference sample for thresholds) and an evaluation
  part (only ever used for reporting).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

TURNS_FILE = "conversational-turns.jsonl"
# A turn is in the calibration part when sha256(text) mod 100 < CALIBRATION_PERCENT.
CALIBRATION_PERCENT = 50


@dataclass(frozen=True, slots=True)
class LabelledTurn:
    text: str
    # 0: lite suffices, 1: standard needed, 2: premium needed.
    label: int
    category: str

    @property
    def calibration(self) -> bool:
        return is_calibration(self.text)


def is_calibration(text: str) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < CALIBRATION_PERCENT


def turns_bytes() -> bytes:
    return resources.files("frugal.router").joinpath("data").joinpath(TURNS_FILE).read_bytes()


def load_turns() -> list[LabelledTurn]:
    out = []
    for lineno, line in enumerate(turns_bytes().decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        label = int(obj["label"])
        if label not in (0, 1, 2):
            raise ValueError(f"{TURNS_FILE}:{lineno}: label must be 0, 1 or 2, got {label}")
        out.append(LabelledTurn(text=str(obj["text"]), label=label, category=str(obj.get("category", ""))))
    return out


def split_turns(turns: Sequence[LabelledTurn] | None = None) -> tuple[list[LabelledTurn], list[LabelledTurn]]:
    """(calibration, evaluation)."""
    rows = load_turns() if turns is None else list(turns)
    return [t for t in rows if t.calibration], [t for t in rows if not t.calibration]


# --- structure features -------------------------------------------------------------------------------------
# Keyword groups are matched on the lowercased words of the turn: a word counts when it is in `exact` or starts
# with one of `stems`; each phrase (several words) counts once per occurrence in the lowercased text. Plain
# set lookups and C-level substring searches keep a decision well under a millisecond even for long prompts.


@dataclass(frozen=True, slots=True)
class KeywordGroup:
    stems: tuple[str, ...] = ()
    exact: frozenset[str] = frozenset()
    phrases: tuple[str, ...] = ()

    def matches(self, word: str) -> bool:
        return word in self.exact or bool(self.stems and word.startswith(self.stems))

    def phrase_count(self, lowered: str) -> int:
        return sum(lowered.count(p) for p in self.phrases)


def _group(stems: str = "", exact: str = "", phrases: Sequence[str] = ()) -> KeywordGroup:
    return KeywordGroup(tuple(stems.split()), frozenset(exact.split()), tuple(phrases))


# Operations that usually need a strong model: design, planning, comparison, proof, analysis, diagnosis.
HARD_OPS = _group(
    stems="design architect strateg compar trade-off tradeoff evaluat analy derive justif optimi migrat recommend "
          "propos diagnos postmortem refactor implement implication estimat determin investigat hypothes experiment "
          "roadmap sketch outlin draft",
    exact="plan planning versus vs prove weigh",
    phrases=("pros and cons", "step by step", "reason through", "reason about", "think through", "root cause",
             "end to end"),
)
# Operations that need some explanation or procedure: how-to, explain, troubleshoot, small code.
MEDIUM_OPS = _group(
    stems="explain summari debug troubleshoot configur integrat convert calculat",
    exact="fix write setup",
    phrases=("how do i", "how can i", "how do we", "how should we", "how should i", "how to ", "walk me through",
             "difference between", "set up", "why does", "why do ", "why is", "why are", "what's wrong",
             "what is wrong", "what should i check", "what could cause"),
)
# Conditions the answer must satisfy.
CONSTRAINTS = _group(
    exact="must without while within including given considering except excluding per across never none",
    phrases=("at least", "at most", "no more than", "taking into account", "so that", "zero downtime"),
)
CODE = _group(
    exact="python typescript javascript node golang sql bash terraform regex curl json yaml query def import "
          "function class return",
    phrases=("```", "=>", "();", "unit test", "):"),
)
ERRORS = _group(
    stems="error fail crash timeout exception broken",
    exact="4xx 5xx",
    phrases=("stack trace",),
)
TECH = _group(
    stems="api webhook endpoint database postgres kafka queue cache latenc throughput replicat shard region deploy "
          "kubernetes docker terraform auth saml oauth scim sso token schema index retr idempot backoff concurren "
          "memory failover backup encrypt gdpr hipaa audit permission integration pipeline warehouse",
    exact="race p99 soc",
    phrases=("rate limit",),
)
ARITHMETIC = _group(
    stems="percent averag median discount",
    exact="total twice half grow grows",
    phrases=("how many", "how much", "per month", "per year", "per seat", "per agent", "per hour", "per day",
             "show the math", "show your math", "show your reasoning"),
)
SCREEN_KB = _group(
    exact="documentation",
    phrases=("on my screen", "i'm sharing", "i am sharing", "this slide", "the slide", "this dashboard",
             "knowledge base", "the article", "our docs", "this report"),
)
CLAUSE_WORDS = frozenset("and then but also while finally first".split())
SUBQ_LEAD = frozenset("and then also finally first".split())
SUBQ_ASK = frozenset(
    "tell explain suggest estimate propose compare show draft write find recommend add give check list how what "
    "why which whether who".split()
)
# Small talk and conversation control (first word of a short turn): lite handles these.
SMALL_TALK_START = frozenset(
    "hi hello hey morning thanks thank cheers bye goodbye ok okay sure yes yeah yep no nope great perfect awesome "
    "cool alright right correct haha hmm sorry wait stop nice good".split()
)

GROUPS: tuple[KeywordGroup, ...] = (HARD_OPS, MEDIUM_OPS, CONSTRAINTS, CODE, ERRORS, TECH, ARITHMETIC, SCREEN_KB)
# word -> bit mask of the GROUPS it matches (a pure function of the word, memoized; bounded size).
_WORD_MASKS: dict[str, int] = {}
_WORD_MASKS_MAX = 200_000


def _mask(word: str) -> int:
    m = _WORD_MASKS.get(word)
    if m is None:
        m = sum(1 << i for i, g in enumerate(GROUPS) if g.matches(word))
        if len(_WORD_MASKS) < _WORD_MASKS_MAX:
            _WORD_MASKS[word] = m
    return m


def group_counts(words: Sequence[str], lowered: str) -> list[int]:
    """Matches of each of GROUPS: words (exact or stem) plus phrase occurrences."""
    counts = [g.phrase_count(lowered) for g in GROUPS]
    for w in words:
        m = _mask(w)
        if m:
            for i in range(len(GROUPS)):
                if m >> i & 1:
                    counts[i] += 1
    return counts


_TOKEN = re.compile(r"[A-Za-z0-9_']+")
# ERR_MAILBOX_AUTH, ValueError, TimeoutException, HTTP status 4xx/5xx.
_ERROR_ID = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|(?:Error|Exception)\b|\b[45][0-9][0-9]\b")
# Acronyms (SSO, SCIM, IMAP) and CamelCase names (PostgreSQL, BigQuery).
_ENTITY = re.compile(r"\b[A-Z][A-Z0-9]+\b|\b[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*")
_NUMBER = re.compile(r"[0-9][0-9.,]*")
# Structure features read at most this many characters (voice turns are far shorter).
STRUCTURE_MAX_CHARS = 1200

STRUCTURE_FEATURES: tuple[str, ...] = (
    "log_words", "hard_ops", "medium_ops", "constraints", "sub_questions", "clauses", "code", "errors",
    "tech_entities", "numbers", "arithmetic", "screen_or_kb", "small_talk", "short",
)


def structure_features(text: str) -> list[float]:
    """Values in the order of STRUCTURE_FEATURES; counts are capped so that one long prompt cannot dominate."""
    head = text[:STRUCTURE_MAX_CHARS]
    lowered = head.lower()
    words = _TOKEN.findall(lowered)
    n_words = len(head.split())
    # Error identifiers (ERR_MAILBOX_AUTH, ValueError, HTTP 429) and technical entities (SSO, SCIM, CamelCase).
    error_ids = len(_ERROR_ID.findall(head))
    entities = len(_ENTITY.findall(head))
    numbers = len(_NUMBER.findall(head))
    subq = head.count("?") + sum(1 for a, b in zip(words, words[1:], strict=False) if a in SUBQ_LEAD and b in SUBQ_ASK)
    clauses = head.count(",") + head.count(";") + sum(1 for w in words if w in CLAUSE_WORDS)
    small = 1.0 if n_words <= 8 and words and words[0] in SMALL_TALK_START else 0.0
    hard, medium, constraints, code, errors, tech, arithmetic, screen_kb = group_counts(words, lowered)
    return [
        math.log1p(n_words),
        float(min(hard, 4)),
        float(min(medium, 3)),
        float(min(constraints, 4)),
        float(min(subq, 4)),
        math.sqrt(min(clauses, 16)),
        float(min(code, 3)),
        float(min(errors + error_ids, 3)),
        math.sqrt(min(tech + entities, 16)),
        math.sqrt(min(numbers, 16)),
        float(min(arithmetic, 3)),
        1.0 if screen_kb else 0.0,
        small,
        1.0 if n_words <= 4 else 0.0,
    ]


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties (0.0 when either side is constant)."""

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2.0
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    n = len(rx)
    if n < 2:
        return 0.0
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0
