"""The cascade for turns the learned router is unsure about (FrugalGPT): the two cheaper tiers answer first
(concurrently), their answers are held (voice answers are short) and scored, then the standard answer is
kept or the turn escalates to premium.

- Which turns: those in the cascade band of their `learned-v1` operating point (frugal.router.learned.FloorPoint),
  with no tenant override.
- The answer scorer: a logistic regression over question and answer features (`ANSWER_FEATURES`: the router's
  own probabilities, the agreement of the lite and standard answers (self-consistency across two models:
  when two cheap models give the same answer it is usually right), answer length, hedging and refusal
  phrases, whether a short answer was asked for and given, code in the answer, overlap with the question).
  Fitted in `frugal.devkit.routing.train_learned` on the RouterBench training split, where every model's
  response is recorded; label = the standard answer scores as well as premium's. Log-probabilities and
  repeated samples of one model are not in that data, so the scorer does not use them; a provider that
  returns log-probs would add a feature here.
- Cost: each cheap attempt is a paid call with its own cost event (through the one recorder), whether its
  answer is kept or not.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from frugal.common.cost_events import CostKind
from frugal.common.cost_recorder import CostRecorder
from frugal.common.pricing import PriceCatalog, TierName
from frugal.common.usage import UsageAmounts
from frugal.router.providers.base import (
    NOT_PROCESSED,
    LlmProvider,
    ProviderError,
    ProviderRequest,
    StreamDone,
    TextChunk,
    UsageReport,
    estimate_tokens,
    merge_partial,
)

ANSWER_FEATURES: tuple[str, ...] = (
    "router_logit_lite", "router_logit_standard", "agreement", "same_answer", "log_answer_chars",
    "log_lite_chars", "answer_lines_sqrt", "hedges", "refusal", "short_asked", "short_given",
    "short_asked_not_given", "code_asked", "code_given", "question_overlap", "empty",
)
# Attempt labels of the cheap attempts' cost events: distinct from the numbered fallback attempts.
CASCADE_ATTEMPTS = {"lite": "cascade-lite", "standard": "cascade-standard"}

CASCADE_TURNS = Counter("router_cascade_turns_total", "Turns that went through the cascade, by outcome "
                        "(kept: the standard answer was kept; escalated: premium answered).", ["outcome"])
CASCADE_HOLD_SECONDS = Histogram(
    "router_cascade_hold_seconds", "Time the cascade held the cheap answers before its verdict (added to TTFT).",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)

_HEDGES = re.compile(
    r"\b(i think|i believe|maybe|perhaps|possibly|probably|might|may be|not sure|unsure|i'm not certain|"
    r"it seems|appears to|could be|likely|unclear|hard to say|it depends|i guess)\b",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(i can't|i cannot|i am unable|i'm unable|as an ai|i don't have|i do not have|sorry|apologi[sz]e|"
    r"not able to|no information)\b",
    re.IGNORECASE,
)
_SHORT_ASK = re.compile(
    r"(print only|only the|single choice|answer with|just the|one word|a single|yes or no|true or false|"
    r"answer:\s*$|\b[A-D]\)\s)",
    re.IGNORECASE,
)
_CODE_ASK = re.compile(r"\b(write a (python )?function|def |code|implement|script|program)\b", re.IGNORECASE)
_CODE_GIVEN = re.compile(r"```|\bdef |\breturn\b|\bimport |;\s*$|\{\s*$", re.MULTILINE)
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text[:2000].lower()))


def agreement(a: str, b: str) -> float:
    """Jaccard overlap of the two answers' words: the cross-tier self-consistency signal (1.0: same answer)."""
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def answer_features(
    question: str, lite_answer: str, answer: str, logit_lite: float, logit_standard: float
) -> list[float]:
    """Features of the standard tier's answer, the lite tier's answer beside it, and the question."""
    q_tail = question[-800:]
    a = answer.strip()
    words = a.split()
    short_asked = 1.0 if _SHORT_ASK.search(q_tail) else 0.0
    short_given = 1.0 if 0 < len(words) <= 3 else 0.0
    q_words = _words(q_tail)
    a_words = _words(a)
    overlap = len(q_words & a_words) / len(a_words) if a_words else 0.0
    same = 1.0 if a and " ".join(sorted(a_words)) == " ".join(sorted(_words(lite_answer))) else 0.0
    return [
        logit_lite,
        logit_standard,
        agreement(lite_answer, a),
        same,
        math.log1p(len(a)),
        math.log1p(len(lite_answer.strip())),
        math.sqrt(min(a.count("\n"), 400)),
        float(min(len(_HEDGES.findall(a[:2000])), 5)),
        1.0 if _REFUSAL.search(a[:400]) else 0.0,
        short_asked,
        short_given,
        short_asked * (1.0 - short_given),
        1.0 if _CODE_ASK.search(q_tail) else 0.0,
        1.0 if _CODE_GIVEN.search(a[:4000]) else 0.0,
        overlap,
        1.0 if not a else 0.0,
    ]


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class AnswerScorerError(ValueError):
    """The answer scorer's part of the learned artifact is missing or malformed."""


@dataclass(frozen=True, slots=True)
class AnswerVerdict:
    keep: bool
    probability: float
    threshold: float


class AnswerScorer:
    """P(the lite answer is as good as premium's | question, answer); keep when >= the shipped threshold."""

    def __init__(self, payload: dict[str, Any]) -> None:
        try:
            part = payload["answer_scorer"]
            if list(part["names"]) != list(ANSWER_FEATURES):
                raise AnswerScorerError(f"answer features {part['names']} != {list(ANSWER_FEATURES)}")
            self.mean = [float(v) for v in part["mean"]]
            self.std = [float(v) for v in part["std"]]
            self.weights = [float(v) for v in part["weights"]]
            self.bias = float(part["bias"])
            self.threshold = float(payload["operating_points"]["floor"]["answer_keep"])
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, AnswerScorerError):
                raise
            raise AnswerScorerError(f"answer scorer is malformed: {err!r}") from err
        if not (len(self.mean) == len(self.std) == len(self.weights) == len(ANSWER_FEATURES)):
            raise AnswerScorerError("answer scorer arrays have the wrong length")
        if any(s <= 0 for s in self.std):
            raise AnswerScorerError("answer scorer has a non-positive standard deviation")

    def probability(self, question: str, lite_answer: str, answer: str, p_lite: float, p_standard: float) -> float:
        z = self.bias
        feats = answer_features(question, lite_answer, answer, logit(p_lite), logit(p_standard))
        for x, mu, sd, w in zip(feats, self.mean, self.std, self.weights, strict=True):
            z += (x - mu) / sd * w
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def verdict(self, question: str, lite_answer: str, answer: str, p_lite: float, p_standard: float,
                threshold: float | None = None) -> AnswerVerdict:
        """`threshold`: the turn's cluster's (Decision.answer_keep); None takes the pooled one."""
        p = self.probability(question, lite_answer, answer, p_lite, p_standard)
        th = self.threshold if threshold is None else threshold
        return AnswerVerdict(keep=p >= th, probability=p, threshold=th)


async def hold(stream: AsyncIterator[str]) -> str:
    """The whole cheap answer, nothing sent to the caller yet (it may be thrown away)."""
    parts = [text async for text in stream]
    return "".join(parts)


# --- running the cascade inside Respond ----------------------------------------------------------------------


@dataclass
class CheapAttempt:
    tier: TierName
    model: str
    provider: str
    offline: bool
    text: str = ""
    usage: UsageAmounts | None = None
    error: str = ""
    cost_usd: float = 0.0
    baseline_usd: float = 0.0
    event_id: str = ""
    # The latest usage the provider reported during the stream (billed if the attempt is cut short).
    reported: UsageAmounts | None = None
    # Prompt-cache writes the provider reported (reads are usage.cached_input_tokens).
    cache_write_tokens: int = 0
    # The failure as a ProviderError (for the deployment's breaker); None when the attempt succeeded.
    failure: ProviderError | None = None
    # Our estimate of the prompt it sent (billed when the provider reported nothing).
    prompt_tokens: int = 0


@dataclass
class CascadeOutcome:
    kept: bool
    attempts: list[CheapAttempt]
    verdict: AnswerVerdict | None
    # Time from the start of the cheap calls to the verdict: what the cascade adds before the first token.
    hold_seconds: float

    @property
    def answer(self) -> CheapAttempt:
        """The answer kept (standard's)."""
        return self.attempts[-1]


async def _attempt(provider: LlmProvider, preq: ProviderRequest, a: CheapAttempt, budget_s: float) -> None:
    gen = provider.stream(preq)
    try:
        async with asyncio.timeout(budget_s):
            async for event in gen:
                if isinstance(event, TextChunk):
                    a.text += event.text
                elif isinstance(event, UsageReport):
                    a.reported = event.usage
                elif isinstance(event, StreamDone):
                    a.usage = event.usage
                    a.cache_write_tokens = event.cache_write_tokens
    except TimeoutError:
        a.error = f"no complete answer within {budget_s:.2f}s"
        a.failure = ProviderError("timeout", a.error)
    except ProviderError as err:
        a.error = f"{err.kind}: {err}"
        a.failure = err
    except asyncio.CancelledError:
        a.error = "cancelled"
        raise
    except Exception as err:  # an unexpected provider failure is a failure like any other
        a.error = f"unknown: {type(err).__name__}: {str(err)[:300]}"
        a.failure = ProviderError("unknown", a.error)
    finally:
        await gen.aclose()
    if a.usage is None and not a.error:
        a.error = "stream ended without completion"
        a.failure = ProviderError("unknown", a.error)


@dataclass(frozen=True, slots=True)
class CheapCall:
    """One cheap attempt to make: the tier, the model, the provider (a deployment or the offline stand-in)
    and the request for it."""

    tier: TierName
    model: str
    provider: LlmProvider
    request: ProviderRequest
    # The deployment it runs on (None: the offline stand-in); the caller counts and reports it.
    deployment: Any = None


async def run_cascade(
    *, calls: Sequence[CheapCall], catalog: PriceCatalog, recorder: CostRecorder, scorer: AnswerScorer,
    question: str, p_lite: float, p_standard: float, budget_s: float, tenant: str, session: str, request_id: str,
    turn_id: str, scorer_name: str, routed_tier: str, answer_keep: float | None = None,
) -> CascadeOutcome:
    """Lite and standard (`calls`, in that order) answer concurrently and are held; each attempt gets its own
    cost event (kept or not, and also when the caller goes away during the hold); the answer scorer keeps
    standard's answer or says escalate. Costs go through the one recorder (frugal.common.cost_recorder)."""
    started = time.perf_counter()
    attempts: list[CheapAttempt] = []
    running = []
    for c in calls:
        a = CheapAttempt(tier=c.tier, model=c.model, provider=c.provider.provider, offline=c.provider.offline,
                         prompt_tokens=estimate_tokens(c.request.prompt_text))
        attempts.append(a)
        running.append(_attempt(c.provider, c.request, a, budget_s))
    try:
        await asyncio.gather(*running)
    finally:
        # Billed whatever happens next (including the caller going away while the answers are held): one
        # shielded task for all of them, so a second cancellation cannot skip an event.
        ok = len(attempts) == 2 and all(a.usage is not None and not a.error for a in attempts)
        verdict = (scorer.verdict(question, attempts[0].text, attempts[1].text, p_lite, p_standard, answer_keep)
                   if ok else None)
        kept = verdict is not None and verdict.keep
        await asyncio.shield(asyncio.gather(*(
            _bill(recorder, catalog, a, kept=kept, tenant=tenant, session=session, request_id=request_id,
                  turn_id=turn_id, scorer=scorer_name, routed_tier=routed_tier) for a in attempts)))
    return CascadeOutcome(kept=kept, attempts=attempts, verdict=verdict, hold_seconds=time.perf_counter() - started)


async def _bill(recorder: CostRecorder, catalog: PriceCatalog, a: CheapAttempt, *, kept: bool, tenant: str,
                session: str, request_id: str, turn_id: str, scorer: str, routed_tier: str) -> None:
    attempt = CASCADE_ATTEMPTS[a.tier]
    # Offline stand-ins are priced as the tier's real model on estimated usage (the one offline rule). What the
    # provider did not report is billed on the recorder's estimate rule, as Respond's attempts are.
    att = recorder.attempt(
        tenant_id=tenant, kind=CostKind.LLM, provider=a.provider, model=a.model, key=(turn_id, attempt),
        session_id=session, request_id=request_id, tier=a.tier, offline=a.offline,
        priced_as=catalog.tier_model(a.tier) if a.offline else a.model,
        estimate=UsageAmounts(input_tokens=a.prompt_tokens, output_tokens=estimate_tokens(a.text), requests=1),
        attributes={"turn_id": turn_id, "attempt": attempt, "scorer": scorer, "routed_tier": routed_tier,
                    "cache_write_tokens": str(a.cache_write_tokens)},
    )
    # Failed or cut short: the usage reported so far; nothing for a request refused before the model ran.
    usage = a.usage or merge_partial(a.reported, a.text)
    if usage is not None:
        att.report(usage)
    elif a.failure is not None and a.failure.kind in NOT_PROCESSED and not a.text:
        att.report(UsageAmounts(requests=1))
    event = await att.finish("cascade_kept" if kept and a.tier == "standard" else "cascade_escalated")
    a.event_id, a.cost_usd, a.usage = event.event_id, event.cost_usd, event.usage
    a.baseline_usd = catalog.llm_baseline_cost(a.usage)


def load_answer_scorer(scorers: Any) -> AnswerScorer | None:
    """The answer scorer of the learned artifact that `scorers` loaded (None without learned-v1)."""
    from frugal.router.learned import LEARNED_SCORER, LearnedScorer

    learned = scorers.scorers.get(LEARNED_SCORER)
    if not isinstance(learned, LearnedScorer):
        return None
    return AnswerScorer(learned.payload_for_cascade)
