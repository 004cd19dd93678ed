"""GetUsage's whole-session accounting over the real ledger: every kind at list prices (offline rows at the
price of the model they stood in for, labelled), per session-minute, against the naive baseline. Expected
figures are computed here by hand from list prices."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from frugal.api.billing.v1 import billing_pb2
from frugal.common.cost_events import CostKind
from frugal.common.usage import UsageAmounts

NOVA = 0.00012833
EL = 0.00005
PREM_IN, PREM_OUT, PREM_READ = 3.0, 15.0, 0.30


@pytest.fixture
async def served(start_service: Any, kit: Any) -> Any:
    svc = await start_service(ledger_consumer_enabled=True)
    await kit.upsert(svc.stub, "acme")
    await kit.upsert(svc.stub, "beta")
    return svc


async def test_session_cost_every_kind_at_list_price(served: Any, kit: Any, redis_client: aioredis.Redis) -> None:
    gw = dict(service="media-gateway", tier=None)
    s1 = [
        # offline STT: 30 s sent to the (stand-in) provider of a 300 s session
        kit.event("acme", kind=CostKind.STT, provider="offline", model="offline-stt", offline=True,
                  usage=UsageAmounts(audio_seconds=30.0, estimated=True), cost_usd=0.0,
                  attributes={"list_price_model": "nova-3", "stream_seconds": "300"}, **gw),
        kit.event("acme", kind=CostKind.TTS, provider="elevenlabs", model="eleven_flash_v2_5",
                  usage=UsageAmounts(characters=150), cost_usd=150 * EL, attributes={"utterance": "answer"}, **gw),
        kit.event("acme", kind=CostKind.TTS, provider="elevenlabs", model="eleven_flash_v2_5",
                  usage=UsageAmounts(characters=0), cost_usd=0.0,
                  attributes={"tts_cache": "hit", "served_characters": "80"}, **gw),
        kit.event("acme", provider="anthropic", model="claude-sonnet-4-6", tier="premium",
                  usage=UsageAmounts(input_tokens=10_000, output_tokens=120), cost_usd=0.01,
                  attributes={"cache_read_tokens": "8000"}),
    ]
    s2 = [kit.event("acme", session_id="s2", kind=CostKind.TTS, provider="elevenlabs", model="eleven_flash_v2_5",
                    usage=UsageAmounts(characters=1000), cost_usd=1000 * EL, **gw)]
    await kit.xadd_events(redis_client, s1 + s2 + [kit.event("beta", cost_usd=1.0)])
    await kit.wait_for(lambda: kit.drained(redis_client), what="stream drained")

    req = billing_pb2.GetUsageRequest(session_id="s1")
    usage = await served.stub.GetUsage(req, metadata=kit.md("acme"), timeout=10)
    sc = usage.session_cost
    kinds = {k.kind: k for k in sc.kinds}
    assert sc.sessions == 1
    assert kinds["stt"].cost_usd == pytest.approx(30 * NOVA) and kinds["stt"].estimated
    assert kinds["stt"].naive_usd == pytest.approx(300 * NOVA)
    assert kinds["tts"].cost_usd == pytest.approx(150 * EL)
    assert kinds["tts"].naive_usd == pytest.approx((400 + 80) * EL) and kinds["tts"].cache_hit_characters == 80
    llm = 2000 * PREM_IN / 1e6 + 8000 * PREM_READ / 1e6 + 120 * PREM_OUT / 1e6
    assert kinds["llm"].cost_usd == pytest.approx(llm) and kinds["llm"].cached_input_tokens == 8000
    assert kinds["llm"].naive_usd == pytest.approx(10_000 * PREM_IN / 1e6 + 120 * PREM_OUT / 1e6)
    total = 30 * NOVA + 150 * EL + llm
    assert sc.cost_usd == pytest.approx(total) and sc.session_minutes == pytest.approx(5.0)
    assert sc.cost_per_minute_usd == pytest.approx(total / 5.0)
    assert sc.savings == pytest.approx(1 - sc.cost_usd / sc.naive_usd)
    assert sc.estimated and "estimated" in sc.offline_rule and sc.naive_answer_characters == 400
    # the rest of the response still covers the whole window
    assert usage.events == 5

    every = await served.stub.GetUsage(billing_pb2.GetUsageRequest(), metadata=kit.md("acme"), timeout=10)
    assert every.session_cost.sessions == 2
    tts = {k.kind: k for k in every.session_cost.kinds}["tts"]
    assert tts.cost_usd == pytest.approx(1150 * EL)
    beta = await served.stub.GetUsage(billing_pb2.GetUsageRequest(session_id="s1"), metadata=kit.md("beta"),
                                      timeout=10)
    assert {k.kind: k for k in beta.session_cost.kinds}["tts"].events == 0  # RLS: acme's rows are invisible
