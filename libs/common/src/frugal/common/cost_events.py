"""Cost events: one per paid call, on the Redis Stream "cost-events", each with an idempotency key.

Producers compute `cost_usd` from the usage the provider reported, priced by the catalog. Billing writes
each event once (unique `event_id`) and derives baselines with :func:`baseline_cost`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import RedisError

from frugal.common.metrics import COST_EVENTS_EMITTED, COST_EVENTS_PENDING
from frugal.common.pricing import PriceCatalog, TierName
from frugal.common.tenancy import validate_tenant_id
from frugal.common.usage import UsageAmounts

COST_EVENTS_STREAM = "cost-events"
SCHEMA_VERSION = 1
_EVENT_NS = uuid.UUID("6f1d8c57-3f0b-4a43-9c36-0f5d8a3c2b10")

log = logging.getLogger(__name__)


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


def baseline_cost(event: CostEvent, catalog: PriceCatalog) -> float:
    """What the same traffic would have cost without the optimisation this event's kind gets.

    - llm: the same token counts on the all-premium baseline model;
    - vision: one call per second of covered screen share (no dedup), each costing what this call did;
    - everything else is not optimised here: its baseline is its cost.
    """
    if event.kind is CostKind.LLM:
        return catalog.llm_baseline_cost(event.usage)
    if event.kind is CostKind.VISION and event.covered_seconds is not None:
        calls = max(event.covered_seconds * catalog.baseline_vision_fps, 1.0)
        return event.cost_usd * calls
    return event.cost_usd


class CostEventProducer:
    """Appends cost events to the stream. A Redis outage never fails the caller's request and loses
    nothing while the process lives: events wait in a bounded buffer and are retried in the background.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str = COST_EVENTS_STREAM,
        buffer_limit: int = 10_000,
        retry_interval: float = 1.0,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._pending: collections.deque[CostEvent] = collections.deque(maxlen=buffer_limit)
        self._retry_interval = retry_interval
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def emit(self, event: CostEvent) -> bool:
        """Returns True when the event reached Redis now, False when it was buffered for retry."""
        if self._closed:
            raise RuntimeError("CostEventProducer is closed")
        try:
            await self._xadd(event)
            return True
        except (RedisError, OSError) as err:
            if len(self._pending) == self._pending.maxlen:
                log.error("cost event buffer full; oldest event dropped", extra={"event_id": self._pending[0].event_id})
            self._pending.append(event)
            COST_EVENTS_PENDING.set(len(self._pending))
            log.warning("cost event buffered, Redis unavailable: %s", err, extra={"event_id": event.event_id})
            self._ensure_flusher()
            return False

    async def _xadd(self, event: CostEvent) -> None:
        await self._redis.xadd(self._stream, event.to_stream_fields())  # type: ignore[arg-type]
        COST_EVENTS_EMITTED.labels(kind=event.kind.value).inc()

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="cost-event-flusher")
            self._flusher.add_done_callback(_log_task_failure)

    async def _flush_loop(self) -> None:
        while self._pending and not self._closed:
            await asyncio.sleep(self._retry_interval)
            await self.flush()

    async def flush(self) -> int:
        """Sends buffered events in order; returns how many are still pending."""
        async with self._flush_lock:  # the background flusher and an explicit flush must not interleave
            while self._pending:
                event = self._pending[0]
                try:
                    await self._xadd(event)
                except (RedisError, OSError):
                    break
                self._pending.popleft()
            COST_EVENTS_PENDING.set(len(self._pending))
            return len(self._pending)

    async def aclose(self) -> None:
        left = await self.flush()
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if left:
            log.error("%d cost events could not be delivered before shutdown", left)


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())
