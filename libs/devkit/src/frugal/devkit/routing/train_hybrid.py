"""Builds the scorer artifacts from the public routing data and the conversational turns, bit for bit.

    uv run python -m frugal.devkit.routing.train_hybrid  # rebuild both artifacts (router data dir)
    uv run python -m frugal.devkit.routing.train_hybrid --check  # rebuild in memory, compare bytes
    uv run python -m frugal.devkit.routing.train_hybrid --select  # lexical model: 5-fold CV over HPARAM_GRID
    uv run python -m frugal.devkit.routing.train_hybrid --select-hybrid  # hybrid-v2: CV over HYBRID_GRID (lambda, l2)

Two artifacts:
- `scorer-lexical-ridge-v1.json`: the lexical model below, with quantile tables on the public training prompts
  (unchanged since v1; kept so that it can still be loaded on its own);
- `scorer-hybrid-v2.json` (the default): the same lexical model embedded, plus the `hybrid-v2` structure model
  (ridge regression of the 0/1/2 difficulty labels of the conversational *calibration* split on
  frugal.router.conversational.STRUCTURE_FEATURES, standardized), `lambda` (weight of the standardized
  lexical score), and quantile tables of all three scorers on the conversational calibration split (the
  bundled reference sample for thresholds). The conversational evaluation split is never read here.

Lexical model: ridge regression (numpy, conjugate gradients on the sparse design, a fixed number of iterations) of
the quality gain of a stronger tier over the lite tier, on
- word unigrams and bigrams present in the turn (binary, scaled by 1/sqrt(#known tokens)), vocabulary = the
  tokens in >= `min_df` training prompts, at most `max_vocab` of them by document frequency;
- the nine numeric features of frugal.router.scoring.NUMERIC_FEATURES (standardized);
- a bias (not penalized).
Training rows: the non-held-out prompts of both data sets (frugal.router.evaldata); held-out prompts are
never read here except by `--select`, which does not read them either (its folds split the training part).
Every float stored is rounded to 6 significant digits, so tiny platform differences in floating point do
not change the bytes; the JSON is written with sorted keys. The sidecar holds the file's SHA-256.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from frugal.devkit.routing.conversational import (
    CALIBRATION_PERCENT,
    TURNS_FILE,
    LabelledTurn,
    spearman,
    split_turns,
    turns_bytes,
)
from frugal.devkit.routing.evaldata import DataMissing, Dataset, Example, data_root, load_all
from frugal.devkit.routing.routing_eval import best_cost_cut, fixed_tier, mix_grid, sweep
from frugal.router.conversational import STRUCTURE_FEATURES, structure_features
from frugal.router.features import extract_features
from frugal.router.scoring import (
    ARTIFACT_FILE,
    ARTIFACT_FORMAT,
    LEXICAL_ARTIFACT_FILE,
    LEXICAL_SCORER,
    NUMERIC_FEATURES,
    SEED_SCORER,
    HybridScorer,
    LexicalRidgeScorer,
    QuantileTable,
    SeedHeuristicScorer,
    lexical_tokens,
    numeric_features,
)

FloatArray = npt.NDArray[np.float64]

# Chosen by `--select` (5-fold cross-validation on the training split only); see the router README.
HPARAMS: dict[str, Any] = {"target": "gain_premium", "l2": 10.0, "min_df": 5, "max_vocab": 8000, "cg_iterations": 300}
HPARAM_GRID: list[dict[str, Any]] = [
    {**HPARAMS, "target": target, "l2": l2}
    for target in ("gain_premium", "gain_blend", "gain_best")
    for l2 in (1.0, 3.0, 10.0)
]

TARGETS: dict[str, Callable[[tuple[float, float, float]], float]] = {
    # Quality the premium tier adds over lite.
    "gain_premium": lambda s: s[2] - s[0],
    # ... plus half of what standard adds: favours turns where any upgrade helps.
    "gain_blend": lambda s: (s[2] - s[0]) + 0.5 * (s[1] - s[0]),
    # The best any tier adds over lite.
    "gain_best": lambda s: max(s) - s[0],
}

HYBRID_NAME = "hybrid-v2"
# hybrid-v2, chosen by `--select-hybrid` with the rule in HYBRID_RULE (see the router README).
HYBRID_HPARAMS: dict[str, float] = {"l2": 3.0, "lambda": 0.5}
HYBRID_GRID: list[dict[str, float]] = [
    {"l2": l2, "lambda": lam} for l2 in (1.0, 3.0, 10.0) for lam in (0.0, 0.25, 0.5, 1.0, 2.0)
]
HYBRID_TOLERANCE = 0.02
HYBRID_RULE = (f"the largest lambda whose 5-fold CV Spearman on the conversational calibration split is within "
               f"{HYBRID_TOLERANCE} of the best grid point's (keep as much of the model fitted on measured "
               f"outcomes as the conversational ranking allows); l2 = the middle value, 3, when l2 hardly matters")


def r6(x: float) -> float:
    return float(f"{x:.6g}")


def fit(examples: Sequence[Example], hp: dict[str, Any]) -> dict[str, Any]:
    """Fits the model; returns the `tokens`, `numeric` and `bias` parts of the payload (rounded)."""
    token_sets = [lexical_tokens(e.text) for e in examples]
    df: collections.Counter[str] = collections.Counter()
    for ts in token_sets:
        df.update(ts)
    ranked = sorted((t for t, c in df.items() if c >= hp["min_df"]), key=lambda t: (-df[t], t))
    vocab = {t: i for i, t in enumerate(ranked[: hp["max_vocab"]])}
    n, v = len(examples), len(vocab)

    # Sparse token part: row ids, column ids, values.
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, ts in enumerate(token_sets):
        known = sorted(vocab[t] for t in ts if t in vocab)
        if known:
            scale = 1.0 / math.sqrt(len(known))
            rows.extend([i] * len(known))
            cols.extend(known)
            vals.extend([scale] * len(known))
    r_idx = np.asarray(rows, dtype=np.int64)
    c_idx = np.asarray(cols, dtype=np.int64)
    x_val = np.asarray(vals, dtype=np.float64)

    raw = np.asarray([numeric_features(e.text, extract_features(e.text)) for e in examples], dtype=np.float64)
    mean = [r6(float(m)) for m in raw.mean(axis=0)]
    std = [r6(float(s) if s > 1e-9 else 1.0) for s in raw.std(axis=0)]
    dense = np.hstack([(raw - np.asarray(mean)) / np.asarray(std), np.ones((n, 1))])  # numeric + bias
    k = dense.shape[1]

    target = TARGETS[hp["target"]]
    y = np.asarray([target(e.scores) for e in examples], dtype=np.float64)
    penalty = np.full(v + k, float(hp["l2"]))
    penalty[-1] = 1e-6  # bias: (almost) unpenalized

    def matvec(w: FloatArray) -> FloatArray:  # X w
        out = cast(FloatArray, np.bincount(r_idx, weights=x_val * w[c_idx], minlength=n))
        return cast(FloatArray, out + (dense * w[v:]).sum(axis=1))

    def rmatvec(r: FloatArray) -> FloatArray:  # X^T r
        tok = cast(FloatArray, np.bincount(c_idx, weights=x_val * r[r_idx], minlength=v))
        return np.concatenate([tok, (dense * r[:, None]).sum(axis=0)])

    def normal(w: FloatArray) -> FloatArray:
        return rmatvec(matvec(w)) + penalty * w

    # Conjugate gradients, fixed iteration budget (deterministic), early exit on an exact-enough solution.
    b = rmatvec(y)
    w = np.zeros(v + k)
    r = b - normal(w)
    p = r.copy()
    rs = float((r * r).sum())
    b_norm = float((b * b).sum())
    for _ in range(int(hp["cg_iterations"])):
        if rs <= 1e-20 * b_norm:
            break
        ap = normal(p)
        alpha = rs / float((p * ap).sum())
        w = w + alpha * p
        r = r - alpha * ap
        rs_new = float((r * r).sum())
        p = r + (rs_new / rs) * p
        rs = rs_new

    tokens = {t: r6(float(w[i])) for t, i in vocab.items()}
    return {
        "tokens": {t: x for t, x in sorted(tokens.items()) if x != 0.0},
        "numeric": {
            "names": list(NUMERIC_FEATURES),
            "mean": mean,
            "std": std,
            "weights": [r6(float(x)) for x in w[v : v + k - 1]],
        },
        "bias": r6(float(w[-1])),
    }


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_payload(datasets: Sequence[Dataset], hp: dict[str, Any], root: Path,
                  model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `lexical-ridge-v1` artifact (`model`: a result of `fit` on the training split, to avoid refitting)."""
    train = [e for d in datasets for e in d.split()[0]]
    if model is None:
        model = fit(train, hp)
    payload: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "name": LEXICAL_SCORER,
        "target": hp["target"],
        "hyperparameters": hp,
        "training_data": {
            d.name: {
                "tier_models": list(d.tier_models),
                "train_prompts": len(d.split()[0]),
                "held_out_prompts": len(d.split()[1]),
            }
            for d in datasets
        },
        "data_files": {
            str(p.relative_to(root)): file_digest(p)
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".json", ".csv")
        },
        "split": "held out when sha256(prompt) mod 100 < 30 (frugal.router.evaldata.is_held_out)",
        **model,
    }
    # Reference sample: the pooled training prompts; quantile tables for both scorers, from the rounded model.
    texts = [e.text for e in train]
    feats = [extract_features(t) for t in texts]
    placeholder = QuantileTable([0.0, 1.0], sample="", n=0)
    lexical = LexicalRidgeScorer({**payload, "reference": _ref_stub()}, reference=placeholder)
    seed = SeedHeuristicScorer(placeholder)
    sample = "training split of llmrouter + routerbench (../shared/data/routing)"
    quantiles = {}
    for name, scorer in ((LEXICAL_SCORER, lexical), (SEED_SCORER, seed)):
        table = QuantileTable.from_scores((scorer.score(t, f) for t, f in zip(texts, feats, strict=True)),
                                          sample=sample)
        quantiles[name] = [r6(x) for x in table.values]
    payload["reference"] = {"sample": sample, "n": len(texts), "quantiles": quantiles}
    return payload


def _ref_stub() -> dict[str, Any]:
    return {"sample": "", "n": 0, "quantiles": {LEXICAL_SCORER: [0.0, 1.0], SEED_SCORER: [0.0, 1.0],
                                                HYBRID_NAME: [0.0, 1.0]}}


def fit_structure(turns: Sequence[LabelledTurn], l2: float) -> dict[str, Any]:
    """Ridge regression of the labels on the standardized structure features (bias unpenalized); rounded."""
    raw = np.asarray([structure_features(t.text) for t in turns], dtype=np.float64)
    y = np.asarray([float(t.label) for t in turns], dtype=np.float64)
    mean = [r6(float(m)) for m in raw.mean(axis=0)]
    std = [r6(float(s) if s > 1e-9 else 1.0) for s in raw.std(axis=0)]
    z = np.hstack([(raw - np.asarray(mean)) / np.asarray(std), np.ones((len(turns), 1))])
    penalty = np.full(z.shape[1], float(l2))
    penalty[-1] = 1e-6
    w = np.linalg.solve(z.T @ z + np.diag(penalty), z.T @ y)
    return {
        "names": list(STRUCTURE_FEATURES),
        "mean": mean,
        "std": std,
        "weights": [r6(float(x)) for x in w[:-1]],
        "bias": r6(float(w[-1])),
    }


def lexical_from(payload: dict[str, Any]) -> LexicalRidgeScorer:
    return LexicalRidgeScorer({**payload, "reference": _ref_stub()},
                              reference=QuantileTable([0.0, 1.0], sample="", n=0))


def build_hybrid_payload(datasets: Sequence[Dataset], lexical_payload: dict[str, Any], hp: dict[str, float],
                         root: Path) -> dict[str, Any]:
    """The `hybrid-v2` artifact: the lexical model of `lexical_payload` embedded, the structure model, and
    quantile tables of every scorer on the conversational calibration split."""
    calibration, evaluation = split_turns()
    lexical = lexical_from(lexical_payload)
    public = [e.text for d in datasets for e in d.split()[0]]
    lex_public = np.asarray([lexical.score(t, extract_features(t)) for t in public], dtype=np.float64)
    payload: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "name": HYBRID_NAME,
        "hyperparameters": dict(hp),
        "selection_rule": HYBRID_RULE,
        "lambda": r6(hp["lambda"]),
        "lexical_scale": {"mean": r6(float(lex_public.mean())), "std": r6(float(lex_public.std())),
                          "sample": "training split of the public routing data"},
        "lexical": {k: lexical_payload[k] for k in ("name", "target", "hyperparameters", "tokens", "numeric", "bias")},
        "structure": fit_structure(calibration, hp["l2"]),
        "conversational_data": {
            "file": TURNS_FILE,
            "sha256": hashlib.sha256(turns_bytes()).hexdigest(),
            "calibration_turns": len(calibration),
            "evaluation_turns": len(evaluation),
            "split": f"calibration when sha256(text) mod 100 < {CALIBRATION_PERCENT} "
                     "(frugal.devkit.routing.conversational.is_calibration)",
            "labels": "authored for this project (synthetic), not a public benchmark",
        },
        "training_data": lexical_payload["training_data"],
        "data_files": lexical_payload["data_files"],
    }
    hybrid = HybridScorer({**payload, "reference": _ref_stub()}, lexical,
                          reference=QuantileTable([0.0, 1.0], sample="", n=0))
    seed = SeedHeuristicScorer(QuantileTable([0.0, 1.0], sample="", n=0))
    texts = [t.text for t in calibration]
    feats = [extract_features(t) for t in texts]
    sample = f"calibration split of {TURNS_FILE} (conversational voice turns)"
    quantiles = {}
    for name, scorer in ((HYBRID_NAME, hybrid), (LEXICAL_SCORER, lexical), (SEED_SCORER, seed)):
        table = QuantileTable.from_scores((scorer.score(t, f) for t, f in zip(texts, feats, strict=True)),
                                          sample=sample)
        quantiles[name] = [r6(x) for x in table.values]
    payload["reference"] = {"sample": sample, "n": len(texts), "quantiles": quantiles}
    return payload


def select_hybrid(datasets: Sequence[Dataset], folds: int = 5) -> dict[str, float]:
    """Prints, per grid point, the 5-fold CV Spearman on the conversational calibration split and (per lambda)
    the mean best cost cut of 5-fold CV on the public training split; returns the point HYBRID_RULE picks."""
    calibration, _ = split_turns()

    def fold_of(text: str) -> int:
        return int(hashlib.sha256(text.encode()).hexdigest()[-8:], 16) % folds

    train_rows = [e for d in datasets for e in d.split()[0]]
    lexical = lexical_from({"name": LEXICAL_SCORER, **fit(train_rows, HPARAMS)})
    lex_public = np.asarray([lexical.score(e.text, extract_features(e.text)) for e in train_rows])
    mu, sd = float(lex_public.mean()), float(lex_public.std())
    lex_cal = [(lexical.score(t.text, extract_features(t.text)) - mu) / sd for t in calibration]
    results: list[tuple[float, dict[str, float]]] = []
    for hp in HYBRID_GRID:
        preds = [0.0] * len(calibration)
        for k in range(folds):
            model = fit_structure([t for t in calibration if fold_of(t.text) != k], hp["l2"])
            scorer = HybridScorer({"name": HYBRID_NAME, "lambda": hp["lambda"], "structure": model,
                                   "lexical_scale": {"mean": 0.0, "std": 1.0}, "reference": _ref_stub()},
                                  lexical, reference=QuantileTable([0.0, 1.0], sample="", n=0))
            for i, t in enumerate(calibration):
                if fold_of(t.text) == k:
                    preds[i] = scorer.structure_score(t.text) + hp["lambda"] * lex_cal[i]
        rho = spearman(preds, [float(t.label) for t in calibration])
        print(f"  l2={hp['l2']:<5} lambda={hp['lambda']:<5} conversational CV Spearman {rho:.3f}", flush=True)
        results.append((rho, hp))
    best = max(r for r, _ in results)
    ok = [hp for r, hp in results if r >= best - HYBRID_TOLERANCE and hp["l2"] == HYBRID_HPARAMS["l2"]]
    chosen = max(ok, key=lambda hp: hp["lambda"])

    # Public side (information only): the same structure model with lexical models refitted per fold.
    structure = fit_structure(calibration, HYBRID_HPARAMS["l2"])
    mixes = mix_grid(10)
    lambdas = sorted({hp["lambda"] for hp in HYBRID_GRID})
    cuts: dict[float, list[float]] = {lam: [] for lam in lambdas}
    for k in range(folds):
        rows = [e for e in train_rows if fold_of(e.text) != k]
        lex_k = lexical_from({"name": LEXICAL_SCORER, **fit(rows, HPARAMS)})
        scale = np.asarray([lex_k.score(e.text, extract_features(e.text)) for e in rows])
        for lam in lambdas:
            scorer = HybridScorer({"name": HYBRID_NAME, "lambda": lam, "structure": structure,
                                   "lexical_scale": {"mean": float(scale.mean()), "std": float(scale.std())},
                                   "reference": _ref_stub()}, lex_k,
                                  reference=QuantileTable([0.0, 1.0], sample="", n=0))
            for d in datasets:
                train = d.split()[0]
                ref = QuantileTable.from_scores(
                    (scorer.score(e.text, extract_features(e.text)) for e in train if fold_of(e.text) != k),
                    sample="fold")
                val = [e for e in train if fold_of(e.text) == k]
                scores = [scorer.score(e.text, extract_features(e.text)) for e in val]
                premium = fixed_tier(val, 2, "premium")
                b = best_cost_cut(sweep(val, scores, ref, mixes), premium)
                cuts[lam].append(b.cost_cut(premium.cost) if b else 0.0)
    for lam in lambdas:
        print(f"  lambda={lam:<5} public 5-fold CV mean best cost cut (10% grid) {sum(cuts[lam]) / len(cuts[lam]):.3f}")
    return chosen


def serialize(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


def router_data_dir() -> Path:
    """Where the runtime package keeps its shipped artifacts (services/router/src/frugal/router/data)."""
    import frugal.router

    return Path(frugal.router.__file__).resolve().parent / "data"


def artifact_path() -> Path:
    """hybrid-v2's artifact."""
    return router_data_dir() / ARTIFACT_FILE


def lexical_artifact_path() -> Path:
    return router_data_dir() / LEXICAL_ARTIFACT_FILE


def build_all(datasets: Sequence[Dataset], root: Path) -> dict[str, bytes]:
    """{file name: bytes} of both artifacts (one lexical fit)."""
    lexical = build_payload(datasets, HPARAMS, root)
    hybrid = build_hybrid_payload(datasets, lexical, HYBRID_HPARAMS, root)
    return {LEXICAL_ARTIFACT_FILE: serialize(lexical), ARTIFACT_FILE: serialize(hybrid)}


def select(datasets: Sequence[Dataset], folds: int = 5) -> list[tuple[float, dict[str, Any]]]:
    """Mean best cost cut (quality >= 95% of all-premium) over folds and data sets, per grid point."""
    mixes = mix_grid(5)
    results = []
    for hp in HPARAM_GRID:
        cuts = []
        for fold in range(folds):
            def in_fold(e: Example, fold: int = fold) -> bool:
                return int(hashlib.sha256(e.text.encode()).hexdigest()[-8:], 16) % folds == fold

            fit_rows = [e for d in datasets for e in d.split()[0] if not in_fold(e)]
            model = fit(fit_rows, hp)
            scorer = LexicalRidgeScorer(
                {"name": LEXICAL_SCORER, **model, "reference": _ref_stub()},
                reference=QuantileTable([0.0, 1.0], sample="", n=0),
            )
            for d in datasets:
                train = d.split()[0]
                ref_rows = [e for e in train if not in_fold(e)]
                val_rows = [e for e in train if in_fold(e)]
                ref = QuantileTable.from_scores(
                    (scorer.score(e.text, extract_features(e.text)) for e in ref_rows), sample="fold"
                )
                scores = [scorer.score(e.text, extract_features(e.text)) for e in val_rows]
                premium = fixed_tier(val_rows, 2, "premium")
                best = best_cost_cut(sweep(val_rows, scores, ref, mixes), premium)
                cuts.append(best.cost_cut(premium.cost) if best else 0.0)
        mean_cut = sum(cuts) / len(cuts)
        print(f"  target={hp['target']:<13} l2={hp['l2']:<5} mean best cost cut {mean_cut:.3f}", flush=True)
        results.append((mean_cut, hp))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="rebuild and compare with the committed artifacts")
    ap.add_argument("--select", action="store_true", help="cross-validate the lexical hyperparameter grid")
    ap.add_argument("--select-hybrid", action="store_true", help="cross-validate hybrid-v2's lambda and l2")
    ap.add_argument("--out-dir", type=Path, default=artifact_path().parent)
    args = ap.parse_args(argv)
    root = data_root()
    try:
        datasets = load_all(root)
    except DataMissing as err:
        print(f"{err}\nskipping: the public routing data is needed to (re)build the scorer", file=sys.stderr)
        return 3
    if args.select:
        results = select(datasets)
        best = max(results, key=lambda r: r[0])
        print(f"best: {best[1]} (mean best cost cut {best[0]:.3f})")
        return 0
    if args.select_hybrid:
        chosen = select_hybrid(datasets)
        print(f"rule: {HYBRID_RULE}\nchosen: {chosen} (committed: {HYBRID_HPARAMS})")
        return 0
    built = build_all(datasets, root)
    status = 0
    for name, data in built.items():
        out = args.out_dir / name
        digest = hashlib.sha256(data).hexdigest()
        if args.check:
            committed = out.read_bytes() if out.is_file() else b""
            same = committed == data
            print(f"{name}: rebuilt sha256 {digest}; committed {hashlib.sha256(committed).hexdigest()}: "
                  f"{'identical' if same else 'DIFFERENT'}")
            status = status if same else 1
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
        print(f"wrote {out} ({len(data)} bytes, sha256 {digest})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
