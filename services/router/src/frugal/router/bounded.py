"""Waits bounded by the caller's deadline: the turn's clock, and cost-event emission that never holds a
turn past it (the event is still written: the emit goes on in the background and buffers on failure)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any

import grpc

from frugal.common.cost_events import CostEvent, CostEventProducer
from frugal.router import metrics as m

log = logging.getLogger(__name__)

# Time kept back from the caller's deadline: to emit the cost event and send the final message ourselves.
DEADLINE_RESERVE_S = 0.05
# A Redis call may use at most this share of the time left.
REDIS_SHARE = 0.25
REDIS_DEPENDENCIES = frozenset({"tenant_state", "rate_limiter", "breaker_store"})


class RedisWatch:
    """Process-wide: after a Redis call failed or timed out, the next calls for `suspect_s` get a short
    timeout (`probe_s`), so an outage costs each turn milliseconds, not one full timeout per call; the
    first call that succeeds again is simply fast."""

    def __init__(self, *, suspect_s: float = 2.0, probe_s: float = 0.02) -> None:
        self.suspect_s = suspect_s
        self.probe_s = probe_s
        self._until = 0.0

    def mark_failed(self) -> None:
        self._until = time.monotonic() + self.suspect_s

    @property
    def suspect(self) -> bool:
        return time.monotonic() < self._until


class TurnClock:
    """The caller's deadline as seen by one RPC, and the notes of what this turn ran without."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], redis_op_timeout_s: float,
                 watch: RedisWatch | None = None) -> None:
        self._context = context
        self._redis_op_timeout_s = redis_op_timeout_s
        self._watch = watch or RedisWatch()
        self.degraded: list[str] = []
        # Set when the tenant's policy and budget could not be read and no earlier copy was known.
        self.tenant_state_unread = False

    def left(self) -> float | None:
        return self._context.time_remaining()

    def redis_timeout(self) -> float:
        base = min(self._redis_op_timeout_s, self._watch.probe_s) if self._watch.suspect else self._redis_op_timeout_s
        left = self.left()
        if left is None:
            return base
        return max(0.001, min(base, (left - DEADLINE_RESERVE_S) * REDIS_SHARE))

    def fail_open(self, dependency: str, note: str) -> None:
        """A dependency did not answer in time (or at all) and the turn goes on without it: logged, counted,
        and said in the result."""
        log.warning("%s", note, extra={"dependency": dependency})
        m.FAIL_OPEN.labels(dependency=dependency).inc()
        if dependency in REDIS_DEPENDENCIES:
            self._watch.mark_failed()
        if note not in self.degraded:
            self.degraded.append(note)


# Seconds the current turn may still wait for a cost-event write (None: no deadline).
EMIT_WAIT_S: contextvars.ContextVar[float | None] = contextvars.ContextVar("emit_wait_s", default=None)


class BoundedProducer:
    """Same `emit` as CostEventProducer; waits at most EMIT_WAIT_S for it, then lets it finish in the
    background (kept here, awaited at close). The event is never dropped by the wait."""

    def __init__(self, producer: CostEventProducer, *, close_wait_s: float = 5.0) -> None:
        self.inner = producer
        self._background: set[asyncio.Task[bool]] = set()
        self._close_wait_s = close_wait_s

    def check_can_spend(self) -> None:
        self.inner.check_can_spend()

    async def emit(self, event: CostEvent) -> bool:
        wait = EMIT_WAIT_S.get()
        if wait is None:
            return await self.inner.emit(event)
        task = asyncio.ensure_future(self.inner.emit(event))
        done, _ = await asyncio.wait({task}, timeout=max(wait, 0.001))
        if task in done:
            return task.result()
        self._background.add(task)
        task.add_done_callback(self._finished)
        m.FAIL_OPEN.labels(dependency="cost_events").inc()
        log.warning("cost event %s still being written after %.2fs; the turn goes on, the write continues",
                    event.event_id, wait)
        return False

    def _finished(self, task: asyncio.Task[bool]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cost event write failed", exc_info=task.exception())

    @property
    def pending_writes(self) -> int:
        return len(self._background)

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=self._close_wait_s)
        try:
            async with asyncio.timeout(self._close_wait_s):
                await self.inner.aclose()
        except TimeoutError:
            log.error("cost events: Redis did not answer at shutdown; %d events still buffered",
                      self.inner.pending)
        for t in list(self._background):
            t.cancel()
