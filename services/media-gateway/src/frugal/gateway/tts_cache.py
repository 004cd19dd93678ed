"""TTS reuse: repeated utterances (greetings, confirmations, fixed notices, repeated answers) are served from a
per-tenant, per-voice audio cache instead of being synthesised (and billed per character) again.

The key is the tenant, the voice, the model, the output sample rate and the normalised text: one tenant's
cached audio never plays in another tenant's session, and a voice change never plays the old voice. Audio is
stored as 16-bit PCM, in Redis (`REDIS_URL`, the cache Redis, with a TTL) or in a bounded in-process LRU.
Only utterances up to `max_chars` are cached (long answers rarely repeat word for word).

`CachedTTS` wraps a livekit `tts.TTS`: a miss synthesises through the wrapped engine (which reports its own
usage, so billing sees exactly the characters sent) and stores the audio; a hit plays the stored audio and
calls `on_hit` (nothing was paid; the session report counts the characters it saved).

Switch: `TTS_CACHE_ENABLED` (gateway settings), on by default.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from livekit.agents import tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import RedisError

from frugal.common.cost_events import CostEvent, CostKind
from frugal.gateway.spend_guard import NotCalledStream
from frugal.gateway.wrapped_engine import ReportsInnerEngine

log = logging.getLogger(__name__)

KEY_PREFIX = "tts-audio:v1:"
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    max_chars: int = 400
    ttl_s: int = 7 * 24 * 3600
    local_max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_chars < 1 or self.ttl_s < 1 or self.local_max_bytes < 1:
            raise ValueError("CacheConfig: max_chars, ttl_s and local_max_bytes must be positive")


def normalise(text: str) -> str:
    """Whitespace collapsed; case and punctuation kept (they change how a line is spoken)."""
    return _SPACE.sub(" ", text).strip()


def cache_key(tenant_id: str, voice: str, model: str, sample_rate: int, text: str) -> str:
    digest = hashlib.sha256("\x1f".join((tenant_id, voice, model, str(sample_rate), normalise(text))).encode())
    return f"{KEY_PREFIX}{tenant_id}:{digest.hexdigest()}"


class AudioStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, pcm: bytes, ttl_s: int) -> None: ...


class LocalStore:
    """Bounded in-process LRU (by bytes)."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    async def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    async def put(self, key: str, pcm: bytes, ttl_s: int) -> None:
        if len(pcm) > self._max:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._items[key] = pcm
        self._size += len(pcm)
        while self._size > self._max:
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted)


class RedisStore:
    """The cache Redis (eviction allowed). An outage degrades to synthesising: never fails the utterance."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(key)
        except (RedisError, OSError) as err:
            log.warning("tts cache read failed: %s", err)
            return None
        return bytes(value) if isinstance(value, bytes | bytearray) else None  # a decoding client: a miss

    async def put(self, key: str, pcm: bytes, ttl_s: int) -> None:
        try:
            await self._redis.set(key, pcm, ex=ttl_s)
        except (RedisError, OSError) as err:
            log.warning("tts cache write failed: %s", err)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    hit_characters: int = 0
    synthesised_characters: int = 0
    uncacheable: int = 0


class TtsAudioCache:
    def __init__(self, store: AudioStore, config: CacheConfig | None = None) -> None:
        self.store = store
        self.config = config or CacheConfig()
        self.stats = CacheStats()

    def cacheable(self, text: str) -> bool:
        n = len(normalise(text))
        return self.config.enabled and 0 < n <= self.config.max_chars

    async def get(self, key: str) -> bytes | None:
        return await self.store.get(key)

    async def put(self, key: str, pcm: bytes) -> None:
        await self.store.put(key, pcm, self.config.ttl_s)


HitCallback = Callable[[str, int], Awaitable[None] | None]  # (text, characters served)


class CachedTTS(ReportsInnerEngine, tts.TTS[Any]):
    """A per-tenant, per-voice audio cache in front of a TTS engine (non-streaming: one utterance per call,
    so the session's sentence splitting makes every repeated sentence a candidate)."""

    inner: tts.TTS[Any]

    def __init__(self, inner: tts.TTS[Any], cache: TtsAudioCache, *, tenant_id: str, voice: str,
                 on_hit: HitCallback | None = None) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False), sample_rate=inner.sample_rate,
                         num_channels=1)
        self.inner = inner
        self.cache = cache
        self.tenant_id = tenant_id
        self.voice = voice
        self.on_hit = on_hit

    def key(self, text: str) -> str:
        return cache_key(self.tenant_id, self.voice, self.inner.model, self.sample_rate, text)

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _CachedStream(tts=self, input_text=text, conn_options=conn_options)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CachedStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        owner = self._tts
        assert isinstance(owner, CachedTTS)
        cache, text = owner.cache, self.input_text
        key = owner.key(text) if cache.cacheable(text) else None
        if key is not None and (pcm := await cache.get(key)) is not None:
            cache.stats.hits += 1
            cache.stats.hit_characters += len(text)
            output_emitter.initialize(request_id=f"cache-{uuid.uuid4().hex[:12]}", sample_rate=owner.sample_rate,
                                      num_channels=1, mime_type="audio/pcm")
            output_emitter.push(pcm)
            output_emitter.flush()
            if owner.on_hit is not None:
                pending = owner.on_hit(text, len(text))
                if pending is not None:
                    await pending
            return
        if key is None:
            cache.stats.uncacheable += 1
        else:
            cache.stats.misses += 1
        cache.stats.synthesised_characters += len(text)
        output_emitter.initialize(request_id=uuid.uuid4().hex, sample_rate=owner.sample_rate, num_channels=1,
                                  mime_type="audio/pcm")
        chunks: list[bytes] = []
        async with owner.inner.synthesize(text, conn_options=self._conn_options) as stream:
            async for ev in stream:
                data = ev.frame.data.tobytes()
                chunks.append(data)
                output_emitter.push(data)
        output_emitter.flush()
        # A refused synthesis (frugal.gateway.spend_guard) played silence: not the phrase's audio.
        if key is not None and chunks and not isinstance(stream, NotCalledStream):
            await cache.put(key, b"".join(chunks))


def hit_attributes(text: str) -> dict[str, str]:
    """What a zero-cost record of a cache hit carries: nothing was paid, but the session report (and GetUsage's
    naive baseline) must know the characters a naive agent would have synthesised."""
    return {"tts_cache": "hit", "served_characters": str(len(text))}


class TtsCacheSettings(BaseSettings):
    """`TTS_CACHE_ENABLED`, `TTS_CACHE_MAX_CHARS`, `TTS_CACHE_LOCAL_MAX_BYTES`, `TTS_CACHE_STORE`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="TTS_CACHE_")

    enabled: bool = True
    max_chars: int = Field(default=400, ge=1, le=5000)
    local_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # redis: the cache Redis (REDIS_URL), shared by every job process and kept across sessions (livekit runs
    # each job in a process of its own, so a process-local cache would forget a tenant's greeting after every
    # session); local: the in-process LRU only.
    store: Literal["redis", "local"] = "redis"


_local: LocalStore | None = None


def _process_store(max_bytes: int) -> LocalStore:
    """One bounded store per gateway process, shared by its sessions (the key holds the tenant)."""
    global _local
    if _local is None:
        _local = LocalStore(max_bytes)
    return _local


class _Meter(Protocol):
    """What the hook needs of the session's SpeechCostMeter: its zero-cost record (through the recorder)."""

    def record_free(self, *, kind: CostKind, provider: str, model: str, offline: bool, saved_by: str,
                    attributes: dict[str, str]) -> CostEvent: ...

    def utterance(self) -> dict[str, str]: ...


def maybe_cache(engine: tts.TTS[Any], *, tenant_id: str, voice: str, session_id: str, meter: _Meter,
                provider: str, model: str, offline: bool, settings: TtsCacheSettings | None = None,
                store: AudioStore | None = None) -> tts.TTS[Any]:
    """The gateway hook: the session's TTS behind the audio cache when the lever is on. Call it AFTER the cost
    meter watches `engine`: the meter must see the wrapped engine's usage (what was really synthesised). Each
    hit is recorded by the meter through the one recorder (zero cost, `tts_cache=hit`, the characters served)."""
    cfg = settings or TtsCacheSettings()
    if not cfg.enabled:
        return engine
    cache = TtsAudioCache(store or _process_store(cfg.local_max_bytes),
                          CacheConfig(enabled=True, max_chars=cfg.max_chars, local_max_bytes=cfg.local_max_bytes))
    def on_hit(text: str, _chars: int) -> None:
        try:
            meter.record_free(kind=CostKind.TTS, provider=provider, model=model, offline=offline,
                              saved_by="tts_cache", attributes=hit_attributes(text) | meter.utterance())
        except Exception:  # a record of money NOT spent: never fail the utterance for it
            log.exception("could not record a TTS cache hit")

    return CachedTTS(engine, cache, tenant_id=tenant_id, voice=voice, on_hit=on_hit)
