"""A flushed state store (FLUSHALL on the real Redis) reads "unknown" (refused, and why), never "unpublished"
(allowed); billing sees its epoch gone and republishes every tenant at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from frugal.common.redis_client import create_redis
from frugal.common.tenant_state import STATE_EPOCH_KEY, TenantStateCache, budget_verdict


@pytest.fixture
async def reader_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


async def _verdict(cache: TenantStateCache, tenant: str) -> Any:
    return budget_verdict(await cache.policy(tenant), await cache.budget(tenant))


async def test_a_flushed_store_reads_unknown_not_unpublished(
    start_service: Any, kit: Any, redis_client: aioredis.Redis, reader_redis: aioredis.Redis
) -> None:
    # No refresh and no watch during the test: what the readers see after the flush is the flush itself.
    svc = await start_service(ledger_consumer_enabled=False, budget_refresh_seconds=3600,
                              budget_state_ttl_seconds=7200, budget_state_watch_seconds=3600)
    await kit.upsert(svc.stub, "acme", display_name="Acme", monthly_budget_usd=10)  # a hard cap
    await kit.upsert(svc.stub, "free", display_name="Free", monthly_budget_usd=-1)  # no cap

    async def epoch() -> bool:
        return bool(await redis_client.exists(STATE_EPOCH_KEY))

    await kit.wait_for(epoch, timeout_s=30, what="billing's first complete publication")
    reader = TenantStateCache(reader_redis, ttl_s=0)
    assert (await _verdict(reader, "acme")).status == "ok"
    assert (await _verdict(reader, "free")).status == "unlimited"
    assert (await _verdict(reader, "ghost")).status == "unpublished"  # billing's state in place, tenant unknown

    await redis_client.flushall()
    for tenant in ("acme", "free", "ghost"):
        v = await _verdict(reader, tenant)
        assert v.status == "unknown" and v.refuses and v.retryable, (tenant, v)
        assert "missing from Redis" in v.detail
    assert reader.store_lost
    # A reader that never saw the epoch cannot tell a flushed store from one billing never wrote to.
    fresh = TenantStateCache(reader_redis, ttl_s=0)
    assert (await _verdict(fresh, "acme")).status == "unpublished"


async def test_billing_republishes_at_once_when_its_epoch_is_gone(
    start_service: Any, kit: Any, redis_client: aioredis.Redis, reader_redis: aioredis.Redis
) -> None:
    # The periodic refresh is an hour away: only the epoch watch can bring the state back.
    svc = await start_service(ledger_consumer_enabled=False, budget_refresh_seconds=3600,
                              budget_state_ttl_seconds=7200, budget_state_watch_seconds=0.1)
    await kit.upsert(svc.stub, "acme", display_name="Acme", monthly_budget_usd=10)

    async def back() -> bool:
        return bool(await redis_client.exists("frugal:tenant-policy:acme", "frugal:budget:acme",
                                              STATE_EPOCH_KEY) == 3)

    await kit.wait_for(back, timeout_s=30, what="first publication")
    reader = TenantStateCache(reader_redis, ttl_s=0)
    assert (await _verdict(reader, "acme")).status == "ok"
    await redis_client.flushall()
    await kit.wait_for(back, timeout_s=30, what="policy, budget and epoch republished after FLUSHALL")
    assert svc.billing.refresher.recoveries >= 1
    assert (await _verdict(reader, "acme")).status == "ok"
    assert not reader.store_lost
