"""Tenant policy and budget state, mirrored into Redis by billing, read cheaply by router and gateway.

Billing is the writer (after UpsertTenant and after each ledger commit); everyone else reads. Values are
the serialized protobuf messages, so every reader sees exactly billing's API types. Readers cache
briefly; a missing key means "billing has not published this tenant" (unknown), never "unlimited".

A flushed store (FLUSHALL, a Redis restarted empty, a failover to an empty replica) must not read as "billing
has published nothing for these tenants" (allowed): billing also writes an epoch key (STATE_EPOCH_KEY) after
each complete publication, and watches it: gone, it republishes every tenant at once (within
BUDGET_STATE_WATCH_SECONDS), then writes it again. A reader that has seen the epoch and finds it gone knows the
store lost billing's state: a tenant with no keys then reads "unknown" (paid tiers refused, UNAVAILABLE, and
the reason said), not "unpublished". The epoch is read in the same round trip as the tenant's key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio as aioredis

from frugal.api.billing.v1 import billing_pb2

POLICY_KEY = "frugal:tenant-policy:{tenant_id}"
BUDGET_KEY = "frugal:budget:{tenant_id}"
# Written by billing (no TTL) after every complete publication of every tenant's policy and budget state.
STATE_EPOCH_KEY = "frugal:tenant-state:epoch"
# Default fractions of the monthly budget: downgrade tiers from here, refuse from here.
DEFAULT_DOWNGRADE_AT = 0.8
DEFAULT_REFUSE_AT = 1.0
# TenantPolicy.monthly_budget_usd: > 0 a hard cap, 0 suspends the tenant, < 0 (NO_CAP) means no cap.
NO_CAP = -1.0
# A published budget state older than this is not trusted (billing re-publishes every few seconds).
STATE_MAX_AGE_S = 900.0


def _bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


async def publish_policy(redis: aioredis.Redis, policy: billing_pb2.TenantPolicy) -> None:
    await redis.set(POLICY_KEY.format(tenant_id=policy.tenant_id), policy.SerializeToString())


async def publish_budget(redis: aioredis.Redis, state: billing_pb2.BudgetState, ttl_s: int = 3600) -> None:
    await redis.set(BUDGET_KEY.format(tenant_id=state.tenant_id), state.SerializeToString(), ex=ttl_s)


async def publish_epoch(redis: aioredis.Redis, epoch: str) -> None:
    await redis.set(STATE_EPOCH_KEY, epoch)


def lost_budget_state(tenant_id: str) -> billing_pb2.BudgetState:
    """What a reader returns for a tenant with no budget key in a store that lost billing's state: status
    UNSPECIFIED and no updated_at (billing always sets both), which budget_verdict reads as "unknown"."""
    return billing_pb2.BudgetState(tenant_id=tenant_id, status=billing_pb2.BUDGET_STATUS_UNSPECIFIED)


def _is_lost(budget: billing_pb2.BudgetState | None) -> bool:
    return (budget is not None and budget.status == billing_pb2.BUDGET_STATUS_UNSPECIFIED
            and not budget.HasField("updated_at"))


async def read_policy(redis: aioredis.Redis, tenant_id: str) -> billing_pb2.TenantPolicy | None:
    raw = await redis.get(POLICY_KEY.format(tenant_id=tenant_id))
    return None if raw is None else billing_pb2.TenantPolicy.FromString(_bytes(raw))


async def read_budget(redis: aioredis.Redis, tenant_id: str) -> billing_pb2.BudgetState | None:
    raw = await redis.get(BUDGET_KEY.format(tenant_id=tenant_id))
    return None if raw is None else billing_pb2.BudgetState.FromString(_bytes(raw))


@dataclass
class TenantStateCache:
    """Per-process cache in front of Redis: policy and budget for `ttl_s` seconds.

    Each read also fetches the epoch (one MGET). Once this reader has seen billing's epoch, a read that finds
    it gone means the store lost billing's state (`store_lost`): a missing budget is then returned as
    lost_budget_state (verdict "unknown", refused) instead of None (verdict "unpublished", allowed). A reader
    started after the loss sees "unpublished" until billing republishes (within its watch interval)."""

    redis: aioredis.Redis
    ttl_s: float = 2.0
    _policies: dict[str, tuple[float, billing_pb2.TenantPolicy | None]] = field(default_factory=dict)
    _budgets: dict[str, tuple[float, billing_pb2.BudgetState | None]] = field(default_factory=dict)
    epoch_seen: bool = False
    store_lost: bool = False

    async def _get(self, key: str) -> bytes | None:
        raw, epoch = await self.redis.mget([key, STATE_EPOCH_KEY])
        if epoch is not None:
            self.epoch_seen, self.store_lost = True, False
        elif self.epoch_seen:
            self.store_lost = True
        return None if raw is None else _bytes(raw)

    async def policy(self, tenant_id: str) -> billing_pb2.TenantPolicy | None:
        hit = self._policies.get(tenant_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        raw = await self._get(POLICY_KEY.format(tenant_id=tenant_id))
        value = None if raw is None else billing_pb2.TenantPolicy.FromString(raw)
        self._policies[tenant_id] = (now, value)
        return value

    async def budget(self, tenant_id: str) -> billing_pb2.BudgetState | None:
        hit = self._budgets.get(tenant_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        raw = await self._get(BUDGET_KEY.format(tenant_id=tenant_id))
        if raw is not None:
            value: billing_pb2.BudgetState | None = billing_pb2.BudgetState.FromString(raw)
        else:
            value = lost_budget_state(tenant_id) if self.store_lost else None
        self._budgets[tenant_id] = (now, value)
        return value

    def last_known(
        self, tenant_id: str
    ) -> tuple[billing_pb2.TenantPolicy | None, billing_pb2.BudgetState | None] | None:
        """What this reader last read for the tenant, whatever its age, or None if it never read it. For when
        Redis does not answer: a capped tenant stays capped on its last known spend (budget_verdict refuses
        it once that state is older than STATE_MAX_AGE_S) instead of reading as "unpublished" (uncapped)."""
        policy, budget = self._policies.get(tenant_id), self._budgets.get(tenant_id)
        if policy is None and budget is None:
            return None
        return (policy[1] if policy else None), (budget[1] if budget else None)


# ------------------------------------------------------------------------------------------ the verdict


def effective_thresholds(downgrade_at: float, refuse_at: float) -> tuple[float, float]:
    """The fractions of the budget in force: 0 means the defaults."""
    return (downgrade_at or DEFAULT_DOWNGRADE_AT, refuse_at or DEFAULT_REFUSE_AT)


def budget_status(cap_usd: float, spent_usd: float, downgrade_at: float, refuse_at: float) -> str:
    """The one rule, used by billing to publish and by the router to decide:
    "unlimited" (cap < 0), "suspended" (cap 0), "exhausted", "downgrade" or "ok"."""
    if cap_usd < 0:
        return "unlimited"
    if cap_usd == 0:
        return "suspended"
    down, refuse = effective_thresholds(downgrade_at, refuse_at)
    fraction = spent_usd / cap_usd
    if fraction >= refuse:
        return "exhausted"
    if fraction >= down:
        return "downgrade"
    return "ok"


STATUS_ENUM: dict[str, int] = {
    "unlimited": billing_pb2.BUDGET_STATUS_UNLIMITED,
    "ok": billing_pb2.BUDGET_STATUS_OK,
    "downgrade": billing_pb2.BUDGET_STATUS_DOWNGRADE,
    "exhausted": billing_pb2.BUDGET_STATUS_EXHAUSTED,
    "suspended": billing_pb2.BUDGET_STATUS_EXHAUSTED,
}


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """What the router does with a tenant's budget.

    status: "unlimited", "ok", "downgrade" (one tier down), "exhausted" and "suspended" (refused,
    RESOURCE_EXHAUSTED), "unknown" (a capped tenant whose state billing has not published, or published too
    long ago, or any tenant of a store that lost billing's state: refused, UNAVAILABLE, because spending
    without knowing the spend would fail open), "unpublished" (billing, whose state is in place, has published
    neither policy nor state for this tenant: no cap is known, allowed).
    """

    status: str
    detail: str = ""

    @property
    def refuses(self) -> bool:
        return self.status in ("exhausted", "suspended", "unknown")

    @property
    def retryable(self) -> bool:
        """True when the refusal is about missing state (UNAVAILABLE), not about money (RESOURCE_EXHAUSTED)."""
        return self.status == "unknown"


def _month(now: datetime) -> str:
    return f"{now.astimezone(UTC):%Y-%m}"


def budget_verdict(
    policy: billing_pb2.TenantPolicy | None,
    budget: billing_pb2.BudgetState | None,
    *,
    now: datetime | None = None,
    max_age_s: float = STATE_MAX_AGE_S,
) -> BudgetVerdict:
    """The verdict from billing's published policy and budget state (the policy's cap wins: it is newer)."""
    now = now or datetime.now(UTC)
    lost = _is_lost(budget)
    if lost:
        budget = None
    if policy is None and budget is None:
        if lost:
            return BudgetVerdict("unknown", "billing's published tenant state is missing from Redis (flushed or "
                                            "restarted empty): the tenant's cap is unknown, paid tiers refused until "
                                            "billing republishes it")
        return BudgetVerdict("unpublished", "billing has published no policy for this tenant")
    cap = policy.monthly_budget_usd if policy is not None else budget.budget_usd if budget is not None else NO_CAP
    if cap < 0:
        return BudgetVerdict("unlimited")
    if cap == 0:
        return BudgetVerdict("suspended", "tenant suspended (monthly budget 0)")
    if budget is None:
        return BudgetVerdict("unknown", f"budget state unknown (billing has not published it) and the tenant has "
                                        f"a hard cap of ${cap:.2f}: paid tiers refused until it does")
    if budget.HasField("updated_at"):
        age = (now - budget.updated_at.ToDatetime(UTC)).total_seconds()
        if age > max_age_s:
            return BudgetVerdict("unknown", f"budget state {age:.0f}s old (billing down?) and the tenant has a "
                                            f"hard cap of ${cap:.2f}: paid tiers refused until it is fresh")
    month = _month(now)
    # A state from last month says nothing about this one: the new month starts at 0 spent, at once.
    spent = budget.spent_usd if budget.month in ("", month) else 0.0
    down = policy.downgrade_at if policy is not None else 0.0
    refuse = policy.refuse_at if policy is not None else 0.0
    status = budget_status(cap, spent, down, refuse)
    detail = f"${spent:.2f} of ${cap:.2f} spent in {month}"
    if status == "downgrade":
        d, _ = effective_thresholds(down, refuse)
        detail = f"{detail} ({spent / cap:.0%}, downgrade from {d:.0%})"
    return BudgetVerdict(status, detail)
