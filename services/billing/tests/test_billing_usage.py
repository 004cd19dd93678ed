"""GetUsage and GetBudgetState over gRPC, with the ledger consumer running inside the service: costs,
baselines and savings recomputed here by hand from list prices, never read back from the code under test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from frugal.api.billing.v1 import billing_pb2
from frugal.common.cost_events import CostKind
from frugal.common.tenant_state import read_budget
from frugal.common.usage import UsageAmounts

# List prices (USD) the expectations below are computed from, per 1M tokens / per unit.
LITE_IN, LITE_OUT = 0.10, 0.40
STD_IN, STD_OUT = 0.30, 2.50
PREM_IN, PREM_OUT = 3.00, 15.00
NOVA_PER_SECOND = 0.00012833


def llm_cost(inp: int, out: int, price_in: float, price_out: float) -> float:
    return inp * price_in / 1e6 + out * price_out / 1e6


@pytest.fixture
async def served(start_service: Any, kit: Any) -> Any:
    svc = await start_service(ledger_consumer_enabled=True)
    await kit.upsert(svc.stub, "acme", monthly_budget_usd=0.05, downgrade_at=0.5, refuse_at=0.9)
    await kit.upsert(svc.stub, "beta")
    return svc


async def test_usage_and_savings_come_from_the_ledger(served: Any, kit: Any, redis_client: aioredis.Redis) -> None:
    now = datetime.now(UTC)
    evs = [
        kit.event("acme", model="gemini-2.5-flash-lite", tier="lite",
                  usage=UsageAmounts(input_tokens=1000, output_tokens=200),
                  cost_usd=llm_cost(1000, 200, LITE_IN, LITE_OUT)),
        kit.event("acme", model="gemini-2.5-flash", tier="standard",
                  usage=UsageAmounts(input_tokens=2000, output_tokens=500),
                  cost_usd=llm_cost(2000, 500, STD_IN, STD_OUT)),
        kit.event("acme", provider="anthropic", model="claude-sonnet-4-6", tier="premium",
                  usage=UsageAmounts(input_tokens=1000, output_tokens=100),
                  cost_usd=llm_cost(1000, 100, PREM_IN, PREM_OUT)),
        # Offline stand-in: usage estimated, flagged; counted in usage, reported as estimated.
        kit.event("acme", provider="offline", model="gemini-2.5-flash-lite", tier="lite", offline=True,
                  usage=UsageAmounts(input_tokens=1000, output_tokens=200, estimated=True),
                  cost_usd=llm_cost(1000, 200, LITE_IN, LITE_OUT)),
        # Vision: one kept frame standing for 30 s (then 10 s) of screen share.
        kit.event("acme", service="vision-dedup", kind=CostKind.VISION, model="gemini-2.5-flash", tier=None,
                  usage=UsageAmounts(input_tokens=300, output_tokens=50, images=1), cost_usd=0.0002,
                  covered_seconds=30.0, frames_considered=150),
        kit.event("acme", service="vision-dedup", kind=CostKind.VISION, model="gemini-2.5-flash", tier=None,
                  usage=UsageAmounts(input_tokens=300, output_tokens=50, images=1), cost_usd=0.0002,
                  covered_seconds=10.0, frames_considered=50),
        kit.event("acme", service="media-gateway", kind=CostKind.STT, provider="deepgram", model="nova-3", tier=None,
                  usage=UsageAmounts(audio_seconds=60.0), cost_usd=60 * NOVA_PER_SECOND),
    ]
    others = [
        kit.event("beta", cost_usd=1.0),  # another tenant
        kit.event("acme", cost_usd=1.0, occurred_at=now - timedelta(days=33)),  # outside the default window
    ]
    await kit.xadd_events(redis_client, evs + others + evs[:3])  # with replays
    await kit.wait_for(lambda: kit.drained(redis_client), what="stream drained")

    usage = await served.stub.GetUsage(billing_pb2.GetUsageRequest(), metadata=kit.md("acme"), timeout=10)
    llm_base = [llm_cost(1000, 200, PREM_IN, PREM_OUT), llm_cost(2000, 500, PREM_IN, PREM_OUT),
                llm_cost(1000, 100, PREM_IN, PREM_OUT), llm_cost(1000, 200, PREM_IN, PREM_OUT)]
    llm_actual = [e.cost_usd for e in evs[:4]]
    vision_actual, vision_base = 0.0004, 0.0002 * 30 + 0.0002 * 10
    stt = 60 * NOVA_PER_SECOND
    total_actual = sum(llm_actual) + vision_actual + stt
    total_base = sum(llm_base) + vision_base + stt

    assert usage.tenant_id == "acme"
    assert usage.events == 7 and usage.llm_requests == 4 and usage.vision_frames == 2 and usage.estimated_events == 1
    assert usage.cost_usd == pytest.approx(total_actual, rel=1e-9)
    assert usage.baseline_cost_usd == pytest.approx(total_base, rel=1e-9)
    assert usage.savings == pytest.approx(1 - total_actual / total_base, rel=1e-9)
    kinds = {b.key: b for b in usage.by_kind}
    assert set(kinds) == {"llm", "vision", "stt"}
    assert kinds["llm"].savings == pytest.approx(1 - sum(llm_actual) / sum(llm_base), rel=1e-9)
    assert kinds["vision"].savings == pytest.approx(1 - vision_actual / vision_base, rel=1e-9)  # 0.95
    assert kinds["vision"].usage.images == 2 and kinds["vision"].events == 2
    assert kinds["stt"].savings == 0.0 and kinds["stt"].usage.audio_seconds == pytest.approx(60.0)
    assert kinds["llm"].usage.estimated is True and kinds["vision"].usage.estimated is False
    assert kinds["llm"].usage.input_tokens == 5000 and kinds["llm"].usage.output_tokens == 1000
    tiers = {b.key: b for b in usage.by_tier}
    assert set(tiers) == {"lite", "standard", "premium"}
    assert tiers["lite"].events == 2 and tiers["premium"].savings == pytest.approx(0.0, abs=1e-12)
    assert tiers["standard"].baseline_cost_usd == pytest.approx(llm_base[1], rel=1e-9)
    models = {b.key: b for b in usage.by_model}
    assert models["gemini-2.5-flash"].events == 3  # one standard LLM turn + two vision calls
    # The window is honoured: last 45 days include the old event.
    wide = billing_pb2.GetUsageRequest()
    wide.start.FromDatetime(now - timedelta(days=45))
    wider = await served.stub.GetUsage(wide, metadata=kit.md("acme"), timeout=10)
    assert wider.events == 8 and wider.cost_usd == pytest.approx(total_actual + 1.0, rel=1e-9)
    # Another tenant sees only its own.
    beta = await served.stub.GetUsage(billing_pb2.GetUsageRequest(), metadata=kit.md("beta"), timeout=10)
    assert beta.events == 1 and beta.cost_usd == pytest.approx(1.0)

    # Budget: 0.05 USD, downgrade at 50 %, refuse at 90 %; offline spend does not count.
    online_spend = total_actual - evs[3].cost_usd
    state = (await served.stub.GetBudgetState(billing_pb2.GetBudgetStateRequest(), metadata=kit.md("acme"))).state
    assert state.spent_usd == pytest.approx(online_spend, rel=1e-9)
    assert state.fraction_used == pytest.approx(online_spend / 0.05, rel=1e-9)
    assert state.status == billing_pb2.BUDGET_STATUS_OK
    published = await read_budget(redis_client, "acme")
    assert published is not None and published.spent_usd == pytest.approx(online_spend, rel=1e-9)
    await kit.xadd_events(redis_client, [kit.event("acme", cost_usd=0.02)])
    await kit.wait_for(lambda: kit.drained(redis_client), what="budget event written")
    state = (await served.stub.GetBudgetState(billing_pb2.GetBudgetStateRequest(), metadata=kit.md("acme"))).state
    assert state.status == billing_pb2.BUDGET_STATUS_DOWNGRADE
    await kit.xadd_events(redis_client, [kit.event("acme", cost_usd=0.02)])
    await kit.wait_for(lambda: kit.drained(redis_client), what="budget event written")
    published = await read_budget(redis_client, "acme")
    assert published is not None and published.status == billing_pb2.BUDGET_STATUS_EXHAUSTED


async def test_usage_window_and_errors(served: Any, kit: Any) -> None:
    bad = billing_pb2.GetUsageRequest()
    bad.start.FromDatetime(datetime(2026, 2, 1, tzinfo=UTC))
    bad.end.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.GetUsage(bad, metadata=kit.md("acme"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "before end" in (err.value.details() or "")
    empty = await served.stub.GetUsage(billing_pb2.GetUsageRequest(), metadata=kit.md("acme"))
    assert empty.events == 0 and empty.savings == 0.0 and empty.cost_usd == 0.0
    start = empty.start.ToDatetime(tzinfo=UTC)
    assert (start.day, start.hour, start.minute) == (1, 0, 0)  # default: start of the month (UTC)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.GetBudgetState(billing_pb2.GetBudgetStateRequest(), metadata=kit.md("nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.GetUsage(billing_pb2.GetUsageRequest(), metadata=(("x-session-id", "s1"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_refresher_republishes_lost_state(start_service: Any, kit: Any, redis_client: aioredis.Redis) -> None:
    svc = await start_service(ledger_consumer_enabled=False, budget_refresh_seconds=0.2, budget_state_ttl_seconds=60)
    await kit.upsert(svc.stub, "acme", display_name="Acme", monthly_budget_usd=10)
    await redis_client.flushdb()  # Redis restarted without persistence

    async def back() -> bool:
        return bool(await redis_client.exists("frugal:tenant-policy:acme", "frugal:budget:acme") == 2)

    await kit.wait_for(back, timeout_s=30, what="policy and budget re-published")
