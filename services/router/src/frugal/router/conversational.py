"""Conversational-structure features (run-time part).

The public routing data is benchmark prompts; this product routes voice turns. `structure_features(text)`:
a dozen cheap, hand-designed measures of what a turn *asks for* (requested operations such as
compare/design/plan/debug/prove, the number of sub-questions and clauses, constraints, technical entities,
code, arithmetic, length, and small-talk markers). `hybrid-v2` combines a linear model over them with the
lexical ridge score (frugal.router.scoring); the learned router uses them beside the turn's embedding.

The labelled conversational turns these weights are fitted on, and their split, are dev-only
(`frugal.devkit.routing.conversational`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

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


def structure_features(text: str) -> tuple[float, ...]:
    """Values in the order of STRUCTURE_FEATURES; counts are capped so that one long prompt cannot dominate."""
    return _structure_features_of_head(text[:STRUCTURE_MAX_CHARS])


# A decision reads the same head twice: hybrid-v2's structure score of the turn, then learned-v1's features of
# its tail (the same string for any turn under TAIL_CHARS). One remembered result serves the second read; it
# is deliberately not a cache across turns, so a decision costs what it costs on a turn never seen before.
@functools.lru_cache(maxsize=1)
def _structure_features_of_head(head: str) -> tuple[float, ...]:
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
    return (
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
    )
