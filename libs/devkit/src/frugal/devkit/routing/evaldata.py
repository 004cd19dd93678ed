"""The public routing data sets (../shared/data/routing), loaded as three-tier routing problems.

Used by the scorers' training scripts (frugal.devkit.routing.train_*) and the evaluation harness (bench/routing).
The files are not part of this repository: see `data_root()` and the README of bench/routing.

- llmrouter (ulab-uiuc/LLMRouter, MIT): `train.json`, per prompt a 0..1 score for 9 open models. Tiers by
  price (llm_candidates.json): lite = gemma-2-9b-it ($0.10/1M), standard = the best-scoring $0.20 model on
  the training split, premium = the best-scoring $0.90 model on the training split. The data has no token
  counts, so cost is *estimated* as price x (ceil(chars/4) prompt tokens + 256 output tokens).
- routerbench (RouterBench subset via RouterDC, MIT): ARC-Challenge, MBPP, Winogrande; 0/1 scores and the
  measured dollar cost of each model's answer. Tiers: lite = mistralai/mistral-7b-chat,
  standard = mistralai/mixtral-8x7b-chat, premium = gpt-4-1106-preview.

Split: a prompt is held out when sha256(prompt text) mod 100 < 30, so duplicates land on the same side and
the split is the same on every machine. Nothing is fitted on held-out prompts.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TIER_NAMES = ("lite", "standard", "premium")
HOLDOUT_PERCENT = 30
LLMROUTER_OUTPUT_TOKENS = 256
ROUTERBENCH_FILES = ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv")
ROUTERBENCH_TIERS = ("mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview")


class DataMissing(FileNotFoundError):
    """A data file the harness needs is not there; callers print the message and skip."""


@dataclass(frozen=True, slots=True)
class Example:
    dataset: str
    subset: str
    text: str
    # Score (0..1) and cost (USD) of the lite, standard and premium tier's model on this prompt.
    scores: tuple[float, float, float]
    costs: tuple[float, float, float]
    # Each tier model's answer where the data set records it (RouterBench), else empty strings.
    responses: tuple[str, str, str] = ("", "", "")

    @property
    def held_out(self) -> bool:
        return is_held_out(self.text)


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    tier_models: tuple[str, str, str]
    cost_note: str
    examples: tuple[Example, ...]

    def split(self) -> tuple[list[Example], list[Example]]:
        train = [e for e in self.examples if not e.held_out]
        test = [e for e in self.examples if e.held_out]
        return train, test


def is_held_out(text: str) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HOLDOUT_PERCENT


def repo_root() -> Path:
    # libs/devkit/src/frugal/devkit/routing/evaldata.py -> repository root is six levels up.
    return Path(__file__).resolve().parents[6]


def data_root() -> Path:
    """../shared/data/routing next to the repository, or FRUGAL_ROUTING_DATA when set (a git worktree
    elsewhere can point at the shared copy)."""
    override = os.environ.get("FRUGAL_ROUTING_DATA")
    if override:
        return Path(override)
    here = repo_root().parent / "shared" / "data" / "routing"
    if here.is_dir():
        return here
    # A worktree under <x>/wt/<name>: the shared data sits beside the main clone.
    return repo_root().parent.parent / "shared" / "data" / "routing"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataMissing(f"routing data file missing: {path} (see bench/routing/README.md)")
    return path


def load_llmrouter(root: Path | None = None) -> Dataset:
    base = (root or data_root()) / "llmrouter"
    rows = json.loads(_require(base / "train.json").read_text(encoding="utf-8"))
    candidates = json.loads(_require(base / "llm_candidates.json").read_text(encoding="utf-8"))
    price = {name: float(spec["input_price"]) for name, spec in candidates.items()}
    models = sorted(rows[0]["scores"])
    train_rows = [r for r in rows if not is_held_out(r["question"])]

    def best_at(p: float) -> str:
        at_price = [m for m in models if math.isclose(price[m], p)]
        # Highest mean training score; name breaks ties, so the choice is deterministic.
        return str(max(at_price, key=lambda m: (sum(r["scores"][m] for r in train_rows) / len(train_rows), m)))

    tiers = (best_at(0.1), best_at(0.2), best_at(0.9))
    examples = []
    for r in rows:
        text = str(r["question"])
        tokens = math.ceil(len(text) / 4) + LLMROUTER_OUTPUT_TOKENS
        examples.append(
            Example(
                dataset="llmrouter",
                subset=str(r.get("cluster_id", "")),
                text=text,
                scores=(float(r["scores"][tiers[0]]), float(r["scores"][tiers[1]]), float(r["scores"][tiers[2]])),
                costs=(
                    tokens * price[tiers[0]] / 1e6,
                    tokens * price[tiers[1]] / 1e6,
                    tokens * price[tiers[2]] / 1e6,
                ),
            )
        )
    return Dataset(
        name="llmrouter",
        tier_models=tiers,
        cost_note=f"estimated: price x (ceil(chars/4) + {LLMROUTER_OUTPUT_TOKENS} output tokens)",
        examples=tuple(examples),
    )


def _prompt_text(raw: str) -> str:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def _response_text(raw: str) -> str:
    # Responses are stored like prompts: a stringified Python list (one element per turn).
    return _prompt_text(raw) if raw else ""


def load_routerbench(root: Path | None = None) -> Dataset:
    base = (root or data_root()) / "routerbench"
    csv.field_size_limit(sys.maxsize)
    examples = []
    skipped = 0
    for fname in ROUTERBENCH_FILES:
        with _require(base / fname).open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if any(not row[m].strip() for m in ROUTERBENCH_TIERS):
                    skipped += 1  # a tier model has no score for this prompt (8 ARC rows)
                    continue
                text = _prompt_text(row["prompt"])
                examples.append(
                    Example(
                        dataset="routerbench",
                        subset=row.get("eval_name", fname),
                        text=text,
                        scores=tuple(float(row[m]) for m in ROUTERBENCH_TIERS),  # type: ignore[arg-type]
                        costs=tuple(float(row[f"{m}|total_cost"]) for m in ROUTERBENCH_TIERS),  # type: ignore[arg-type]
                        responses=tuple(_response_text(row.get(f"{m}|model_response", "")) for m in ROUTERBENCH_TIERS),  # type: ignore[arg-type]
                    )
                )
    return Dataset(
        name="routerbench",
        tier_models=ROUTERBENCH_TIERS,
        cost_note="measured: the data set's per-answer total_cost columns"
        + (f"; {skipped} rows without a score for a tier model skipped" if skipped else ""),
        examples=tuple(examples),
    )


def load_all(root: Path | None = None) -> list[Dataset]:
    return [load_llmrouter(root), load_routerbench(root)]


def oracle_tier(scores: Sequence[float]) -> int:
    """The cheapest tier reaching the best score of the three (all fail -> lite)."""
    best = max(scores)
    return next(i for i, s in enumerate(scores) if s >= best)
