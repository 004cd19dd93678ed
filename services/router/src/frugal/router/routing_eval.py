"""Evaluation of a scorer on a routing data set (the protocol of ../shared/data/README.md).

A scorer plus a target mix gives thresholds (calibrated on a reference sample: the data set's training
split); the held-out prompts are routed with them and the chosen tier's score and cost are looked up.
Sweeping the mix gives the quality/cost curve; the headline is the largest cost cut whose quality stays at
or above 95% of the all-premium quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from frugal.router.evaldata import Example
from frugal.router.scoring import QuantileTable, TierMix, tier_index

QUALITY_FLOOR = 0.95


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    label: str
    quality: float
    cost: float
    # Realised share of prompts per tier.
    shares: tuple[float, float, float]

    def cost_cut(self, premium_cost: float) -> float:
        return 1.0 - self.cost / premium_cost if premium_cost > 0 else 0.0


def mix_grid(step_percent: int = 5) -> list[TierMix]:
    n = 100 // step_percent
    out = []
    for lite in range(n + 1):
        for std in range(n + 1 - lite):
            prem = n - lite - std
            out.append(TierMix(lite / n, std / n, prem / n))
    return out


def evaluate_tiers(examples: Sequence[Example], tiers: Sequence[int], label: str) -> OperatingPoint:
    n = len(examples)
    quality = sum(e.scores[t] for e, t in zip(examples, tiers, strict=True)) / n
    cost = sum(e.costs[t] for e, t in zip(examples, tiers, strict=True))
    counts = [0, 0, 0]
    for t in tiers:
        counts[t] += 1
    return OperatingPoint(label, quality, cost, (counts[0] / n, counts[1] / n, counts[2] / n))


def fixed_tier(examples: Sequence[Example], tier: int, label: str) -> OperatingPoint:
    return evaluate_tiers(examples, [tier] * len(examples), label)


def route_with_thresholds(
    examples: Sequence[Example], scores: Sequence[float], thresholds: tuple[float, float], label: str
) -> OperatingPoint:
    return evaluate_tiers(examples, [tier_index(s, thresholds) for s in scores], label)


def sweep(
    examples: Sequence[Example], scores: Sequence[float], reference: QuantileTable, mixes: Sequence[TierMix]
) -> list[OperatingPoint]:
    return [route_with_thresholds(examples, scores, reference.thresholds(m), str(m)) for m in mixes]


def random_router(examples: Sequence[Example], shares: tuple[float, float, float], label: str) -> OperatingPoint:
    """Expected quality and cost of routing each prompt to a tier at random with these shares (exact
    expectation, no sampling)."""
    n = len(examples)
    quality = sum(sum(w * s for w, s in zip(shares, e.scores, strict=True)) for e in examples) / n
    cost = sum(sum(w * c for w, c in zip(shares, e.costs, strict=True)) for e in examples)
    return OperatingPoint(label, quality, cost, shares)


def oracle(examples: Sequence[Example]) -> OperatingPoint:
    from frugal.router.evaldata import oracle_tier

    return evaluate_tiers(examples, [oracle_tier(e.scores) for e in examples], "oracle")


def best_cost_cut(
    points: Sequence[OperatingPoint], premium: OperatingPoint, floor: float = QUALITY_FLOOR
) -> OperatingPoint | None:
    """The cheapest point whose quality is >= floor x all-premium quality (None when no point qualifies)."""
    ok = [p for p in points if p.quality >= floor * premium.quality - 1e-12]
    return min(ok, key=lambda p: (p.cost, -p.quality)) if ok else None
