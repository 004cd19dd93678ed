"""The ledger consumer: Redis Stream "cost-events" -> Postgres, each event exactly once.

Guarantees and how they are met:
- at-least-once delivery: a consumer group; an entry is acknowledged (XACK) only after the transaction that
  wrote it committed. A consumer that dies leaves its entries pending: a restart under the same name re-reads
  its own pending list first, and any consumer reclaims entries idle for LEDGER_CLAIM_IDLE_MS (XAUTOCLAIM).
- at-most-once effect: the ledger's primary key is the producer's idempotency key (event_id); a replayed
  event hits ON CONFLICT DO NOTHING, is counted as a duplicate and acknowledged. The month-to-date roll-up is
  updated in the same statement from the rows actually inserted, so replays cannot inflate spend.
- idempotency like Stripe's: a replay must carry the same payload (SHA-256 of the event JSON, stored with
  the row); the same event_id with another payload is dead-lettered ("conflicting_duplicate"), never merged.
  Events dated more than 35 days ago or more than 5 minutes ahead are dead-lettered the same way.
- nothing silently dropped: entries that can never be written (unparseable, invalid, unknown tenant, event id
  owned by another tenant, rejected by the database, delivered too many times, deleted from the stream) are
  appended to the dead-letter stream with the reason and acknowledged in the same MULTI/EXEC transaction.
- batched: up to LEDGER_BATCH_SIZE entries per read, ONE transaction per batch whatever the number of tenants
  (billing_ingest_batch, migrations/0002: SECURITY INVOKER, RLS in force, app.current_tenant_id switched per
  tenant inside the transaction), then one MULTI/EXEC for XACK + XDEL (entries are trimmed as soon as they
  are committed) + dead letters + the budget states of the tenants touched. Metrics are counted per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from frugal.billing import metrics as m
from frugal.billing.config import Settings
from frugal.billing.ledger import LedgerEntry, TenantWriteResult, write_batch, write_tenant_events
from frugal.billing.state import StatePublisher
from frugal.billing.wire import WireEvent, decode_event
from frugal.common.cost_events import SCHEMA_VERSION, baseline_cost_of
from frugal.common.pricing import PriceCatalog

log = logging.getLogger(__name__)

# Sanity limits beyond CostEvent's own validation: values the ledger's columns could not hold, or that can
# only be a producer bug. Such events are dead-lettered ("invalid"), never written.
MAX_EVENT_COST_USD = 10_000.0
MAX_COUNT = 2**53
MAX_TEXT = 256
MAX_ATTRIBUTES_JSON = 8192
# Stripe keeps idempotency keys 24 h and refuses events outside its window; ours: the ledger keeps ids forever,
# and refuses events dated before the previous month could close (35 days) or from the future (clock skew).
MAX_EVENT_AGE = timedelta(days=35)
MAX_EVENT_SKEW = timedelta(minutes=5)

# Errors caused by the data of some event in the batch: isolate it and dead-letter it.
DATA_ERRORS: tuple[type[BaseException], ...] = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# Any other database failure is about the database, not the event (unreachable, restarting, overloaded,
# deadlock, misconfigured role...): the entries stay pending, and nothing is read until it answers again.
RETRYABLE_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError,
)
# For RPCs: database failures that mean "try again later" (UNAVAILABLE).
UNAVAILABLE_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
    asyncpg.AdminShutdownError,
    asyncpg.InsufficientResourcesError,
)


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    stream: str = "cost-events"
    dlq_stream: str = "cost-events-dlq"
    group: str = "billing-ledger"
    consumer: str = "billing-1"
    # One default for the batch size: the setting's (LEDGER_BATCH_SIZE).
    batch_size: int = Settings.model_fields["ledger_batch_size"].default
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    maintenance_s: float = 5.0
    max_deliveries: int = 10
    write_concurrency: int = 4
    # Acknowledged entries are deleted at once (XDEL in the ack's MULTI) when this group is the stream's only
    # one; otherwise, and as a safety net, maintenance trims (XTRIM MINID) below every group's oldest pending
    # entry once older than retention_s (0: at once).
    retention_s: int = 0
    trim_on_commit: bool = True
    # LEGACY (bench/billing's comparison only): one transaction per tenant, no conflict detection.
    per_tenant_transactions: bool = False
    # Transient database errors are retried this many times within a batch before the entries are left
    # pending for a later round.
    write_attempts: int = 3
    # start() tunes the process's garbage collector for ingestion (tune_gc_for_ingest): billing's process is
    # the consumer's.
    tune_gc: bool = True

    @classmethod
    def from_settings(cls, s: Settings, consumer: str | None = None) -> ConsumerConfig:
        return cls(
            stream=s.ledger_stream, dlq_stream=s.ledger_dlq_stream, group=s.ledger_group,
            consumer=consumer or s.consumer_name, batch_size=s.ledger_batch_size, block_ms=s.ledger_block_ms,
            claim_idle_ms=s.ledger_claim_idle_ms, maintenance_s=s.ledger_maintenance_seconds,
            max_deliveries=s.ledger_max_deliveries, write_concurrency=s.ledger_write_concurrency,
            retention_s=s.ledger_stream_retention_seconds, per_tenant_transactions=s.ledger_per_tenant_transactions,
        )


@dataclass(frozen=True, slots=True)
class Poison:
    stream_id: str
    reason: str
    detail: str
    fields: dict[Any, Any]
    tenant_id: str | None = None


@dataclass
class BatchOutcome:
    read: int = 0
    written: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    # Entries left pending (transient failure): retried from this consumer's pending list after a back-off.
    left_pending: int = 0
    tenants: set[str] = field(default_factory=set)


@dataclass
class _Prepared:
    """A parsed batch, ready for its transaction."""

    read: int
    started: float
    poison: list[Poison]
    # One entry per event id, in stream order; the stream ids of further copies of each id.
    first: dict[str, LedgerEntry]
    extra_ids: dict[str, list[str]]


@dataclass
class _Phase:
    """Tells the read loop when a batch's transaction has ended (`done`) and whether it committed (`ok`), so
    the next batch's transaction can start while this one's acknowledgement is still being sent."""

    done: asyncio.Event = field(default_factory=asyncio.Event)
    ok: bool = False


# Called after a tenant's transaction committed and before its entries are acknowledged.
CommitHook = Callable[[TenantWriteResult], Awaitable[None]]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms_of(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def _check_text(name: str, text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > MAX_TEXT:
        return f"{name} is longer than {MAX_TEXT} characters"
    if "\x00" in text:
        return f"{name} contains a NUL character"
    if "\x1e" in text or "\x1f" in text:
        return f"{name} contains a control character U+001E or U+001F"
    return None


def _check_sanity(ev: WireEvent, baseline: float) -> str | None:
    u = ev.usage
    isfinite = math.isfinite
    if not (isfinite(ev.cost_usd) and isfinite(u.audio_seconds) and isfinite(baseline)
            and (ev.covered_seconds is None or isfinite(ev.covered_seconds))):
        for name, value in (("cost_usd", ev.cost_usd), ("usage.audio_seconds", u.audio_seconds),
                            ("baseline", baseline), ("covered_seconds", ev.covered_seconds)):
            if value is not None and not isfinite(value):
                return f"{name} is not finite"
    if ev.cost_usd > MAX_EVENT_COST_USD:
        return f"cost_usd {ev.cost_usd} exceeds the per-event sanity limit {MAX_EVENT_COST_USD:g}"
    if max(u.input_tokens, u.output_tokens, u.characters, u.images, u.requests, ev.frames_considered or 0) > MAX_COUNT:
        for name, count in (("input_tokens", u.input_tokens), ("output_tokens", u.output_tokens),
                            ("characters", u.characters), ("images", u.images), ("requests", u.requests),
                            ("frames_considered", ev.frames_considered or 0)):
            if count > MAX_COUNT:
                return f"{name} {count} is out of range"
    for name, text in (("event_id", ev.event_id), ("session_id", ev.session_id), ("request_id", ev.request_id),
                       ("service", ev.service), ("provider", ev.provider), ("model", ev.model)):
        problem = _check_text(name, text)
        if problem is not None:
            return problem
    if not ev.service or not ev.provider or not ev.model:
        return "service, provider and model must be non-empty"
    if ev.attributes:
        attrs = json.dumps(ev.attributes)
        if len(attrs) > MAX_ATTRIBUTES_JSON or "\\u0000" in attrs:
            return f"attributes are larger than {MAX_ATTRIBUTES_JSON} bytes or contain NUL characters"
    return None


def parse_entry(
    stream_id: str, fields: dict[Any, Any] | None, catalog: PriceCatalog, now: datetime | None = None
) -> LedgerEntry | Poison:
    """A stream entry -> a ledger entry (with its baseline cost), or the reason it can never be written."""
    if not fields:
        return Poison(stream_id, "deleted", "entry has no fields: deleted from the stream before it was written",
                      {})
    raw = fields.get(b"event")
    if raw is None:
        raw = fields.get("event")
    if raw is None:
        return Poison(stream_id, "unparseable", "stream entry has no 'event' field", fields)
    try:
        event, occurred_at = decode_event(raw)
    except ValidationError as err:
        kinds = {e["type"] for e in err.errors()}
        reason = "unparseable" if kinds & {"json_invalid", "json_type"} else "invalid"
        tenant = None
        with contextlib.suppress(Exception):
            doc = json.loads(raw)
            tenant = str(doc.get("tenant_id"))[:64] if isinstance(doc, dict) and doc.get("tenant_id") else None
        return Poison(stream_id, reason, str(err)[:2000], fields, tenant)
    except msgspec.ValidationError as err:  # the model's values out of the ledger's form (cannot happen)
        return Poison(stream_id, "invalid", str(err)[:2000], fields)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        return Poison(stream_id, "unparseable", str(err)[:2000], fields)
    if event.schema_version != SCHEMA_VERSION:
        return Poison(stream_id, "invalid", f"unsupported schema_version {event.schema_version}", fields,
                      event.tenant_id)
    try:
        baseline = baseline_cost_of(event.kind, event.usage, event.cost_usd, event.covered_seconds, catalog)
    except (ValueError, KeyError) as err:
        return Poison(stream_id, "invalid", f"baseline cost: {err}", fields, event.tenant_id)
    problem = _check_sanity(event, baseline)
    if problem is not None:
        return Poison(stream_id, "invalid", problem, fields, event.tenant_id)
    now = now or datetime.now(UTC)
    if occurred_at < now - MAX_EVENT_AGE:
        return Poison(stream_id, "timestamp_too_old",
                      f"occurred_at {occurred_at.isoformat()} is more than {MAX_EVENT_AGE.days} days ago",
                      fields, event.tenant_id)
    if occurred_at > now + MAX_EVENT_SKEW:
        return Poison(stream_id, "timestamp_in_future",
                      f"occurred_at {occurred_at.isoformat()} is more than "
                      f"{MAX_EVENT_SKEW.total_seconds() / 60:.0f} minutes ahead", fields, event.tenant_id)
    payload = raw if isinstance(raw, bytes) else str(raw).encode()
    return LedgerEntry(stream_id=stream_id, event=event, occurred_at=occurred_at, baseline_usd=baseline,
                       payload_sha256=hashlib.sha256(payload.strip()).hexdigest(), raw=payload)


def tune_gc_for_ingest() -> None:
    """A batch allocates ~10 container objects per event and lives for a transaction, long enough to be
    promoted: with the default thresholds (700, 10, 10) the collector ran older-generation passes over the
    whole heap every few batches, ~20 % of the consumer's CPU at 500 tenants. What start-up built (modules,
    the catalog, metrics) is frozen out of collection, and the young generation is collected less often."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


class _Backoff:
    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self._base, self._cap, self._n = base, cap, 0

    def next(self) -> float:
        delay = min(self._cap, self._base * float(2 ** self._n))
        self._n = min(self._n + 1, 16)
        return delay

    def reset(self) -> None:
        self._n = 0


class LedgerConsumer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        catalog: PriceCatalog,
        config: ConsumerConfig,
        *,
        publisher: StatePublisher | None = None,
        after_commit: CommitHook | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._catalog = catalog
        self.config = config
        self._publisher = publisher
        self._after_commit = after_commit
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reading = False
        self._scan_pending = True  # a restart under the same name finds its own pending entries first
        self._last_errors: OrderedDict[str, str] = OrderedDict()
        self._next_maintenance = 0.0
        # Set after a write failed with a transient database error: no entries are read (and their delivery
        # counters spent toward LEDGER_MAX_DELIVERIES) until the database answers again.
        self._db_down = False
        # Whether our group is the stream's only one (then acknowledged entries are XDELed at once).
        self._sole_group = False
        self.totals = BatchOutcome()

    # ------------------------------------------------------------------------------------------- lifecycle

    async def ensure_group(self) -> None:
        """Creates the consumer group at the start of the stream (events produced before billing first ran
        are billed too); an existing group is kept as it is."""
        try:
            await self._redis.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.config.group, self.config.stream)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    async def start(self) -> None:
        """Starts the consumer task (which creates the group first, retrying while Redis is unreachable)."""
        if self._task is None:
            if self.config.tune_gc:
                tune_gc_for_ingest()
            self._task = asyncio.create_task(self._run(), name=f"ledger-consumer-{self.config.consumer}")
            self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("ledger consumer %s died", self.config.consumer, exc_info=task.exception())

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Finishes the batch in progress (or stops waiting for new entries at once), then returns."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        if self._reading:
            task.cancel()  # blocked in XREADGROUP: nothing in flight
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            log.warning("ledger consumer %s: batch not finished after %.1fs; cancelled (entries stay pending)",
                        self.config.consumer, timeout_s)
            task.cancel()
        except asyncio.CancelledError:
            if not task.done():
                raise
        except BaseException:
            pass  # already logged by _on_done
        with contextlib.suppress(BaseException):
            await task

    # ------------------------------------------------------------------------------------------ main loop

    async def _run(self) -> None:
        backoff = _Backoff()
        loop = asyncio.get_running_loop()
        group_ready = False
        while not self._stopping.is_set():
            try:
                if self._db_down and not await self._db_reachable():
                    # Reading entries now would only fail them again and spend their delivery count. The lag
                    # gauges keep moving (Redis only), so the lag alert fires during a database outage.
                    with contextlib.suppress(RedisError, OSError):
                        await self.refresh_gauges_and_trim()
                    await self._sleep(backoff.next())
                    continue
                if not group_ready:
                    await self.ensure_group()
                    await self.refresh_gauges_and_trim()
                    group_ready = True
                if loop.time() >= self._next_maintenance:
                    await self.maintenance()
                    self._next_maintenance = loop.time() + self.config.maintenance_s
                if self._scan_pending:
                    outcome = await self.process_own_pending()
                else:
                    outcome = await self.consume_new()
                if outcome.left_pending:
                    self._scan_pending = True
                    await self._sleep(backoff.next())
                else:
                    backoff.reset()
            except ResponseError as err:
                if "NOGROUP" in str(err):
                    log.warning("consumer group %s missing (stream deleted?); recreating", self.config.group)
                    with contextlib.suppress(RedisError, OSError):
                        await self.ensure_group()
                else:
                    log.error("redis error in ledger consumer: %s", err)
                await self._sleep(backoff.next())
            except (RedisConnectionError, RedisTimeoutError, OSError) as err:
                log.warning("redis unavailable for the ledger consumer: %s", err)
                await self._sleep(backoff.next())
            except Exception:
                log.exception("ledger consumer round failed")
                self._scan_pending = True
                await self._sleep(backoff.next())

    async def _db_reachable(self) -> bool:
        try:
            async with self._pool.acquire(timeout=5) as conn:
                await conn.fetchval("SELECT 1")
        except RETRYABLE_DB_ERRORS as err:
            log.warning("ledger database still unavailable: %s", err)
            return False
        self._db_down = False
        log.info("ledger database reachable again; resuming")
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def read_new(self) -> BatchOutcome:
        """One XREADGROUP '>' (blocking up to block_ms) and its batch."""
        return await self.process(await self._read_batch(block=True), source="new")

    async def _read_batch(self, *, block: bool) -> list[tuple[Any, Any]]:
        self._reading = block  # aclose cancels a blocking read at once: nothing is in flight then
        try:
            resp: Any = await self._redis.xreadgroup(
                self.config.group, self.config.consumer, {self.config.stream: ">"},
                count=self.config.batch_size, block=self.config.block_ms if block else None,
            )
        finally:
            self._reading = False
        return _stream_entries(resp)

    async def consume_new(self) -> BatchOutcome:
        """Reads and writes new entries while there are any: the next batch is read and parsed while the
        previous one's transaction runs, so the consumer's CPU work and the database's overlap (two cores).
        One transaction in flight at a time, committed and acknowledged in stream order. Returns when the
        stream has nothing new for block_ms, at maintenance time, at stop, or when a batch is left pending
        (then the batch read ahead stays pending too, and is re-read from the pending list)."""
        if self.config.per_tenant_transactions:  # the LEGACY reference path stays as it was: one batch at a time
            return await self.read_new()
        total = BatchOutcome()
        loop = asyncio.get_running_loop()
        inflight: asyncio.Task[BatchOutcome] | None = None
        phase: _Phase | None = None
        # Batches whose transaction committed and whose acknowledgement may still be on its way.
        acking: list[asyncio.Task[BatchOutcome]] = []

        async def settle() -> None:
            while acking:
                _merge(total, await acking.pop(0))

        try:
            while True:
                entries = await self._read_batch(block=inflight is None)
                prepared = self._prepare(entries, "new") if entries else None
                after: asyncio.Task[BatchOutcome] | None = None
                if inflight is not None and phase is not None:
                    task, inflight = inflight, None
                    await phase.done.wait()
                    if phase.ok and not task.done():
                        acking.append(task)  # committed: its XACK overlaps the next transaction
                        after = task
                    else:
                        await settle()
                        outcome = await task
                        _merge(total, outcome)
                        if outcome.left_pending:
                            if prepared is not None:
                                total.left_pending += prepared.read
                                self._scan_pending = True
                            return total
                if prepared is None:
                    await settle()
                    return total
                if self._stopping.is_set() or loop.time() >= self._next_maintenance:
                    outcome = await self._commit(prepared, after=after)
                    await settle()
                    _merge(total, outcome)
                    return total
                phase = _Phase()
                inflight = asyncio.create_task(self._commit(prepared, phase, after),
                                               name=f"ledger-commit-{self.config.consumer}")
                # A batch that ended before the next read (whatever its outcome) is settled in order there.
        except BaseException:
            # Whatever was read and not acknowledged is pending: the next round re-reads it.
            self._scan_pending = True
            raise
        finally:
            # Only on an error or a cancellation do tasks remain: let them end (or cancel them).
            rest = [*acking, *([inflight] if inflight is not None else [])]
            if rest:
                await asyncio.gather(*rest, return_exceptions=True)

    async def process_own_pending(self) -> BatchOutcome:
        """Re-reads this consumer's whole pending list (entries delivered but not acknowledged: from a
        previous life under the same name, reclaimed from dead consumers, or left after a failure)."""
        total = BatchOutcome()
        cursor = "0"
        while not self._stopping.is_set():
            resp: Any = await self._redis.xreadgroup(
                self.config.group, self.config.consumer, {self.config.stream: cursor}, count=self.config.batch_size,
            )
            entries = _stream_entries(resp)
            if not entries:
                break
            cursor = _s(entries[-1][0])
            outcome = await self.process(entries, source="pending", check_deliveries=True)
            _merge(total, outcome)
        if total.left_pending == 0 and not self._stopping.is_set():
            self._scan_pending = False
        return total

    # --------------------------------------------------------------------------------------------- batches

    async def process(
        self, raw_entries: Sequence[tuple[Any, Any]], *, source: str = "new", check_deliveries: bool = False
    ) -> BatchOutcome:
        """One batch: parse, write, acknowledge."""
        if not raw_entries:
            return BatchOutcome()
        deliveries = await self._deliveries(raw_entries) if check_deliveries else {}
        return await self._commit(self._prepare(raw_entries, source, deliveries))

    def _prepare(self, raw_entries: Sequence[tuple[Any, Any]], source: str,
                 deliveries: dict[str, int] | None = None) -> _Prepared:
        """The CPU half of a batch (no I/O): parse, validate, group copies of one event id."""
        started = time.perf_counter()
        m.EVENTS_CONSUMED.labels(source=source).inc(len(raw_entries))
        poison: list[Poison] = []
        parsed: list[LedgerEntry] = []
        deliveries = deliveries or {}
        now = datetime.now(UTC)
        for sid_raw, fields in raw_entries:
            sid = _s(sid_raw)
            if deliveries.get(sid, 0) > self.config.max_deliveries:
                last = self._last_errors.get(sid, "unknown")
                poison.append(Poison(sid, "max_deliveries",
                                     f"delivered {deliveries[sid]} times without being written; last error: {last}",
                                     fields or {}))
                continue
            item = parse_entry(sid, fields, self._catalog, now)
            if isinstance(item, Poison):
                poison.append(item)
            else:
                parsed.append(item)

        # One ledger row per event id: later copies in the same batch are acknowledged with the first.
        first: dict[str, LedgerEntry] = {}
        extra_ids: dict[str, list[str]] = defaultdict(list)
        for entry in parsed:
            eid = entry.event.event_id
            if eid in first:
                if entry.payload_sha256 != first[eid].payload_sha256:
                    poison.append(_conflict(entry, "an earlier entry of the same batch"))
                    continue
                extra_ids[eid].append(entry.stream_id)
                continue
            first[eid] = entry
        return _Prepared(len(raw_entries), started, poison, first, extra_ids)

    async def _commit(self, p: _Prepared, phase: _Phase | None = None,
                      after: asyncio.Task[BatchOutcome] | None = None) -> BatchOutcome:
        """The I/O half of a batch: dead letters, the transaction, the acknowledgement. `phase` is told when the
        transaction ends; the acknowledgement waits for `after` (the previous batch) so acknowledgements and
        budget states go out in stream order."""
        try:
            return await self._commit_batch(p, phase, after)
        finally:
            if phase is not None:
                phase.done.set()

    async def _commit_batch(self, p: _Prepared, phase: _Phase | None,
                            after: asyncio.Task[BatchOutcome] | None) -> BatchOutcome:
        outcome = BatchOutcome(read=p.read)
        poison, first, extra_ids, started = p.poison, p.first, p.extra_ids, p.started
        if poison:
            await self._dead_letter(poison)
            outcome.dead_lettered += len(poison)

        if not self.config.per_tenant_transactions:
            if first:
                _merge(outcome, await self._write_all(list(first.values()), extra_ids, phase=phase, after=after))
            elif after is not None:
                await asyncio.wait({after})
            m.BATCH_SECONDS.observe(time.perf_counter() - started)
            _merge(self.totals, outcome)
            return outcome

        by_tenant: dict[str, list[LedgerEntry]] = defaultdict(list)
        for entry in first.values():
            by_tenant[entry.event.tenant_id].append(entry)
        sem = asyncio.Semaphore(self.config.write_concurrency)

        async def run(tenant_id: str, entries: list[LedgerEntry]) -> BatchOutcome:
            async with sem:
                return await self._write_tenant(tenant_id, entries, extra_ids)

        # A TaskGroup: a crash (BaseException) in one tenant's write cancels the others; ordinary errors
        # are handled per tenant inside _write_tenant.
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(run(t, es)) for t, es in by_tenant.items()]
        for task in tasks:
            _merge(outcome, task.result())
        m.BATCH_SECONDS.observe(time.perf_counter() - started)
        _merge(self.totals, outcome)
        return outcome

    async def _deliveries(self, raw_entries: Sequence[tuple[Any, Any]]) -> dict[str, int]:
        ids = [_s(sid) for sid, _ in raw_entries]
        rows = await self._redis.xpending_range(
            self.config.stream, self.config.group, min=ids[0], max=ids[-1], count=len(ids) * 2,
            consumername=self.config.consumer,
        )
        return {_s(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def _write_all(self, entries: list[LedgerEntry], extra_ids: dict[str, list[str]], *,
                         phase: _Phase | None = None,
                         after: asyncio.Task[BatchOutcome] | None = None) -> BatchOutcome:
        """The whole batch in one transaction; then one MULTI/EXEC: dead letters, XACK, XDEL, budget states."""
        outcome = BatchOutcome(tenants={e.event.tenant_id for e in entries})
        results: dict[str, TenantWriteResult] | None = None
        last_err: BaseException | None = None
        for attempt in range(self.config.write_attempts):
            try:
                started = time.perf_counter()
                results = await write_batch(self._pool, entries, catalog_version=self._catalog.version,
                                            now=datetime.now(UTC))
                seconds = time.perf_counter() - started
                m.WRITE_SECONDS.observe(seconds)
                for res in results.values():
                    res.write_seconds = seconds
                if phase is not None:  # committed: the next batch's transaction may start now
                    phase.ok = True
                    phase.done.set()
                break
            except DATA_ERRORS as err:
                if after is not None:
                    await asyncio.wait({after})
                return await self._isolate(entries, extra_ids, err)
            except RETRYABLE_DB_ERRORS as err:
                last_err = err
                m.WRITE_ERRORS.labels(error=type(err).__name__).inc()
                if attempt + 1 < self.config.write_attempts:
                    await asyncio.sleep(0.05 * (2 ** attempt))
        if after is not None:  # the previous batch's acknowledgement first (stream order)
            await asyncio.wait({after})
        if results is None:
            log.warning("ledger write of %d events failed %d times (%s); left pending",
                        len(entries), self.config.write_attempts, last_err)
            self._db_down = True
            for e in entries:
                self._remember_error(e.stream_id, f"{type(last_err).__name__}: {last_err}")
            outcome.left_pending += len(entries) + sum(len(extra_ids.get(e.event.event_id, ())) for e in entries)
            return outcome

        if self._after_commit is not None:
            # Once per batch (the transaction), with the first tenant's result, then once per further tenant
            # with write_seconds 0: a hook sees every tenant, and per-transaction figures stay per transaction.
            for i, res in enumerate(r for r in results.values() if not r.unknown_tenant):
                if i:
                    res.write_seconds = 0.0
                await self._after_commit(res)

        poison: list[Poison] = []
        ack_ids: list[str] = []

        def copies(e: LedgerEntry) -> list[str]:
            return [e.stream_id, *extra_ids.get(e.event.event_id, ())]

        for tenant_id, res in results.items():
            if res.unknown_tenant:
                for e in entries:
                    if e.event.tenant_id == tenant_id:
                        poison.extend(Poison(sid, "unknown_tenant", f"tenant {tenant_id!r} is not registered",
                                             e.fields(), tenant_id) for sid in copies(e))
                continue
            for e in res.collisions:
                poison.extend(Poison(sid, "event_id_conflict",
                                     f"event_id {e.event.event_id!r} is already in the ledger for another tenant",
                                     e.fields(), tenant_id) for sid in copies(e))
            for e in res.conflicts:
                poison.extend(_conflict(e, "the ledger", sid) for sid in copies(e))
            for e in res.inserted + res.duplicates:
                ack_ids.extend(copies(e))
            outcome.written += len(res.inserted)
            dups = sum(len(copies(e)) for e in res.duplicates) + sum(
                len(extra_ids.get(e.event.event_id, ())) for e in res.inserted)
            outcome.duplicates += dups

        pipe = self._redis.pipeline(transaction=True)
        self._stage_dead_letters(pipe, poison)
        if ack_ids:
            pipe.xack(self.config.stream, self.config.group, *ack_ids)
            if self.config.trim_on_commit and self._sole_group:
                pipe.xdel(self.config.stream, *ack_ids)
        if self._publisher is not None:
            self._publisher.stage_budgets(
                pipe, [res.budget for res in results.values() if res.budget is not None and res.inserted])
        await pipe.execute()
        self._after_dead_letters(poison)
        outcome.dead_lettered += len(poison)
        for sid in ack_ids:
            self._last_errors.pop(sid, None)
        m.EVENTS_DUPLICATE.inc(outcome.duplicates)
        self._record_batch([e for res in results.values() for e in res.inserted])
        return outcome

    async def _isolate(self, entries: list[LedgerEntry], extra_ids: dict[str, list[str]],
                       err: BaseException) -> BatchOutcome:
        """The database rejected some event's data: split the batch (by tenant, then event) to find it."""
        outcome = BatchOutcome()
        tenants: dict[str, list[LedgerEntry]] = defaultdict(list)
        for e in entries:
            tenants[e.event.tenant_id].append(e)
        if len(entries) == 1:
            entry = entries[0]
            sids = [entry.stream_id, *extra_ids.get(entry.event.event_id, ())]
            await self._dead_letter([
                Poison(sid, "db_rejected", f"{type(err).__name__}: {err}"[:2000], entry.fields(),
                       entry.event.tenant_id)
                for sid in sids
            ])
            outcome.dead_lettered += len(sids)
            return outcome
        log.warning("batch of %d events rejected (%s); isolating the culprit", len(entries), type(err).__name__)
        groups = list(tenants.values()) if len(tenants) > 1 else [[e] for e in entries]
        for group in groups:
            _merge(outcome, await self._write_all(group, extra_ids))
        return outcome

    def _record_batch(self, inserted: list[LedgerEntry]) -> None:
        """Metrics of a batch, aggregated first: one increment per label set, not per event."""
        if not inserted:
            return
        kinds: dict[str, int] = defaultdict(int)
        cost: dict[tuple[str, str, str, str, str], float] = defaultdict(float)
        base: dict[tuple[str, str], float] = defaultdict(float)
        tokens: dict[tuple[str, str, str], float] = defaultdict(float)
        now_ms = time.time() * 1000
        oldest_ms = now_ms
        for e in inserted:
            ev = e.event
            kind: str = ev.kind  # a StrEnum member is its value as a label (Enum.value is a slow property)
            kinds[kind] += 1
            offline = "true" if ev.offline else "false"
            cost[(ev.tenant_id, kind, ev.model, ev.tier or "", offline)] += ev.cost_usd
            base[(ev.tenant_id, kind)] += e.baseline_usd
            if ev.usage.input_tokens:
                tokens[(ev.tenant_id, ev.model, "input")] += ev.usage.input_tokens
            if ev.usage.output_tokens:
                tokens[(ev.tenant_id, ev.model, "output")] += ev.usage.output_tokens
            oldest_ms = min(oldest_ms, _ms_of(e.stream_id))
        for kind_label, n in kinds.items():
            _child(m.EVENTS_WRITTEN, (str(kind_label),)).inc(n)
        m.LEDGER_TOTALS.add(cost, base, tokens)
        # Per batch: the delay of its oldest entry (the figure an ingestion-delay alert cares about).
        m.INGEST_DELAY_SECONDS.observe(max(0.0, (now_ms - oldest_ms) / 1000))

    async def _write_tenant(
        self, tenant_id: str, entries: list[LedgerEntry], extra_ids: dict[str, list[str]]
    ) -> BatchOutcome:
        outcome = BatchOutcome(tenants={tenant_id})
        result: TenantWriteResult | None = None
        last_err: BaseException | None = None
        for attempt in range(self.config.write_attempts):
            try:
                started = time.perf_counter()
                result = await write_tenant_events(
                    self._pool, tenant_id, entries, catalog_version=self._catalog.version, now=datetime.now(UTC)
                )
                result.write_seconds = time.perf_counter() - started
                m.WRITE_SECONDS.observe(result.write_seconds)
                break
            except DATA_ERRORS as err:
                if len(entries) == 1:
                    entry = entries[0]
                    sids = [entry.stream_id, *extra_ids.get(entry.event.event_id, ())]
                    await self._dead_letter([
                        Poison(sid, "db_rejected", f"{type(err).__name__}: {err}"[:2000],
                               entry.fields(), tenant_id)
                        for sid in sids
                    ])
                    outcome.dead_lettered += len(sids)
                    return outcome
                # Some event of this tenant's batch is rejected: write them one by one to isolate it.
                log.warning("tenant %s batch rejected (%s); writing its %d events one by one",
                            tenant_id, type(err).__name__, len(entries))
                for entry in entries:
                    _merge(outcome, await self._write_tenant(tenant_id, [entry], extra_ids))
                return outcome
            except RETRYABLE_DB_ERRORS as err:
                last_err = err
                m.WRITE_ERRORS.labels(error=type(err).__name__).inc()
                if attempt + 1 < self.config.write_attempts:
                    await asyncio.sleep(0.05 * (2 ** attempt))
        if result is None:
            log.warning("ledger write for tenant %s failed %d times (%s); %d entries left pending",
                        tenant_id, self.config.write_attempts, last_err, len(entries))
            self._db_down = True
            for e in entries:
                self._remember_error(e.stream_id, f"{type(last_err).__name__}: {last_err}")
            outcome.left_pending += len(entries) + sum(len(extra_ids.get(e.event.event_id, ())) for e in entries)
            return outcome

        if self._after_commit is not None and not result.unknown_tenant:
            await self._after_commit(result)

        if result.unknown_tenant:
            await self._dead_letter([
                Poison(e.stream_id, "unknown_tenant", f"tenant {tenant_id!r} is not registered",
                       e.fields(), tenant_id)
                for e in entries
            ] + [
                Poison(sid, "unknown_tenant", f"tenant {tenant_id!r} is not registered",
                       e.fields(), tenant_id)
                for e in entries for sid in extra_ids.get(e.event.event_id, ())
            ])
            outcome.dead_lettered += len(entries) + sum(len(extra_ids.get(e.event.event_id, ())) for e in entries)
            return outcome

        if result.collisions:
            await self._dead_letter([
                Poison(e.stream_id, "event_id_conflict",
                       f"event_id {e.event.event_id!r} is already in the ledger for another tenant",
                       e.fields(), tenant_id)
                for e in result.collisions
            ])
            outcome.dead_lettered += len(result.collisions)

        ack_ids = [e.stream_id for e in result.inserted + result.duplicates]
        dup_copies = 0
        for e in result.inserted + result.duplicates + result.collisions:
            copies = extra_ids.get(e.event.event_id, ())
            ack_ids.extend(copies)
            dup_copies += len(copies)
        if ack_ids:
            await self._redis.xack(self.config.stream, self.config.group, *ack_ids)
        for sid in ack_ids:
            self._last_errors.pop(sid, None)

        outcome.written += len(result.inserted)
        outcome.duplicates += len(result.duplicates) + dup_copies
        m.EVENTS_DUPLICATE.inc(len(result.duplicates) + dup_copies)
        self._record_written(result)
        if result.budget is not None and self._publisher is not None and result.inserted:
            try:
                await self._publisher.publish_budget(result.budget)
            except (RedisError, OSError) as err:
                log.warning("budget state of %s not published (the refresher will retry): %s", tenant_id, err)
        return outcome

    def _record_written(self, result: TenantWriteResult) -> None:
        now_ms = time.time() * 1000
        for e in result.inserted:
            ev = e.event
            m.EVENTS_WRITTEN.labels(kind=ev.kind.value).inc()
            tokens: dict[tuple[str, str, str], float] = {}
            if ev.usage.input_tokens:
                tokens[(ev.tenant_id, ev.model, "input")] = ev.usage.input_tokens
            if ev.usage.output_tokens:
                tokens[(ev.tenant_id, ev.model, "output")] = ev.usage.output_tokens
            m.LEDGER_TOTALS.add({(ev.tenant_id, ev.kind.value, ev.model, ev.tier or "", str(ev.offline).lower()):
                                 ev.cost_usd}, {(ev.tenant_id, ev.kind.value): e.baseline_usd}, tokens)
            m.INGEST_DELAY_SECONDS.observe(max(0.0, (now_ms - _ms_of(e.stream_id)) / 1000))

    def _remember_error(self, stream_id: str, error: str) -> None:
        self._last_errors[stream_id] = error[:500]
        while len(self._last_errors) > 10_000:
            self._last_errors.popitem(last=False)

    async def _dead_letter(self, items: Sequence[Poison]) -> None:
        """XADD to the dead-letter stream and XACK the original, atomically (MULTI/EXEC)."""
        if not items:
            return
        pipe = self._redis.pipeline(transaction=True)
        self._stage_dead_letters(pipe, items)
        await pipe.execute()
        self._after_dead_letters(items)

    def _stage_dead_letters(self, pipe: Any, items: Sequence[Poison]) -> None:
        now = datetime.now(UTC).isoformat()
        for p in items:
            record: dict[str, str | bytes] = {
                "reason": p.reason,
                "detail": p.detail,
                "stream": self.config.stream,
                "stream_id": p.stream_id,
                "group": self.config.group,
                "consumer": self.config.consumer,
                "dead_lettered_at": now,
            }
            if p.tenant_id:
                record["tenant_id"] = p.tenant_id
            raw = p.fields.get("event", p.fields.get(b"event"))
            if raw is not None:
                record["event"] = raw
            else:
                record["fields"] = json.dumps({_s(k): _s(v) for k, v in p.fields.items()})
            pipe.xadd(self.config.dlq_stream, record)
            pipe.xack(self.config.stream, self.config.group, p.stream_id)
            if self.config.trim_on_commit and self._sole_group:
                pipe.xdel(self.config.stream, p.stream_id)

    def _after_dead_letters(self, items: Sequence[Poison]) -> None:
        for p in items:
            m.EVENTS_DEAD_LETTERED.labels(reason=p.reason).inc()
            self._last_errors.pop(p.stream_id, None)
            log.warning("dead-lettered %s: %s (%s)", p.stream_id, p.reason, p.detail[:300],
                        extra={"dlq_tenant_id": p.tenant_id})

    # -------------------------------------------------------------------------------------- maintenance

    async def maintenance(self) -> BatchOutcome:
        """Reclaims and writes idle pending entries of other consumers, refreshes the lag gauges, trims."""
        outcome = await self.reclaim()
        if outcome.left_pending:
            self._scan_pending = True
        await self.refresh_gauges_and_trim()
        return outcome

    async def reclaim(self, limit: int | None = None) -> BatchOutcome:
        """XAUTOCLAIM entries idle longer than claim_idle_ms (their consumer died or is stuck) and writes them.

        Entries deleted from the stream meanwhile come back as (None, None) on Redis 6.2 but are claimed all
        the same: the own-pending scan then sees their ids (with no fields) and dead-letters them. Redis 7
        lists their ids in a third element instead; they are dead-lettered at once.
        """
        limit = limit or self.config.batch_size * 10
        total = BatchOutcome()
        cursor: Any = "0-0"
        seen = 0
        while seen < limit and not self._stopping.is_set():
            resp: Any = await self._redis.xautoclaim(
                self.config.stream, self.config.group, self.config.consumer, self.config.claim_idle_ms,
                start_id=cursor, count=min(self.config.batch_size, limit - seen),
            )
            cursor, entries = resp[0], resp[1]
            seen += len(entries)
            live = [(sid, fields) for sid, fields in entries if sid is not None]
            if len(live) < len(entries):
                self._scan_pending = True
            if len(resp) > 2 and resp[2]:
                # Redis >= 7 drops deleted entries from the pending list itself and names them here.
                await self._dead_letter([
                    Poison(_s(sid), "deleted", "entry was deleted from the stream before it was written", {})
                    for sid in resp[2]
                ])
                total.dead_lettered += len(resp[2])
            if live:
                m.EVENTS_RECLAIMED.inc(len(live))
                log.info("consumer %s reclaimed %d idle pending entries", self.config.consumer, len(live))
                _merge(total, await self.process(live, source="reclaimed", check_deliveries=True))
            if _s(cursor) == "0-0" or not entries:
                break
        return total

    async def refresh_gauges_and_trim(self) -> None:
        """Lag and pending gauges (Redis only: they keep moving when the database is down), and the trim."""
        groups = await self._redis.xinfo_groups(self.config.stream)
        self._sole_group = len(groups) == 1 and _s(groups[0]["name"]) == self.config.group
        cutoff: str | None = None
        for g in groups:
            name = _s(g["name"])
            last = _s(g["last-delivered-id"])
            pending = int(g["pending"])
            safe = last
            oldest_pending: str | None = None
            if pending:
                summary = await self._redis.xpending(self.config.stream, name)
                if summary.get("min"):
                    oldest_pending = _s(summary["min"])
                    safe = min(oldest_pending, last, key=_id_key)
            if name == self.config.group:
                m.CONSUMER_PENDING.set(pending)
                # Lag: age of the oldest entry not yet committed, delivered (pending) or not.
                nxt = await self._redis.xrange(self.config.stream, min=f"({last}", max="+", count=1)
                candidates = [x for x in (oldest_pending, _s(nxt[0][0]) if nxt else None) if x is not None]
                oldest = min(candidates, key=_id_key) if candidates else None
                lag = (time.time() * 1000 - _ms_of(oldest)) / 1000 if oldest is not None else 0.0
                m.CONSUMER_LAG_SECONDS.set(max(lag, 0.0))
            cutoff = safe if cutoff is None else min(cutoff, safe, key=_id_key)
        if cutoff is not None:
            # XTRIM MINID removes entries below the id: only entries that every group has acknowledged
            # (below its oldest pending entry and at or below its last delivered one), older than retention.
            minid = cutoff
            if self.config.retention_s > 0:
                retention_id = f"{int(time.time() * 1000) - self.config.retention_s * 1000}-0"
                minid = min(cutoff, retention_id, key=_id_key)
            if _id_key(minid) > (0, 0):
                await self._redis.xtrim(self.config.stream, minid=minid, approximate=False)
        m.STREAM_LENGTH.set(await self._redis.xlen(self.config.stream))


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, labels: tuple[str, ...]) -> Any:
    """metric.labels(*labels), cached: prometheus_client validates label names on every call (~0.1 ms), which
    at 500 tenants per batch costs more than the database."""
    key = (id(metric), labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def _conflict(entry: LedgerEntry, where: str, stream_id: str | None = None) -> Poison:
    return Poison(stream_id or entry.stream_id, "conflicting_duplicate",
                  f"event_id {entry.event.event_id!r} was already recorded by {where} with a different payload "
                  f"(sha256 {entry.payload_sha256[:16]}...): not merged", entry.fields(),
                  entry.event.tenant_id)


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _stream_entries(resp: Any) -> list[tuple[Any, Any]]:
    """XREADGROUP reply (one stream) -> [(id, fields)]: a list of [name, entries] (RESP2) or a dict (RESP3)."""
    if not resp:
        return []
    if isinstance(resp, dict):
        for value in resp.values():
            return list(value[0] if value and isinstance(value[0], list) else value)
        return []
    return list(resp[0][1])


def _merge(into: BatchOutcome, other: BatchOutcome) -> None:
    into.read += other.read
    into.written += other.written
    into.duplicates += other.duplicates
    into.dead_lettered += other.dead_lettered
    into.left_pending += other.left_pending
    into.tenants |= other.tenants
