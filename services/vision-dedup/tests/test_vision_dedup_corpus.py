"""The labelled screen-share corpus (determinism, the tuning/evaluation split) and the whole screen path on it.

Small and short on purpose (640x360, 10 s per scenario, tuning data only): the thumbnail is the same 160x90
as at 720p. Except digit_edit, at 1280x720: its 11 px text is 5 px tall at 640 wide, where a digit redrawn
over another changes fewer pixels than MIN_DETAIL_PIXELS (and is barely legible). `bench/vision/run.py`
runs the full-size held-out evaluation.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from frugal.devkit.vision import corpus
from frugal.devkit.vision.evaluation import score
from frugal.devkit.vision.path import PathScore, PathSim, score_path

W, H, SECONDS = 640, 360, 10.0


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


def test_tuning_and_evaluation_never_share_kinds_or_seeds() -> None:
    assert set(corpus.TUNING_KINDS).isdisjoint(corpus.HELD_OUT_KINDS)
    assert set(corpus.TUNING_KINDS) | set(corpus.HELD_OUT_KINDS) == set(corpus.SCENARIOS)
    assert set(corpus.TUNING_SEEDS).isdisjoint(corpus.EVALUATION_SEEDS)


@pytest.fixture(scope="module")
def path_runs() -> dict[tuple[str, int, bool], tuple[PathScore, dict[str, int]]]:
    """The whole path (gateway sampler -> vision-dedup StreamCore) on tuning data only (the bench reports
    the held-out figures): a 5 FPS track while the user is silent, a 30 FPS track while they speak."""
    out = {}
    for kind in corpus.TUNING_KINDS:
        sims = {(5, False): PathSim(track_fps=5, speaking=False), (30, True): PathSim(track_fps=30, speaking=True)}
        n = 0
        w, h = (1280, 720) if kind == "digit_edit" else (W, H)
        for f in corpus.generate(kind, w, h, SECONDS, seed=corpus.TUNING_SEEDS[0]):
            n += 1
            for sim in sims.values():
                sim.feed(f)
        for (fps, speaking), sim in sims.items():
            run = sim.finish()
            out[kind, fps, speaking] = (score_path(run.events, run.keeps, run.seconds, n, kind), run.reasons)
    return out


def test_the_whole_path_catches_every_change_at_sparse_and_dense_rates(
    path_runs: dict[tuple[str, int, bool], tuple[PathScore, dict[str, int]]]
) -> None:
    for fps, speaking in ((5, False), (30, True)):
        rows = {k: v for (k, f, sp), v in path_runs.items() if (f, sp) == (fps, speaking)}
        total = sum((sc for sc, _ in rows.values()), PathScore(0, 0, 0, 0, 0, 0.0))
        assert total.events >= 20
        assert total.missed_2_5s == 0, total.missed_notes
        assert total.missed_1s <= 1, total.missed_notes
        assert total.kept <= 1.5 * total.events, {k: (sc.kept, sc.events) for k, (sc, _) in rows.items()}
        # pointer motion and a playing video cost (almost) nothing after the first frame
        assert rows["pointer_motion"][0].kept <= 3 and rows["pointer_motion"][1].get("pointer_motion", 0) > 0
        assert rows["video_region"][0].extra <= 1 and rows["video_call"][0].extra <= 1
        assert rows["blinking_cursor"][0].kept == 1
        # one digit redrawn over another (block means cancel out): every edit kept, nothing else
        assert rows["digit_edit"][0].missed_2_5s == 0 and rows["digit_edit"][0].extra == 0
