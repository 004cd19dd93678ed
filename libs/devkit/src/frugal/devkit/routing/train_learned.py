"""Builds `learned-v1.json` (the learned prompt router, the cascade's answer scorer and both operating points)
from training data only, bit for bit.

    uv run python -m frugal.devkit.routing.train_learned           # rebuild into the router's data dir
    uv run python -m frugal.devkit.routing.train_learned --check   # rebuild in memory, compare bytes

Training rows (nothing else is read): the non-held-out prompts of ../shared/data/routing (llmrouter; the
RouterBench subset: ARC-Challenge, MBPP, Winogrande) and the calibration half of the labelled
conversational turns. Groups: llmrouter, arc-challenge, mbpp, winogrande, conversational.

1. Features per row (frugal.router.learned): tail token embedding + extra features (standardized).
2. Targets per cheaper tier t: y_t = 1 - max(0, s_premium - s_t) (1 when t matches premium; for 0/1 scores
   exactly "t is as good as premium"). Conversational turns: s_t = 1 when t >= the label.
3. One L2 logistic regression per tier (Newton's method, fixed iterations), each group weighing the same in
   total (so 132 conversational turns count as much as 3,858 llmrouter prompts).
4. Out-of-fold predictions (5 folds by prompt hash) for everything threshold-related; the answer scorer
   (frugal.router.cascade) on RouterBench training rows, label 1[s_lite >= s_premium], feature values
   computed from the out-of-fold router probabilities.
5. Operating point `floor`: the thresholds (t1, t2, t_cascade, answer_keep) with the lowest mean cost
   ratio over groups such that each group's out-of-fold quality is >= FLOOR of its premium quality with
   one-sided 95% confidence; the same per cluster (a group classifier picks the cluster of a turn).
   Operating point `mix`: quantiles of the final model's scores on the conversational calibration turns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from frugal.common.pricing import TIERS, default_catalog
from frugal.common.usage import UsageAmounts
from frugal.devkit.routing.conversational import LabelledTurn, split_turns, turns_bytes
from frugal.devkit.routing.evaldata import DataMissing, Dataset, Example, data_root, load_all
from frugal.devkit.routing.train_hybrid import file_digest, r6, router_data_dir, serialize
from frugal.encoder.minilm import limit_blas_threads
from frugal.router.cascade import ANSWER_FEATURES, answer_features, logit
from frugal.router.features import extract_features
from frugal.router.learned import (
    EXTRA_FEATURES,
    LEARNED_ARTIFACT_FILE,
    LEARNED_FORMAT,
    LEARNED_SCORER,
    TAIL_CHARS,
    TAIL_TOKENS,
    MiniLMTailEmbedder,
    extra_features,
)
from frugal.router.scoring import QuantileTable, load_scorers

F64 = npt.NDArray[np.float64]
FLOOR = 0.95
# Fitted thresholds must keep each training group at the floor with one-sided 95% confidence out of fold
# (sampling noise on a few hundred prompts is several points, and a grid search over four thresholds picks
# lucky points otherwise); no extra margin on top.
MARGIN = 0.0
CONFIDENCE_Z = 1.645
FOLDS = 5
L2 = 3.0
GROUP_L2 = 1.0
ANSWER_L2 = 1.0
NEWTON_STEPS = 10
# Voice-turn cost model for the conversational group: catalog prices for this many tokens per turn.
CONV_INPUT_TOKENS, CONV_OUTPUT_TOKENS = 600, 250
GRID = 21


@dataclass(frozen=True)
class Row:
    group: str
    text: str
    scores: tuple[float, float, float]
    costs: tuple[float, float, float]
    responses: tuple[str, str, str]


def group_of(e: Example) -> str:
    return "llmrouter" if e.dataset == "llmrouter" else e.subset


def conversational_rows(turns: Sequence[LabelledTurn]) -> list[Row]:
    cat = default_catalog()
    costs = tuple(
        cat.cost(cat.tier_model(t), UsageAmounts(input_tokens=CONV_INPUT_TOKENS, output_tokens=CONV_OUTPUT_TOKENS))
        for t in TIERS
    )
    return [
        Row("conversational", t.text, tuple(1.0 if k >= t.label else 0.0 for k in range(3)),  # type: ignore[arg-type]
            costs, ("", "", ""), )  # type: ignore[arg-type]
        for t in turns
    ]


def example_rows(examples: Sequence[Example]) -> list[Row]:
    return [Row(group_of(e), e.text, e.scores, e.costs, e.responses) for e in examples]


def training_rows(datasets: Sequence[Dataset], turns: Sequence[LabelledTurn] | None = None) -> list[Row]:
    """Training split of the public data + the calibration half of the conversational turns (all turns are
    passed through the split here, so an evaluation turn can never be fitted on)."""
    rows = example_rows([e for d in datasets for e in d.split()[0]])
    calibration, _ = split_turns(turns)
    return rows + conversational_rows(calibration)


def fold_of(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[-8:], 16) % FOLDS


class Featurizer:
    def __init__(self) -> None:
        self.embedder = MiniLMTailEmbedder()
        # The base scores only, never the artifact being built.
        scorers = load_scorers(learned=False, default="hybrid-v2")
        self.lexical = scorers.get("lexical-ridge-v1")
        self.hybrid = scorers.get("hybrid-v2")
        # text -> (embedding, extra features): a rebuild in the same process (tests) featurizes once.
        self._cache: dict[str, tuple[F64, F64]] = {}

    def base(self, text: str, features: Any) -> tuple[float, float]:
        return self.lexical.score(text, features), self.hybrid.score(text, features)

    def matrix(self, texts: Sequence[str]) -> tuple[F64, F64]:
        emb = np.zeros((len(texts), self.embedder.dim), dtype=np.float64)
        extra = np.zeros((len(texts), len(EXTRA_FEATURES)), dtype=np.float64)
        for i, t in enumerate(texts):
            hit = self._cache.get(t)
            if hit is None:
                f = extract_features(t)
                hit = (self.embedder.tail_vector(t).astype(np.float64),
                       np.asarray(extra_features(t, f, *self.base(t, f)), dtype=np.float64))
                self._cache[t] = hit
            emb[i], extra[i] = hit
        return emb, extra


def fit_logistic(x: F64, y: F64, w: F64, l2: float, steps: int = NEWTON_STEPS) -> tuple[F64, float]:
    """Weighted L2 logistic regression with soft targets by Newton's method (bias unpenalized)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    beta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    wsum = w.sum()
    for _ in range(steps):
        z = np.clip(xb @ beta, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = xb.T @ (w * (p - y)) / wsum + reg * beta / n
        h = (xb * (w * p * (1 - p))[:, None]).T @ xb / wsum + np.diag(reg / n) + 1e-9 * np.eye(d + 1)
        beta = beta - np.linalg.solve(h, grad)
    return beta[:-1], float(beta[-1])


def sigmoid(z: F64) -> F64:
    out: F64 = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
    return out


def group_weights(groups: Sequence[str]) -> F64:
    counts: dict[str, int] = {}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    n = len(groups)
    return np.array([n / (len(counts) * counts[g]) for g in groups])


def targets(rows: Sequence[Row]) -> tuple[F64, F64]:
    s = np.array([r.scores for r in rows])
    return 1.0 - np.maximum(0.0, s[:, 2] - s[:, 0]), 1.0 - np.maximum(0.0, s[:, 2] - s[:, 1])


def standardize(extra: F64) -> tuple[F64, F64]:
    mean = extra.mean(axis=0)
    std = extra.std(axis=0)
    std[std < 1e-6] = 1.0
    return np.array([r6(v) for v in mean]), np.array([r6(v) for v in std])


def design(emb: F64, extra: F64, mean: F64, std: F64) -> F64:
    return np.hstack([emb, (extra - mean) / std])


@dataclass
class Fitted:
    mean: F64
    std: F64
    w_lite: F64
    b_lite: float
    w_std: F64
    b_std: float

    def probs(self, emb: F64, extra: F64) -> tuple[F64, F64]:
        x = design(emb, extra, self.mean, self.std)
        return sigmoid(x @ self.w_lite + self.b_lite), sigmoid(x @ self.w_std + self.b_std)


def fit_router(rows: Sequence[Row], emb: F64, extra: F64) -> Fitted:
    mean, std = standardize(extra)
    x = design(emb, extra, mean, std)
    y_l, y_s = targets(rows)
    w = group_weights([r.group for r in rows])
    wl, bl = fit_logistic(x, y_l, w, L2)
    ws, bs = fit_logistic(x, y_s, w, L2)
    rnd = np.vectorize(r6)
    return Fitted(mean, std, rnd(wl), r6(bl), rnd(ws), r6(bs))


def answer_matrix(rows: Sequence[Row], p_lite: F64, p_std: F64) -> F64:
    return np.array([answer_features(r.text, r.responses[0], r.responses[1], logit(float(pl)), logit(float(ps)))
                     for r, pl, ps in zip(rows, p_lite, p_std, strict=True)])


@dataclass(frozen=True)
class Policy:
    t1: float
    t2: float
    t_cascade: float
    answer_keep: float


def route_outcomes(policy: Policy, s: F64, a: F64, q: F64, c: F64) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
    """(quality, cost, cascaded mask) per row. `a` is the answer scorer's probability, NaN without answers."""
    tier = np.where(s <= policy.t1, 0, np.where(s <= policy.t2, 1, 2))
    idx = np.arange(len(s))
    qual = q[idx, tier]
    cost = c[idx, tier]
    casc = (s > policy.t1) & (s <= policy.t_cascade) & ~np.isnan(a)
    keep = casc & (np.nan_to_num(a, nan=-1.0) >= policy.answer_keep)
    # Cascaded: lite and standard both answer (both paid); standard's answer kept, else premium answers.
    qual = np.where(casc, np.where(keep, q[:, 1], q[:, 2]), qual)
    cost = np.where(casc, c[:, 0] + c[:, 1] + np.where(keep, 0.0, c[:, 2]), cost)
    return qual, cost, casc


def fit_policy(groups: Sequence[str], s: F64, a: F64, q: F64, c: F64, floor: float) -> tuple[Policy, dict[str, Any]]:
    names = sorted(set(groups))
    g = np.array(groups)
    masks = {n: g == n for n in names}
    prem_q = {n: float(q[masks[n], 2].mean()) for n in names}
    prem_c = {n: float(c[masks[n], 2].sum()) for n in names}
    qs = [r6(float(v)) for v in np.quantile(s, np.linspace(0, 1, GRID))]
    grid = sorted(set(qs))
    a_grid = np.array([r6(v) for v in np.linspace(0.3, 0.96, 23)])
    idx = np.arange(len(s))
    has_a = ~np.isnan(a)
    keep_all = np.nan_to_num(a, nan=-1.0)[:, None] >= a_grid[None, :]  # (n, K)
    q_keep, q_esc = q[:, 1][:, None], q[:, 2][:, None]
    c_keep, c_esc = (c[:, 0] + c[:, 1])[:, None], (c[:, 0] + c[:, 1] + c[:, 2])[:, None]
    gidx = {n: np.flatnonzero(masks[n]) for n in names}
    best: tuple[float, Policy] | None = None
    for i, t1 in enumerate(grid):
        for t2 in grid[i:]:
            tier = np.where(s <= t1, 0, np.where(s <= t2, 1, 2))
            base_q, base_c = q[idx, tier], c[idx, tier]
            for tc in [t1, *[v for v in grid if v > t1]]:
                casc = ((s > t1) & (s <= tc) & has_a)[:, None]
                qual = np.where(casc, np.where(keep_all, q_keep, q_esc), base_q[:, None])  # (n, K)
                cost = np.where(casc, np.where(keep_all, c_keep, c_esc), base_c[:, None])
                ok = np.ones(len(a_grid), dtype=bool)
                ratio = np.zeros(len(a_grid))
                for n in names:
                    # Floor met with one-sided 95% confidence: mean(d) - Z se(d) >= 0, d = quality - floor x premium.
                    d = qual[gidx[n]] - (floor + MARGIN) * q[gidx[n], 2][:, None]
                    bound = d.mean(axis=0) - CONFIDENCE_Z * d.std(axis=0) / np.sqrt(len(gidx[n]))
                    ok &= bound >= -1e-12
                    ratio += cost[gidx[n]].sum(axis=0) / prem_c[n] / len(names)
                ks = range(len(a_grid)) if tc > t1 else range(len(a_grid) - 1, len(a_grid))
                for k in ks:
                    if ok[k] and (best is None or ratio[k] < best[0] - 1e-12):
                        best = (float(ratio[k]), Policy(t1, t2, tc, float(a_grid[k]) if tc > t1 else 1.0))
    if best is None:
        return Policy(grid[0] - 1.0, grid[0] - 1.0, grid[0] - 1.0, 1.0), {"mean_cost_ratio": 1.0}
    best_ratio, pol = best
    qual, cost, casc = route_outcomes(pol, s, a, q, c)
    per = {n: {"quality_share": r6(float(qual[masks[n]].mean() / prem_q[n])),
               "cost_cut": r6(1 - float(cost[masks[n]].sum() / prem_c[n])),
               "cascaded": r6(float(casc[masks[n]].mean()))} for n in names}
    return pol, {"mean_cost_cut": r6(1 - best_ratio), "groups": per}


def out_of_fold(rows: Sequence[Row], emb: F64, extra: F64) -> tuple[F64, F64]:
    folds = np.array([fold_of(r.text) for r in rows])
    p_l = np.zeros(len(rows))
    p_s = np.zeros(len(rows))
    for k in range(FOLDS):
        tr, va = folds != k, folds == k
        sub = [r for r, m in zip(rows, tr, strict=True) if m]
        model = fit_router(sub, emb[tr], extra[tr])
        p_l[va], p_s[va] = model.probs(emb[va], extra[va])
    return p_l, p_s


def build_payload(datasets: Sequence[Dataset], root: Path, featurizer: Featurizer | None = None,
                  floor: float = FLOOR, turns: Sequence[LabelledTurn] | None = None) -> dict[str, Any]:
    # One BLAS thread: a multi-threaded reduction can sum in another order and change the last bits.
    limit_blas_threads(1)
    rows = training_rows(datasets, turns)
    feat = featurizer or Featurizer()
    emb, extra = feat.matrix([r.text for r in rows])
    model = fit_router(rows, emb, extra)
    oof_l, oof_s = out_of_fold(rows, emb, extra)

    # Answer scorer: RouterBench rows (they carry the lite model's answer).
    has_answer = np.array([bool(r.responses[0]) for r in rows])
    ans_rows = [r for r, m in zip(rows, has_answer, strict=True) if m]
    a_x = answer_matrix(ans_rows, oof_l[has_answer], oof_s[has_answer])
    a_y = np.array([1.0 if r.scores[1] >= r.scores[2] else 0.0 for r in ans_rows])
    a_mean, a_std = standardize(a_x)
    a_w, a_b = fit_logistic((a_x - a_mean) / a_std, a_y, np.ones(len(ans_rows)), ANSWER_L2)
    a_w = np.vectorize(r6)(a_w)
    a_b = r6(a_b)
    folds = np.array([fold_of(r.text) for r in ans_rows])
    a_oof = np.zeros(len(ans_rows))
    for k in range(FOLDS):
        tr, va = folds != k, folds == k
        mu, sd = standardize(a_x[tr])
        wk, bk = fit_logistic((a_x[tr] - mu) / sd, a_y[tr], np.ones(int(tr.sum())), ANSWER_L2)
        a_oof[va] = sigmoid((a_x[va] - mu) / sd @ wk + bk)
    a_all = np.full(len(rows), np.nan)
    a_all[has_answer] = a_oof

    s = 2.0 - oof_l - oof_s
    q = np.array([r.scores for r in rows])
    c = np.array([r.costs for r in rows])
    policy, fit_report = fit_policy([r.group for r in rows], s, a_all, q, c, floor)
    # The prompt router alone (no cascade: where the cascade is off, or for comparison), same rule.
    prompt_only, prompt_report = fit_policy([r.group for r in rows], s, np.full(len(rows), np.nan), q, c, floor)

    # Per-cluster operating points (cluster-based routing): one cluster per training group; a turn belongs to
    # the group a one-vs-rest logistic classifier on the same features picks (out-of-fold for fitting); each
    # cluster's thresholds are fitted by the same rule on the training rows assigned to it. Unseen kinds of
    # traffic take the most similar group's thresholds.
    names = sorted({r.group for r in rows})
    gvec = np.array([r.group for r in rows])
    x_all = design(emb, extra, model.mean, model.std)
    ones = np.ones(len(rows))
    cls = [fit_logistic(x_all, (gvec == n).astype(np.float64), ones, GROUP_L2) for n in names]
    cls = [(np.vectorize(r6)(w), r6(b)) for w, b in cls]
    folds_all = np.array([fold_of(r.text) for r in rows])
    assigned = np.zeros(len(rows), dtype=np.int64)
    for k in range(FOLDS):
        tr, va = folds_all != k, folds_all == k
        fold_cls = [fit_logistic(x_all[tr], (gvec[tr] == n).astype(np.float64), ones[tr], GROUP_L2) for n in names]
        assigned[va] = np.argmax(np.stack([x_all[va] @ w + b for w, b in fold_cls], axis=1), axis=1)
    clusters = []
    for k, n in enumerate(names):
        m = assigned == k
        one = ["cluster"] * int(m.sum())
        cp, crep = fit_policy(one, s[m], a_all[m], q[m], c[m], floor)
        po, prep = fit_policy(one, s[m], np.full(int(m.sum()), np.nan), q[m], c[m], floor)
        clusters.append({
            "name": n,
            "classifier": {"weights": [float(v) for v in cls[k][0]], "bias": cls[k][1]},
            "training_rows": int(m.sum()),
            "rows_of_its_group": r6(float((gvec[m] == n).mean())) if m.any() else 0.0,
            "floor": {"t1": cp.t1, "t2": cp.t2, "t_cascade": cp.t_cascade, "answer_keep": cp.answer_keep,
                      "training_out_of_fold": crep},
            "floor_prompt_only": {"t1": po.t1, "t2": po.t2, "training_out_of_fold": prep},
        })

    conv = [i for i, r in enumerate(rows) if r.group == "conversational"]
    p_l, p_s = model.probs(emb[conv], extra[conv])
    reference = QuantileTable.from_scores((float(v) for v in 2.0 - p_l - p_s), sample="conversational calibration")

    groups = sorted({r.group for r in rows})
    return {
        "format": LEARNED_FORMAT,
        "name": LEARNED_SCORER,
        "model": {
            "embedding": f"all-MiniLM-L6-v2 input token embeddings, mean over the last {TAIL_TOKENS} word pieces "
                         f"of the last {TAIL_CHARS} characters, L2-normalised",
            "embedding_dim": int(emb.shape[1]),
            "encoder_table_sha256": feat.embedder.table_digest(),
            "extra_names": list(EXTRA_FEATURES),
            "extra_mean": [float(v) for v in model.mean],
            "extra_std": [float(v) for v in model.std],
            "lite": {"weights": [float(v) for v in model.w_lite], "bias": model.b_lite},
            "standard": {"weights": [float(v) for v in model.w_std], "bias": model.b_std},
            "l2": L2,
            "target": "1 - max(0, s_premium - s_tier); conversational: s_tier = 1[tier >= label]",
            "weighting": "each group the same total weight: " + ", ".join(groups),
        },
        "answer_scorer": {
            "names": list(ANSWER_FEATURES),
            "mean": [float(v) for v in a_mean],
            "std": [float(v) for v in a_std],
            "weights": [float(v) for v in a_w],
            "bias": a_b,
            "l2": ANSWER_L2,
            "label": "1[s_standard >= s_premium] on RouterBench training rows (answers of mistral-7b-chat and "
                     "mixtral-8x7b-chat)",
            "rows": len(ans_rows),
        },
        "operating_points": {
            "floor": {
                "quality_floor": floor,
                "margin": MARGIN,
                "t1": policy.t1, "t2": policy.t2, "t_cascade": policy.t_cascade, "answer_keep": policy.answer_keep,
                "rule": "lite if score <= t1; standard if <= t2; else premium. Score in (t1, t_cascade]: lite "
                        "and standard answer first, standard's answer kept when the answer scorer's probability "
                        ">= answer_keep, else premium answers. Fitted: lowest mean cost ratio over training "
                        "groups with every group's "
                        "out-of-fold quality >= (quality_floor + margin) x premium.",
                "training_out_of_fold": fit_report,
            },
            "floor_prompt_only": {
                "quality_floor": floor,
                "margin": MARGIN,
                "t1": prompt_only.t1, "t2": prompt_only.t2,
                "rule": "as `floor` without the cascade (lite if score <= t1; standard if <= t2; else premium)",
                "training_out_of_fold": prompt_report,
            },
            "clusters": clusters,
            "clusters_rule": "thresholds of the cluster whose one-vs-rest group classifier (on the router's "
                             "features) scores highest; `floor` / `floor_prompt_only` above are the pooled fallback",
            "mix": {
                "sample": reference.sample, "n": reference.n, "quantiles": [r6(v) for v in reference.values],
            },
        },
        "training_data": {
            "rows": {g: sum(1 for r in rows if r.group == g) for g in groups},
            "data_files": {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob("*"))
                           if p.is_file() and p.suffix in (".json", ".csv")},
            "conversational_sha256": hashlib.sha256(turns_bytes()).hexdigest(),
            "split": "public: held out when sha256(prompt) mod 100 < 30 (never read); conversational: "
                     "calibration half only",
        },
    }


def artifact_path() -> Path:
    return router_data_dir() / LEARNED_ARTIFACT_FILE


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="rebuild in memory and compare with the committed file")
    ap.add_argument("--out", type=Path, default=artifact_path())
    args = ap.parse_args(argv)
    root = data_root()
    try:
        datasets = load_all(root)
    except DataMissing as err:
        print(f"{err}\nskipping: the public routing data is needed to (re)build {LEARNED_ARTIFACT_FILE}",
              file=sys.stderr)
        return 3
    payload = build_payload(datasets, root)
    data = serialize(payload)
    digest = hashlib.sha256(data).hexdigest()
    print(json.dumps(payload["operating_points"]["floor"], indent=1))
    if args.check:
        committed = args.out.read_bytes() if args.out.is_file() else b""
        same = committed == data
        print(f"{args.out.name}: rebuilt sha256 {digest}: {'identical' if same else 'DIFFERENT'}")
        return 0 if same else 1
    args.out.write_bytes(data)
    args.out.with_name(args.out.name + ".sha256").write_text(f"{digest}  {args.out.name}\n")
    print(f"wrote {args.out} ({len(data)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
