"""No paid speech request while its cost could not be recorded durably (frugal.gateway.spend_guard): the real
ElevenLabs and Deepgram plugins against their emulators, a real CostEventProducer whose spool fills up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit.plugins import deepgram, elevenlabs

from frugal.common.cost_events import CostEventProducer, CostKind
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.usage import UsageAmounts
from frugal.devkit.devstack import free_port
from frugal.devkit.emulators.deepgram import DeepgramEmulator
from frugal.devkit.emulators.elevenlabs import ElevenLabsEmulator
from frugal.devkit.sessions.catalog import SessionDef, Turn
from frugal.devkit.sessions.media import mic_track
from frugal.devkit.speech import run_stt_stream, synthesized_pcm
from frugal.gateway.speech import OFFLINE_SECONDS_PER_CHAR, ProviderLabel, SpeechCostMeter
from frugal.gateway.spend_guard import SpendGuardedTTS, guard_tts
from frugal.gateway.stt_gate import SAMPLE_RATE, GateSettings, maybe_gate
from frugal.gateway.tts_cache import CachedTTS, LocalStore, TtsAudioCache

# One question in twelve seconds of room audio.
ASK = SessionDef(name="ask", title="one question", room="tenant_org_x_ask", seconds=12.0, seed=11,
                 turns=(Turn(3.0, "Can you check the invoice total for March?", "x"),))


class Switch:
    """A why-not-spend source the test turns on and off; also the meter side the STT hook reads
    (maybe_gate takes the session meter's `why_not_spend` and `record_free`)."""

    def __init__(self) -> None:
        self.why: str | None = None
        self.records: list[dict[str, str]] = []

    def __call__(self) -> str | None:
        return self.why

    def why_not_spend(self) -> str | None:
        return self.why

    def record_free(self, *, kind: CostKind, provider: str, model: str, offline: bool, saved_by: str,
                    attributes: dict[str, str]) -> Any:
        self.records.append(attributes)


async def test_tts_sends_nothing_while_costs_cannot_be_recorded_and_caches_no_silence() -> None:
    switch = Switch()
    line, greeting = "Sure, one moment.", "Hello, I am the assistant."
    async with ElevenLabsEmulator() as emu, aiohttp.ClientSession() as http:
        inner = elevenlabs.TTS(api_key="k", base_url=emu.base_url, http_session=http, encoding="pcm_24000")
        guarded = guard_tts(inner, offline=False, why_not=switch)
        assert isinstance(guarded, SpendGuardedTTS)
        assert guard_tts(inner, offline=True, why_not=switch) is inner  # the offline stand-in costs nothing
        engine = CachedTTS(guarded, TtsAudioCache(LocalStore(1 << 20)), tenant_id="org_a", voice="v1")
        heard = await synthesized_pcm(engine, greeting)  # cached before the outage
        assert emu.billed_characters == len(greeting) and heard != bytes(len(heard))
        switch.why = "cost-event spool full"
        silent = await synthesized_pcm(engine, line)
        assert emu.billed_characters == len(greeting) and len(emu.requests) == 1
        # the offline stand-in's silence, as long as the line would take to say (to the emitter's frame)
        assert silent == bytes(len(silent))
        assert abs(len(silent) // 2 - 24000 * OFFLINE_SECONDS_PER_CHAR * len(line)) <= 480
        assert guarded.refusals.refused == 1
        # a cached phrase costs nothing: it still plays, and nothing is asked of the guard or the provider
        assert await synthesized_pcm(engine, greeting) == heard
        assert len(emu.requests) == 1 and guarded.refusals.refused == 1
        switch.why = None
        spoken = await synthesized_pcm(engine, line)
        assert emu.billed_characters == len(greeting) + len(line)  # the refused line was not cached as silence
        assert spoken != bytes(len(spoken))
        assert await synthesized_pcm(engine, line) == spoken  # now from the cache
        assert emu.billed_characters == len(greeting) + len(line)


async def test_meter_refuses_paid_speech_once_its_spool_is_full(tmp_path: Path) -> None:
    """The meter's reason comes from its producer: Redis for cost events down, a 4 KiB spool."""
    producer = CostEventProducer(create_redis(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5),
                                 name="gw-guard", spool_dir=tmp_path / "spool", spool_max_bytes=4096)
    meter = SpeechCostMeter(producer, default_catalog(), tenant_id="org_a", session_id="s-guard")
    label = ProviderLabel(CostKind.TTS, "elevenlabs", "eleven_flash_v2_5", False, "eleven_flash_v2_5")
    try:
        assert meter.why_not_spend() is None
        why = None
        for n in range(1, 200):  # 4 KiB hold a few events; 200 means the limit is not enforced
            meter.record(label, UsageAmounts(characters=40, requests=1), f"req-{n}")
            for _ in range(200):
                if producer.pending >= n:
                    break
                await asyncio.sleep(0.01)
            assert producer.pending == n  # spooled, none lost
            if (why := meter.why_not_spend()) is not None:
                break
        assert why is not None and "spool full" in why
    finally:
        await meter.aclose()
        await producer.aclose()


async def test_gated_stt_holds_back_audio_while_costs_cannot_be_recorded() -> None:
    switch = Switch()
    pcm, _ = mic_track(ASK)

    async def billed(why: str | None, gate_on: bool = True) -> tuple[float, float, float]:
        switch.why = why
        switch.records.clear()
        async with DeepgramEmulator() as emu, aiohttp.ClientSession() as http:
            inner = deepgram.STT(api_key="k", base_url=emu.base_url, http_session=http, model="nova-3",
                                 sample_rate=SAMPLE_RATE)
            engine = maybe_gate(inner, offline=False, settings=GateSettings(enabled=gate_on), meter=switch)
            await run_stt_stream(engine, pcm, SAMPLE_RATE)
            gate = engine.gates[0]  # type: ignore[attr-defined]
            if gate_on:  # the stream's zero-cost record says what was really sent
                assert float(switch.records[-1]["forwarded_seconds"]) == pytest.approx(
                    gate.stats.forwarded_s - gate.stats.withheld_s, abs=0.01)
            else:  # the lever is off: it saved nothing, so it records nothing
                assert switch.records == []
            return emu.billed_audio_seconds, gate.stats.forwarded_s, gate.stats.withheld_s

    sent, forwarded, withheld = await billed(None)
    assert sent == pytest.approx(forwarded, abs=0.1) and sent > 1.0 and withheld == 0
    sent, forwarded, withheld = await billed("cost-event spool full")
    assert sent == 0 and withheld == pytest.approx(forwarded) and withheld > 1.0
    # With the gate lever off the stream carries all the audio, and still none while costs cannot be recorded.
    sent, forwarded, withheld = await billed(None, gate_on=False)
    assert sent == pytest.approx(ASK.seconds, abs=0.1) and withheld == 0
    sent, forwarded, withheld = await billed("cost-event spool full", gate_on=False)
    assert sent == 0 and withheld == pytest.approx(ASK.seconds, abs=0.1)


async def test_a_session_built_by_the_gateway_speaks_no_paid_tts_once_its_spool_is_full(tmp_path: Path) -> None:
    """The wiring in build_session: the session's TTS asks the session meter, whose producer's spool is full."""
    from frugal.api.billing.v1 import billing_pb2
    from frugal.gateway.agent import build_session, load_vad
    from frugal.gateway.clients import MeshClients, ResolvedTenant
    from frugal.gateway.config import Settings

    producer = CostEventProducer(create_redis(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5),
                                 name="gw-session", spool_dir=tmp_path / "spool", spool_max_bytes=4096)
    async with ElevenLabsEmulator() as emu, aiohttp.ClientSession() as http:
        settings = Settings(grpc_port=0, metrics_port=0, log_format="text", elevenlabs_api_key="k",
                            elevenlabs_base_url=emu.base_url, elevenlabs_encoding="pcm_24000")
        clients = MeshClients(settings)
        tenant = ResolvedTenant("org_a", "tenant_org_a_room", billing_pb2.TenantPolicy(tenant_id="org_a"))
        parts = build_session(settings, clients, tenant, "s-wired", vad_model=load_vad(), producer=producer,
                              catalog=default_catalog(), http_session=http, user_away_timeout=None,
                              tts_store=LocalStore(1 << 20))
        engine = parts.session.tts
        assert engine is not None
        try:
            greeting = await synthesized_pcm(engine, "Hello there.")
            assert len(emu.requests) == 1 and greeting != bytes(len(greeting))  # paid while the spool has room
            for n in range(200):
                parts.meter.record(parts.tts_label, UsageAmounts(characters=40, requests=1), f"r{n}")
                await asyncio.sleep(0.02)
                if parts.meter.why_not_spend() is not None:
                    break
            else:
                pytest.fail("the session meter never saw the spool full")
            silent = await synthesized_pcm(engine, "A different sentence, not cached.")
            assert len(emu.requests) == 1 and silent == bytes(len(silent))  # nothing more sent to ElevenLabs
            assert await synthesized_pcm(engine, "Hello there.") == greeting  # a cached phrase still plays
            assert len(emu.requests) == 1
        finally:
            await parts.meter.aclose()
            await clients.aclose()
            await producer.aclose()


async def test_streaming_tts_opens_no_provider_stream_while_costs_cannot_be_recorded() -> None:
    """With the audio cache off the session streams text to ElevenLabs (websocket): the guard decides when the
    utterance's stream opens."""
    switch = Switch()
    sentence = "The business plan costs forty dollars per seat."

    async def streamed(engine: SpendGuardedTTS) -> bytes:
        stream = engine.stream()
        try:
            stream.push_text(sentence)
            stream.end_input()
            return b"".join([ev.frame.data.tobytes() async for ev in stream])
        finally:
            await stream.aclose()

    async with ElevenLabsEmulator() as emu, aiohttp.ClientSession() as http:
        inner = elevenlabs.TTS(api_key="k", base_url=emu.base_url, http_session=http, encoding="pcm_24000")
        engine = SpendGuardedTTS(inner, switch)
        assert engine.capabilities.streaming  # the guard keeps the engine's own streaming
        switch.why = "cost-event spool full"
        silent = await asyncio.wait_for(streamed(engine), 30)
        assert not emu.requests and silent and silent == bytes(len(silent))
        switch.why = None
        spoken = await asyncio.wait_for(streamed(engine), 30)
        [req] = emu.requests
        assert req.mode == "websocket" and spoken != bytes(len(spoken))
        assert engine.refusals.refused == 1
