"""The recorded sessions: committed definitions are current, media are deterministic, words sit on speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from frugal.devkit.sessions.catalog import SESSIONS, SessionDef, Turn
from frugal.devkit.sessions.media import SR, mic_track, write_session

ROOT = Path(__file__).resolve().parents[3]


def test_committed_sessions_are_current(tmp_path: Path) -> None:
    for name, session in SESSIONS.items():
        write_session(session, tmp_path / name, with_audio=False)
        for f in ("session.toml", "transcript.json"):
            committed = (ROOT / "demo" / "sessions" / name / f).read_text(encoding="utf-8")
            assert (tmp_path / name / f).read_text(encoding="utf-8") == committed, (
                f"demo/sessions/{name}/{f} is stale: run `python -m frugal.devkit.sessions demo/sessions --no-audio`")


def test_microphone_track_is_deterministic_and_words_are_voiced() -> None:
    s = SessionDef(name="t", title="t", room="tenant_org_x_t", seconds=8.0, seed=3,
                   turns=(Turn(1.0, "How much is the Business plan?", "x"),))
    a, turns = mic_track(s)
    b, _ = mic_track(s)
    assert np.array_equal(a, b) and len(a) == 8 * SR
    for w in turns[0].words:
        seg = a[int(w.start * SR):int(w.end * SR)].astype(np.float64)
        assert np.sqrt(np.mean(seg ** 2)) > 300  # speech energy where each word is
    quiet = a[int(5.0 * SR):int(7.0 * SR)].astype(np.float64)
    assert np.sqrt(np.mean(quiet ** 2)) < 200  # room noise only after the turn


def test_gate_tuning_sets_are_disjoint_and_the_rule_covers_what_it_measured(tmp_path: Path) -> None:
    """The STT gate's held-out protocol: tuning and fresh seeds never meet (nor the recorded k=0), and the
    chosen pre/post-roll cover the largest onset delay / release lag measured, with the margin."""
    from frugal.devkit.sessions.gate_tuning import FRESH_SEEDS, MARGIN_S, TUNING_SEEDS, track, tune, variant

    assert not set(TUNING_SEEDS) & set(FRESH_SEEDS) and 0 not in TUNING_SEEDS + FRESH_SEEDS
    seeds = {variant(s, k).seed for s in SESSIONS.values() for k in (0, *TUNING_SEEDS, *FRESH_SEEDS)}
    assert len(seeds) == len(SESSIONS) * (1 + len(TUNING_SEEDS) + len(FRESH_SEEDS))
    s = SessionDef(name="t", title="t", room="tenant_org_x_t", seconds=12.0, seed=5,
                   turns=(Turn(1.0, "How much is the Business plan?", "x"), Turn(6.0, "Thanks.", "y")))
    tracks = [track(variant(s, k), tmp_path) for k in (1, 2)]
    choices = tune(tracks)
    for c in choices:
        assert c.pre_roll_s >= max(c.stats.onset_delays) + MARGIN_S - 1e-9
        assert c.post_roll_s >= max(c.stats.release_lags) + MARGIN_S - 1e-9
    best = choices[0]
    assert best.lost == 0 and best.words == 14
    # Silero alone loses a word here (it never fires on one "Thanks."), whatever the rolls: the level
    # criterion is what the rule picks, although it forwards more.
    assert best.energy_onset_db is not None
    assert all(c.lost > 0 for c in choices if c.energy_onset_db is None)
