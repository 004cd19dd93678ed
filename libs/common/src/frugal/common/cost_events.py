"""Cost events: one per paid call, on the Redis Stream "cost-events", each with an idempotency key.

Producers compute `cost_usd` from the usage the provider reported, priced by the catalog. Billing writes
each event once (unique `event_id`) and derives baselines with :func:`baseline_cost`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import RedisError

from frugal.common.cost_spool import SpoolFile, default_spool_dir, open_own_spool, orphan_spools, spool_prefix
from frugal.common.metrics import COST_EVENTS_EMITTED, COST_EVENTS_PENDING
from frugal.common.pricing import PriceCatalog, TierName
from frugal.common.tenancy import validate_tenant_id
from frugal.common.usage import UsageAmounts

COST_EVENTS_STREAM = "cost-events"
SCHEMA_VERSION = 1
_EVENT_NS = uuid.UUID("6f1d8c57-3f0b-4a43-9c36-0f5d8a3c2b10")

log = logging.getLogger(__name__)

# The spool's metrics (default registry; every service exposes them). Alert on cost_events_spool_full == 1:
# the service refuses paid calls until Redis takes the backlog.
COST_EVENTS_SPOOLED = Counter("cost_events_spooled_total", "Cost events written to the disk spool.", ["kind"])
COST_EVENTS_REPLAYED = Counter("cost_events_replayed_total", "Spooled cost events replayed to the stream.")
COST_SPOOL_BYTES = Gauge("cost_events_spool_bytes", "Bytes of spooled cost events not yet in Redis.")
COST_SPOOL_FULL = Gauge(
    "cost_events_spool_full", "1 when the spool is full or unwritable: paid calls are refused (UNAVAILABLE)."
)
COST_SPEND_REFUSED = Counter(
    "cost_events_spend_refused_total", "Paid calls refused because their cost could not be recorded.", ["reason"]
)


class CostKind(StrEnum):
    LLM = "llm"
    VISION = "vision"
    EMBEDDING = "embedding"
    RERANK = "rerank"
    STT = "stt"
    TTS = "tts"


def make_event_id(*parts: str) -> str:
    """A deterministic idempotency key: the same call (service, turn, attempt...) gives the same id."""
    return str(uuid.uuid5(_EVENT_NS, "\x1f".join(parts)))


class CostEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(min_length=8, max_length=128)
    tenant_id: str
    session_id: str | None = None
    request_id: str | None = None
    service: str
    kind: CostKind
    provider: str
    model: str
    tier: TierName | None = None
    usage: UsageAmounts
    cost_usd: float = Field(ge=0)
    # True when an offline stand-in served the call (no API key): nothing was paid. Its usage is estimated
    # (usage.estimated) and cost_usd is a list-price estimate of the model it stands in for (0 when that
    # model has no price); billing keeps such events out of budgets and counts them as estimated.
    offline: bool = False
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # Vision: seconds of screen share this call stands for, so billing can price "1 FPS, no dedup".
    covered_seconds: float | None = Field(default=None, ge=0)
    # Vision: frames seen by dedup in that span (kept and skipped).
    frames_considered: int | None = Field(default=None, ge=0)
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return validate_tenant_id(value)

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")
        return value.astimezone(UTC)

    def to_stream_fields(self) -> dict[str, str]:
        return {"event": self.model_dump_json()}

    @classmethod
    def from_stream_fields(cls, fields: dict[Any, Any]) -> CostEvent:
        raw = fields.get("event", fields.get(b"event"))
        if raw is None:
            raise ValueError("stream entry has no 'event' field")
        return cls.model_validate_json(raw)


class TokenCounts(Protocol):
    """The usage amounts an LLM baseline prices (UsageAmounts, or the ledger's decoded form of it)."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...


class _TokensOnly:
    """The token counts of a usage and nothing else: what PriceCatalog.llm_baseline_cost prices, read by
    ModelPrice.cost without building (and validating) a UsageAmounts per event."""

    __slots__ = ("input_tokens", "cached_input_tokens", "output_tokens")
    audio_seconds = 0.0
    characters = 0
    images = 0
    requests = 0

    def __init__(self, usage: TokenCounts) -> None:
        self.input_tokens = usage.input_tokens
        self.cached_input_tokens = usage.cached_input_tokens
        self.output_tokens = usage.output_tokens


def baseline_cost_of(
    kind: CostKind, usage: TokenCounts, cost_usd: float, covered_seconds: float | None, catalog: PriceCatalog
) -> float:
    """baseline_cost from an event's parts (the ledger consumer prices thousands of events a second)."""
    if kind is CostKind.LLM:
        # = catalog.llm_baseline_cost(usage): the same ModelPrice.cost on the same token counts.
        price = catalog.price(catalog.baseline_llm_model)
        return price.cost(cast(UsageAmounts, _TokensOnly(usage)))
    if kind is CostKind.VISION and covered_seconds is not None:
        calls = max(covered_seconds * catalog.baseline_vision_fps, 1.0)
        return cost_usd * calls
    return cost_usd


def baseline_cost(event: CostEvent, catalog: PriceCatalog) -> float:
    """What the same traffic would have cost without the optimisation this event's kind gets.

    - llm: the same token counts on the all-premium baseline model;
    - vision: one call per second of covered screen share (no dedup), each costing what this call did;
    - everything else is not optimised here: its baseline is its cost.
    """
    return baseline_cost_of(event.kind, event.usage, event.cost_usd, event.covered_seconds, catalog)


class CostRecordingUnavailable(RuntimeError):
    """Paid calls must not start: their cost could not be recorded durably. Callers map it to UNAVAILABLE."""


class CostEventProducer:
    """Appends cost events to the stream; what cannot reach Redis is spooled to disk, never dropped.

    - Redis up and no backlog: XADD, done.
    - Redis unreachable, or a backlog exists (so order is kept): the event is appended to this producer's
      spool file and fsynced (group commit) before `emit` returns; a background task replays the spool in
      order (pipelined XADDs) as soon as Redis answers, then truncates it.
    - At start the producer also adopts the spools that dead producers of the same name and Redis target
      left behind (a restart), and replays them first.
    - A spool backlog of `spool_max_bytes` or more, or a spool that cannot be written, makes
      `check_can_spend()` raise CostRecordingUnavailable: no new paid call starts unbilled. Events of calls
      already made are still spooled beyond the limit.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str = COST_EVENTS_STREAM,
        name: str = "producer",
        spool_dir: str | Path | None = None,
        spool_max_bytes: int = 64 * 1024 * 1024,
        retry_interval: float = 1.0,
        replay_batch: int = 500,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._name = name
        self._dir = Path(spool_dir) if spool_dir else default_spool_dir()
        self._prefix = spool_prefix(name, f"{_redis_target(redis)}|{stream}")
        self._max_bytes = spool_max_bytes
        self._retry_interval = retry_interval
        self._replay_batch = replay_batch
        self._spool: SpoolFile | None = None
        self._orphans: list[SpoolFile] = []
        # Last resort when the spool cannot be written (disk full, read-only): kept in memory, replayed with
        # the rest, and no new paid call may start.
        self._memory: list[bytes] = []
        self._broken: str | None = None
        self._queue: list[tuple[bytes, asyncio.Future[None]]] = []
        self._file_lock = asyncio.Lock()
        self._replay_lock = asyncio.Lock()
        self._replayer: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[bool]] = set()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Any, redis: aioredis.Redis, *, name: str | None = None) -> CostEventProducer:
        """From ServiceSettings (COST_SPOOL_DIR, COST_SPOOL_MAX_BYTES); the producer is named for the service."""
        return cls(redis, name=name or settings.service_name, spool_dir=settings.cost_spool_dir or None,
                   spool_max_bytes=settings.cost_spool_max_bytes)

    # ------------------------------------------------------------------------------------------- state

    @property
    def pending(self) -> int:
        """Events spooled (or held in memory) and not yet in Redis."""
        own = self._spool.backlog_lines if self._spool is not None else 0
        return own + sum(o.backlog_lines for o in self._orphans) + len(self._memory)

    @property
    def spool_path(self) -> Path | None:
        return self._spool.path if self._spool is not None else None

    def _backlog_bytes(self) -> int:
        own = self._spool.backlog_bytes if self._spool is not None else 0
        return own + sum(o.backlog_bytes for o in self._orphans) + sum(len(m) for m in self._memory)

    def _has_backlog(self) -> bool:
        return bool(self._orphans or self._memory or (self._spool is not None and self._spool.backlog_lines))

    def _update_gauges(self) -> None:
        size = self._backlog_bytes()
        COST_EVENTS_PENDING.set(self.pending)
        COST_SPOOL_BYTES.set(size)
        COST_SPOOL_FULL.set(1 if size >= self._max_bytes or self._broken else 0)

    def check_can_spend(self) -> None:
        """Raises CostRecordingUnavailable when a new paid call could not be billed durably."""
        if not self._closed and self._spool is None:
            self._open()
        if self._closed:
            raise CostRecordingUnavailable("the cost-event producer is closed")
        if self._broken is not None:
            COST_SPEND_REFUSED.labels(reason="spool_unwritable").inc()
            raise CostRecordingUnavailable(f"cost events cannot be spooled ({self._broken}); paid calls refused")
        size = self._backlog_bytes()
        if size >= self._max_bytes:
            COST_SPEND_REFUSED.labels(reason="spool_full").inc()
            raise CostRecordingUnavailable(
                f"cost-event spool full ({size} bytes >= {self._max_bytes}, Redis unreachable); paid calls refused"
            )

    # ------------------------------------------------------------------------------------------- start

    def _open(self) -> None:
        """Locks this producer's spool and adopts dead producers' spools (replayed in the background)."""
        if self._spool is not None:
            return
        try:
            self._spool = open_own_spool(self._dir, self._prefix)
            self._orphans = list(orphan_spools(self._dir, self._prefix, self._spool.path))
            if not self._memory:
                self._broken = None
        except OSError as err:
            self._broken = f"{self._dir}: {err}"
            log.error("cost-event spool unavailable: %s", self._broken)
            return
        adopted = sum(o.backlog_lines for o in self._orphans)
        if adopted or self._spool.lines:
            log.warning("cost-event spool: %d events from a previous run to replay (%s)",
                        adopted + self._spool.lines, self._dir)
            self._ensure_replayer()
        self._update_gauges()

    async def start(self) -> None:
        """Opens the spool and starts replaying what a previous run left (also done by the first emit)."""
        self._open()

    # -------------------------------------------------------------------------------------------- emit

    async def emit(self, event: CostEvent) -> bool:
        """True when the event reached Redis now, False when it was spooled (durably) for replay.

        Runs to completion even if the caller is cancelled meanwhile: a paid call's record is not abandoned.
        """
        if self._closed:
            raise RuntimeError("CostEventProducer is closed")
        task = asyncio.ensure_future(self._emit(event))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def _emit(self, event: CostEvent) -> bool:
        self._open()
        line = event.model_dump_json().encode()
        if not self._has_backlog():
            try:
                await self._redis.xadd(self._stream, {"event": line})
                COST_EVENTS_EMITTED.labels(kind=event.kind.value).inc()
                return True
            except (RedisError, OSError) as err:
                log.warning("cost event spooled, Redis unavailable: %s", err, extra={"event_id": event.event_id})
        await self._append(line)
        COST_EVENTS_SPOOLED.labels(kind=event.kind.value).inc()
        self._ensure_replayer()
        return False

    async def _append(self, line: bytes) -> None:
        """Group commit: every line queued while a write runs goes out with the next write, one fsync."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((line, fut))
        async with self._file_lock:
            if self._queue:
                batch, self._queue = self._queue, []
                lines = [b for b, _ in batch]
                try:
                    if self._spool is None:
                        raise OSError(self._broken or "spool not open")
                    await asyncio.to_thread(self._spool.append, lines)
                    if not self._memory:
                        self._broken = None  # the disk took this write: spending may resume
                except OSError as err:
                    self._broken = str(err)
                    self._memory.extend(lines)
                    log.error("cost-event spool write failed (%s): %d events held in memory only", err, len(lines))
                for _, f in batch:
                    if not f.done():
                        f.set_result(None)
                self._update_gauges()
        await fut

    # ------------------------------------------------------------------------------------------ replay

    def _ensure_replayer(self) -> None:
        if self._closed or (self._replayer is not None and not self._replayer.done()):
            return
        try:
            self._replayer = asyncio.get_running_loop().create_task(self._replay_loop(), name="cost-event-replay")
        except RuntimeError:
            return  # no loop yet: the first emit or flush replays
        self._replayer.add_done_callback(_log_task_failure)

    async def _replay_loop(self) -> None:
        delay = self._retry_interval
        while self._has_backlog() and not self._closed:
            if await self.flush() == 0:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(self._retry_interval, 5.0))

    async def flush(self) -> int:
        """Replays the backlog in order (dead producers' spools, this spool, memory); returns what is left."""
        async with self._replay_lock:
            try:
                for orphan in list(self._orphans):
                    await self._replay_file(orphan)
                    orphan.close(remove=True)
                    self._orphans.remove(orphan)
                if self._spool is not None:
                    await self._replay_file(self._spool)
                while self._memory:
                    chunk = self._memory[: self._replay_batch]
                    await self._xadd_many(chunk)
                    del self._memory[: len(chunk)]
                    if not self._memory and self._spool is not None:
                        self._broken = None  # nothing held in memory only any more
            except (RedisError, OSError) as err:
                log.info("cost-event replay paused, Redis unavailable: %s (%d pending)", err, self.pending)
            self._update_gauges()
            return self.pending

    async def _replay_file(self, spool: SpoolFile) -> None:
        while True:
            async with self._file_lock:
                chunk = list(spool.read_lines(spool.replayed, self._replay_batch))
                if not chunk:
                    if spool.replayed >= spool.size and spool.size:
                        await asyncio.to_thread(spool.truncate)
                    return
            await self._xadd_many([line for _, line in chunk])
            spool.replayed = chunk[-1][0]
            spool.replayed_lines += len(chunk)
            self._update_gauges()

    async def _xadd_many(self, lines: list[bytes]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(self._stream, {"event": line})
        await pipe.execute()
        COST_EVENTS_REPLAYED.inc(len(lines))

    async def aclose(self) -> None:
        if self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        left = await self.flush() if self._has_backlog() else 0
        self._closed = True
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
        for orphan in self._orphans:
            orphan.close()
        self._orphans.clear()
        if self._spool is not None:
            self._spool.close(remove=self._spool.size == 0)
            self._spool = None
        if self._memory:
            log.error("%d cost events could not be spooled nor delivered before shutdown: lost", len(self._memory))
        elif left:
            log.warning("%d cost events stay spooled in %s; the next start replays them", left, self._dir)


def _redis_target(redis: aioredis.Redis) -> str:
    kw = redis.connection_pool.connection_kwargs
    return f"{kw.get('host', '')}:{kw.get('port', '')}{kw.get('path', '')}/{kw.get('db', 0)}"


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())
