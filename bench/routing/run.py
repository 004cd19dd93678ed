"""Routing quality/cost evaluation on the public routing data (../shared/data/routing), per its protocol.

    uv run python bench/routing/run.py            # full sweep (5% mix grid)
    uv run python bench/routing/run.py --quick    # 10% mix grid

For each data set (llmrouter, routerbench; tiers and costs as in frugal.router.evaldata) on its held-out
30% (nothing is fitted on it; thresholds are calibrated on the data set's training split):
- all-premium baseline (quality Qp, cost Cp), all-standard, all-lite;
- the seed heuristic with its native cut-offs (<=5, <=11) and calibrated to the 60/25/15 mix;
- a random router with the same tier shares as the default scorer at 60/25/15 (exact expectation);
- the default scorer (lexical-ridge-v1) at 60/25/15;
- the oracle (cheapest tier reaching the best score of the three);
- headline: the largest cost cut 1 - C/Cp with Q >= 0.95 Qp over the swept mixes, for each router;
- the default scorer's curve (best quality per premium share), and CPU time per decision.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from frugal.router.evaldata import DataMissing, Dataset, Example, data_root, load_all
from frugal.router.features import extract_features
from frugal.router.routing_eval import (
    QUALITY_FLOOR,
    OperatingPoint,
    best_cost_cut,
    fixed_tier,
    mix_grid,
    oracle,
    random_router,
    route_with_thresholds,
    sweep,
)
from frugal.router.scoring import (
    DEFAULT_SCORER,
    SEED_SCORER,
    QuantileTable,
    Scorer,
    SeedHeuristicScorer,
    TierMix,
    load_scorers,
)

DEFAULT_MIX = TierMix(0.6, 0.25, 0.15)


def row(p: OperatingPoint, premium: OperatingPoint) -> str:
    shares = "/".join(f"{s * 100:.0f}" for s in p.shares)
    return (f"  {p.label:<44} Q={p.quality:.4f} ({p.quality / premium.quality:6.1%} of premium)  "
            f"C=${p.cost:9.4f}  cut={p.cost_cut(premium.cost):6.1%}  mix={shares}")


def scores_of(scorer: Scorer, examples: Sequence[Example]) -> list[float]:
    return [scorer.score(e.text, extract_features(e.text)) for e in examples]


def cpu_per_decision(fn: Callable[[str], float], texts: Sequence[str]) -> tuple[float, float, float]:
    """(mean CPU µs, p50 wall µs, p99 wall µs) per decision: features + score."""
    walls = []
    cpu0 = time.process_time()
    for t in texts:
        w0 = time.perf_counter()
        fn(t)
        walls.append((time.perf_counter() - w0) * 1e6)
    cpu = (time.process_time() - cpu0) * 1e6 / len(texts)
    walls.sort()
    return cpu, walls[len(walls) // 2], walls[min(len(walls) - 1, int(len(walls) * 0.99))]


def evaluate(d: Dataset, mixes: Sequence[TierMix]) -> None:
    train, test = d.split()
    print(f"\n=== {d.name}: tiers lite={d.tier_models[0]}, standard={d.tier_models[1]}, premium={d.tier_models[2]}")
    print(f"    {len(train)} training prompts (reference sample for thresholds), {len(test)} held out; "
          f"cost {d.cost_note}")
    scorers = load_scorers()
    premium = fixed_tier(test, 2, "all-premium (baseline)")
    rows = [premium, fixed_tier(test, 1, "all-standard"), fixed_tier(test, 0, "all-lite")]

    tables: dict[str, QuantileTable] = {}
    test_scores: dict[str, list[float]] = {}
    for name in (DEFAULT_SCORER, SEED_SCORER):
        s = scorers.get(name)
        tables[name] = QuantileTable.from_scores(scores_of(s, train), sample=f"{d.name} train")
        test_scores[name] = scores_of(s, test)

    seed_native = route_with_thresholds(test, test_scores[SEED_SCORER], SeedHeuristicScorer.NATIVE_THRESHOLDS,
                                        "seed heuristic, native cut-offs 5/11")
    seed_mix = route_with_thresholds(test, test_scores[SEED_SCORER], tables[SEED_SCORER].thresholds(DEFAULT_MIX),
                                     f"seed heuristic, calibrated {DEFAULT_MIX}")
    default = route_with_thresholds(test, test_scores[DEFAULT_SCORER],
                                    tables[DEFAULT_SCORER].thresholds(DEFAULT_MIX), f"{DEFAULT_SCORER}, {DEFAULT_MIX}")
    rand = random_router(test, default.shares, "random, same shares as default")
    rows += [seed_native, seed_mix, rand, default, oracle(test)]
    for p in rows:
        print(row(p, premium))

    floor = QUALITY_FLOOR * premium.quality
    print(f"\n  largest cost cut with Q >= {QUALITY_FLOOR:.0%} of all-premium (Q >= {floor:.4f}), "
          f"over {len(mixes)} tier mixes:")
    curves: dict[str, list[OperatingPoint]] = {
        DEFAULT_SCORER: sweep(test, test_scores[DEFAULT_SCORER], tables[DEFAULT_SCORER], mixes),
        SEED_SCORER: sweep(test, test_scores[SEED_SCORER], tables[SEED_SCORER], mixes),
        "random": [random_router(test, (m.lite, m.standard, m.premium), str(m)) for m in mixes],
    }
    for name, points in curves.items():
        best = best_cost_cut(points, premium)
        if best is None:
            print(f"  {name:<18} no operating point reaches the floor")
        else:
            print(f"  {name:<18} cut {best.cost_cut(premium.cost):6.1%} at mix {best.label:<12} "
                  f"Q={best.quality:.4f} ({best.quality / premium.quality:.1%})")
    orc = oracle(test)
    print(f"  {'oracle':<18} cut {orc.cost_cut(premium.cost):6.1%}  Q={orc.quality:.4f} "
          f"({orc.quality / premium.quality:.1%})")

    print(f"\n  curve of {DEFAULT_SCORER} (best quality at each premium share; cost cut; vs seed at same share):")
    for prem in sorted({round(m.premium, 2) for m in mixes}):
        at = [p for p in curves[DEFAULT_SCORER] if round(TierMix.parse(p.label).premium, 2) == prem]
        at_seed = [p for p in curves[SEED_SCORER] if round(TierMix.parse(p.label).premium, 2) == prem]
        b = max(at, key=lambda p: (p.quality, -p.cost))
        bs = max(at_seed, key=lambda p: (p.quality, -p.cost))
        print(f"    premium {prem * 100:3.0f}%: Q={b.quality:.4f} ({b.quality / premium.quality:6.1%}) "
              f"cut={b.cost_cut(premium.cost):6.1%} mix={b.label:<12} | seed Q={bs.quality:.4f} "
              f"cut={bs.cost_cut(premium.cost):6.1%}")

    texts = [e.text for e in test]
    for name in (DEFAULT_SCORER, SEED_SCORER):
        s = scorers.get(name)
        cpu, p50, p99 = cpu_per_decision(lambda t, s=s: s.score(t, extract_features(t)), texts)  # type: ignore[misc]
        print(f"  CPU per decision, {name:<17}: mean {cpu:7.1f} µs CPU; wall p50 {p50:6.1f} µs, p99 {p99:7.1f} µs "
              f"(features + score, {len(texts)} prompts, mean {statistics.mean(len(t) for t in texts):.0f} chars)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10%% mix grid instead of 5%%")
    args = ap.parse_args(argv)
    try:
        datasets = load_all()
    except DataMissing as err:
        print(f"routing data missing: {err}\nskipping the routing evaluation ({data_root()})")
        return 0
    mixes = mix_grid(10 if args.quick else 5)
    started = time.perf_counter()
    for d in datasets:
        evaluate(d, mixes)
    print(f"\n(done in {time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
