"""TTS reuse: a repeated utterance is served from the per-tenant, per-voice audio cache and not billed again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from livekit.plugins import elevenlabs

from frugal.devkit.emulators.elevenlabs import ElevenLabsEmulator
from frugal.devkit.speech import synthesized_pcm
from frugal.gateway.tts_cache import AudioStore, CacheConfig, CachedTTS, LocalStore, RedisStore, TtsAudioCache


@pytest.fixture
async def emu() -> AsyncIterator[ElevenLabsEmulator]:
    async with ElevenLabsEmulator() as e:
        yield e


async def _run(emu: ElevenLabsEmulator, store: AudioStore) -> None:
    async with aiohttp.ClientSession() as http:
        inner = elevenlabs.TTS(api_key="k", base_url=emu.base_url, http_session=http, encoding="pcm_24000")
        hits: list[tuple[str, int]] = []
        cache = TtsAudioCache(store)
        a = CachedTTS(inner, cache, tenant_id="org_a", voice="v1", on_hit=lambda t, n: hits.append((t, n)))
        line = "Sure, one moment."
        first = await synthesized_pcm(a, line)
        assert emu.billed_characters == len(line)
        second = await synthesized_pcm(a, "Sure,  one moment. ")  # the same line, other whitespace
        assert emu.billed_characters == len(line)  # not synthesised (nor billed) again
        assert second == first and len(first) > 0
        assert hits == [("Sure,  one moment. ", len("Sure,  one moment. "))]
        assert cache.stats.hits == 1 and cache.stats.misses == 1
        # another tenant, or another voice, never gets this audio
        b = CachedTTS(inner, cache, tenant_id="org_b", voice="v1")
        await synthesized_pcm(b, line)
        assert emu.billed_characters == 2 * len(line)
        c = CachedTTS(inner, cache, tenant_id="org_a", voice="v2")
        await synthesized_pcm(c, line)
        assert emu.billed_characters == 3 * len(line)


async def test_repeated_utterance_served_from_local_cache(emu: ElevenLabsEmulator) -> None:
    await _run(emu, LocalStore(1 << 20))


async def test_repeated_utterance_served_from_redis(emu: ElevenLabsEmulator, redis_client: aioredis.Redis) -> None:
    await _run(emu, RedisStore(redis_client))


async def test_long_answers_and_disabled_cache_are_synthesised_every_time(emu: ElevenLabsEmulator) -> None:
    async with aiohttp.ClientSession() as http:
        inner = elevenlabs.TTS(api_key="k", base_url=emu.base_url, http_session=http, encoding="pcm_24000")
        off = CachedTTS(inner, TtsAudioCache(LocalStore(1 << 20), CacheConfig(enabled=False)), tenant_id="org_a",
                        voice="v1")
        await synthesized_pcm(off, "Hello.")
        await synthesized_pcm(off, "Hello.")
        assert emu.billed_characters == 12
        small = CachedTTS(inner, TtsAudioCache(LocalStore(1 << 20), CacheConfig(max_chars=10)), tenant_id="org_a",
                          voice="v1")
        long = "This sentence is longer than ten characters."
        await synthesized_pcm(small, long)
        await synthesized_pcm(small, long)
        assert emu.billed_characters == 12 + 2 * len(long)


async def test_local_store_is_bounded() -> None:
    store = LocalStore(100)
    await store.put("a", b"x" * 60, 10)
    await store.put("b", b"y" * 60, 10)
    assert await store.get("a") is None and await store.get("b") == b"y" * 60
    with pytest.raises(ValueError):
        CacheConfig(max_chars=0)


async def test_a_hit_is_recorded_through_the_one_recorder_on_the_cost_stream(
    emu: ElevenLabsEmulator, redis_client: aioredis.Redis
) -> None:
    """The gateway hook: a miss is billed by the meter (the engine's own usage), a hit leaves a zero-cost event
    built by the same recorder (own attempt id, `saved_by`), on the same durable stream."""
    from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent, CostEventProducer, CostKind
    from frugal.common.pricing import default_catalog
    from frugal.gateway.speech import ProviderLabel, SpeechCostMeter
    from frugal.gateway.tts_cache import TtsCacheSettings, maybe_cache

    producer = CostEventProducer(redis_client, name="t-tts-hit")
    meter = SpeechCostMeter(producer, default_catalog(), tenant_id="org_a", session_id="s-hit")
    label = ProviderLabel(CostKind.TTS, "elevenlabs", "eleven_flash_v2_5", False, "eleven_flash_v2_5")
    async with aiohttp.ClientSession() as http:
        inner = elevenlabs.TTS(api_key="k", base_url=emu.base_url, http_session=http, encoding="pcm_24000",
                               model="eleven_flash_v2_5")
        meter.watch_tts(inner, label)
        engine = maybe_cache(inner, tenant_id="org_a", voice="v1", session_id="s-hit", meter=meter,
                             provider="elevenlabs", model="eleven_flash_v2_5", offline=False,
                             settings=TtsCacheSettings(), store=LocalStore(1 << 20))
        assert isinstance(engine, CachedTTS)
        for _ in range(2):
            await synthesized_pcm(engine, "Sure, one moment.")
        await meter.aclose()
    hits = [e for e in meter.events if e.attributes.get("tts_cache") == "hit"]
    assert len(hits) == 1 and emu.billed_characters == len("Sure, one moment.")
    hit = hits[0]
    assert hit.cost_usd == 0 and hit.usage.characters == 0 and hit.attributes["saved_by"] == "tts_cache"
    assert hit.attributes["served_characters"] == str(len("Sure, one moment.")) and hit.attributes["attempt_nonce"]
    entries: Any = await redis_client.xrange(COST_EVENTS_STREAM)
    stream = [CostEvent.from_stream_fields(dict(f)) for _, f in entries]
    assert hit.event_id in {e.event_id for e in stream}


async def test_the_worker_keeps_the_cache_in_the_cache_redis_never_in_the_cost_events_one() -> None:
    """Each livekit job runs in a process of its own: the cache lives in REDIS_URL so a tenant's greeting
    outlives the session; when REDIS_URL is also the (noeviction) cost-events Redis, audio stays in-process."""
    from frugal.gateway.config import Settings
    from frugal.gateway.tts_cache import TtsCacheSettings
    from frugal.gateway.worker import tts_cache_redis

    split = Settings(grpc_port=0, metrics_port=0, redis_url="redis://127.0.0.1:1/0",
                     cost_events_redis_url="redis://127.0.0.1:2/0")
    client = tts_cache_redis(split, TtsCacheSettings())
    assert client is not None
    try:
        assert client.connection_pool.connection_kwargs["port"] == 1
    finally:
        await client.aclose()
    shared = Settings(grpc_port=0, metrics_port=0, redis_url="redis://127.0.0.1:1/0")
    assert tts_cache_redis(shared, TtsCacheSettings()) is None
    assert tts_cache_redis(split, TtsCacheSettings(store="local")) is None
    assert tts_cache_redis(split, TtsCacheSettings(enabled=False)) is None
