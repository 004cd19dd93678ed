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
