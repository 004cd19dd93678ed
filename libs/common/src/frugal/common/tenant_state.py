"""Tenant policy and budget state, mirrored into Redis by billing, read cheaply by router and gateway.

Billing is the writer (after UpsertTenant and after each ledger commit); everyone else reads. Values are
the serialized protobuf messages, so every reader sees exactly billing's API types. Readers cache
briefly; a missing key means "billing has not published this tenant" (unknown), never "unlimited".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from frugal.api.billing.v1 import billing_pb2

POLICY_KEY = "frugal:tenant-policy:{tenant_id}"
BUDGET_KEY = "frugal:budget:{tenant_id}"
# Default fractions of the monthly budget: downgrade tiers from here, refuse from here.
DEFAULT_DOWNGRADE_AT = 0.8
DEFAULT_REFUSE_AT = 1.0


def _bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


async def publish_policy(redis: aioredis.Redis, policy: billing_pb2.TenantPolicy) -> None:
    await redis.set(POLICY_KEY.format(tenant_id=policy.tenant_id), policy.SerializeToString())


async def publish_budget(redis: aioredis.Redis, state: billing_pb2.BudgetState, ttl_s: int = 3600) -> None:
    await redis.set(BUDGET_KEY.format(tenant_id=state.tenant_id), state.SerializeToString(), ex=ttl_s)


async def read_policy(redis: aioredis.Redis, tenant_id: str) -> billing_pb2.TenantPolicy | None:
    raw = await redis.get(POLICY_KEY.format(tenant_id=tenant_id))
    return None if raw is None else billing_pb2.TenantPolicy.FromString(_bytes(raw))


async def read_budget(redis: aioredis.Redis, tenant_id: str) -> billing_pb2.BudgetState | None:
    raw = await redis.get(BUDGET_KEY.format(tenant_id=tenant_id))
    return None if raw is None else billing_pb2.BudgetState.FromString(_bytes(raw))


@dataclass
class TenantStateCache:
    """Per-process cache in front of Redis: policy and budget for `ttl_s` seconds."""

    redis: aioredis.Redis
    ttl_s: float = 2.0
    _policies: dict[str, tuple[float, billing_pb2.TenantPolicy | None]] = field(default_factory=dict)
    _budgets: dict[str, tuple[float, billing_pb2.BudgetState | None]] = field(default_factory=dict)

    async def policy(self, tenant_id: str) -> billing_pb2.TenantPolicy | None:
        hit = self._policies.get(tenant_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = await read_policy(self.redis, tenant_id)
        self._policies[tenant_id] = (now, value)
        return value

    async def budget(self, tenant_id: str) -> billing_pb2.BudgetState | None:
        hit = self._budgets.get(tenant_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = await read_budget(self.redis, tenant_id)
        self._budgets[tenant_id] = (now, value)
        return value
