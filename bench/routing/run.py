"""Routing quality/cost evaluation: conversational turns (bundled, labelled by us) and the public routing data
(../shared/data/routing), per its protocol.

    uv run python bench/routing/run.py            # full sweep (5% mix grid)
    uv run python bench/routing/run.py --quick    # 10% mix grid

Part 1, conversational evaluation split of services/router/.../data/conversational-turns.jsonl (labels 0/1/2
are ours, authored for this project; thresholds from the bundled reference sample = the calibration split):
Spearman of score vs label, tier accuracy, label-2 turns sent to lite, under/over-routing, realized mix, and
cost relative to all-premium with catalog prices and a fixed token estimate per turn, for the seed heuristic,
a random router with the default scorer's realized shares, lexical-ridge-v1 and the default (hybrid-v2).

Part 2, for each public data set (llmrouter, routerbench; tiers and costs as in frugal.router.evaldata) on its held-out
30% (nothing is fitted on it; thresholds are calibrated on the data set's training split):
- all-premium baseline (quality Qp, cost Cp), all-standard, all-lite;
- the seed heuristic with its native cut-offs (<=5, <=11) and calibrated to the 60/25/15 mix;
- a random router with the same tier shares as the default scorer at 60/25/15 (exact expectation);
- lexical-ridge-v1 and the default scorer (hybrid-v2) at 60/25/15;
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

from frugal.common.pricing import TIERS, default_catalog
from frugal.common.usage import UsageAmounts
from frugal.devkit.routing.conversational import split_turns
from frugal.devkit.routing.evaldata import DataMissing, Dataset, Example, data_root, load_all
from frugal.devkit.routing.routing_eval import (
    QUALITY_FLOOR,
    LabelledResult,
    OperatingPoint,
    best_cost_cut,
    evaluate_labelled,
    fixed_tier,
    mix_grid,
    oracle,
    random_labelled,
    random_router,
    route_with_thresholds,
    sweep,
)
from frugal.router.features import extract_features
from frugal.router.scoring import (
    DEFAULT_SCORER,
    LEXICAL_SCORER,
    SEED_SCORER,
    QuantileTable,
    Scorer,
    SeedHeuristicScorer,
    TierMix,
    load_scorers,
    tier_index,
)

DEFAULT_MIX = TierMix(0.6, 0.25, 0.15)
# Fixed token estimate per conversational turn for the cost comparison: system prompt + context + turn in,
# a short spoken answer out (the router's EXPECTED_OUTPUT_TOKENS default).
TURN_INPUT_TOKENS = 600
TURN_OUTPUT_TOKENS = 250
PUBLIC_SCORERS = (DEFAULT_SCORER, LEXICAL_SCORER, SEED_SCORER)


def labelled_row(r: LabelledResult) -> str:
    shares = "/".join(f"{s * 100:.0f}" for s in r.shares)
    return (f"  {r.label:<38} spearman {r.spearman:6.3f}  tier acc {r.accuracy:5.1%}  label2->lite "
            f"{r.premium_to_lite:5.1%}  under {r.under:5.1%}  over {r.over:5.1%}  mix {shares:<8}  "
            f"cost {r.cost_ratio:5.1%} of all-premium")


def evaluate_conversational() -> None:
    catalog = default_catalog()
    usage = UsageAmounts(input_tokens=TURN_INPUT_TOKENS, output_tokens=TURN_OUTPUT_TOKENS)
    costs = tuple(catalog.cost(catalog.tier_model(t), usage) for t in TIERS)
    tier_costs = (costs[0], costs[1], costs[2])
    calibration, evaluation = split_turns()
    scorers = load_scorers()
    labels = [t.label for t in evaluation]
    dist = "/".join(f"{labels.count(k)}" for k in range(3))
    print(f"=== conversational turns (labels ours, synthetic): {len(evaluation)} evaluation turns (labels 0/1/2: "
          f"{dist}); thresholds from the bundled reference sample ({len(calibration)} calibration turns), "
          f"mix {DEFAULT_MIX}")
    print(f"    cost per turn ({TURN_INPUT_TOKENS} in + {TURN_OUTPUT_TOKENS} out tokens): "
          + ", ".join(f"{t} {catalog.tier_model(t)} ${c:.6f}" for t, c in zip(TIERS, tier_costs, strict=True)))
    results: dict[str, LabelledResult] = {}
    for name in (SEED_SCORER, LEXICAL_SCORER, DEFAULT_SCORER):
        s = scorers.get(name)
        scores = [s.score(t.text, extract_features(t.text)) for t in evaluation]
        th = s.reference.thresholds(DEFAULT_MIX)
        results[name] = evaluate_labelled(f"{name}, calibrated {DEFAULT_MIX}", labels, scores,
                                          [tier_index(x, th) for x in scores], tier_costs)
        if name == SEED_SCORER:
            native = SeedHeuristicScorer.NATIVE_THRESHOLDS
            print(labelled_row(evaluate_labelled("seed heuristic, native cut-offs 5/11", labels, scores,
                                                 [tier_index(x, native) for x in scores], tier_costs)))
        print(labelled_row(results[name]))
    print(labelled_row(random_labelled("random, same shares as default", labels, results[DEFAULT_SCORER].shares,
                                       tier_costs)))
    print(labelled_row(evaluate_labelled("labels as tiers (reference)", labels, [float(x) for x in labels],
                                         labels, tier_costs)))
    by_cat: dict[str, list[int]] = {}
    s = scorers.get(DEFAULT_SCORER)
    th = s.reference.thresholds(DEFAULT_MIX)
    for t in evaluation:
        by_cat.setdefault(f"{t.category} (label {t.label})", []).append(
            tier_index(s.score(t.text, extract_features(t.text)), th))
    print(f"  {DEFAULT_SCORER} tiers by category (lite/standard/premium counts):")
    for cat in sorted(by_cat, key=lambda c: (c[-2], c)):
        tiers = by_cat[cat]
        print(f"    {cat:<34} {tiers.count(0)}/{tiers.count(1)}/{tiers.count(2)}")
    texts = [t.text for t in evaluation]
    for name in (DEFAULT_SCORER, LEXICAL_SCORER, SEED_SCORER):
        sc = scorers.get(name)
        cpu, p50, p99 = cpu_per_decision(lambda t, sc=sc: sc.score(t, extract_features(t)), texts)  # type: ignore[misc]
        print(f"  CPU per decision, {name:<17}: mean {cpu:7.1f} µs CPU; wall p50 {p50:6.1f} µs, p99 {p99:7.1f} µs "
              f"({len(texts)} turns, mean {statistics.mean(len(t) for t in texts):.0f} chars)")


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
    for name in PUBLIC_SCORERS:
        s = scorers.get(name)
        tables[name] = QuantileTable.from_scores(scores_of(s, train), sample=f"{d.name} train")
        test_scores[name] = scores_of(s, test)

    seed_native = route_with_thresholds(test, test_scores[SEED_SCORER], SeedHeuristicScorer.NATIVE_THRESHOLDS,
                                        "seed heuristic, native cut-offs 5/11")
    seed_mix = route_with_thresholds(test, test_scores[SEED_SCORER], tables[SEED_SCORER].thresholds(DEFAULT_MIX),
                                     f"seed heuristic, calibrated {DEFAULT_MIX}")
    default = route_with_thresholds(test, test_scores[DEFAULT_SCORER],
                                    tables[DEFAULT_SCORER].thresholds(DEFAULT_MIX), f"{DEFAULT_SCORER}, {DEFAULT_MIX}")
    lexical = route_with_thresholds(test, test_scores[LEXICAL_SCORER],
                                    tables[LEXICAL_SCORER].thresholds(DEFAULT_MIX), f"{LEXICAL_SCORER}, {DEFAULT_MIX}")
    rand = random_router(test, default.shares, "random, same shares as default")
    rows += [seed_native, seed_mix, rand, lexical, default, oracle(test)]
    for p in rows:
        print(row(p, premium))

    floor = QUALITY_FLOOR * premium.quality
    print(f"\n  largest cost cut with Q >= {QUALITY_FLOOR:.0%} of all-premium (Q >= {floor:.4f}), "
          f"over {len(mixes)} tier mixes:")
    curves: dict[str, list[OperatingPoint]] = {
        DEFAULT_SCORER: sweep(test, test_scores[DEFAULT_SCORER], tables[DEFAULT_SCORER], mixes),
        LEXICAL_SCORER: sweep(test, test_scores[LEXICAL_SCORER], tables[LEXICAL_SCORER], mixes),
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
    for name in PUBLIC_SCORERS:
        s = scorers.get(name)
        cpu, p50, p99 = cpu_per_decision(lambda t, s=s: s.score(t, extract_features(t)), texts)  # type: ignore[misc]
        print(f"  CPU per decision, {name:<17}: mean {cpu:7.1f} µs CPU; wall p50 {p50:6.1f} µs, p99 {p99:7.1f} µs "
              f"(features + score, {len(texts)} prompts, mean {statistics.mean(len(t) for t in texts):.0f} chars)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10%% mix grid instead of 5%%")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    evaluate_conversational()
    try:
        datasets = load_all()
    except DataMissing as err:
        print(f"\nrouting data missing: {err}\nskipping the public routing evaluation ({data_root()})")
        return 0
    mixes = mix_grid(10 if args.quick else 5)
    for d in datasets:
        evaluate(d, mixes)
    print(f"\n(done in {time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
