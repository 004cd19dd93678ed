"""Evaluation of a scorer on a routing data set (the protocol of ../shared/data/README.md).

A scorer plus a target mix gives thresholds (calibrated on a reference sample: the data set's training
split); the held-out prompts are routed with them and the chosen tier's score and cost are looked up.
Sweeping the mix gives the quality/cost curve; the headline is the largest cost cut whose quality stays at
or above 95% of the all-premium quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from frugal.devkit.routing.evaldata import Example
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
    from frugal.devkit.routing.evaldata import oracle_tier

    return evaluate_tiers(examples, [oracle_tier(e.scores) for e in examples], "oracle")


def best_cost_cut(
    points: Sequence[OperatingPoint], premium: OperatingPoint, floor: float = QUALITY_FLOOR
) -> OperatingPoint | None:
    """The cheapest point whose quality is >= floor x all-premium quality (None when no point qualifies)."""
    ok = [p for p in points if p.quality >= floor * premium.quality - 1e-12]
    return min(ok, key=lambda p: (p.cost, -p.quality)) if ok else None


# --- conversational turns with difficulty labels (frugal.devkit.routing.conversational) ---------------------------

@dataclass(frozen=True, slots=True)
class LabelledResult:
    """How a router does on turns labelled 0 (lite suffices), 1 (standard needed), 2 (premium needed)."""

    label: str
    spearman: float
    # Share of turns routed exactly to their label's tier.
    accuracy: float
    # Share of label-2 turns sent to lite (the costly mistake for quality).
    premium_to_lite: float
    # Share of turns sent below / above their label's tier.
    under: float
    over: float
    shares: tuple[float, float, float]
    # Cost of the routed turns / cost of sending every turn to premium (fixed token estimate per turn).
    cost_ratio: float


def _label_shares(labels: Sequence[int]) -> tuple[float, float, float]:
    n = len(labels)
    return (labels.count(0) / n, labels.count(1) / n, labels.count(2) / n)


def evaluate_labelled(label: str, labels: Sequence[int], scores: Sequence[float], tiers: Sequence[int],
                      tier_costs: tuple[float, float, float]) -> LabelledResult:
    from frugal.devkit.routing.conversational import spearman

    n = len(labels)
    premium_turns = [t for lab, t in zip(labels, tiers, strict=True) if lab == 2]
    counts = [list(tiers).count(k) for k in range(3)]
    return LabelledResult(
        label=label,
        spearman=spearman(scores, [float(x) for x in labels]),
        accuracy=sum(1 for lab, t in zip(labels, tiers, strict=True) if lab == t) / n,
        premium_to_lite=premium_turns.count(0) / len(premium_turns) if premium_turns else 0.0,
        under=sum(1 for lab, t in zip(labels, tiers, strict=True) if t < lab) / n,
        over=sum(1 for lab, t in zip(labels, tiers, strict=True) if t > lab) / n,
        shares=(counts[0] / n, counts[1] / n, counts[2] / n),
        cost_ratio=sum(tier_costs[t] for t in tiers) / (n * tier_costs[2]),
    )


def random_labelled(label: str, labels: Sequence[int], shares: tuple[float, float, float],
                    tier_costs: tuple[float, float, float]) -> LabelledResult:
    """Exact expectation of routing each turn at random with these tier shares (Spearman 0 in expectation)."""
    ls = _label_shares(labels)
    return LabelledResult(
        label=label,
        spearman=0.0,
        accuracy=sum(s * p for s, p in zip(shares, ls, strict=True)),
        premium_to_lite=shares[0],
        under=ls[1] * shares[0] + ls[2] * (shares[0] + shares[1]),
        over=ls[0] * (shares[1] + shares[2]) + ls[1] * shares[2],
        shares=shares,
        cost_ratio=sum(s * c for s, c in zip(shares, tier_costs, strict=True)) / tier_costs[2],
    )
