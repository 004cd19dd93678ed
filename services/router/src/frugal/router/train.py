"""Builds the default scorer's artifact from the public routing data, bit for bit.

    uv run python -m frugal.router.train            # rebuild services/router/src/frugal/router/data/...
    uv run python -m frugal.router.train --check    # rebuild in memory, compare with the committed bytes
    uv run python -m frugal.router.train --select   # 5-fold CV on the training split over HPARAM_GRID

Model: ridge regression (numpy, conjugate gradients on the sparse design, a fixed number of iterations) of
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

from frugal.router.evaldata import DataMissing, Dataset, Example, data_root, load_all
from frugal.router.features import extract_features
from frugal.router.routing_eval import best_cost_cut, fixed_tier, mix_grid, sweep
from frugal.router.scoring import (
    ARTIFACT_FILE,
    ARTIFACT_FORMAT,
    DEFAULT_SCORER,
    NUMERIC_FEATURES,
    SEED_SCORER,
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


def build_payload(datasets: Sequence[Dataset], hp: dict[str, Any], root: Path) -> dict[str, Any]:
    train = [e for d in datasets for e in d.split()[0]]
    model = fit(train, hp)
    payload: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "name": DEFAULT_SCORER,
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
    for name, scorer in ((DEFAULT_SCORER, lexical), (SEED_SCORER, seed)):
        table = QuantileTable.from_scores((scorer.score(t, f) for t, f in zip(texts, feats, strict=True)),
                                          sample=sample)
        quantiles[name] = [r6(x) for x in table.values]
    payload["reference"] = {"sample": sample, "n": len(texts), "quantiles": quantiles}
    return payload


def _ref_stub() -> dict[str, Any]:
    return {"sample": "", "n": 0, "quantiles": {DEFAULT_SCORER: [0.0, 1.0], SEED_SCORER: [0.0, 1.0]}}


def serialize(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


def artifact_path() -> Path:
    return Path(__file__).resolve().parent / "data" / ARTIFACT_FILE


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
                {"name": DEFAULT_SCORER, **model, "reference": _ref_stub()},
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
    ap.add_argument("--check", action="store_true", help="rebuild and compare with the committed artifact")
    ap.add_argument("--select", action="store_true", help="cross-validate the hyperparameter grid")
    ap.add_argument("--out", type=Path, default=artifact_path())
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
    data = serialize(build_payload(datasets, HPARAMS, root))
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        committed = args.out.read_bytes() if args.out.is_file() else b""
        same = committed == data
        print(f"rebuilt sha256 {digest}; committed {hashlib.sha256(committed).hexdigest()}: "
              f"{'identical' if same else 'DIFFERENT'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    args.out.with_name(args.out.name + ".sha256").write_text(f"{digest}  {args.out.name}\n")
    print(f"wrote {args.out} ({len(data)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
