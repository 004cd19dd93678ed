"""Publication of tenant policies and budget states to Redis (frugal.common.tenant_state), where the router
and the gateway read them. Billing is the only writer.

When: a policy after each UpsertTenant; a budget state after each ledger commit that touched the tenant and
after each UpsertTenant; both for every tenant at start and every BUDGET_REFRESH_SECONDS (month roll-over,
Redis restarts, budget keys expiring after BUDGET_STATE_TTL_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from frugal.common.tenant_state import BUDGET_KEY, publish_budget, publish_policy

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

    async def refresh_all(self, registry: TenantRegistry) -> int:
        done = 0
        for tenant_id in await registry.list_ids():
            if await self.refresh_tenant(tenant_id):
                done += 1
        return done


def _until_next_month(now: datetime | None = None) -> float:
    """Seconds to the next UTC month (plus a little): the refresher re-publishes every budget at once then,
    though readers already treat last month's state as a fresh month (frugal.common.tenant_state)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    nxt = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return max(0.05, (nxt - now).total_seconds() + 0.05)


class StateRefresher:
    """Background loop: `refresh_all` at start, then every `interval_s`; failures are logged and retried."""

    def __init__(self, publisher: StatePublisher, registry: TenantRegistry, interval_s: float) -> None:
        self._publisher = publisher
        self._registry = registry
        self._interval = interval_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="billing-state-refresher")

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                count = await self._publisher.refresh_all(self._registry)
                log.debug("re-published policy and budget state of %d tenants", count)
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("tenant state refresh failed, will retry: %s", err)
            except Exception:
                log.exception("tenant state refresh failed")
            self.rounds += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(self._interval, _until_next_month()))

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(task, 5.0)
            except TimeoutError:
                log.warning("state refresher did not stop in time; cancelled")
