"""Publication of tenant policies and budget states to Redis (frugal.common.tenant_state), where the router
and the gateway read them. Billing is the only writer.

When: a policy after each UpsertTenant; a budget state after each ledger commit that touched the tenant and
after each UpsertTenant; both for every tenant at start and every BUDGET_REFRESH_SECONDS (month roll-over,
budget keys expiring after BUDGET_STATE_TTL_SECONDS). After each complete round, the epoch key
(frugal.common.tenant_state.STATE_EPOCH_KEY); every BUDGET_STATE_WATCH_SECONDS the refresher checks it, and a
store that lost it (FLUSHALL, a Redis restarted empty) gets every tenant republished at once, then the epoch:
readers that saw the epoch read the tenants not yet republished as "unknown" (refused), never "unpublished".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from frugal.api.billing.v1 import billing_pb2
from frugal.billing.budget import BudgetInputs, budget_state, read_budget_inputs
from frugal.billing.metrics import LEDGER_TOTALS, STATE_PUBLISH_ERRORS
from frugal.billing.tenants import TenantRegistry, fetch_policy
from frugal.common.db import tenant_transaction
from frugal.common.tenant_state import BUDGET_KEY, STATE_EPOCH_KEY, publish_budget, publish_epoch, publish_policy

log = logging.getLogger(__name__)

# KEYS: budget keys; ARGV[1]: TTL seconds, ARGV[1 + i]: the value of KEYS[i].
_SET_ALL_EX = """
for i = 1, #KEYS do
    redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"""


class StatePublisher:
    def __init__(
        self, pool: asyncpg.Pool, redis: aioredis.Redis, *, count_offline: bool = False, budget_ttl_s: int = 3600
    ) -> None:
        self._pool = pool
        self._redis = redis
        self.count_offline = count_offline
        self._ttl = budget_ttl_s

    def state(self, inputs: BudgetInputs, now: datetime | None = None) -> billing_pb2.BudgetState:
        return budget_state(inputs, now=now or datetime.now(UTC), count_offline=self.count_offline)

    async def publish_budget(self, inputs: BudgetInputs, now: datetime | None = None) -> billing_pb2.BudgetState:
        """Computes and publishes; raises RedisError/OSError when Redis is unreachable."""
        state = self.state(inputs, now)
        LEDGER_TOTALS.set_budgets({inputs.tenant_id: (state.fraction_used, state.status)})
        try:
            await publish_budget(self._redis, state, ttl_s=self._ttl)
        except (RedisError, OSError):
            STATE_PUBLISH_ERRORS.labels(what="budget").inc()
            raise
        return state

    def stage_budgets(self, pipe: Any, inputs: Sequence[BudgetInputs], now: datetime | None = None) -> None:
        """Queues the budget states of a batch's tenants on a pipeline (the consumer's ack MULTI) as ONE
        command (a script SETting each key with the TTL): 500 tenants are one command to pack, not 500."""
        if not inputs:
            return
        now = now or datetime.now(UTC)
        keys: list[str] = []
        values: list[bytes] = []
        gauges: dict[str, tuple[float, float]] = {}
        for i in inputs:
            state = self.state(i, now)
            keys.append(BUDGET_KEY.format(tenant_id=i.tenant_id))
            values.append(state.SerializeToString())
            gauges[i.tenant_id] = (state.fraction_used, state.status)
        LEDGER_TOTALS.set_budgets(gauges)
        pipe.eval(_SET_ALL_EX, len(keys), *keys, self._ttl, *values)

    async def publish_policy(self, policy: billing_pb2.TenantPolicy) -> None:
        try:
            await publish_policy(self._redis, policy)
        except (RedisError, OSError):
            STATE_PUBLISH_ERRORS.labels(what="policy").inc()
            raise

    async def refresh_tenant(self, tenant_id: str) -> bool:
        """Re-publishes the tenant's policy and budget state from Postgres; False when not registered."""
        now = datetime.now(UTC)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            policy = await fetch_policy(conn, tenant_id)
            inputs = await read_budget_inputs(conn, tenant_id, now)
        if policy is None or inputs is None:
            return False
        await self.publish_policy(policy)
        await self.publish_budget(inputs, now)
        return True

    async def refresh_all(self, registry: TenantRegistry, concurrency: int = 8) -> int:
        """Every tenant, `concurrency` at a time; raises (and publishes no epoch) if any tenant failed."""
        ids = await registry.list_ids()
        done = 0
        for i in range(0, len(ids), concurrency):
            results = await asyncio.gather(*(self.refresh_tenant(t) for t in ids[i:i + concurrency]))
            done += sum(results)
        return done

    async def publish_epoch(self) -> str:
        """After a complete round: the store holds every tenant's state (frugal.common.tenant_state)."""
        epoch = f"{datetime.now(UTC).isoformat()} {socket.gethostname()}-{os.getpid()}"
        try:
            await publish_epoch(self._redis, epoch)
        except (RedisError, OSError):
            STATE_PUBLISH_ERRORS.labels(what="epoch").inc()
            raise
        return epoch

    async def epoch_present(self) -> bool:
        return bool(await self._redis.exists(STATE_EPOCH_KEY))


def _until_next_month(now: datetime | None = None) -> float:
    """Seconds to the next UTC month (plus a little): the refresher re-publishes every budget at once then,
    though readers already treat last month's state as a fresh month (frugal.common.tenant_state)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    nxt = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return max(0.05, (nxt - now).total_seconds() + 0.05)


class StateRefresher:
    """Background loop: `refresh_all` (then the epoch) at start and every `interval_s`, and at once when the
    epoch is found missing (checked every `watch_s`); failures are logged and retried at the next check."""

    def __init__(self, publisher: StatePublisher, registry: TenantRegistry, interval_s: float,
                 watch_s: float = 1.0) -> None:
        self._publisher = publisher
        self._registry = registry
        self._interval = interval_s
        self._watch = min(watch_s, interval_s)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        # Rounds started because the epoch was missing (a flushed store), for tests and logs.
        self.recoveries = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="billing-state-refresher")

    async def _round(self) -> bool:
        try:
            count = await self._publisher.refresh_all(self._registry)
            await self._publisher.publish_epoch()
            log.debug("re-published policy and budget state of %d tenants", count)
            return True
        except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("tenant state refresh failed, will retry: %s", err)
        except Exception:
            log.exception("tenant state refresh failed")
        return False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()  # a full round at once
        while not self._stop.is_set():
            if loop.time() >= due:
                ok = await self._round()
                self.rounds += 1
                # A failed round is retried at the next watch tick, a good one after the interval.
                due = loop.time() + (min(self._interval, _until_next_month()) if ok else self._watch)
            else:
                try:
                    lost = not await self._publisher.epoch_present()
                except (RedisError, OSError) as err:
                    log.warning("tenant state epoch check failed: %s", err)
                    lost = False
                if lost:
                    log.warning("billing's tenant state is gone from Redis (flushed or restarted empty): "
                                "republishing every tenant now")
                    self.recoveries += 1
                    due = loop.time()
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, min(self._watch, due - loop.time())))

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(task, 5.0)
            except TimeoutError:
                log.warning("state refresher did not stop in time; cancelled")
