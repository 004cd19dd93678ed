"""The recorded-session format and media readers (no services needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frugal.devkit.demo import synth
from frugal.gateway.replay.media import read_wav, screen_frames, write_wav
from frugal.gateway.replay.spec import SessionFormatError, SessionSpec
from frugal.gateway.router_llm import turn_input_from_chat


def test_demo_session_loads(demo_dir: Path) -> None:
    spec = SessionSpec.load(demo_dir / "session")
    assert spec.room.startswith("tenant_org_lumen_")
    assert [t.kind for t in spec.turns].count("audio") == 2
    assert all(t.transcript for t in spec.turns if t.kind == "audio")
    assert spec.screen is not None and spec.screen.video is not None
    frames = list(screen_frames(spec.screen))
    assert len(frames) == 240 and frames[0].frame.width == 640
    assert frames[1].at - frames[0].at == pytest.approx(0.25)
    for turn in spec.turns:
        if turn.audio is not None:
            assert 2.0 < read_wav(turn.audio).seconds < 6.0


@pytest.mark.parametrize(("body", "message"), [
    ('title = "x"\n[[turns]]\ntext = "hi"\n', "'room'"),
    ('room = "tenant_a_b"\n[[turns]]\ntext = "hi"\naudio = "a.wav"\n', "exactly one of 'text' or 'audio'"),
    ('room = "tenant_a_b"\n[[turns]]\naudio = "missing.wav"\n', "not found"),
    ('room = "tenant_a_b"\n[[turns]]\nat = 5\ntext = "a"\n[[turns]]\nat = 1\ntext = "b"\n', "back in time"),
    ('room = "tenant_a_b"\n', "no turns"),
    ('room = "tenant_a_b"\n[screen]\nframes = "nope"\n[[turns]]\ntext = "a"\n', "not found"),
    ('room = [\n', "session.toml"),
])
def test_bad_sessions_are_refused_with_a_reason(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "session.toml").write_text(body)
    with pytest.raises(SessionFormatError) as err:
        SessionSpec.load(tmp_path)
    assert message in str(err.value)


def test_frame_folder_and_wav_round_trip(tmp_path: Path) -> None:
    n = synth.write_frame_folder(tmp_path / "frames", synth.slide_frames(2.0, 2.0, width=64, height=36))
    (tmp_path / "session.toml").write_text('room = "tenant_a_b"\n[screen]\nframes = "frames"\nfps = 2\nstart = 1.0\n'
                                           '[[turns]]\ntext = "a"\n')
    spec = SessionSpec.load(tmp_path)
    assert spec.screen is not None
    frames = list(screen_frames(spec.screen))
    assert n == 4 and [f.at for f in frames] == [1.0, 1.5, 2.0, 2.5]
    pcm = synth.utterance(1.0, seed=3)
    write_wav(tmp_path / "u.wav", pcm)
    back = read_wav(tmp_path / "u.wav")
    assert back.sample_rate == 16000 and np.array_equal(back.samples, pcm.samples)


def test_turn_input_keeps_the_newest_user_message_as_the_turn() -> None:
    from livekit.agents import llm

    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="be brief")
    for i in range(10):
        ctx.add_message(role="user", content=f"q{i}")
        ctx.add_message(role="assistant", content=f"a{i}")
    ctx.add_message(role="user", content="latest?")
    turn = turn_input_from_chat(ctx, history_max=4)
    assert turn.text == "latest?"
    assert [m.content for m in turn.history] == ["be brief", "q8", "a8", "q9", "a9"]


def test_the_command_line_refuses_what_it_does_not_know(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from frugal.gateway.__main__ import main

    assert main(["frobnicate"]) == 2
    assert "python -m frugal.gateway" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "nowhere")]) == 2
    assert "no such file" in capsys.readouterr().err
