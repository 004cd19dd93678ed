"""Builds `learned-v1.json` (the learned prompt router, the cascade's answer scorer and both operating points)
from training data only, bit for bit.

    uv run python -m frugal.devkit.routing.train_learned             # rebuild into the router's data dir
    uv run python -m frugal.devkit.routing.train_learned --check     # rebuild in memory, compare bytes
    uv run python -m frugal.devkit.routing.train_learned --validate  # nested CV of the whole procedure

Training rows (nothing else is read): the non-held-out prompts of ../shared/data/routing (llmrouter; the
RouterBench subset: ARC-Challenge, MBPP, Winogrande) and the calibration half of the labelled
conversational turns. Groups: llmrouter, arc-challenge, mbpp, winogrande, conversational.

1. Features per row (frugal.router.learned): tail token embedding + extra features (standardized). The extra
   features `lexical` (the `lexical-ridge-v1` score, a model fitted on these same public training prompts) and
   `hybrid` (hybrid-v2: a structure model fitted on the conversational calibration turns + lambda x lexical)
   are CROSS-FITTED on every training row (from models fitted without the row's fold), as on a new turn at
   run time. In-sample they are far more predictive than on new turns, and a router fitted on in-sample
   values over-trusts them (revision 1: its out-of-fold quality looked fine, held-out quality missed the floor).
2. Targets per cheaper tier t: y_t = 1 - max(0, s_premium - s_t) (1 when t matches premium; for 0/1 scores
   exactly "t is as good as premium"). Conversational turns: s_t = 1 when t >= the label.
3. One L2 logistic regression per tier (Newton's method, fixed iterations), each group weighing the same in
   total (so 132 conversational turns count as much as 3,858 llmrouter prompts).
4. Out-of-fold predictions (5 folds by prompt hash) for everything threshold-related; the answer scorer
   (frugal.router.cascade) on RouterBench training rows, label 1[s_standard >= s_premium], feature values
   computed from the out-of-fold router probabilities.
5. Clusters: one per training group; a one-vs-rest logistic group classifier on the same features, with the
   same group-balanced weights as the router (so "Write a function ..." prompts, which llmrouter and
   RouterBench's MBPP both hold, go to the cluster where code prompts' cheap-tier failure rate shows, rather
   than to the biggest group), picks a turn's cluster; assignments for fitting are out of fold.
6. Operating point `floor`: the thresholds (t1, t2, t_cascade, answer_keep) with the lowest mean cost ratio over
   groups such that every CELL's out-of-fold quality stays >= FLOOR x its premium quality, by a one-sided 95%
   bound. Pooled point: the cells are the groups. Per-cluster points: the cells are the cluster's rows of each
   training group with at least MIN_CELL_ROWS rows in it that are at least MIN_CELL_SHARE of the group (and the
   whole cluster), so a sizeable part of a group inside another group's cluster (revision 1: 88% of MBPP's rows
   in the llmrouter cluster) is held to the floor too, not averaged away. A cluster with
   fewer than MIN_CLUSTER_ROWS training rows ships the pooled point (too little support to fit its own).
   A point gets a cascade band only when most of its training rows carry the cheap models' answers (RouterBench
   rows); elsewhere the band could not be fitted, and it is the prompt-only point.
   Each point is fitted under two tier rules and keeps the cheaper (Settings.rule "best", Policy.rule): "score"
   (one score 2 - p_lite - p_standard against t1 <= t2) and "probs" (lite on p_lite, then standard on
   p_standard, each with its own threshold).
   The bound is a PREDICTION bound (BOUND_FACTOR): the floor must hold on a fresh sample as large as the cell,
   not only in expectation, since a held-out set is one such sample. The choice between the plain confidence
   bound and the prediction bound was made with `--validate` (training data only; see bench/routing/README.md).
   Operating point `mix`: quantiles of the final model's scores on the conversational calibration turns.

`--validate` runs the whole procedure (cross-fitting, router, answer scorer, clusters, operating points) in an
outer 5-fold loop over the training rows: fitted on four folds, routed on the fifth at the operating point that
procedure would ship; it prints each group's pseudo-held-out quality share and cost cut. It reads training
rows only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from frugal.common.pricing import TIERS, default_catalog
from frugal.common.usage import UsageAmounts
from frugal.devkit.routing.blas_pin import reexec_pinned
from frugal.devkit.routing.conversational import LabelledTurn, split_turns, turns_bytes
from frugal.devkit.routing.evaldata import DataMissing, Dataset, Example, data_root, load_all
from frugal.devkit.routing.train_hybrid import (
    HPARAMS,
    HYBRID_HPARAMS,
    HYBRID_NAME,
    _ref_stub,
    file_digest,
    fit,
    fit_structure,
    r6,
    router_data_dir,
    serialize,
)
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
    FloorPoint,
    MiniLMTailEmbedder,
    extra_features,
)
from frugal.router.scoring import LEXICAL_SCORER, HybridScorer, LexicalRidgeScorer, QuantileTable, load_scorers

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
# Artifact revision (the scorer keeps its name): 2 = cross-fitted lexical and hybrid features,
# group-balanced cluster classifier, per-cell floor constraints, prediction bound; 3 = each point's tier rule
# ("score" or "probs", Policy.rule) fitted with it (Settings.rule "best", chosen by --validate).
REVISION = 3
FLOOR = 0.95
CONFIDENCE_Z = 1.645
# se multiplier: sqrt(1/n + 1/n_new) / sqrt(1/n) with n_new = n (a fresh sample as large as the cell): the
# floor holds on a new sample with one-sided 95% confidence, not only in expectation. 1.0 = confidence bound.
BOUND_FACTOR = float(np.sqrt(2.0))
FOLDS = 5
# The router's L2 penalty. --validate over 0.03-30 (bench/routing/README.md) peaks at 0.1 (mean cut 32.6% vs
# 27.7%), but that model fails the routing sanity tests (a bare "Why?" scored harder than a proof request) and
# was not shipped.
L2 = 3.0
GROUP_L2 = 1.0
ANSWER_L2 = 1.0
NEWTON_STEPS = 10
# A group with fewer rows inside a cluster is not a floor constraint of its own there (its bound would be
# meaningless); a cluster with fewer training rows ships the pooled operating point.
MIN_CELL_ROWS = 30
MIN_CLUSTER_ROWS = 100
# ...and only when they are at least this share of the group's training rows: the target is each data set's
# quality, and a sliver of a group (79 of 3,858 llmrouter rows in the conversational cluster) moves its group
# by little while, held to the floor on its own, it made the whole cluster premium-heavy. Chosen by --validate
# (training rows only): every group still keeps the floor out of sample with it.
MIN_CELL_SHARE = 0.1
# Voice-turn cost model for the conversational group: catalog prices for this many tokens per turn.
CONV_INPUT_TOKENS, CONV_OUTPUT_TOKENS = 600, 250
GRID = 21
LEXICAL_COLUMN = EXTRA_FEATURES.index("lexical")
HYBRID_COLUMN = EXTRA_FEATURES.index("hybrid")


@dataclass(frozen=True)
class Settings:
    """The choices `--validate` compares (the shipped ones are the defaults)."""

    cross_fit_lexical: bool = True
    balanced_clusters: bool = True
    cells: bool = True
    bound_factor: float = BOUND_FACTOR
    # A group's rows inside a cluster are a floor cell only when they are at least this share of the group's
    # training rows (0: every cell with MIN_CELL_ROWS rows).
    min_cell_share: float = MIN_CELL_SHARE
    # The tier rule of every operating point (Policy.rule): "score" (one score, two thresholds), "probs", or
    # "best": per point, whichever of the two fits the cheaper point on the out-of-fold training rows. "best"
    # by --validate (training rows only): mean cut 27.7% vs 23.9% ("score") and 24.7% ("probs"), every group
    # >= 96.2% of premium out of sample.
    rule: str = "best"
    # The router's L2 penalty (fit_router).
    l2: float = L2

    def describe(self) -> str:
        return (f"rule {self.rule}, lexical {'cross-fitted' if self.cross_fit_lexical else 'in-sample'}, "
                "cluster classifier "
                f"{'group-balanced' if self.balanced_clusters else 'unweighted'}, cluster floor on "
                f"{'every group cell' if self.cells else 'the pooled cluster'} (cells >= "
                f"{self.min_cell_share:.0%} of their group), bound factor {self.bound_factor:.3g}, "
                f"router L2 {self.l2:g}")


SHIPPED = Settings()


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
        base = load_scorers(learned=False, default=HYBRID_NAME)
        self.lexical = base.get(LEXICAL_SCORER)
        hybrid = base.get(HYBRID_NAME)
        assert isinstance(hybrid, HybridScorer)
        self.hybrid = hybrid
        # text -> (embedding, extra features): a rebuild in the same process (tests) featurizes once.
        self._cache: dict[str, tuple[F64, F64]] = {}
        # (rows digest, excluded folds) -> lexical scores of the excluded folds' rows.
        self._lexical_cache: dict[tuple[str, frozenset[int]], dict[str, float]] = {}

    def matrix(self, texts: Sequence[str]) -> tuple[F64, F64]:
        """Embeddings and extra features, `lexical` from the shipped lexical model (right for new prompts)."""
        emb = np.zeros((len(texts), self.embedder.dim), dtype=np.float64)
        extra = np.zeros((len(texts), len(EXTRA_FEATURES)), dtype=np.float64)
        for i, t in enumerate(texts):
            hit = self._cache.get(t)
            if hit is None:
                f = extract_features(t)
                hit = (self.embedder.tail_vector(t).astype(np.float64),
                       np.asarray(extra_features(t, f, self.lexical.score(t, f), self.hybrid.score(t, f)),
                                  dtype=np.float64))
                self._cache[t] = hit
            emb[i], extra[i] = hit
        return emb, extra

    def lexical_without(self, public: Sequence[Row], excluded: frozenset[int]) -> dict[str, float]:
        """{text: score} for the public rows of the `excluded` folds, by a lexical model (the shipped
        hyperparameters) fitted on the public rows of the other folds."""
        digest = hashlib.sha256(repr([(r.text, r.scores) for r in public]).encode()).hexdigest()
        key = (digest, excluded)
        hit = self._lexical_cache.get(key)
        if hit is None:
            fit_rows = [Example("", r.group, r.text, r.scores, r.costs) for r in public
                        if fold_of(r.text) not in excluded]
            scorer = LexicalRidgeScorer({"name": LEXICAL_SCORER, **fit(fit_rows, HPARAMS), "reference": _ref_stub()},
                                        reference=QuantileTable([0.0, 1.0], sample="", n=0))
            hit = {r.text: scorer.score(r.text, extract_features(r.text)) for r in public
                   if fold_of(r.text) in excluded}
            self._lexical_cache[key] = hit
        return hit

    def structure_without(self, conv: Sequence[Row], excluded: frozenset[int]) -> HybridScorer:
        """hybrid-v2 (shipped lambda and lexical scale) with its structure part refitted on the conversational
        rows outside the `excluded` folds."""
        turns = [LabelledTurn(r.text, 3 - int(round(sum(r.scores))), "") for r in conv
                 if fold_of(r.text) not in excluded]
        h = self.hybrid
        structure = fit_structure(turns, HYBRID_HPARAMS["l2"])
        return HybridScorer({"name": HYBRID_NAME, "lambda": h.lam, "structure": structure,
                             "lexical_scale": {"mean": h.lexical_mean, "std": h.lexical_std}, "reference": _ref_stub()},
                            h.lexical, reference=QuantileTable([0.0, 1.0], sample="", n=0))

    def cross_fitted(self, rows: Sequence[Row], extra: F64, outer: frozenset[int] = frozenset()) -> F64:
        """`extra` with the base scores as they would be on new turns: the lexical column of every public row from
        a lexical model fitted without the row's fold (nor the `outer` folds: nested validation); conversational
        turns are never in the lexical model's training rows, so theirs stay. The hybrid column: hybrid-v2's
        structure part refitted without the row's fold (conversational rows; they are its training rows) and
        the `outer` folds, plus lambda x the standardized cross-fitted lexical score."""
        public = [r for r in rows if r.group != "conversational"]
        conv = [r for r in rows if r.group == "conversational"]
        out = extra.copy()
        by_fold = {k: self.lexical_without(public, frozenset({k}) | outer) for k in range(FOLDS) if k not in outer}
        structure = {k: self.structure_without(conv, frozenset({k}) | outer) for k in range(FOLDS) if k not in outer}
        structure_all = self.structure_without(conv, outer)
        for i, r in enumerate(rows):
            if r.group != "conversational":
                out[i, LEXICAL_COLUMN] = by_fold[fold_of(r.text)][r.text]
            h = structure[fold_of(r.text)] if r.group == "conversational" else structure_all
            z = (out[i, LEXICAL_COLUMN] - h.lexical_mean) / h.lexical_std
            out[i, HYBRID_COLUMN] = h.structure_score(r.text) + h.lam * z
        return out


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


def fit_router(rows: Sequence[Row], emb: F64, extra: F64, l2: float = L2) -> Fitted:
    mean, std = standardize(extra)
    x = design(emb, extra, mean, std)
    y_l, y_s = targets(rows)
    w = group_weights([r.group for r in rows])
    wl, bl = fit_logistic(x, y_l, w, l2)
    ws, bs = fit_logistic(x, y_s, w, l2)
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
    # "score": one score s = 2 - p_lite - p_standard against t1 <= t2, cascade band (t1, t_cascade].
    # "probs": each tier on its own probability (s = 1 - p_lite, u = 1 - p_standard): lite if s <= t1, else
    # standard if u <= t2, else premium; cascade band = premium-routed turns with u <= t_cascade (t_cascade > t2).
    rule: str = "score"


def policy_tiers(policy: Policy, s: F64, u: F64 | None = None) -> tuple[I64, npt.NDArray[np.bool_]]:
    """(prompt-router tier, cascade band) per row; `u` (1 - p_standard) is needed by the "probs" rule."""
    if policy.rule == "probs":
        if u is None:
            raise ValueError("the probs rule needs 1 - p_standard")
        tier = np.where(s <= policy.t1, 0, np.where(u <= policy.t2, 1, 2))
        return tier, (tier == 2) & (u <= policy.t_cascade)
    tier = np.where(s <= policy.t1, 0, np.where(s <= policy.t2, 1, 2))
    return tier, (s > policy.t1) & (s <= policy.t_cascade)


def signals(rule: str, p_lite: F64, p_standard: F64) -> tuple[F64, F64 | None]:
    """(s, u) for policy_tiers from the router's probabilities, as a point of this rule reads them."""
    if rule == "probs":
        return 1.0 - p_lite, 1.0 - p_standard
    return 2.0 - p_lite - p_standard, None


def no_band(policy: Policy) -> Policy:
    """The policy without its cascade band (the prompt router alone)."""
    return replace(policy, t_cascade=policy.t2 if policy.rule == "probs" else policy.t1)


def route_outcomes(policy: Policy, s: F64, a: F64, q: F64, c: F64,
                   u: F64 | None = None) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
    """(quality, cost, cascaded mask) per row. `a` is the answer scorer's probability, NaN without answers."""
    tier, band = policy_tiers(policy, s, u)
    idx = np.arange(len(s))
    qual = q[idx, tier]
    cost = c[idx, tier]
    casc = band & ~np.isnan(a)
    keep = casc & (np.nan_to_num(a, nan=-1.0) >= policy.answer_keep)
    # Cascaded: lite and standard both answer (both paid); standard's answer kept, else premium answers.
    qual = np.where(casc, np.where(keep, q[:, 1], q[:, 2]), qual)
    cost = np.where(casc, c[:, 0] + c[:, 1] + np.where(keep, 0.0, c[:, 2]), cost)
    return qual, cost, casc


def fit_policy(groups: Sequence[str], s: F64, a: F64, q: F64, c: F64, floor: float,
               cells: Sequence[str] | None = None, bound_factor: float = BOUND_FACTOR,
               u: F64 | None = None) -> tuple[Policy, dict[str, Any]]:
    """The cheapest (t1, t2, t_cascade, answer_keep) on a grid: lowest mean cost ratio over `groups`, with every
    constraint cell's quality >= floor x its premium quality by a one-sided 95% bound (mean(d) - Z x factor x
    se(d) >= 0, d = quality - floor x premium). Cells: each group, and each label of `cells` with at least
    MIN_CELL_ROWS rows. With `u` (1 - p_standard; `s` is then 1 - p_lite) the "probs" rule (Policy.rule)."""
    rule = "score" if u is None else "probs"
    names = sorted(set(groups))
    g = np.array(groups)
    masks = {n: g == n for n in names}
    constraint_masks = [masks[n] for n in names]
    if cells is not None:
        cv = np.array(cells)
        # "" labels rows that are no cell of their own.
        constraint_masks += [cv == n for n in sorted(set(cells) - {""}) if int((cv == n).sum()) >= MIN_CELL_ROWS]
    member = np.array(constraint_masks, dtype=np.float64)  # (m, n)
    n_cell = member.sum(axis=1)
    prem_q = {n: float(q[masks[n], 2].mean()) for n in names}
    prem_c = {n: float(c[masks[n], 2].sum()) for n in names}
    # Mean cost ratio over groups = weight . cost, weight_i = 1 / (premium cost of i's group x #groups).
    cost_weight = np.zeros(len(s))
    for n in names:
        cost_weight[masks[n]] = 1.0 / (prem_c[n] * len(names))
    qp = q[:, 2][:, None]
    se_scale = CONFIDENCE_Z * bound_factor / np.sqrt(n_cell)

    def feasible(qual: F64) -> npt.NDArray[np.bool_]:
        d = qual - floor * qp
        s1 = member @ d
        s2 = member @ (d * d)
        mean = s1 / n_cell[:, None]
        var = np.maximum(s2 / n_cell[:, None] - mean * mean, 0.0)
        ok: npt.NDArray[np.bool_] = np.all(mean - se_scale[:, None] * np.sqrt(var) >= -1e-12, axis=0)
        return ok

    grid = sorted({r6(float(v)) for v in np.quantile(s, np.linspace(0, 1, GRID))})
    grid_u = grid if u is None else sorted({r6(float(v)) for v in np.quantile(u, np.linspace(0, 1, GRID))})
    a_grid = np.array([r6(v) for v in np.linspace(0.3, 0.96, 23)])
    idx = np.arange(len(s))
    has_a = ~np.isnan(a)
    keep_all = np.nan_to_num(a, nan=-1.0)[:, None] >= a_grid[None, :]  # (n, K)
    q_keep, q_esc = q[:, 1][:, None], q[:, 2][:, None]
    c_keep, c_esc = (c[:, 0] + c[:, 1])[:, None], (c[:, 0] + c[:, 1] + c[:, 2])[:, None]
    best: tuple[float, Policy] | None = None
    for i, t1 in enumerate(grid):
        for t2 in (grid[i:] if u is None else grid_u):
            # No cascade: t_cascade = t1 (score rule) or t2 (probs rule), an empty band either way.
            plain = Policy(t1, t2, t1 if u is None else t2, 1.0, rule)
            tier, _ = policy_tiers(plain, s, u)
            base_q, base_c = q[idx, tier], c[idx, tier]
            if bool(feasible(base_q[:, None])[0]):
                ratio0 = float(cost_weight @ base_c)
                if best is None or ratio0 < best[0] - 1e-12:
                    best = (ratio0, plain)
            if not has_a.any():
                continue
            for tc in [v for v in grid_u if v > plain.t_cascade]:
                _, band = policy_tiers(replace(plain, t_cascade=tc), s, u)
                casc = (band & has_a)[:, None]
                qual = np.where(casc, np.where(keep_all, q_keep, q_esc), base_q[:, None])  # (n, K)
                cost = np.where(casc, np.where(keep_all, c_keep, c_esc), base_c[:, None])
                ok = feasible(qual)
                ratio = cost_weight @ cost
                for k in np.flatnonzero(ok):
                    if best is None or ratio[k] < best[0] - 1e-12:
                        best = (float(ratio[k]), Policy(t1, t2, tc, float(a_grid[k]), rule))
    if best is None:
        # Nothing on the grid is safe: everything premium.
        low = grid[0] - 1.0
        low_u = grid_u[0] - 1.0
        return Policy(low, low if u is None else low_u, low if u is None else low_u, 1.0, rule), {
            "mean_cost_cut": 0.0, "note": "no safe point: everything premium"}
    best_ratio, pol = best
    qual, cost, casc = route_outcomes(pol, s, a, q, c, u)
    per = {n: {"quality_share": r6(float(qual[masks[n]].mean() / prem_q[n])),
               "cost_cut": r6(1 - float(cost[masks[n]].sum() / prem_c[n])),
               "cascaded": r6(float(casc[masks[n]].mean()))} for n in names}
    return pol, {"mean_cost_cut": r6(1 - best_ratio), "groups": per}


def _skip_empty(folds: I64) -> list[int]:
    return [k for k in range(FOLDS) if (folds == k).any() and (folds != k).any()]


def out_of_fold(rows: Sequence[Row], emb: F64, extra: F64, l2: float = L2) -> tuple[F64, F64]:
    folds = np.array([fold_of(r.text) for r in rows])
    p_l = np.zeros(len(rows))
    p_s = np.zeros(len(rows))
    for k in _skip_empty(folds):
        tr, va = folds != k, folds == k
        sub = [r for r, m in zip(rows, tr, strict=True) if m]
        model = fit_router(sub, emb[tr], extra[tr], l2)
        p_l[va], p_s[va] = model.probs(emb[va], extra[va])
    return p_l, p_s


@dataclass
class AnswerModel:
    mean: F64
    std: F64
    w: F64
    b: float
    rows: int

    def probs(self, x: F64) -> F64:
        return sigmoid((x - self.mean) / self.std @ self.w + self.b)


@dataclass
class ClusterPoint:
    name: str
    w: F64
    b: float
    training_rows: int
    rows_of_its_group: float
    cells: dict[str, int]
    floor: Policy
    floor_report: dict[str, Any]
    prompt_only: Policy
    prompt_report: dict[str, Any]
    pooled_fallback: bool


@dataclass
class Pipeline:
    """Everything one run of the procedure fits (the artifact is its serialization)."""

    model: Fitted
    answer: AnswerModel
    floor: Policy
    floor_report: dict[str, Any]
    prompt_only: Policy
    prompt_report: dict[str, Any]
    clusters: list[ClusterPoint] = field(default_factory=list)

    def route(self, rows: Sequence[Row], emb: F64, extra: F64, cascade: bool = True) -> tuple[F64, F64, I64, F64]:
        """(quality, cost, tier, cascaded) per row, as the router would route them (each row's cluster point;
        the cascade only where the row has both cheap answers)."""
        p_l, p_s = self.model.probs(emb, extra)
        x = design(emb, extra, self.model.mean, self.model.std)
        cl = np.argmax(np.stack([x @ c.w + c.b for c in self.clusters], axis=1), axis=1)
        has = np.array([bool(r.responses[0] and r.responses[1]) for r in rows])
        a = np.full(len(rows), np.nan)
        if cascade and has.any():
            sub = [r for r, h in zip(rows, has, strict=True) if h]
            a[has] = self.answer.probs(answer_matrix(sub, p_l[has], p_s[has]))
        q = np.array([r.scores for r in rows])
        c = np.array([r.costs for r in rows])
        qual, cost, tier, casc = np.zeros(len(rows)), np.zeros(len(rows)), np.zeros(len(rows), np.int64), np.zeros(
            len(rows))
        for k, point in enumerate(self.clusters):
            m = cl == k
            if not m.any():
                continue
            pol = point.floor if cascade else no_band(point.prompt_only)
            s, u = signals(pol.rule, p_l[m], p_s[m])
            qk, ck, cs = route_outcomes(pol, s, a[m], q[m], c[m], u)
            kp = cs & (np.nan_to_num(a[m], nan=-1.0) >= pol.answer_keep)
            tk, _ = policy_tiers(pol, s, u)
            qual[m], cost[m], casc[m] = qk, ck, cs
            tier[m] = np.where(cs, np.where(kp, 1, 2), tk)
        return qual, cost, tier, casc


@dataclass
class _Shared:
    """What the procedure fits before the operating points (the same for every bound factor)."""

    model: Fitted
    answer: AnswerModel
    p_lite: F64  # out of fold
    p_standard: F64  # out of fold
    a: F64
    q: F64
    c: F64
    groups: list[str]
    names: list[str]
    cls: list[tuple[F64, float]]
    assigned: I64


def _fit_shared(rows: Sequence[Row], emb: F64, extra: F64, settings: Settings) -> _Shared:
    model = fit_router(rows, emb, extra, settings.l2)
    oof_l, oof_s = out_of_fold(rows, emb, extra, settings.l2)

    # Answer scorer: RouterBench rows (they carry the cheap models' answers).
    has_answer = np.array([bool(r.responses[0]) for r in rows])
    ans_rows = [r for r, m in zip(rows, has_answer, strict=True) if m]
    a_x = answer_matrix(ans_rows, oof_l[has_answer], oof_s[has_answer])
    a_y = np.array([1.0 if r.scores[1] >= r.scores[2] else 0.0 for r in ans_rows])
    a_mean, a_std = standardize(a_x)
    a_w, a_b = fit_logistic((a_x - a_mean) / a_std, a_y, np.ones(len(ans_rows)), ANSWER_L2)
    answer = AnswerModel(a_mean, a_std, np.vectorize(r6)(a_w), r6(a_b), len(ans_rows))
    folds = np.array([fold_of(r.text) for r in ans_rows])
    a_oof = np.zeros(len(ans_rows))
    for k in _skip_empty(folds):
        tr, va = folds != k, folds == k
        mu, sd = standardize(a_x[tr])
        wk, bk = fit_logistic((a_x[tr] - mu) / sd, a_y[tr], np.ones(int(tr.sum())), ANSWER_L2)
        a_oof[va] = sigmoid((a_x[va] - mu) / sd @ wk + bk)
    a_all = np.full(len(rows), np.nan)
    a_all[has_answer] = a_oof

    groups = [r.group for r in rows]
    names = sorted(set(groups))
    gvec = np.array(groups)
    x_all = design(emb, extra, model.mean, model.std)
    cw = group_weights(groups) if settings.balanced_clusters else np.ones(len(rows))
    cls = [fit_logistic(x_all, (gvec == n).astype(np.float64), cw, GROUP_L2) for n in names]
    cls = [(np.vectorize(r6)(w), r6(b)) for w, b in cls]
    folds_all = np.array([fold_of(r.text) for r in rows])
    assigned = np.zeros(len(rows), dtype=np.int64)
    for k in _skip_empty(folds_all):
        tr, va = folds_all != k, folds_all == k
        fold_cls = [fit_logistic(x_all[tr], (gvec[tr] == n).astype(np.float64), cw[tr], GROUP_L2) for n in names]
        assigned[va] = np.argmax(np.stack([x_all[va] @ w + b for w, b in fold_cls], axis=1), axis=1)
    return _Shared(model, answer, oof_l, oof_s, a_all,
                   np.array([r.scores for r in rows]), np.array([r.costs for r in rows]), groups, names, cls,
                   assigned)


def _cascade_supported(a: F64) -> bool:
    """The cascade band can only be fitted where the rows carry the cheap models' answers; at run time every
    turn in the band is cascaded. So a point gets a cascade band only when most of its training rows (and at
    least MIN_CELL_ROWS) have answers; otherwise it is the prompt-only point (an llmrouter-like turn is never
    cascaded under a band fitted on a handful of RouterBench rows)."""
    n = int((~np.isnan(a)).sum())
    return n >= MIN_CELL_ROWS and 2 * n >= len(a)


def _fit_point(sh: _Shared, m: npt.NDArray[np.bool_], groups: Sequence[str], a: F64, floor: float,
               cells: Sequence[str] | None, bound_factor: float, rule: str) -> tuple[Policy, dict[str, Any]]:
    """fit_policy on the rows `m` under `rule`; "best": whichever of the two rules fits the cheaper point."""
    rules = ("score", "probs") if rule == "best" else (rule,)
    fits = []
    for r in rules:
        s, u = signals(r, sh.p_lite[m], sh.p_standard[m])
        fits.append(fit_policy(groups, s, a[m], sh.q[m], sh.c[m], floor, cells, bound_factor, u))
    # Ties keep the first (the score rule).
    return max(fits, key=lambda f: (float(f[1]["mean_cost_cut"]), -rules.index(f[0].rule)))


def _points(sh: _Shared, floor: float, settings: Settings, bound_factor: float) -> Pipeline:
    a_all, groups = sh.a, sh.groups
    no_answers = np.full(len(a_all), np.nan)
    every = np.ones(len(a_all), dtype=bool)
    # The prompt router alone (no cascade: where the cascade is off, or for comparison), same rule.
    prompt_only, prompt_report = _fit_point(sh, every, groups, no_answers, floor, None, bound_factor, settings.rule)
    policy, fit_report = ((prompt_only, prompt_report) if not _cascade_supported(a_all) else
                          _fit_point(sh, every, groups, a_all, floor, None, bound_factor, settings.rule))
    pipe = Pipeline(sh.model, sh.answer, policy, fit_report, prompt_only, prompt_report)
    gvec = np.array(groups)
    for k, n in enumerate(sh.names):
        m = sh.assigned == k
        size = int(m.sum())
        cells = {g: int((gvec[m] == g).sum()) for g in sh.names if (gvec[m] == g).any()}
        big = {g for g, n_g in cells.items() if n_g >= settings.min_cell_share * int((gvec == g).sum())}
        cell_labels = [g if g in big else "" for g in gvec[m]] if settings.cells else None
        one = ["cluster"] * size
        thin = size < MIN_CLUSTER_ROWS
        if thin:
            cp, crep, po, prep = policy, fit_report, prompt_only, prompt_report
        else:
            po, prep = _fit_point(sh, m, one, no_answers, floor, cell_labels, bound_factor, settings.rule)
            cp, crep = ((po, prep) if not _cascade_supported(a_all[m]) else
                        _fit_point(sh, m, one, a_all, floor, cell_labels, bound_factor, settings.rule))
        pipe.clusters.append(ClusterPoint(
            n, sh.cls[k][0], sh.cls[k][1], size, r6(float((gvec[m] == n).mean())) if size else 0.0, cells,
            cp, crep, po, prep, thin))
    return pipe


def fit_pipeline(rows: Sequence[Row], emb: F64, extra: F64, floor: float = FLOOR,
                 settings: Settings = SHIPPED) -> Pipeline:
    """The procedure on these rows (`extra`: the lexical column already as the settings want it)."""
    return _points(_fit_shared(rows, emb, extra, settings), floor, settings, settings.bound_factor)


def prepare(rows: Sequence[Row], feat: Featurizer, settings: Settings = SHIPPED,
            outer: frozenset[int] = frozenset()) -> tuple[F64, F64]:
    emb, extra = feat.matrix([r.text for r in rows])
    if settings.cross_fit_lexical:
        extra = feat.cross_fitted(rows, extra, outer)
    elif outer:
        # In-sample lexical for the fitting rows (the old, leaky way): a lexical model fitted on exactly them.
        public = [r for r in rows if r.group != "conversational"]
        rest = frozenset(range(FOLDS)) - outer
        # lexical_without(excluded) scores the excluded folds with a model fitted on the others; here the
        # model must be fitted on the rows themselves, so refit directly.
        fit_rows = [Example("", r.group, r.text, r.scores, r.costs) for r in public if fold_of(r.text) in rest]
        scorer = LexicalRidgeScorer({"name": LEXICAL_SCORER, **fit(fit_rows, HPARAMS), "reference": _ref_stub()},
                                    reference=QuantileTable([0.0, 1.0], sample="", n=0))
        extra = extra.copy()
        for i, r in enumerate(rows):
            if r.group != "conversational":
                extra[i, LEXICAL_COLUMN] = scorer.score(r.text, extract_features(r.text))
    return emb, extra


def policy_from_json(d: dict[str, Any], *, cascade: bool = True) -> Policy:
    """A shipped point as a Policy, read as the router reads it (FloorPoint.parse: without the cascade its band
    is emptied and its keep threshold 1)."""
    fp = FloorPoint.parse(d, cascade=cascade)
    return Policy(fp.t1, fp.t2, fp.t_cascade, fp.answer_keep, fp.rule)


def _rule_json(p: Policy) -> dict[str, str]:
    """The point's rule as the artifact states it (absent: "score", so revision-2 points read unchanged)."""
    return {} if p.rule == "score" else {"rule_kind": p.rule}


def _policy_json(p: Policy) -> dict[str, Any]:
    return {"t1": p.t1, "t2": p.t2, "t_cascade": p.t_cascade, "answer_keep": p.answer_keep, **_rule_json(p)}


def build_payload(datasets: Sequence[Dataset], root: Path, featurizer: Featurizer | None = None,
                  floor: float = FLOOR, turns: Sequence[LabelledTurn] | None = None) -> dict[str, Any]:
    # One BLAS thread: a multi-threaded reduction can sum in another order and change the last bits.
    limit_blas_threads(1)
    rows = training_rows(datasets, turns)
    feat = featurizer or Featurizer()
    emb, extra = prepare(rows, feat)
    pipe = fit_pipeline(rows, emb, extra, floor)
    model = pipe.model

    clusters = [{
        "name": cl.name,
        "classifier": {"weights": [float(v) for v in cl.w], "bias": cl.b},
        "training_rows": cl.training_rows,
        "rows_of_its_group": cl.rows_of_its_group,
        "rows_by_group": cl.cells,
        "pooled_fallback": cl.pooled_fallback,
        "floor": {**_policy_json(cl.floor), "training_out_of_fold": cl.floor_report},
        "floor_prompt_only": {"t1": cl.prompt_only.t1, "t2": cl.prompt_only.t2,
                              **_rule_json(cl.prompt_only),
                              "training_out_of_fold": cl.prompt_report},
    } for cl in pipe.clusters]

    conv = [i for i, r in enumerate(rows) if r.group == "conversational"]
    # The mix table is for new turns: the shipped lexical model's scores (no cross-fitting needed for
    # conversational turns, which the lexical model never trained on).
    p_l, p_s = model.probs(emb[conv], extra[conv])
    reference = QuantileTable.from_scores((float(v) for v in 2.0 - p_l - p_s), sample="conversational calibration")

    groups = sorted({r.group for r in rows})
    bound = (f"mean(d) - {CONFIDENCE_Z} x {BOUND_FACTOR:.6g} x sd(d)/sqrt(n) >= 0, d = quality - quality_floor x "
             "premium (a one-sided 95% prediction bound for a fresh sample as large as the cell)")
    return {
        "format": LEARNED_FORMAT,
        "name": LEARNED_SCORER,
        "revision": REVISION,
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
            "l2": SHIPPED.l2,
            "target": "1 - max(0, s_premium - s_tier); conversational: s_tier = 1[tier >= label]",
            "weighting": "each group the same total weight: " + ", ".join(groups),
            "base_features": f"{LEXICAL_SCORER} and {HYBRID_NAME} scores, cross-fitted on training rows ({FOLDS} "
                             "folds by prompt hash), the shipped models at run time",
        },
        "answer_scorer": {
            "names": list(ANSWER_FEATURES),
            "mean": [float(v) for v in pipe.answer.mean],
            "std": [float(v) for v in pipe.answer.std],
            "weights": [float(v) for v in pipe.answer.w],
            "bias": pipe.answer.b,
            "l2": ANSWER_L2,
            "label": "1[s_standard >= s_premium] on RouterBench training rows (answers of mistral-7b-chat and "
                     "mixtral-8x7b-chat)",
            "rows": pipe.answer.rows,
        },
        "operating_points": {
            "floor": {
                "quality_floor": floor,
                "bound": bound,
                **_policy_json(pipe.floor),
                "rule": "lite if score <= t1; standard if <= t2; else premium. Score in (t1, t_cascade]: lite "
                        "and standard answer first, standard's answer kept when the answer scorer's probability "
                        ">= answer_keep, else premium answers. Fitted: lowest mean cost ratio over training "
                        "groups with every group's out-of-fold quality >= quality_floor x premium by `bound`.",
                "training_out_of_fold": pipe.floor_report,
            },
            "floor_prompt_only": {
                "quality_floor": floor,
                "bound": bound,
                "t1": pipe.prompt_only.t1, "t2": pipe.prompt_only.t2,
                **_rule_json(pipe.prompt_only),
                "rule": "as `floor` without the cascade (lite if score <= t1; standard if <= t2; else premium)",
                "training_out_of_fold": pipe.prompt_report,
            },
            "clusters": clusters,
            "clusters_rule": "thresholds of the cluster whose one-vs-rest group classifier (on the router's "
                             "features, group-balanced weights) scores highest; fitted on the cluster's "
                             f"out-of-fold rows with the floor held by every training group with >= {MIN_CELL_ROWS} "
                             f"rows and >= {MIN_CELL_SHARE:.0%} of the group in it; a cluster with < "
                             f"{MIN_CLUSTER_ROWS} training rows ships the pooled `floor` / `floor_prompt_only` points "
                             "above; a cascade band only where most of the cluster's training rows carry answers",
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


def validate(datasets: Sequence[Dataset], settings: Sequence[Settings], feat: Featurizer | None = None,
             floor: float = FLOOR) -> dict[Settings, dict[str, dict[str, float]]]:
    """Nested CV on TRAINING rows only: for each outer fold k, the whole procedure is fitted on the other folds
    (its own inner cross-fitting and out-of-fold predictions) and routes fold k at the point it would ship.
    Prints, per setting and group, the pseudo-held-out quality share and cost cut (all folds pooled) and the
    worst fold's quality share, for the default (cascade where answers exist) and the prompt router alone."""
    limit_blas_threads(1)
    rows = training_rows(datasets)
    feat = feat or Featurizer()
    folds = np.array([fold_of(r.text) for r in rows])
    groups = np.array([r.group for r in rows])
    q = np.array([r.scores for r in rows])
    c = np.array([r.costs for r in rows])
    out: dict[Settings, dict[str, dict[str, float]]] = {}
    # Settings that differ only in the bound factor share everything fitted before the operating points.
    families: dict[Settings, list[Settings]] = {}
    for st in settings:
        families.setdefault(replace(st, bound_factor=0.0, rule="score"), []).append(st)
    for family, members in families.items():
        res = {(st, mode): (np.zeros(len(rows)), np.zeros(len(rows))) for st in members
               for mode in ("default", "prompt")}
        for k in range(FOLDS):
            inner_m, test_m = folds != k, folds == k
            inner = [r for r, m in zip(rows, inner_m, strict=True) if m]
            test = [r for r, m in zip(rows, test_m, strict=True) if m]
            emb_i, extra_i = prepare(inner, feat, family, outer=frozenset({k}))
            shared = _fit_shared(inner, emb_i, extra_i, family)
            pipes = {st: _points(shared, floor, st, st.bound_factor) for st in members}
            emb_t, extra_t = feat.matrix([r.text for r in test])
            # The pseudo-held-out rows' lexical score: a lexical model fitted on the inner rows only (as the
            # shipped one is fitted on the training rows only).
            lex = feat.lexical_without([r for r in rows if r.group != "conversational"], frozenset({k}))
            hyb = feat.structure_without([r for r in rows if r.group == "conversational"], frozenset({k}))
            extra_t = extra_t.copy()
            for i, r in enumerate(test):
                if r.group != "conversational":
                    extra_t[i, LEXICAL_COLUMN] = lex[r.text]
                if family.cross_fit_lexical:
                    z = (extra_t[i, LEXICAL_COLUMN] - hyb.lexical_mean) / hyb.lexical_std
                    extra_t[i, HYBRID_COLUMN] = hyb.structure_score(r.text) + hyb.lam * z
            for (st, mode), (qual_all, cost_all) in res.items():
                qual, cost, _, _ = pipes[st].route(test, emb_t, extra_t, cascade=mode == "default")
                qual_all[test_m], cost_all[test_m] = qual, cost
            print(f"  [{family.describe()}] outer fold {k} done", file=sys.stderr, flush=True)
        for st in members:
            out[st] = _report(st, {mode: res[(st, mode)] for mode in ("default", "prompt")}, groups, folds, q, c)
    return out


def _report(st: Settings, res: dict[str, tuple[F64, F64]], groups: npt.NDArray[np.str_], folds: I64, q: F64,
        c: F64) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    print(f"\nsettings: {st.describe()}", flush=True)
    for mode, (qual, cost) in res.items():
        cuts = []
        for g in sorted(set(groups)):
            m = groups == g
            share = float(qual[m].mean() / q[m, 2].mean())
            cut = 1 - float(cost[m].sum() / c[m, 2].sum())
            worst = min(float(qual[m & (folds == k)].mean() / q[m & (folds == k), 2].mean()) for k in range(FOLDS))
            summary[f"{mode}:{g}"] = {"quality_share": share, "cost_cut": cut, "worst_fold_quality": worst}
            cuts.append(cut)
            print(f"  {mode:<8} {g:<15} quality {share:6.1%} (worst fold {worst:6.1%})  cost cut {cut:6.1%}")
        print(f"  {mode:<8} mean cost cut {np.mean(cuts):6.1%}, min quality "
              f"{min(v['quality_share'] for kk, v in summary.items() if kk.startswith(mode)):6.1%}", flush=True)
    return summary


# What --validate compared (bench/routing/README.md has the figures): revision 1's choices; revision 2's (rule "score");
# other bound factors; the unweighted cluster classifier; every cell held to the floor whatever its share.
VALIDATION_SETTINGS = (
    Settings(cross_fit_lexical=False, balanced_clusters=False, cells=False, bound_factor=1.0, min_cell_share=0.0,
             rule="score", l2=3.0),
    Settings(bound_factor=1.0, min_cell_share=0.0, rule="score", l2=3.0),
    Settings(min_cell_share=0.0, rule="score", l2=3.0),
    Settings(bound_factor=0.0, min_cell_share=0.0, rule="score", l2=3.0),
    Settings(bound_factor=2.0, min_cell_share=0.0, rule="score", l2=3.0),
    Settings(balanced_clusters=False, min_cell_share=0.0, rule="score", l2=3.0),
    Settings(balanced_clusters=False, bound_factor=1.0, min_cell_share=0.0, rule="score", l2=3.0),
    SHIPPED,
    replace(SHIPPED, rule="score", l2=3.0),
    replace(SHIPPED, rule="probs", l2=3.0),
    replace(SHIPPED, bound_factor=1.0, l2=3.0),
    replace(SHIPPED, bound_factor=0.0, l2=3.0),
    replace(SHIPPED, l2=1.0),
    replace(SHIPPED, l2=10.0),
    replace(SHIPPED, l2=30.0),
    replace(SHIPPED, l2=0.3),
    replace(SHIPPED, l2=0.1),
    replace(SHIPPED, l2=0.03),
    replace(SHIPPED, l2=0.1, bound_factor=1.0),
)


def artifact_path() -> Path:
    return router_data_dir() / LEARNED_ARTIFACT_FILE


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="rebuild in memory and compare with the committed file")
    ap.add_argument("--validate", action="store_true", help="nested CV of the procedure on training rows")
    ap.add_argument("--settings", type=int, nargs="*", help="--validate: indexes into VALIDATION_SETTINGS")
    ap.add_argument("--out", type=Path, default=artifact_path())
    args = ap.parse_args(argv)
    if not args.validate:  # a build or a check: on the BLAS kernel the committed artifact was built with
        reexec_pinned("frugal.devkit.routing.train_learned", sys.argv[1:] if argv is None else list(argv))
    root = data_root()
    try:
        datasets = load_all(root)
    except DataMissing as err:
        print(f"{err}\nskipping: the public routing data is needed to (re)build {LEARNED_ARTIFACT_FILE}",
              file=sys.stderr)
        return 3
    if args.validate:
        chosen = [VALIDATION_SETTINGS[i] for i in args.settings] if args.settings else list(VALIDATION_SETTINGS)
        validate(datasets, chosen)
        return 0
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
