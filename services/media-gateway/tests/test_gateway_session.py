"""The agent through livekit-agents' own session machinery (no LiveKit server), against the real router and
billing over gRPC: text turns, a WAV turn through Silero VAD, vision outages (router outages: test_gateway_llm)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import RunResult, UserInputTranscribedEvent, UserStateChangedEvent, vad

from frugal.common.cost_events import CostKind
from frugal.common.pricing import default_catalog
from frugal.devkit.demo import synth
from frugal.devkit.localmesh import scrape_metrics
from frugal.gateway.agent import SessionParts, build_session, load_vad
from frugal.gateway.clients import MeshClients
from frugal.gateway.config import Settings
from frugal.gateway.replay.runner import ReplayAudioInput, SimulatedAudioOutput, run_replay
from frugal.gateway.replay.spec import SessionSpec
from frugal.gateway.screen import FrameThrottle

ROOM = "tenant_org_lumen_onboarding-call"


@pytest.fixture(scope="module")
def vad_model() -> vad.VAD:
    return load_vad()


async def session_parts(settings: Settings, vad_model: vad.VAD, session_id: str) -> tuple[MeshClients, SessionParts]:
    clients = MeshClients(settings)
    tenant = await clients.resolve_tenant(ROOM, session_id)
    parts = build_session(settings, clients, tenant, session_id, vad_model=vad_model, producer=None,
                          catalog=default_catalog(), user_away_timeout=None)
    return clients, parts


async def test_text_turn_goes_through_the_real_router(mesh: dict[str, str], make_settings: Callable[..., Settings],
                                                      vad_model: vad.VAD, dead_addr: str) -> None:
    settings = make_settings(billing_addr=mesh["billing"], router_addr=mesh["router"], vision_addr=dead_addr,
                             welcome_message="")
    clients, parts = await session_parts(settings, vad_model, "s-text-1")
    try:
        async with parts.session as session:
            await session.start(parts.agent)
            result: RunResult[None] = await session.run(user_input="What is Lumen Desk, in one sentence?")
            msg = result.expect.next_event().is_message(role="assistant")
            result.expect.no_more_events()
            report = parts.llm.reports[-1]
            assert report.ok, report
            assert report.text == "What is Lumen Desk, in one sentence?"
            assert msg.event().item.text_content == report.answer and report.answer
            assert report.tier in ("lite", "standard", "premium") and report.model
            assert report.offline is True  # no provider keys: the router's offline stand-in, labelled
            assert report.usage is not None and report.usage.output_tokens > 0
            assert len(report.cost_event_ids) >= 1
            # The conversation goes on: the second turn carries the first as history.
            await session.run(user_input="And how much is the Business plan?")
            assert len(parts.llm.reports) == 2 and parts.llm.reports[1].ok
    finally:
        await parts.aclose()
        await clients.aclose()


async def test_audio_turn_from_a_wav_goes_through_vad_and_throttles_frames(
    mesh: dict[str, str], make_settings: Callable[..., Settings], vad_model: vad.VAD, dead_addr: str
) -> None:
    settings = make_settings(billing_addr=mesh["billing"], router_addr=mesh["router"], vision_addr=dead_addr,
                             welcome_message="")
    clients, parts = await session_parts(settings, vad_model, "s-audio-1")
    mic, speaker = ReplayAudioInput(), SimulatedAudioOutput(speed=8.0)
    states: list[str] = []
    transcripts: list[str] = []
    throttle = FrameThrottle(active_fps=4.0, idle_fps=0.5)
    admitted: list[tuple[float, bool]] = []

    def on_state(ev: UserStateChangedEvent) -> None:
        states.append(ev.new_state)
        throttle.set_speaking(ev.new_state == "speaking")

    def on_transcribed(ev: UserInputTranscribedEvent) -> None:
        if ev.is_final:
            transcripts.append(ev.transcript)

    parts.session.on("user_state_changed", on_state)
    parts.session.on("user_input_transcribed", on_transcribed)
    parts.session.input.audio = mic
    parts.session.output.audio = speaker
    parts.feed.push("How much does the Business plan cost per seat?")
    pcm = synth.to_pcm(np.zeros(8000, np.float32), synth.tone(1.0), synth.speech_like(2.5, seed=11),
                       np.zeros(24000, np.float32))
    try:
        async with parts.session as session:
            await session.start(parts.agent)
            t0 = time.monotonic()
            sent = 0.0
            for frame in (rtc.AudioFrame(pcm.samples[i : i + 320].tobytes(), 16000, 1, 320)
                          for i in range(0, len(pcm.samples) - 320, 320)):
                mic.push(frame)
                sent += 0.02
                if round(sent / 0.02) % 5 == 0:  # a screen frame every 100 ms, throttled by speaking state
                    admitted.append((sent, throttle.admit(sent)))
                await asyncio.sleep(max(0.0, t0 + sent - time.monotonic()))
            deadline = time.monotonic() + 30
            while not parts.llm.reports and time.monotonic() < deadline:
                mic.push(rtc.AudioFrame(bytes(640), 16000, 1, 320))
                await asyncio.sleep(0.02)
            await asyncio.wait_for(session.wait_for_idle(), 30)
    finally:
        await parts.aclose()
        await clients.aclose()
        await speaker.aclose()

    assert "speaking" in states and states[-1] != "speaking"
    assert transcripts == ["How much does the Business plan cost per seat?"]
    assert len(parts.llm.reports) == 1 and parts.llm.reports[0].ok
    assert parts.llm.reports[0].text == transcripts[0]
    # The 1 s tone before the speech was not taken for speech: one STT request, about the speech's length.
    stt = [e for e in parts.meter.events if e.kind is CostKind.STT]
    assert len(stt) == 1 and stt[0].offline and stt[0].usage.estimated
    assert 2.0 <= stt[0].usage.audio_seconds <= 4.5
    # The one offline rule: list price of the model it stands in for, on the estimated usage, labelled.
    assert stt[0].attributes["priced_as"] == parts.meter.catalog.price("nova-3").model
    assert stt[0].cost_usd == pytest.approx(parts.meter.catalog.cost("nova-3", stt[0].usage)) and stt[0].cost_usd > 0
    tts = [e for e in parts.meter.events if e.kind is CostKind.TTS]
    # Synthesised (billed) or served from the TTS cache (a zero-cost record of the characters it served).
    spoken = sum(e.usage.characters + int(e.attributes.get("served_characters", 0)) for e in tts)
    assert tts and spoken >= len(parts.llm.reports[0].answer) * 0.8
    # Frames: 0.5 fps before the speech, 4 fps while VAD said "speaking".
    speaking_window = [ok for t, ok in admitted if 2.2 <= t <= 3.7]
    quiet_window = [ok for t, ok in admitted if t <= 1.4]
    assert sum(speaking_window) >= 4  # ~4 fps over 1.5 s
    assert sum(quiet_window) <= 1  # 0.5 fps over 1.4 s


async def test_vision_down_voice_still_answers(mesh: dict[str, str], make_settings: Callable[..., Settings],
                                               vad_model: vad.VAD, dead_addr: str, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    synth.write_frame_folder(frames, synth.slide_frames(3.0, 4.0, width=160, height=90))
    (tmp_path / "session.toml").write_text(
        f'title = "vision down"\nroom = "{ROOM}"\n[screen]\nframes = "frames"\nfps = 4.0\n'
        '[[turns]]\nat = 0.5\ntext = "Hi there"\nspeak_seconds = 0.5\n'
        '[[turns]]\nat = 2.0\ntext = "What do you see on my screen?"\nspeak_seconds = 0.5\n'
    )
    settings = make_settings(billing_addr=mesh["billing"], router_addr=mesh["router"], vision_addr=dead_addr,
                             active_fps=4.0, idle_fps=4.0)
    result = await run_replay(SessionSpec.load(tmp_path), settings, vad_model=vad_model, speed=2.0,
                              emit_costs=False)
    assert [t.report.ok for t in result.turns if t.report] == [True, True]
    assert result.vision is not None
    assert result.vision.kept == 0 and result.vision.failures >= 1 and result.vision.offered > 0
    assert result.frames_read == 12
    assert result.welcome and "Lumen Desk" in result.welcome


async def test_replay_with_provider_keys_uses_the_real_plugins_and_bills_their_final_usage(
    mesh: dict[str, str], make_settings: Callable[..., Settings], vad_model: vad.VAD, dead_addr: str,
    tmp_path: Path,
) -> None:
    from frugal.devkit.emulators.deepgram import DeepgramEmulator
    from frugal.devkit.emulators.elevenlabs import ElevenLabsEmulator
    from frugal.gateway.replay.media import write_wav

    write_wav(tmp_path / "q.wav", synth.utterance(2.0, seed=11))
    (tmp_path / "session.toml").write_text(
        f'title = "keys"\nroom = "{ROOM}"\n'
        '[[turns]]\nat = 0.2\ntext = "Hi there"\n'
        '[[turns]]\nat = 0.5\naudio = "q.wav"\n'
    )
    from frugal.devkit.emulators.deepgram import DeepgramReply
    from frugal.gateway.job_metrics import GatewayMetricsServer

    metrics_server = GatewayMetricsServer(0, str(tmp_path / "job-metrics"), host="127.0.0.1")
    port = metrics_server.start()
    before = scrape_metrics(port)
    async with DeepgramEmulator() as dg, ElevenLabsEmulator() as xi:
        # Deepgram's endpointing, as the emulator plays it: the final result once the spoken part has arrived.
        dg.script(DeepgramReply(transcript="How much is the Business plan?", after_audio_s=2.5))
        settings = make_settings(billing_addr=mesh["billing"], router_addr=mesh["router"], vision_addr=dead_addr,
                                 deepgram_api_key="dg-key", deepgram_base_url=dg.base_url,
                                 elevenlabs_api_key="xi-key", elevenlabs_base_url=xi.base_url, welcome_message="")
        result = await run_replay(SessionSpec.load(tmp_path), settings, vad_model=vad_model, speed=2.0,
                                  emit_costs=False)
    assert [t.report.ok if t.report else None for t in result.turns] == [True, True]
    assert result.turns[1].heard == "How much is the Business plan?"  # Deepgram's (emulated) transcript
    assert dg.requests and xi.requests
    # Paid calls only: the STT gate's and the TTS cache's zero-cost records (for the session report) aside.
    stt = [e for e in result.speech_events if e.kind is CostKind.STT and "stt_gate" not in e.attributes]
    tts = [e for e in result.speech_events if e.kind is CostKind.TTS and "tts_cache" not in e.attributes]
    # Real providers: billed at their own prices, not estimated; the streamed STT usage arrives when the
    # stream closes, which happens before the meter stops listening.
    assert stt and all(e.provider == "deepgram" and not e.offline and e.cost_usd > 0 for e in stt)
    assert sum(e.usage.audio_seconds for e in stt) >= 1.5
    assert tts and all(e.provider == "elevenlabs" and not e.offline for e in tts)
    # The session's end put its whole-session cost in the session metrics, on the gateway's /metrics.
    after = scrape_metrics(port)
    metrics_server.stop()
    cost = result.session_cost
    assert cost is not None and cost.kinds["stt"].cost_usd > 0 and cost.kinds["tts"].cost_usd > 0
    for kind in ("stt", "tts", "llm"):
        key = f'session_list_price_usd_total{{kind="{kind}"}}'
        assert after[key] - before.get(key, 0.0) == pytest.approx(cost.kinds[kind].cost_usd, rel=1e-6, abs=1e-12)
    naive = 'session_naive_usd_total{kind="stt"}'
    assert after[naive] - before.get(naive, 0.0) == pytest.approx(cost.kinds["stt"].naive_usd, rel=1e-6)
    assert after["session_minutes_total"] - before.get("session_minutes_total", 0.0) == pytest.approx(cost.minutes)
    assert after["session_cost_usd_per_minute_count"] - before.get("session_cost_usd_per_minute_count", 0.0) == 1
    assert cost.minutes > 0 and cost.kinds["stt"].naive_usd >= cost.kinds["stt"].cost_usd
    # The session's length is the audio the STT gate had (media time), not the wall clock: this replay runs at
    # twice real time, so the wall clock would halve the minutes and double the cost per minute.
    streamed = sum(float(e.attributes["stream_seconds"]) for e in result.speech_events
                   if "stream_seconds" in e.attributes)
    assert streamed >= 2.0 and cost.session_seconds == pytest.approx(streamed)
