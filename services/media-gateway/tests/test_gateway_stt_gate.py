"""STT only while someone speaks: the gate sends the STT provider audio around voice activity only (with
pre-roll and post-roll), and the Deepgram stream stays open in between; silence is not billed."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
from livekit import rtc
from livekit.plugins import deepgram

from frugal.common.usage import UsageAmounts
from frugal.devkit.emulators.deepgram import DeepgramEmulator
from frugal.devkit.sessions.catalog import SessionDef, Turn
from frugal.devkit.sessions.media import mic_track
from frugal.devkit.speech import run_stt_stream
from frugal.gateway.stt_gate import SAMPLE_RATE, WINDOW, GateConfig, SttGate, gate_pcm

FRAME = b"\x00\x00" * WINDOW
DUR = WINDOW / SAMPLE_RATE

SHORT = SessionDef(name="short", title="two questions in thirty seconds", room="tenant_org_x_short",
                   seconds=30.0, seed=7,
                   turns=(Turn(4.0, "How much is the Business plan per seat?", "x"),
                          Turn(19.0, "And does it include single sign-on?", "y")))


def _push(gate: SttGate, probs: list[float]) -> list[int]:
    """Frame indices forwarded (each frame carries its index)."""
    sent: list[int] = []
    for i, p in enumerate(probs):
        step = gate.push(i.to_bytes(4, "little") + FRAME[4:], DUR, p)
        sent += [int.from_bytes(f[:4], "little") for f in step.forward]
    return sent


def test_pre_roll_and_post_roll_frames_are_sent() -> None:
    cfg = GateConfig(pre_roll_s=0.3, post_roll_s=0.3)
    probs = [0.0] * 50 + [0.9] * 10 + [0.0] * 50
    sent = _push(SttGate(cfg), probs)
    pre = int(np.ceil(0.3 / DUR))
    assert sent[0] <= 50 - pre + 1 and sent[0] >= 50 - pre - 1  # ~0.3 s before the VAD fired
    assert 59 + int(0.3 / DUR) - 1 <= sent[-1] <= 59 + int(0.3 / DUR) + 1  # ~0.3 s after it let go
    assert sent == list(range(sent[0], sent[-1] + 1))  # contiguous: nothing dropped inside


def test_release_threshold_keeps_a_soft_syllable_inside_speech() -> None:
    probs = [0.0] * 20 + [0.9] * 5 + [0.4] * 60 + [0.9] * 5 + [0.0] * 20
    gate = SttGate(GateConfig(pre_roll_s=0.0, post_roll_s=0.0))
    sent = _push(gate, probs)
    assert sent[0] == 20 and 89 <= sent[-1] <= 90 and len(gate.stats.spans) == 1


def test_keepalive_is_due_while_the_gate_holds_silence() -> None:
    gate = SttGate(GateConfig(keepalive_interval_s=5.0))
    keepalives = [i * DUR for i in range(int(20 / DUR)) if gate.push(FRAME, DUR, 0.0).keepalive]
    assert len(keepalives) in (3, 4)  # 20 s of silence: one every 5 s of media time
    assert all(b - a >= 5.0 - 1e-9 for a, b in zip(keepalives, keepalives[1:], strict=False))
    assert keepalives[0] < 5.0 < keepalives[0] + 2 * DUR
    assert gate.stats.forwarded_s == 0


def test_disabled_gate_sends_everything() -> None:
    gate = SttGate(GateConfig(enabled=False))
    assert _push(gate, [0.0] * 30) == list(range(30))


def test_bad_config_fails_fast() -> None:
    with pytest.raises(ValueError, match="keepalive_interval_s"):
        GateConfig(keepalive_interval_s=12.0)
    with pytest.raises(ValueError, match="release_threshold"):
        GateConfig(threshold=0.3, release_threshold=0.5)


def _lost(turns: list, spans: list[tuple[float, float]]) -> int:  # type: ignore[type-arg]
    return sum(1 for t in turns for w in t.words if not any(a <= w.start and w.end <= b for a, b in spans))


def test_silero_gate_keeps_every_word_and_cuts_the_silence() -> None:
    pcm, turns = mic_track(SHORT)
    _, gate = gate_pcm(pcm, GateConfig())
    assert _lost(turns, gate.stats.spans) == 0
    assert gate.stats.forwarded_s < 0.4 * gate.stats.seen_s
    # without pre-roll and post-roll, the soft first and fading last words are cut
    _, bare = gate_pcm(pcm, GateConfig(pre_roll_s=0.0, post_roll_s=0.0))
    assert _lost(turns, bare.stats.spans) > 0


async def _stream_to_emulator(sequence: list[bytes | None]) -> DeepgramEmulator:
    async with DeepgramEmulator() as emu, aiohttp.ClientSession() as http:
        engine = deepgram.STT(api_key="k", base_url=emu.base_url, http_session=http, model="nova-3",
                              sample_rate=SAMPLE_RATE)
        stream = engine.stream()
        paused = False
        for chunk in sequence:
            if chunk is not None:
                stream.push_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, len(chunk) // 2))
            elif not paused:  # the gate holds silence: let the connection idle a moment (no audio flows)
                await asyncio.sleep(0.3)
                paused = True
        stream.end_input()
        async for _ in stream:
            pass
        await stream.aclose()
        return emu


async def test_deepgram_bills_only_the_gated_audio() -> None:
    pcm, _ = mic_track(SHORT)
    gated, gate = gate_pcm(pcm, GateConfig())
    emu = await _stream_to_emulator(gated)
    assert emu.billed_audio_seconds == pytest.approx(gate.stats.forwarded_s, abs=0.06)
    assert emu.billed_audio_seconds < 0.4 * SHORT.seconds
    assert emu.keepalives >= 1  # sent by the plugin while no audio flowed, on the same connection
    assert len(emu.requests) == 1  # one connection for the whole session, kept open between utterances
    ungated, _ = gate_pcm(pcm, GateConfig(enabled=False))
    emu2 = await _stream_to_emulator(ungated)
    assert emu2.billed_audio_seconds == pytest.approx(SHORT.seconds, abs=0.06)


async def test_gated_plugin_stream_bills_only_speech_and_keeps_the_transcript() -> None:
    """The gateway's wrapper around livekit-plugins-deepgram: frames pushed at 48 kHz like a room track, audio
    reaching Deepgram only around speech, transcripts passed through."""
    from livekit.agents import stt as lk_stt

    from frugal.devkit.emulators.deepgram import DeepgramReply
    from frugal.gateway.stt_gate import GatedSTT, GateSettings, maybe_gate

    pcm, _ = mic_track(SHORT)
    up = np.repeat(pcm, 3)  # 48 kHz, the rate a LiveKit room track arrives at
    async with DeepgramEmulator() as emu, aiohttp.ClientSession() as http:
        emu.script(DeepgramReply(transcript="how much is the business plan per seat"))
        inner = deepgram.STT(api_key="k", base_url=emu.base_url, http_session=http, model="nova-3")
        engine = maybe_gate(inner, offline=False, settings=GateSettings())
        assert isinstance(engine, GatedSTT)
        assert maybe_gate(inner, offline=False, settings=GateSettings(enabled=False)) is inner
        stream = engine.stream()
        step = 480  # 10 ms frames
        for i in range(0, len(up), step):
            chunk = up[i:i + step]
            stream.push_frame(rtc.AudioFrame(chunk.tobytes(), 48000, 1, len(chunk)))
        stream.end_input()
        finals = [ev async for ev in stream if ev.type == lk_stt.SpeechEventType.FINAL_TRANSCRIPT]
        await stream.aclose()
    assert finals and finals[0].alternatives[0].text == "how much is the business plan per seat"
    gate = engine.gates[0]
    assert emu.billed_audio_seconds == pytest.approx(gate.stats.forwarded_s, abs=0.1)
    assert emu.billed_audio_seconds < 0.4 * SHORT.seconds
    # the first utterance's end asked for its final transcript while more audio was still to come
    finalize_at = [at for kind, at in emu.requests[0].control_at if kind == "Finalize"]
    assert finalize_at and min(finalize_at) < emu.billed_audio_seconds - 1.0



async def test_gated_stream_leaves_a_record_of_the_audio_it_had() -> None:
    """The naive baseline needs the session's audio, not only what was billed: one zero-cost record per stream."""
    from frugal.common.pricing import default_catalog
    from frugal.common.session_cost import CostRow, session_cost
    from frugal.gateway.speech import SpeechCostMeter
    from frugal.gateway.stt_gate import GateSettings, maybe_gate

    meter = SpeechCostMeter(None, default_catalog(), tenant_id="org_x", session_id="s-gate")
    pcm, _ = mic_track(SHORT)
    async with DeepgramEmulator() as emu, aiohttp.ClientSession() as http:
        inner = deepgram.STT(api_key="k", base_url=emu.base_url, http_session=http, model="nova-3",
                             sample_rate=SAMPLE_RATE)
        engine = maybe_gate(inner, offline=False, settings=GateSettings(), meter=meter)
        await run_stt_stream(engine, pcm, SAMPLE_RATE)
    [record] = meter.events
    assert record.cost_usd == 0 and float(record.attributes["stream_seconds"]) == pytest.approx(SHORT.seconds, abs=0.05)
    # built by the one recorder: its own attempt id and nonce, what saved it
    assert record.attributes["saved_by"] == "stt_gate" and record.attributes["attempt_nonce"]
    assert record.service == "media-gateway" and record.session_id == "s-gate" and record.usage.requests == 0
    billed = CostRow(kind="stt", model="nova-3", usage=UsageAmounts(audio_seconds=emu.billed_audio_seconds),
                     session_id="s-gate")
    cost = session_cost([billed, CostRow.from_event(record)], default_catalog())
    assert cost.session_seconds == pytest.approx(SHORT.seconds, abs=0.05)  # naive: the whole session streamed
    assert cost.kinds["stt"].cost_usd < 0.4 * cost.kinds["stt"].naive_usd


def _tone_frame(amplitude: float, seed: int) -> bytes:
    x = amplitude * np.random.default_rng(seed).standard_normal(WINDOW)
    return np.clip(x * 32767, -32768, 32767).astype(np.int16).tobytes()


def test_level_above_the_noise_floor_opens_the_gate_when_silero_misses_the_speech() -> None:
    """Silero gives some real utterances no window at its threshold (soft, short, unusual voices): the level
    criterion still forwards them; stationary noise, however loud, lifts the floor and not the gate."""
    quiet, loud = 0.002, 0.1  # about -54 dBFS of room noise, a -20 dBFS voice: 34 dB above the floor
    frames = [_tone_frame(quiet, i) for i in range(100)] + [_tone_frame(loud, i) for i in range(100, 120)] \
        + [_tone_frame(quiet, i) for i in range(120, 220)]
    gate = SttGate(GateConfig(pre_roll_s=0.1, post_roll_s=0.1))
    sent = [i for i, f in enumerate(frames) if gate.push(f, DUR, 0.0).forward]
    assert sent and sent[0] == 100 and 119 <= sent[-1] <= 119 + int(0.1 / DUR) + 1
    silero_only = SttGate(GateConfig(pre_roll_s=0.1, post_roll_s=0.1, energy_onset_db=None))
    assert not any(silero_only.push(f, DUR, 0.0).forward for f in frames)  # what the level criterion fixes
    # A room that gets noisy and stays noisy (a fan at -20 dBFS for 30 s): forwarded a few seconds at most
    # while the floor climbs (3 dB/s), then held back.
    noisy = [_tone_frame(loud, i) for i in range(int(30 / DUR))]
    gate2 = SttGate(GateConfig(pre_roll_s=0.1, post_roll_s=0.1))
    for f in [_tone_frame(quiet, i) for i in range(100)] + noisy:
        gate2.push(f, DUR, 0.0)
    assert gate2.stats.forwarded_s < 12.0
    assert not gate2.is_open


def test_level_criterion_ignores_digital_silence_dither() -> None:
    gate = SttGate(GateConfig(pre_roll_s=0.0, post_roll_s=0.0))
    frames = [b"\x00\x00" * WINDOW] * 50 + [_tone_frame(0.0001, i) for i in range(50)]  # -80 dBFS: below -70
    assert not any(gate.push(f, DUR, 0.0).forward for f in frames)


async def test_with_the_lever_off_the_provider_gets_the_room_audio_as_it_was_pushed() -> None:
    """STT_GATE_ENABLED=false still goes through the wrapper (the spend guard), which must then be transparent:
    every 10 ms frame at the room's 48 kHz sent as it came, not regrouped into 32 ms windows nor squeezed
    through 16 kHz on the way (Deepgram is asked for 48 kHz: the bytes it gets are the bytes pushed)."""
    from frugal.common.pricing import default_catalog
    from frugal.gateway.speech import SpeechCostMeter
    from frugal.gateway.stt_gate import GatedSTT, GateSettings, maybe_gate

    pcm, _ = mic_track(SHORT)
    rng = np.random.default_rng(3)
    room = (np.repeat(pcm, 3) + rng.integers(-200, 200, 3 * len(pcm))).clip(-32768, 32767).astype(np.int16)
    meter = SpeechCostMeter(None, default_catalog(), tenant_id="org_x", session_id="s-lever-off")
    async with DeepgramEmulator() as emu, aiohttp.ClientSession() as http:
        inner = deepgram.STT(api_key="k", base_url=emu.base_url, http_session=http, model="nova-3",
                             sample_rate=48000)
        engine = maybe_gate(inner, offline=False, settings=GateSettings(enabled=False), meter=meter)
        assert isinstance(engine, GatedSTT)
        await run_stt_stream(engine, room, 48000, step=480)
    [req] = emu.requests
    assert req.sample_rate == 48000 and req.audio == room.tobytes()
    assert engine.gates[0].stats.forwarded_s == pytest.approx(SHORT.seconds, abs=0.01)
    assert meter.events == []  # the lever saved nothing: no zero-cost record
