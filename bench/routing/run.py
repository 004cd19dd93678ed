"""Routing quality and cost on held-out data, at the operating point SHIPPED in the artifact.

    uv run python bench/routing/run.py            # everything
    uv run python bench/routing/run.py --quick    # skip the optimistic test-set sweeps

Held-out sets (nothing is fitted on them): the 30% held-out prompts of ../shared/data/routing, per
RouterBench task (arc-challenge, mbpp, winogrande) and llmrouter, and the evaluation half of our labelled
conversational turns (quality: 1 when the tier is at or above the turn's label; cost: catalog prices for
600 input + 250 output tokens per turn).

Routers, each at an operating point fixed on TRAINING data only, with the same rule: thresholds (t1, t2) on a
score give the lowest mean cost ratio over the training groups (llmrouter, the three RouterBench tasks, the
conversational calibration half) such that every group's training quality is >= 95% of premium by a one-sided
95% prediction bound (frugal.devkit.routing.train_learned.fit_policy); per cluster, every training group with
enough rows in the cluster is held to the floor too:
- learned-v1 prompt router: its shipped `floor_prompt_only` thresholds of the turn's nearest cluster (fitted
  out-of-fold on training, frugal.devkit.routing.train_learned), no cascade;
- learned-v1 + cascade (the default combination): its shipped per-cluster `floor` thresholds; turns scoring in
  (t1, t_cascade] get lite and standard answers first (both paid), the answer scorer keeps standard's answer
  or escalates to premium. Only where the data holds the models' answers (RouterBench); elsewhere the line
  repeats the prompt router alone, marked "no answers" (the cascade cannot be replayed without answers);
- hybrid-v2, the seed heuristic, prompt length (characters), word count: thresholds fitted on training with
  the rule above, pooled, and "per cluster" (the same clusters as learned-v1, thresholds per cluster by the
  same rule, so the comparison isolates the score from the clustering);
- best fixed mix: the cheapest lite/standard/premium shares (5% grid), each turn routed at random with them,
  keeping every training group >= 95% (exact expectation); per cluster (one mix per learned-v1 cluster, each
  keeping the floor in expectation on the training groups that are a cell there); and, labelled optimistic,
  the same picked on the test set.
The optimistic sweep (thresholds picked on the test set itself, as the data README's protocol allows) is
printed beside, clearly labelled: the issue shows a pure-noise scorer already reaching a 34% cut that way.

The cascade's added time to first token is MODELLED: the cheap answers are held until both are complete and
scored, so the hold is max(TTFT + tokens / rate) over lite and standard, plus the measured scoring time.
Tokens: the recorded answers' characters / 4. Rates and TTFTs: the constants printed (assumptions, not
measurements of the real providers; pass --lite-tps etc. to change them).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from frugal.devkit.routing.conversational import split_turns
from frugal.devkit.routing.evaldata import DataMissing, data_root, load_all
from frugal.devkit.routing.train_learned import (
    FLOOR,
    MIN_CELL_ROWS,
    MIN_CELL_SHARE,
    Policy,
    Row,
    conversational_rows,
    example_rows,
    fit_policy,
    policy_from_json,
    policy_tiers,
    route_outcomes,
    signals,
    training_rows,
)
from frugal.router.cascade import AnswerScorer
from frugal.router.features import extract_features
from frugal.router.learned import FloorPoint, LearnedScorer, load_learned_payload
from frugal.router.scoring import SEED_SCORER, load_scorers

F64 = npt.NDArray[np.float64]
SETS = ("arc-challenge", "mbpp", "winogrande", "llmrouter", "conversational")


@dataclass(frozen=True)
class Result:
    quality_share: float
    cost_cut: float
    shares: tuple[float, float, float]
    cascaded: float = 0.0
    escalated: float = 0.0


def arrays(rows: Sequence[Row]) -> tuple[F64, F64]:
    return np.array([r.scores for r in rows]), np.array([r.costs for r in rows])


def evaluate(policy: Policy | Sequence[Policy], s: F64, a: F64, rows: Sequence[Row],
             cluster: npt.NDArray[np.int64] | None = None, probs: tuple[F64, F64] | None = None) -> Result:
    """One policy for every row, or one per cluster (`cluster[i]` indexes `policy`). `probs`: the learned
    router's (p_lite, p_standard), read by points with the "probs" rule instead of the score `s`."""
    q, c = arrays(rows)
    pols = [policy] if isinstance(policy, Policy) else list(policy)
    cl = np.zeros(len(rows), dtype=np.int64) if cluster is None else cluster
    qual, cost = np.zeros(len(rows)), np.zeros(len(rows))
    casc, keep = np.zeros(len(rows), dtype=bool), np.zeros(len(rows), dtype=bool)
    tier = np.zeros(len(rows), dtype=np.int64)
    for k, pol in enumerate(pols):
        m = cl == k
        if not m.any():
            continue
        if pol.rule == "probs":
            assert probs is not None, "a probs-rule point needs the router's probabilities"
            sk, uk = signals(pol.rule, probs[0][m], probs[1][m])
        else:
            sk, uk = s[m], None
        qk, ck, cs = route_outcomes(pol, sk, a[m], q[m], c[m], uk)
        qual[m], cost[m], casc[m] = qk, ck, cs
        kp = cs & (np.nan_to_num(a[m], nan=-1.0) >= pol.answer_keep)
        keep[m] = kp
        tk, _ = policy_tiers(pol, sk, uk)
        tier[m] = np.where(cs, np.where(kp, 1, 2), tk)
    shares = tuple(float((tier == k).mean()) for k in range(3))
    return Result(float(qual.mean() / q[:, 2].mean()), 1 - float(cost.sum() / c[:, 2].sum()),
                  shares, float(casc.mean()), float((casc & ~keep).sum() / max(1, casc.sum())))  # type: ignore[arg-type]


def fixed_mix(shares: tuple[float, float, float], rows: Sequence[Row]) -> Result:
    q, c = arrays(rows)
    w = np.array(shares)
    return Result(float((q @ w).mean() / q[:, 2].mean()), 1 - float((c @ w).sum() / c[:, 2].sum()), shares)


def fixed_mix_by_cluster(mixes: Sequence[tuple[float, float, float]], rows: Sequence[Row],
                         cluster: npt.NDArray[np.int64]) -> Result:
    """Each row routed at random with its cluster's mix (expected quality and cost)."""
    q, c = arrays(rows)
    w = np.array([mixes[k] for k in cluster])
    shares = tuple(float(v) for v in w.mean(axis=0))
    return Result(float((q * w).sum(axis=1).mean() / q[:, 2].mean()),
                  1 - float((c * w).sum() / c[:, 2].sum()), shares)  # type: ignore[arg-type]


def mix_grid(step: int = 5) -> list[tuple[float, float, float]]:
    n = 100 // step
    return [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)]


def fit_fixed_mix(groups: dict[str, list[Row]]) -> tuple[float, float, float]:
    best: tuple[float, tuple[float, float, float]] | None = None
    for m in mix_grid():
        res = [fixed_mix(m, rs) for rs in groups.values()]
        if all(r.quality_share >= FLOOR - 1e-12 for r in res):
            ratio = float(np.mean([1 - r.cost_cut for r in res]))
            if best is None or ratio < best[0] - 1e-12:
                best = (ratio, m)
    return best[1] if best else (0.0, 0.0, 1.0)


def optimistic(s: F64, rows: Sequence[Row]) -> float | None:
    """Largest cost cut with quality >= 95% over (t1, t2) picked on these rows (optimistic)."""
    q, c = arrays(rows)
    grid = sorted(set(np.quantile(s, np.linspace(0, 1, 41)).tolist()))
    grid = [grid[0] - 1.0, *grid]
    best = None
    for i, t1 in enumerate(grid):
        for t2 in grid[i:]:
            tier = np.where(s <= t1, 0, np.where(s <= t2, 1, 2))
            idx = np.arange(len(s))
            if q[idx, tier].mean() >= FLOOR * q[:, 2].mean() - 1e-12:
                cut = 1 - c[idx, tier].sum() / c[:, 2].sum()
                best = cut if best is None or cut > best else best
    return best


def line(name: str, r: Result, extra: str = "") -> str:
    mix = "/".join(f"{x * 100:.0f}" for x in r.shares)
    return f"  {name:<34} quality {r.quality_share:6.1%} of premium  cost cut {r.cost_cut:6.1%}  mix {mix:<9}{extra}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the optimistic test-set sweeps")
    ap.add_argument("--lite-ttft", type=float, default=0.25, help="assumed lite time to first token, s")
    ap.add_argument("--lite-tps", type=float, default=250.0, help="assumed lite output tokens per second")
    ap.add_argument("--standard-ttft", type=float, default=0.35)
    ap.add_argument("--standard-tps", type=float, default=180.0)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    try:
        datasets = load_all()
    except DataMissing as err:
        print(f"routing data missing: {err}\nskipping the routing evaluation: the held-out public data sets are "
              f"needed (looked in {data_root()}; set FRUGAL_ROUTING_DATA to point elsewhere)")
        return 0
    scorers = load_scorers()
    learned = scorers.get("learned-v1")
    assert isinstance(learned, LearnedScorer)
    payload = load_learned_payload()
    answer_scorer = AnswerScorer(payload)
    shipped = payload["operating_points"]["floor"]
    policy = policy_from_json(shipped)
    no_cascade = policy_from_json(payload["operating_points"]["floor_prompt_only"], cascade=False)

    train = training_rows(datasets)
    calibration, evaluation = split_turns()
    test_by_set: dict[str, list[Row]] = {n: [] for n in SETS}
    for r in example_rows([e for d in datasets for e in d.split()[1]]):
        test_by_set[r.group].append(r)
    test_by_set["conversational"] = conversational_rows(evaluation)
    train_by_set: dict[str, list[Row]] = {}
    for r in train:
        train_by_set.setdefault(r.group, []).append(r)

    hybrid, seed = scorers.get("hybrid-v2"), scorers.get(SEED_SCORER)
    baselines: dict[str, Callable[[str], float]] = {
        "hybrid-v2": lambda t: hybrid.score(t, extract_features(t)),
        "seed heuristic": lambda t: seed.score(t, extract_features(t)),
        "prompt length (chars)": lambda t: float(len(t)),
        "word count": lambda t: float(len(t.split())),
    }
    print("shipped operating point (learned-v1 artifact, fitted on training data): "
          f"floor {shipped['quality_floor']:.0%}"
          f" (met by a one-sided 95% prediction bound on training, out of fold), rule {policy.rule} t1={policy.t1:g} "
          f"t2={policy.t2:g} "
          f"t_cascade={policy.t_cascade:g} answer_keep={policy.answer_keep:g}; prompt router alone: "
          f"t1={no_cascade.t1:g} t2={no_cascade.t2:g}")
    print("training groups: " + ", ".join(f"{g} {len(rs)}" for g, rs in sorted(train_by_set.items())))
    clusters = payload["operating_points"].get("clusters") or []
    cl_floor = [policy_from_json(x["floor"]) for x in clusters]
    cl_prompt = [policy_from_json(x["floor_prompt_only"], cascade=False) for x in clusters]
    if clusters:
        print("per-cluster operating points (cluster = the group classifier's pick): " + "; ".join(
            f"{x['name']}: {p.rule} t1={p.t1:.3g} t2={p.t2:.3g} tc={p.t_cascade:.3g} keep>={p.answer_keep:.3g}"
            for x, p in zip(clusters, cl_floor, strict=True)))

    def cluster_of(texts: Sequence[str]) -> npt.NDArray[np.int64]:
        return np.array([learned.assess(t, extract_features(t)).cluster for t in texts], dtype=np.int64)

    base_policies: dict[str, Policy] = {}
    base_cluster_policies: dict[str, list[Policy]] = {}
    train_groups = [r.group for r in train]
    tq, tc = arrays(train)
    train_cl = cluster_of([r.text for r in train]) if clusters else None
    for name, fn in baselines.items():
        s = np.array([fn(r.text) for r in train])
        base_policies[name], _ = fit_policy(train_groups, s, np.full(len(train), np.nan), tq, tc, FLOOR)
        if train_cl is not None:
            # The same clusters as learned-v1, so the comparison isolates the score.
            base_cluster_policies[name] = [
                fit_policy(["c"] * int((train_cl == k).sum()), s[train_cl == k],
                           np.full(int((train_cl == k).sum()), np.nan), tq[train_cl == k], tc[train_cl == k],
                           FLOOR, cells=[g for g, m in zip(train_groups, train_cl == k, strict=True) if m])[0]
                for k in range(len(clusters))]
    mix = fit_fixed_mix(train_by_set)
    print(f"best fixed mix fitted on training: {'/'.join(f'{x * 100:.0f}' for x in mix)}")
    # The same baseline per learned-v1 cluster: in each cluster, the cheapest mix keeping the floor (in
    # expectation) on every training group with >= MIN_CELL_ROWS rows there that are >= MIN_CELL_SHARE of it.
    cluster_mixes: list[tuple[float, float, float]] = []
    if train_cl is not None:
        sizes = {g: len(rs) for g, rs in train_by_set.items()}
        for k in range(len(clusters)):
            in_k: dict[str, list[Row]] = {}
            for r, kk in zip(train, train_cl, strict=True):
                if kk == k:
                    in_k.setdefault(r.group, []).append(r)
            held = {g: rs for g, rs in in_k.items()
                    if len(rs) >= MIN_CELL_ROWS and len(rs) >= MIN_CELL_SHARE * sizes[g]}
            cluster_mixes.append(fit_fixed_mix(held) if held else mix)
        print("best fixed mix per cluster fitted on training: " + ", ".join(
            f"{x['name']} {'/'.join(f'{v * 100:.0f}' for v in m)}" for x, m in zip(clusters, cluster_mixes,
                                                                                   strict=True)))
    print(f"cascade TTFT model: lite {args.lite_ttft}s + tokens/{args.lite_tps:g} tok/s, standard "
          f"{args.standard_ttft}s + tokens/{args.standard_tps:g} tok/s (assumed), tokens = answer chars / 4")

    summary: dict[str, dict[str, float]] = {}
    for name in SETS:
        rows = test_by_set[name]
        if not rows:
            continue
        texts = [r.text for r in rows]
        assessed = [learned.assess(t, extract_features(t)) for t in texts]
        p_l = np.array([x.p_lite for x in assessed])
        p_s = np.array([x.p_standard for x in assessed])
        cl = np.array([x.cluster for x in assessed], dtype=np.int64) if clusters else None
        s = 2.0 - p_l - p_s
        has = all(r.responses[0] and r.responses[1] for r in rows)
        a = np.full(len(rows), np.nan)
        score_ms: list[float] = []
        if has:
            for i, r in enumerate(rows):
                t0 = time.perf_counter()
                a[i] = answer_scorer.probability(r.text, r.responses[0], r.responses[1], p_l[i], p_s[i])
                score_ms.append((time.perf_counter() - t0) * 1000)
        q, c = arrays(rows)
        print(f"\n=== {name}: {len(rows)} held-out {'turns' if name == 'conversational' else 'prompts'}; "
              f"all-premium quality {q[:, 2].mean():.3f}")
        if cl is not None:
            r_prompt = evaluate(cl_prompt, s, np.full(len(rows), np.nan), rows, cl, (p_l, p_s))
            r_default = evaluate(cl_floor, s, a, rows, cl, (p_l, p_s)) if has else r_prompt
            counts = np.bincount(cl, minlength=len(clusters))
            print("  clusters picked: " + ", ".join(f"{x['name']} {n}" for x, n in zip(clusters, counts, strict=True)
                                                    if n))
        else:
            r_prompt = evaluate(no_cascade, s, np.full(len(rows), np.nan), rows, probs=(p_l, p_s))
            r_default = evaluate(policy, s, a, rows, probs=(p_l, p_s)) if has else r_prompt
        results = {"learned-v1 prompt router": r_prompt}
        opt = {} if args.quick else {"learned-v1 prompt router": optimistic(s, rows)}
        casc_note = ""
        if has:
            pts = [cl_floor[k] for k in cl] if cl is not None else [policy] * len(rows)
            casc = np.array([FloorPoint(p.t1, p.t2, p.t_cascade, p.answer_keep, p.rule).route(pl, ps)[1]
                             for p, pl, ps in zip(pts, p_l, p_s, strict=True)])
            hold = np.array([
                max(args.lite_ttft + len(r.responses[0]) / 4 / args.lite_tps,
                    args.standard_ttft + len(r.responses[1]) / 4 / args.standard_tps) + score_ms[i] / 1000
                for i, r in enumerate(rows)
            ])
            added = hold[casc]
            casc_note = (f"  cascaded {r_default.cascaded:5.1%}, escalated {r_default.escalated:5.1%} of those; "
                         f"added TTFT (modelled) mean {added.mean() if len(added) else 0:.2f}s, p95 "
                         f"{np.quantile(added, 0.95) if len(added) else 0:.2f}s on cascaded turns; scoring p99 "
                         f"{np.quantile(score_ms, 0.99):.2f} ms")
        results["learned-v1 + cascade (default)"] = r_default
        for bname, fn in baselines.items():
            bs = np.array([fn(t) for t in texts])
            results[bname] = evaluate(base_policies[bname], bs, np.full(len(rows), np.nan), rows)
            if cl is not None:
                results[bname + " per cluster"] = evaluate(base_cluster_policies[bname], bs,
                                                           np.full(len(rows), np.nan), rows, cl)
            if not args.quick:
                opt[bname] = optimistic(bs, rows)
        results["best fixed mix (fitted on training)"] = fixed_mix(mix, rows)
        if cl is not None:
            results["best fixed mix per cluster"] = fixed_mix_by_cluster(cluster_mixes, rows, cl)
        for rname, res in results.items():
            extra = ""
            if rname in opt:
                o = opt[rname]
                extra = f"  | optimistic (test sweep) cut {o:6.1%}" if o is not None else "  | optimistic: none"
            if rname.startswith("learned-v1 + cascade") and not has:
                extra = "  (no answers in this data: prompt router alone)"
            print(line(rname, res, extra))
            summary.setdefault(rname, {})[name] = res.cost_cut
            summary.setdefault(rname + " quality", {})[name] = res.quality_share
        if has:
            print(casc_note)
        if not args.quick:
            best_test = max((m for m in mix_grid() if fixed_mix(m, rows).quality_share >= FLOOR - 1e-12),
                            key=lambda m: fixed_mix(m, rows).cost_cut)
            bt = fixed_mix(best_test, rows)
            print(f"  {'best fixed mix (optimistic, test)':<34} quality {bt.quality_share:6.1%} of premium  cost cut "
                  f"{bt.cost_cut:6.1%}  mix {'/'.join(f'{x * 100:.0f}' for x in best_test)}")

    print("\n=== summary at the shipped operating point (cost cut; quality share in brackets; min quality)")
    for rname in [k for k in summary if not k.endswith(" quality")]:
        cuts = summary[rname]
        quals = summary[rname + " quality"]
        cells = "  ".join(f"{n[:6]} {cuts[n]:6.1%} ({quals[n]:5.1%})" for n in SETS if n in cuts)
        print(f"  {rname:<34} {cells}  | mean cut {np.mean(list(cuts.values())):6.1%}, "
              f"min quality {min(quals.values()):5.1%}")
    d = summary["learned-v1 + cascade (default)"]
    for base in ("prompt length (chars)", "prompt length (chars) per cluster"):
        if base in summary:
            pl = summary[base]
            print(f"  default vs {base}: {np.mean(list(d.values())) - np.mean(list(pl.values())):+.1%} mean cost cut")

    # Decision cost (features + embedding + score), one thread; bench/router has the 1-core p50/p99 figures.
    texts = [r.text for r in test_by_set["conversational"]] + [r.text for r in test_by_set["llmrouter"][:300]]
    walls = []
    for t in texts:
        t0 = time.perf_counter()
        learned.assess(t, extract_features(t))
        walls.append((time.perf_counter() - t0) * 1000)
    walls.sort()
    print(f"\nlearned-v1 decision wall time on {len(texts)} turns: p50 {walls[len(walls) // 2]:.2f} ms, p99 "
          f"{walls[int(len(walls) * 0.99)]:.2f} ms (see bench/router for the single-core figures)")
    print(f"(done in {time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
