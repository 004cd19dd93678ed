"""Per-tenant rate limits shared by router replicas through one Redis, and budget refusal."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from frugal.api.billing.v1 import billing_pb2
from frugal.api.router.v1 import router_pb2
from frugal.common.tenant_state import NO_CAP, publish_budget, publish_policy
from frugal.router.limits import TenantRateLimiter


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", tenant), ("x-session-id", "s1"))


async def answer(router: Any, tenant: str, text: str = "hello", **kwargs: Any) -> router_pb2.RespondCompleted:
    completed = None
    async for msg in router.stub.Respond(
        router_pb2.RespondRequest(turn=router_pb2.TurnInput(text=text), skip_rag=True, skip_vision=True, **kwargs),
        metadata=md(tenant), timeout=10,
    ):
        if msg.WhichOneof("payload") == "completed":
            completed = msg.completed
    assert completed is not None
    result: router_pb2.RespondCompleted = completed
    return result


async def rejected(router: Any, tenant: str, **kwargs: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await answer(router, tenant, **kwargs)
    return info.value


async def test_requests_per_minute_hold_across_two_router_instances(
    start_router: Any, redis_client: aioredis.Redis
) -> None:
    await publish_policy(redis_client, billing_pb2.TenantPolicy(
        tenant_id="small", monthly_budget_usd=NO_CAP, requests_per_minute=3))
    a = await start_router()
    b = await start_router()
    assert a.app.port != b.app.port
    await answer(a, "small")
    await answer(b, "small")
    await answer(a, "small")
    err = await rejected(b, "small")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "3 requests per minute" in (err.details() or "")
    trailers = dict(err.trailing_metadata() or ())
    # Sliding window: up to the rest of this minute plus part of the next.
    assert 1 <= int(trailers["retry-after"]) <= 120
    assert trailers["x-ratelimit-exceeded"] == "requests"
    # Another tenant is not affected; the limited one stays limited on the other replica too.
    await answer(b, "other")
    assert (await rejected(a, "small")).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_tokens_per_minute_are_enforced(start_router: Any, redis_client: aioredis.Redis) -> None:
    # Each turn reserves ~prompt/4 + min(max_output, 250) tokens (~142 here): one fits, two do not.
    await publish_policy(redis_client, billing_pb2.TenantPolicy(
        tenant_id="wordy", monthly_budget_usd=NO_CAP, tokens_per_minute=200))
    router = await start_router()
    await answer(router, "wordy", max_output_tokens=100)
    err = await rejected(router, "wordy", max_output_tokens=100)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "200 tokens per minute" in (err.details() or "")
    assert dict(err.trailing_metadata() or ())["x-ratelimit-exceeded"] == "tokens"


async def test_limiter_is_atomic_under_concurrency(redis_client: aioredis.Redis) -> None:
    limiters = [TenantRateLimiter(redis_client), TenantRateLimiter(redis_client)]
    results = await asyncio.gather(*[
        limiters[i % 2].check("burst", requests_per_minute=10, tokens_per_minute=1_000_000, estimated_tokens=5)
        for i in range(40)
    ])
    assert sum(r.allowed for r in results) == 10
    assert all(r.limit == "requests" and r.retry_after_s > 0 for r in results if not r.allowed)


async def test_settle_charges_actual_tokens(redis_client: aioredis.Redis) -> None:
    limiter = TenantRateLimiter(redis_client)
    first = await limiter.check("t", requests_per_minute=100, tokens_per_minute=1000, estimated_tokens=100)
    assert first.allowed
    await limiter.settle("t", 850)  # the call used 950 tokens, not 100
    second = await limiter.check("t", requests_per_minute=100, tokens_per_minute=1000, estimated_tokens=100)
    assert not second.allowed and second.limit == "tokens"
    await limiter.settle("t", -900)  # refunds never go below zero
    third = await limiter.check("t", requests_per_minute=100, tokens_per_minute=1000, estimated_tokens=100)
    assert third.allowed


async def test_exhausted_budget_is_refused(start_router: Any, redis_client: aioredis.Redis) -> None:
    await publish_policy(redis_client, billing_pb2.TenantPolicy(tenant_id="broke", monthly_budget_usd=5.0))
    await publish_budget(redis_client, billing_pb2.BudgetState(
        tenant_id="broke", month=f"{datetime.now(UTC):%Y-%m}", spent_usd=5.2, budget_usd=5.0, fraction_used=1.04,
        status=billing_pb2.BUDGET_STATUS_EXHAUSTED))
    router = await start_router()
    err = await rejected(router, "broke")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget exhausted" in (err.details() or "") and "$5.20 of $5.00" in (err.details() or "")


async def test_refuse_threshold_from_the_policy_applies_before_billing_flags_it(
    start_router: Any, redis_client: aioredis.Redis
) -> None:
    await publish_policy(redis_client, billing_pb2.TenantPolicy(tenant_id="strict", monthly_budget_usd=10.0,
                                                                refuse_at=0.9))
    await publish_budget(redis_client, billing_pb2.BudgetState(
        tenant_id="strict", spent_usd=9.5, budget_usd=10.0, status=billing_pb2.BUDGET_STATUS_OK))
    router = await start_router()
    assert (await rejected(router, "strict")).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_redis_outage_does_not_stop_answers(start_router: Any, dead_addr: str) -> None:
    """Limits and tenant state fail open (logged and counted); cost events wait in the producer's buffer."""
    router = await start_router(redis_url=f"redis://{dead_addr}/0")
    completed = await answer(router, "acme")
    assert completed.provider.offline and completed.cost_event_ids


async def test_the_window_slides_the_previous_minute_still_counts(redis_client: aioredis.Redis) -> None:
    """A fixed window would forget the previous minute at the boundary; the sliding one weighs it in."""
    limiter = TenantRateLimiter(redis_client)
    seconds, _ = await redis_client.time()
    previous = int(seconds) // 60 - 1
    # The previous minute used 10^9 requests: weighted by the part of it still in the last 60 s, far above 10.
    await redis_client.set(f"frugal:ratelimit:{{slide}}:req:{previous}", 10**9, ex=300)
    result = await limiter.check("slide", requests_per_minute=10, tokens_per_minute=1000, estimated_tokens=1)
    assert not result.allowed and result.limit == "requests"


async def test_a_request_larger_than_the_whole_window_is_refused_even_when_empty(
    redis_client: aioredis.Redis, start_router: Any
) -> None:
    limiter = TenantRateLimiter(redis_client)
    result = await limiter.check("big", requests_per_minute=100, tokens_per_minute=1000, estimated_tokens=1001)
    assert not result.allowed and result.limit == "too_large"
    assert (await limiter.check("big", requests_per_minute=100, tokens_per_minute=1000, estimated_tokens=1000)).allowed
    # Through Respond: a turn whose own text exceeds the tenant's window is refused, not let through.
    await publish_policy(redis_client, billing_pb2.TenantPolicy(
        tenant_id="tiny", monthly_budget_usd=NO_CAP, tokens_per_minute=300))
    router = await start_router()
    err = await rejected(router, "tiny", text="word " * 400)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "tenant tokens per minute" in (err.details() or "")


async def test_respond_settles_the_reservation_to_the_reported_usage(
    start_router: Any, redis_client: aioredis.Redis
) -> None:
    from frugal.devkit.emulators.gemini import GeminiEmulator, GeminiReply

    await publish_policy(redis_client, billing_pb2.TenantPolicy(
        tenant_id="heavy", monthly_budget_usd=NO_CAP, tokens_per_minute=10_000))
    async with GeminiEmulator() as emu:
        router = await start_router(gemini_api_key="g", gemini_base_url=emu.base_url)
        # The turn reserves ~260 tokens; Gemini reports 9,900: settle() books the difference.
        emu.script(GeminiReply(text="ok", usage={"promptTokenCount": 9_800, "candidatesTokenCount": 100}))
        await answer(router, "heavy")
        err = await rejected(router, "heavy")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(err.trailing_metadata() or ())["x-ratelimit-exceeded"] == "tokens"


async def test_a_capped_tenant_stays_capped_when_redis_stops_answering(
    start_router: Any, redis_client: aioredis.Redis, redis_proxy: Any
) -> None:
    """Before: Redis down -> no policy, no budget -> "unpublished" -> the exhausted tenant was answered."""
    await publish_policy(redis_client, billing_pb2.TenantPolicy(tenant_id="broke", monthly_budget_usd=5.0))
    await publish_budget(redis_client, billing_pb2.BudgetState(
        tenant_id="broke", month=f"{datetime.now(UTC):%Y-%m}", spent_usd=5.2, budget_usd=5.0, fraction_used=1.04,
        status=billing_pb2.BUDGET_STATUS_EXHAUSTED, updated_at=_now_ts()))
    router = await start_router(redis_url=redis_proxy.url, tenant_state_ttl_s=0.05)
    assert (await rejected(router, "broke")).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    redis_proxy.hang()
    await asyncio.sleep(0.2)  # past the state cache's TTL: the next turn must ask Redis, which is silent
    err = await rejected(router, "broke")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "$5.20 of $5.00" in (err.details() or "")


def _now_ts() -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts
