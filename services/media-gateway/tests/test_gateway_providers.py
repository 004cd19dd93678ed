"""The real livekit Deepgram STT and ElevenLabs TTS plugins, built the way the gateway builds them
(`speech.build_stt` / `build_tts` with DEEPGRAM_BASE_URL / ELEVENLABS_BASE_URL), against the local
emulators of frugal.devkit.emulators speaking the providers' wire protocols (websockets and HTTP). No LiveKit
server, no network."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError, stt, tts
from livekit.plugins import elevenlabs

from frugal.common.cost_events import CostEvent, CostKind
from frugal.common.pricing import default_catalog
from frugal.devkit.emulators.deepgram import DeepgramEmulator, DeepgramReply
from frugal.devkit.emulators.elevenlabs import ElevenLabsEmulator, ElevenLabsReply
from frugal.gateway.config import Settings
from frugal.gateway.speech import SpeechCostMeter, build_stt, build_tts

WAV = Path(__file__).resolve().parents[3] / "demo" / "session" / "audio" / "pricing-question.wav"
DG_KEY = "dg-test-key"
XI_KEY = "xi-test-key"
TRANSCRIPT = "How much does the business plan cost?"
SENTENCE = "The business plan costs forty dollars per seat."
NO_RETRY = APIConnectOptions(max_retry=0, timeout=10.0)
WAIT_S = 30.0  # safety net against a hang on a loaded machine, never a measured assertion


@pytest_asyncio.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"grpc_port": 0, "metrics_port": 0, "log_format": "text"}
    base.update(overrides)
    return Settings(**base)


def wav_frames() -> tuple[bytes, list[rtc.AudioFrame]]:
    if not WAV.exists():
        pytest.skip(f"{WAV} missing (regenerate with `python -m frugal.devkit.demo.synth demo/session`)")
    with wave.open(str(WAV)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = w.readframes(w.getnframes())
    step = 2 * 1600  # 100 ms frames
    frames = [rtc.AudioFrame(pcm[i:i + step], 16000, 1, len(pcm[i:i + step]) // 2) for i in range(0, len(pcm), step)]
    return pcm, frames


def watch_meter(meter: SpeechCostMeter, engine: stt.STT[Any] | tts.TTS[Any]) -> asyncio.Event:
    """Set once the engine reported metrics; registered after the meter's own listener, so it has recorded."""
    seen = asyncio.Event()
    engine.on("metrics_collected", lambda _m: seen.set() if meter.events else None)
    return seen


async def wait_for_events(meter: SpeechCostMeter, kind: CostKind, seen: asyncio.Event) -> list[CostEvent]:
    await asyncio.wait_for(seen.wait(), WAIT_S)
    return [e for e in meter.events if e.kind == kind]


async def test_deepgram_plugin_streams_audio_and_gets_the_scripted_transcript(
    http_session: aiohttp.ClientSession,
) -> None:
    pcm, frames = wav_frames()
    catalog = default_catalog()
    async with DeepgramEmulator(api_keys=(DG_KEY,)) as emu:
        emu.script(DeepgramReply(transcript=TRANSCRIPT))
        engine, label = build_stt(settings(deepgram_api_key=DG_KEY, deepgram_base_url=emu.base_url),
                                  http_session=http_session)
        assert label.provider == "deepgram" and label.model == "nova-3" and not label.offline
        meter = SpeechCostMeter(None, catalog, tenant_id="org_lumen", session_id="s-dg-1")
        meter.watch_stt(engine, label)
        seen = watch_meter(meter, engine)
        stream = engine.stream(conn_options=NO_RETRY)
        try:
            for frame in frames:
                stream.push_frame(frame)
            stream.flush()
            stream.end_input()

            async def first_final() -> stt.SpeechEvent:
                async for ev in stream:
                    if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                        return ev
                raise AssertionError("stream ended without a final transcript")

            final = await asyncio.wait_for(first_final(), WAIT_S)
            stt_events = await wait_for_events(meter, CostKind.STT, seen)
        finally:
            await stream.aclose()
            await meter.aclose()
            await engine.aclose()

    assert final.alternatives[0].text == TRANSCRIPT
    assert [str(w) for w in final.alternatives[0].words or []] == TRANSCRIPT.split()
    [req] = emu.requests
    assert req.mode == "live" and req.api_key == DG_KEY
    assert req.query["model"] == "nova-3" and req.query["encoding"] == "linear16"
    assert req.query["sample_rate"] == "16000" and req.query["channels"] == "1"
    # every byte of the WAV reached the provider, in order, and the plugin asked for the final result
    assert bytes(req.audio) == pcm
    assert "Finalize" in req.control
    # (c) the gateway's cost path: the audio seconds pushed, priced by the catalog for nova-3
    first = stt_events[0]
    seconds = len(pcm) / 32000
    assert first.provider == "deepgram" and first.model == "nova-3" and first.offline is False
    assert first.usage.audio_seconds == pytest.approx(seconds, abs=0.002)
    assert first.usage.estimated is False
    assert first.cost_usd == pytest.approx(catalog.cost("nova-3", first.usage))
    assert first.cost_usd == pytest.approx(seconds * 0.00012833, rel=0.01)


async def test_deepgram_bad_key_is_a_401(http_session: aiohttp.ClientSession) -> None:
    async with DeepgramEmulator(api_keys=(DG_KEY,)) as emu:
        engine, _ = build_stt(settings(deepgram_api_key="wrong-key", deepgram_base_url=emu.base_url),
                              http_session=http_session)
        stream = engine.stream(conn_options=NO_RETRY)
        try:
            stream.push_frame(rtc.AudioFrame(bytes(3200), 16000, 1, 1600))
            stream.end_input()

            async def drain() -> None:
                async for _ in stream:
                    pass

            with pytest.raises(APIStatusError) as err:
                await asyncio.wait_for(drain(), WAIT_S)
        finally:
            await stream.aclose()
            await engine.aclose()
    assert err.value.status_code == 401
    assert [r.api_key for r in emu.requests] == ["wrong-key"] and not emu.requests[0].audio


async def test_elevenlabs_plugin_streams_text_and_plays_the_scripted_pcm(http_session: aiohttp.ClientSession) -> None:
    scripted = (np.sin(np.arange(24000 * 3 // 4) / 7.0) * 9000).astype("<i2").tobytes()  # 0.75 s, 24 kHz
    async with ElevenLabsEmulator(api_keys=(XI_KEY,)) as emu:
        emu.script(ElevenLabsReply(pcm=scripted))
        engine = elevenlabs.TTS(api_key=XI_KEY, base_url=emu.base_url, model="eleven_flash_v2_5",
                                encoding="pcm_24000", voice_id="voice-abc", http_session=http_session)
        try:
            stream = engine.stream(conn_options=NO_RETRY)
            try:
                stream.push_text(SENTENCE)
                stream.end_input()

                async def collect() -> list[tts.SynthesizedAudio]:
                    return [ev async for ev in stream]

                audio = await asyncio.wait_for(collect(), WAIT_S)
            finally:
                await stream.aclose()
        finally:
            await engine.aclose()

    received = b"".join(a.frame.data.tobytes() for a in audio)
    assert audio and all(a.frame.sample_rate == 24000 and a.frame.num_channels == 1 for a in audio)
    assert received == scripted
    [req] = emu.requests
    assert req.mode == "websocket" and req.api_key == XI_KEY and req.voice_id == "voice-abc"
    assert req.model_id == "eleven_flash_v2_5" and req.output_format == "pcm_24000"
    assert req.text.strip() == SENTENCE
    assert any(m.get("close_context") for m in req.messages)


async def test_elevenlabs_gateway_tts_mp3_and_cost_events(http_session: aiohttp.ClientSession) -> None:
    catalog = default_catalog()
    async with ElevenLabsEmulator(api_keys=(XI_KEY,), seconds_per_char=0.05) as emu:
        engine, label = build_tts(settings(elevenlabs_api_key=XI_KEY, elevenlabs_base_url=emu.base_url,
                                           elevenlabs_encoding="mp3_22050_32"), http_session=http_session)
        assert label.provider == "elevenlabs" and label.model == "eleven_flash_v2_5" and not label.offline
        meter = SpeechCostMeter(None, catalog, tenant_id="org_lumen", session_id="s-xi-1")
        meter.watch_tts(engine, label)
        seen = watch_meter(meter, engine)
        try:
            # synthesize(): the HTTP /stream endpoint, mp3 output (ELEVENLABS_ENCODING) decoded by livekit
            chunked = engine.synthesize(SENTENCE, conn_options=NO_RETRY)
            try:
                frames = await asyncio.wait_for(chunked.collect(), WAIT_S)
            finally:
                await chunked.aclose()
            events = await wait_for_events(meter, CostKind.TTS, seen)
        finally:
            await meter.aclose()
            await engine.aclose()

    [req] = emu.requests
    assert req.mode == "http" and req.api_key == XI_KEY and req.output_format.startswith("mp3_")
    assert req.body is not None and req.body["text"] == SENTENCE and req.body["model_id"] == "eleven_flash_v2_5"
    expected_s = 0.05 * len(SENTENCE)
    # mp3 adds encoder padding, never removes audio
    assert expected_s - 0.01 <= frames.duration <= expected_s + 0.2
    assert np.abs(np.frombuffer(frames.data, dtype=np.int16)).max() > 1000  # a tone, not silence
    [event] = events
    assert event.usage.characters == len(SENTENCE) and event.offline is False
    assert event.cost_usd == pytest.approx(catalog.cost("eleven_flash_v2_5", event.usage))
    assert event.cost_usd == pytest.approx(len(SENTENCE) * 0.00005)


async def test_elevenlabs_bad_key_is_a_401(http_session: aiohttp.ClientSession) -> None:
    async with ElevenLabsEmulator(api_keys=(XI_KEY,)) as emu:
        engine, _ = build_tts(settings(elevenlabs_api_key="wrong", elevenlabs_base_url=emu.base_url),
                              http_session=http_session)
        try:
            stream = engine.stream(conn_options=NO_RETRY)
            try:
                stream.push_text(SENTENCE)
                stream.end_input()

                async def drain() -> None:
                    async for _ in stream:
                        pass

                with pytest.raises(APIStatusError) as err:
                    await asyncio.wait_for(drain(), WAIT_S)
            finally:
                await stream.aclose()
        finally:
            await engine.aclose()
    assert err.value.status_code == 401
    assert [r.api_key for r in emu.requests] == ["wrong"] and not emu.requests[0].texts


async def test_an_utterance_cut_off_mid_synthesis_is_still_billed(http_session: aiohttp.ClientSession) -> None:
    """Barge-in: the user speaks over the agent and the TTS request is closed before its audio has all come.
    ElevenLabs bills the characters it was sent, so the cut-off request leaves its cost event too."""
    catalog = default_catalog()
    async with ElevenLabsEmulator(api_keys=(XI_KEY,), latency_s=0.5) as emu:
        engine, label = build_tts(settings(elevenlabs_api_key=XI_KEY, elevenlabs_base_url=emu.base_url),
                                  http_session=http_session)
        meter = SpeechCostMeter(None, catalog, tenant_id="org_lumen", session_id="s-xi-cut")
        meter.watch_tts(engine, label)
        seen = watch_meter(meter, engine)
        try:
            chunked = engine.synthesize(SENTENCE, conn_options=NO_RETRY)
            for _ in range(100):  # the request has reached the provider
                if emu.requests:
                    break
                await asyncio.sleep(0.01)
            assert emu.requests
            await chunked.aclose()
            events = await wait_for_events(meter, CostKind.TTS, seen)
        finally:
            await meter.aclose()
            await engine.aclose()
    [ev] = events
    assert ev.usage.characters == len(SENTENCE) and ev.cost_usd > 0 and not ev.offline
