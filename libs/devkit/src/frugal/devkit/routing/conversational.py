"""The bundled labelled conversational turns (dev-only: fitting and evaluation, never read at run time).

`data/conversational-turns.jsonl`: hand-authored voice-assistant turns for a B2B help-desk / dev-tools
product with a difficulty label 0 (lite suffices), 1 (standard needed), 2 (premium needed). The labels are
ours (synthetic, written for this project following the guideline in the router README); it is not a public
benchmark. It is split deterministically by a hash of the text into a calibration part (fitting, and the
bundled reference sample for thresholds) and an evaluation part (only ever used for reporting).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

TURNS_FILE = "conversational-turns.jsonl"
# A turn is in the calibration part when sha256(text) mod 100 < CALIBRATION_PERCENT.
CALIBRATION_PERCENT = 50


@dataclass(frozen=True, slots=True)
class LabelledTurn:
    text: str
    # 0: lite suffices, 1: standard needed, 2: premium needed.
    label: int
    category: str

    @property
    def calibration(self) -> bool:
        return is_calibration(self.text)


def is_calibration(text: str) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < CALIBRATION_PERCENT


def turns_bytes() -> bytes:
    return resources.files("frugal.devkit.routing").joinpath("data").joinpath(TURNS_FILE).read_bytes()


def load_turns() -> list[LabelledTurn]:
    out = []
    for lineno, line in enumerate(turns_bytes().decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        label = int(obj["label"])
        if label not in (0, 1, 2):
            raise ValueError(f"{TURNS_FILE}:{lineno}: label must be 0, 1 or 2, got {label}")
        out.append(LabelledTurn(text=str(obj["text"]), label=label, category=str(obj.get("category", ""))))
    return out


def split_turns(turns: Sequence[LabelledTurn] | None = None) -> tuple[list[LabelledTurn], list[LabelledTurn]]:
    """(calibration, evaluation)."""
    rows = load_turns() if turns is None else list(turns)
    return [t for t in rows if t.calibration], [t for t in rows if not t.calibration]


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties (0.0 when either side is constant)."""

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2.0
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    n = len(rx)
    if n < 2:
        return 0.0
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0
