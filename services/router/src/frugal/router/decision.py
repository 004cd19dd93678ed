"""The routing decision: features, score, calibrated thresholds, tenant overrides, budget, estimate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from frugal.api.billing.v1 import billing_pb2
from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2
from frugal.common.pricing import TIERS, PriceCatalog, TierName
from frugal.common.tenant_state import BudgetVerdict, budget_verdict
from frugal.common.usage import UsageAmounts
from frugal.router.features import TurnFeatures, extract_features
from frugal.router.learned import Assessment, LearnedScorer
from frugal.router.metrics import DECISION_SECONDS, ROUTER_DECISIONS
from frugal.router.scoring import ScorerSet, TierMix, tier_index

TIER_ENUM: dict[TierName, int] = {
    "lite": common_pb2.TIER_LITE,
    "standard": common_pb2.TIER_STANDARD,
    "premium": common_pb2.TIER_PREMIUM,
}
ENUM_TIER: dict[int, TierName] = {v: k for k, v in TIER_ENUM.items()}


# The budget verdict is billing's rule, computed in one place (frugal.common.tenant_state) from the state
# billing publishes; the router only applies it. Re-exported here for the router's callers.
__all__ = ["BudgetVerdict", "Decider", "Decision", "TurnScore", "TurnText", "budget_verdict"]


def policy_mix(policy: billing_pb2.TenantPolicy | None) -> TierMix | None:
    if policy is None or not policy.HasField("target_mix"):
        return None
    m = policy.target_mix
    total = m.lite + m.standard + m.premium
    if total <= 0:
        return None
    try:
        return TierMix(m.lite / total, m.standard / total, m.premium / total)
    except ValueError:
        return None


@dataclass(frozen=True)
class Decision:
    score: float
    tier: TierName
    model: str
    provider: str
    offline: bool
    scorer: str
    features: TurnFeatures
    thresholds: tuple[float, float]
    mix: TierMix
    estimated_input_tokens: int
    estimated_output_tokens: int
    estimated_cost_usd: float
    override_reasons: tuple[str, ...] = field(default_factory=tuple)
    budget: BudgetVerdict = BudgetVerdict("unlimited")
    decision_seconds: float = 0.0
    # learned-v1 only: its probabilities that lite / standard answer as well as premium, which operating point
    # set the thresholds ("floor" or "mix"), and whether the turn goes through the cascade (frugal.router.cascade).
    # At a "floor" point with the "probs" rule, `thresholds` are (t1, t2) on 1 - p_lite and 1 - p_standard
    # (frugal.router.learned.FloorPoint), not on `score`.
    p_lite: float | None = None
    p_standard: float | None = None
    operating_point: str = "mix"
    cascade: bool = False
    # The answer scorer's keep threshold for this turn's cluster (None: the pooled one).
    answer_keep: float | None = None

    def to_proto(self) -> router_pb2.Decision:
        f = self.features
        return router_pb2.Decision(
            score=self.score,
            tier=TIER_ENUM[self.tier],  # type: ignore[arg-type]
            model=self.model,
            provider=self.provider,
            scorer=self.scorer,
            features=router_pb2.Features(
                length_chars=f.length_chars, word_count=f.word_count, question_count=f.question_count,
                has_code=f.has_code, technical_terms=f.technical_terms, reasoning_terms=f.reasoning_terms,
                data_terms=f.data_terms, conversation_depth=f.conversation_depth,
                rag_context_chars=f.rag_context_chars, vision_context_chars=f.vision_context_chars,
            ),
            thresholds=list(self.thresholds),
            estimated_input_tokens=self.estimated_input_tokens,
            estimated_output_tokens=self.estimated_output_tokens,
            estimated_cost_usd=self.estimated_cost_usd,
            override_reason="; ".join(self.override_reasons),
        )


@dataclass(frozen=True, slots=True)
class TurnText:
    text: str
    history: Sequence[tuple[str, str]] = ()
    rag_context_chars: int = 0
    vision_context_chars: int = 0


@dataclass(frozen=True, slots=True)
class TurnScore:
    """The part of a decision that reads only the turn's text and history (features, score, assessment): the
    costly part, computed while the turn's context is still being fetched (Decider.score)."""

    scorer_name: str
    text: str
    history: tuple[tuple[str, str], ...]
    features: TurnFeatures
    score: float
    assessment: Assessment | None
    seconds: float


class Decider:
    """Deterministic: the same turn, scorer, policy and budget give the same decision."""

    def __init__(
        self,
        scorers: ScorerSet,
        catalog: PriceCatalog,
        default_mix: TierMix,
        *,
        provider_of: Callable[[TierName], tuple[str, bool]],
        system_prompt_chars: int = 0,
        expected_output_tokens: int = 250,
        cascade_enabled: bool = True,
    ) -> None:
        self.scorers = scorers
        self.catalog = catalog
        self.default_mix = default_mix
        self._provider_of = provider_of
        self._system_chars = system_prompt_chars
        self._expected_output = expected_output_tokens
        self._thresholds: dict[tuple[str, TierMix], tuple[float, float]] = {}
        # Whether Respond runs the cascade (frugal.router.cascade) for learned-v1's unsure turns; without it the
        # prompt router's own operating point applies.
        self.cascade_enabled = cascade_enabled

    def thresholds(self, scorer: str, mix: TierMix) -> tuple[float, float]:
        key = (scorer, mix)
        hit = self._thresholds.get(key)
        if hit is None:
            hit = self.scorers.get(scorer).reference.thresholds(mix)
            if len(self._thresholds) < 10_000:
                self._thresholds[key] = hit
        return hit

    def score(self, text: str, history: Sequence[tuple[str, str]] = (), *, scorer_name: str = "") -> TurnScore:
        """Features and score of a turn. No scorer reads the context sizes (they only size the estimate), so
        this runs before the context arrives. Raises ScorerError for an unknown scorer name."""
        started = time.perf_counter()
        scorer = self.scorers.get(scorer_name)
        history = tuple(history)
        features = extract_features(text, conversation_depth=len(history))
        assessment: Assessment | None = None
        if isinstance(scorer, LearnedScorer):
            assessment = scorer.assess(text, features, history)
            score = assessment.score
        else:
            score = scorer.score(text, features)
        return TurnScore(scorer.name, text, history, features, score, assessment, time.perf_counter() - started)

    def decide(
        self,
        turn: TurnText,
        *,
        scorer_name: str = "",
        policy: billing_pb2.TenantPolicy | None = None,
        budget: billing_pb2.BudgetState | None = None,
        max_output_tokens: int | None = None,
        scored: TurnScore | None = None,
    ) -> Decision:
        """`scored`: this turn's Decider.score, computed earlier (the same decision as without it). Raises
        ScorerError for an unknown scorer name."""
        scorer = self.scorers.get(scorer_name)
        if scored is None:
            scored = self.score(turn.text, turn.history, scorer_name=scorer_name)
        elif (scored.scorer_name != scorer.name or scored.text != turn.text
              or scored.history != tuple(turn.history)):
            raise ValueError("the turn score was computed for another turn or scorer")
        started = time.perf_counter()  # decision_seconds: this part plus the score's own time
        features = replace(scored.features, rag_context_chars=turn.rag_context_chars,
                           vision_context_chars=turn.vision_context_chars)
        tenant_mix = policy_mix(policy)
        mix = tenant_mix or self.default_mix
        reasons: list[str] = []
        assessment = scored.assessment
        score = scored.score
        if assessment is not None and assessment.follow_up_of is not None:
            reasons.append(f"follow-up scored as the turn it follows ({assessment.follow_up_of!r})")
        # learned-v1 uses its quality-floor operating point unless the tenant sets a mix.
        floor_point = isinstance(scorer, LearnedScorer) and tenant_mix is None
        in_band = False
        if isinstance(scorer, LearnedScorer) and floor_point and assessment is not None:
            point = scorer.floor_point(assessment, cascade=self.cascade_enabled)
            thresholds = (point.t1, point.t2)
            idx, in_band = point.route(assessment.p_lite, assessment.p_standard)
        else:
            thresholds = self.thresholds(scorer.name, mix)
            idx = tier_index(score, thresholds)
        routed = idx
        if mix != self.default_mix:
            reasons.append(f"tenant mix {mix}")
        if policy is not None and policy.pinned_tier in ENUM_TIER:
            pinned = TIERS.index(ENUM_TIER[policy.pinned_tier])
            if pinned != idx:
                reasons.append(f"tenant pins tier {TIERS[pinned]} (score said {TIERS[idx]})")
            idx = pinned
        if policy is not None and policy.max_tier in ENUM_TIER:
            cap = TIERS.index(ENUM_TIER[policy.max_tier])
            if idx > cap:
                reasons.append(f"tenant max tier {TIERS[cap]} (score said {TIERS[idx]})")
                idx = cap
        verdict = budget_verdict(policy, budget)
        if verdict.status == "downgrade" and idx > 0:
            reasons.append(f"budget near its limit: {TIERS[idx]} downgraded to {TIERS[idx - 1]}; {verdict.detail}")
            idx -= 1
        elif verdict.refuses:
            reasons.append(f"budget {verdict.status}: {verdict.detail}")
        tier = TIERS[idx]
        # The cascade only for turns the learned router is unsure about, and only when nothing overrode it.
        tenant_tier_rule = policy is not None and (policy.pinned_tier in ENUM_TIER or policy.max_tier in ENUM_TIER)
        cascade = (isinstance(scorer, LearnedScorer) and floor_point and self.cascade_enabled and idx == routed
                   and idx > 0 and not tenant_tier_rule and verdict.status in ("ok", "unlimited", "unpublished")
                   and in_band)
        model = self.catalog.tier_model(tier)
        provider, offline = self._provider_of(tier)
        input_chars = (self._system_chars + len(turn.text) + sum(len(t) for _, t in turn.history)
                       + turn.rag_context_chars + turn.vision_context_chars)
        est_in = math.ceil(input_chars / 4)
        est_out = min(max_output_tokens or self._expected_output, self._expected_output)
        est_cost = self.catalog.cost(model, UsageAmounts(input_tokens=est_in, output_tokens=est_out))
        elapsed = time.perf_counter() - started + scored.seconds
        DECISION_SECONDS.observe(elapsed)
        ROUTER_DECISIONS.labels(scorer=scorer.name, tier=tier).inc()
        return Decision(
            score=score, tier=tier, model=model, provider=provider, offline=offline, scorer=scorer.name,
            features=features, thresholds=thresholds, mix=mix, estimated_input_tokens=est_in,
            estimated_output_tokens=est_out, estimated_cost_usd=est_cost, override_reasons=tuple(reasons),
            budget=verdict, decision_seconds=elapsed,
            p_lite=assessment.p_lite if assessment else None,
            p_standard=assessment.p_standard if assessment else None,
            operating_point="floor" if floor_point else "mix", cascade=cascade,
            answer_keep=scorer.answer_keep(assessment) if isinstance(scorer, LearnedScorer) and assessment else None,
        )
