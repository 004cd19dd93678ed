"""The labelled screen-share corpus: determinism, and the dedup figures against 1 FPS, 30 FPS and the seed's rule.

Small and short on purpose (320x180, 8 s per scenario): the thumbnail the decision works on is the same
160x90 at this size as at 720p. `bench/vision/run.py` runs the full-size corpus.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import imagehash
import numpy as np
import pytest
from PIL import Image

from frugal.devkit.vision import corpus
from frugal.devkit.vision.evaluation import DedupPolicy, Figures, SeedRule, format_table, run, score, totals

W, H, SECONDS = 320, 180, 8.0


def digest(scenario: str, seed: int, w: int = 160, h: int = 90, seconds: float = 3.0) -> tuple[str, tuple[int, ...]]:
    md = hashlib.sha256()
    events = []
    for f in corpus.generate(scenario, w, h, seconds, seed):
        md.update(f.rgb.tobytes())
        if f.meaningful:
            events.append(f.index)
    return md.hexdigest(), tuple(events)


@pytest.mark.parametrize("scenario", corpus.SCENARIOS)
def test_corpus_is_deterministic_and_labelled(scenario: str) -> None:
    a = digest(scenario, seed=1)
    assert a == digest(scenario, seed=1)
    assert a[0] != digest(scenario, seed=2)[0]
    frames = list(corpus.generate(scenario, 128, 72, 2.0, seed=1))
    assert len(frames) == 60 and frames[0].meaningful and frames[-1].timestamp_ms == round(59 * 1000 / 30)
    assert all(f.rgb.shape == (72, 128, 3) and f.rgb.dtype == np.uint8 for f in frames)


def test_unknown_scenario_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        corpus.generate("juggling")


def test_scoring_counts_missed_and_extra_frames() -> None:
    labels = [i in (0, 40, 100) for i in range(150)]
    kept = [i in (0, 20, 45, 140) for i in range(150)]  # 100 is caught by nothing within 1 s
    f = score("s", "p", kept, labels)
    assert (f.events, f.kept, f.missed, f.extra) == (3, 4, 1, 2)
    assert f.kept_per_minute == pytest.approx(4 * 60 / 5.0)
    assert f.reduction_vs_1fps == pytest.approx(1 - 48 / 60)


@pytest.fixture(scope="module")
def figures() -> list[Figures]:
    rows: list[Figures] = []
    for scenario in corpus.SCENARIOS:
        def ih(f: corpus.CorpusFrame) -> imagehash.ImageHash:
            return imagehash.phash(Image.frombytes("RGB", (f.rgb.shape[1], f.rgb.shape[0]), f.rgb.tobytes()))

        policies: dict[str, Callable[[corpus.CorpusFrame], bool]] = {
            "dedup": DedupPolicy(),
            "seed": SeedRule(ih, lambda a, b: int(a - b)),
            "1fps": lambda f: f.index % 30 == 0,
            "30fps": lambda f: True,
        }
        labels, notes, kept = run(corpus.generate(scenario, W, H, SECONDS, seed=7), policies)
        rows.extend(score(scenario, name, k, labels, notes) for name, k in kept.items())
    print("\n" + format_table(rows + [totals(rows, p) for p in ("dedup", "seed", "1fps", "30fps")]))
    return rows


def test_dedup_catches_every_meaningful_change_with_fewer_frames(figures: list[Figures]) -> None:
    ours, seed, one_fps = totals(figures, "dedup"), totals(figures, "seed"), totals(figures, "1fps")
    assert ours.events == seed.events >= 14
    assert ours.missed == 0, ours.missed_notes
    assert ours.kept_per_minute < 0.5 * one_fps.kept_per_minute
    assert ours.reduction_vs_30fps > 0.98
    # the seed's rule (global pHash, threshold 10) misses typed lines, small dialogs, scroll ends, similar windows
    assert seed.missed >= 4
    by = {(r.scenario, r.policy): r for r in figures}
    assert by["typing", "seed"].missed >= 1 and by["typing", "dedup"].missed == 0
    assert by["scrolling", "seed"].kept > by["scrolling", "dedup"].kept  # seed keeps frames in mid-scroll
    # a blinking cursor and a playing video region cost nothing after the first frame (and the navigation)
    assert by["blinking_cursor", "dedup"].kept == 1
    assert by["video_region", "dedup"].kept == by["video_region", "dedup"].events
    assert by["ticking_clock", "dedup"].kept <= 4
