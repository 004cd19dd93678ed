"""The one cost recorder and its durable producer: ids per attempt, partial usage, the offline rule, cached
prices, and the disk spool (order, restart, full spool), against real Redis servers and provider emulators."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import anthropic
import pytest
import redis.asyncio as aioredis
from google import genai
from google.genai import types as gtypes

from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent, CostEventProducer, CostKind
from frugal.common.cost_recorder import CostRecorder, CostRecordingUnavailable
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.usage import UsageAmounts
from frugal.devkit.devstack import EmbeddedRedis, free_port
from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicReply
from frugal.devkit.emulators.gemini import GeminiEmulator, GeminiReply


async def _stream(url: str, tenant: str | None = None) -> list[CostEvent]:
    r = aioredis.Redis.from_url(url)
    try:
        entries: Any = await r.xrange(COST_EVENTS_STREAM)
    finally:
        await r.aclose()
    events = [CostEvent.from_stream_fields(f) for _, f in entries]
    return [e for e in events if tenant is None or e.tenant_id == tenant]


def _recorder(producer: CostEventProducer | None) -> CostRecorder:
    return CostRecorder(producer, default_catalog(), service="test")


async def _llm(rec: CostRecorder, i: int) -> CostEvent:
    return await rec.record(usage=UsageAmounts(input_tokens=i, requests=1), tenant_id="org_a", kind=CostKind.LLM,
                            provider="google", model="gemini-2.5-flash", key=("turn", str(i)))


# ------------------------------------------------------------------------------------------- event ids


async def test_every_attempt_has_its_own_id_and_a_retry_keeps_it() -> None:
    rec = _recorder(None)
    args: dict[str, Any] = dict(tenant_id="org_a", kind=CostKind.LLM, provider="google", model="gemini-2.5-flash",
                                key=("turn-1", "0"))
    a, b = rec.attempt(**args), rec.attempt(**args)
    assert a.event_id != b.event_id  # same turn id, same attempt number: still two calls, two ids
    a.report(UsageAmounts(input_tokens=10, requests=1))
    first = await a.finish()
    assert await a.finish("error") is first  # recorded once; re-finishing (a retry) gives the same event
    assert first.attributes["attempt_nonce"] == a.nonce and first.event_id == a.event_id


# --------------------------------------------------------------------------------- usage before interruption


async def test_cancelled_stream_bills_the_input_tokens_the_provider_reported(redis_url: str) -> None:
    """Claude reports input tokens in message_start; the caller is cancelled (barge-in) mid-answer."""
    client = create_redis(redis_url)
    producer = CostEventProducer(client, name="t-cancel")
    rec = _recorder(producer)
    started = asyncio.Event()
    async with AnthropicEmulator() as emu:
        emu.script(AnthropicReply(chunks=("One. ", "Two. ", "Three. ", "Four."), chunk_delay_s=0.5,
                                  usage={"input_tokens": 1234, "output_tokens": 40}))
        sdk = anthropic.AsyncAnthropic(api_key="test", base_url=emu.base_url, max_retries=0)

        async def call() -> None:
            async with rec.attempt(tenant_id="org_cancel", kind=CostKind.LLM, provider="anthropic",
                                   model="claude-sonnet-4-6", key=("turn-9", "0"),
                                   estimate=UsageAmounts(input_tokens=5, requests=1)) as att:
                stream = await sdk.messages.create(model="claude-sonnet-4-6", max_tokens=64, stream=True,
                                                   messages=[{"role": "user", "content": "hello"}])
                async for ev in stream:
                    if ev.type == "message_start":
                        u = ev.message.usage
                        att.report(UsageAmounts(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                                                requests=1))
                    elif ev.type == "content_block_delta":
                        started.set()

        task = asyncio.create_task(call())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sdk.close()
    await producer.aclose()
    await client.aclose()
    (event,) = await _stream(redis_url, "org_cancel")
    assert event.attributes["outcome"] == "cancelled"
    assert event.usage.input_tokens == 1234 and not event.usage.estimated  # the provider's number, not ours
    assert event.cost_usd > 0 and event.cost_usd == pytest.approx(default_catalog().cost("claude-sonnet-4-6",
                                                                                          event.usage))


async def test_timed_out_vision_call_is_billed_on_the_estimate(redis_url: str) -> None:
    """Gemini got the image; our timeout fired first: the call is billed (estimated), never $0."""
    client = create_redis(redis_url)
    producer = CostEventProducer(client, name="t-vision")
    rec = _recorder(producer)
    async with GeminiEmulator() as emu:
        emu.script(GeminiReply(text="A slide.", latency_s=2.0))
        sdk = genai.Client(api_key="test", http_options=gtypes.HttpOptions(base_url=emu.base_url))
        estimate = UsageAmounts(input_tokens=258 + 40, images=1, requests=1)
        with pytest.raises(TimeoutError):
            async with rec.attempt(tenant_id="org_vision", kind=CostKind.VISION, provider="google",
                                   model="gemini-2.5-flash", key=("sess", "track", "7"), estimate=estimate):
                await asyncio.wait_for(sdk.aio.models.generate_content(model="gemini-2.5-flash", contents="x"), 0.2)
        await sdk.aio.aclose()
    await producer.aclose()
    await client.aclose()
    (event,) = await _stream(redis_url, "org_vision")
    assert event.attributes["outcome"] == "timeout" and event.usage.estimated
    assert event.usage.input_tokens == 298 and event.usage.images == 1
    assert event.cost_usd > 0 and event.cost_usd == pytest.approx(default_catalog().cost("gemini-2.5-flash", estimate))


async def test_output_without_input_bills_the_estimated_prompt() -> None:
    rec = _recorder(None)
    att = rec.attempt(tenant_id="org_a", kind=CostKind.LLM, provider="google", model="gemini-2.5-flash",
                      estimate=UsageAmounts(input_tokens=500, requests=1))
    att.report(UsageAmounts(output_tokens=20, requests=1))
    ev = await att.finish("interrupted")
    assert ev.usage.input_tokens == 500 and ev.usage.output_tokens == 20 and ev.usage.estimated


# ------------------------------------------------------------------------------------ offline, cached prices


async def test_one_offline_rule_list_price_of_the_stood_in_model_labelled() -> None:
    rec = _recorder(None)
    usage = UsageAmounts(audio_seconds=10.0, requests=1)
    ev = await rec.record(usage=usage, tenant_id="org_a", kind=CostKind.STT, provider="offline", model="offline-stt",
                          offline=True, priced_as="nova-3")
    assert ev.offline and ev.usage.estimated and ev.attributes["priced_as"] == "nova-3"
    assert ev.cost_usd > 0 and ev.cost_usd == pytest.approx(default_catalog().cost("nova-3", usage))


def test_cached_input_tokens_are_priced_at_the_cached_price() -> None:
    cat = default_catalog()
    p = cat.price("claude-sonnet-4-6")
    assert p.cached_input_per_mtok is not None and p.cached_input_per_mtok < p.input_per_mtok
    usage = UsageAmounts(input_tokens=1_000_000, cached_input_tokens=800_000, output_tokens=0)
    assert cat.cost("claude-sonnet-4-6", usage) == pytest.approx(0.2 * 3.00 + 0.8 * 0.30)
    with pytest.raises(ValueError, match="cached_input_tokens"):
        UsageAmounts(input_tokens=10, cached_input_tokens=11)


async def test_cache_writes_are_priced_at_the_write_price_by_the_recorder_and_the_report_alike() -> None:
    """Anthropic bills prompt-cache writes at 1.25x input: the catalog carries the price, the recorder applies it
    to an attempt's `cache_write_tokens`, and the session report's row rule gives the same figure."""
    from frugal.common.session_cost import CostRow, list_price

    cat = default_catalog()
    p = cat.price("claude-sonnet-4-6")
    assert p.cache_write_per_mtok == pytest.approx(1.25 * p.input_per_mtok)
    usage = UsageAmounts(input_tokens=10_000, cached_input_tokens=2_000, output_tokens=100, requests=1)
    attrs = {"cache_read_tokens": "2000", "cache_write_tokens": "6000"}
    event = await _recorder(None).record(usage=usage, tenant_id="org_a", kind=CostKind.LLM, provider="anthropic",
                                         model="claude-sonnet-4-6", key=("t", "0"), attributes=attrs)
    expected = (2_000 * 3.00 + 2_000 * 0.30 + 6_000 * 3.75 + 100 * 15.00) / 1e6
    assert event.cost_usd == pytest.approx(expected)
    assert list_price(CostRow.from_event(event), cat) == pytest.approx(event.cost_usd)
    # writes are never more than the uncached input, and a model without a write price bills them as input
    assert cat.cost("claude-sonnet-4-6", usage, 50_000) == pytest.approx((2_000 * 0.30 + 8_000 * 3.75 + 1_500) / 1e6)
    assert cat.cost("gemini-2.5-flash", usage, 6_000) == cat.cost("gemini-2.5-flash", usage)
    # a zero-cost record: no usage, no price, its own id, what saved it
    free = _recorder(None).build_free(saved_by="tts_cache", tenant_id="org_a", kind=CostKind.TTS,
                                      provider="elevenlabs", model="eleven_flash_v2_5", key=("s", "1"),
                                      attributes={"served_characters": "40"})
    assert free.cost_usd == 0 and free.usage.characters == 0 and free.attributes["saved_by"] == "tts_cache"
    assert free.attributes["attempt_nonce"] and free.attributes["served_characters"] == "40"


# ------------------------------------------------------------------------------------------------ spool


async def test_spool_keeps_order_across_an_outage(tmp_path: Path) -> None:
    port = free_port()
    client = create_redis(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
    producer = CostEventProducer(client, name="t-order", spool_dir=tmp_path / "spool", retry_interval=0.05)
    rec = _recorder(producer)
    server = EmbeddedRedis(tmp_path / "redis", port)
    try:
        for i in (1, 2, 3):
            await _llm(rec, i)  # nothing listening: spooled (fsynced), the caller is unaffected
        assert producer.pending == 3 and producer.spool_path is not None and producer.spool_path.stat().st_size > 0
        server.start()
        await _llm(rec, 4)  # Redis is back, but a backlog exists: 4 queues behind 1-3
        assert await producer.flush() == 0
        assert [e.usage.input_tokens for e in await _stream(server.url)] == [1, 2, 3, 4]
        assert producer.spool_path.stat().st_size == 0  # truncated once replayed
    finally:
        await producer.aclose()
        await client.aclose()
        server.stop()


_CHILD = textwrap.dedent("""
    import asyncio, os, sys
    from frugal.common.cost_events import CostEventProducer, CostKind
    from frugal.common.cost_recorder import CostRecorder
    from frugal.common.pricing import default_catalog
    from frugal.common.redis_client import create_redis
    from frugal.common.usage import UsageAmounts

    async def main() -> None:
        client = create_redis(sys.argv[1], socket_timeout=0.5)
        producer = CostEventProducer(client, name="t-restart", spool_dir=sys.argv[2])
        rec = CostRecorder(producer, default_catalog(), service="test")
        for i in range(int(sys.argv[3])):
            await rec.record(usage=UsageAmounts(input_tokens=i + 1, requests=1), tenant_id="org_a",
                             kind=CostKind.LLM, provider="google", model="gemini-2.5-flash")
        print("spooled", producer.pending, flush=True)
        await asyncio.sleep(3600)  # killed here, without any shutdown

    asyncio.run(main())
""")


async def test_spool_survives_a_killed_producer_and_is_replayed_at_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    spool = tmp_path / "spool"
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD, url, str(spool), "25",
                                                 stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = await child.stdout.readline()
        assert line.decode().split() == ["spooled", "25"]
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    server = EmbeddedRedis(tmp_path / "redis", port)
    server.start()
    client = create_redis(url)
    producer = CostEventProducer(client, name="t-restart", spool_dir=spool)
    try:
        await producer.start()  # adopts the dead producer's spool
        assert await producer.flush() == 0
        assert [e.usage.input_tokens for e in await _stream(url)] == list(range(1, 26))
    finally:
        await producer.aclose()
        await client.aclose()
        server.stop()


async def test_full_spool_refuses_new_paid_calls_until_redis_takes_the_backlog(tmp_path: Path) -> None:
    from frugal.common import cost_events

    port = free_port()
    client = create_redis(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
    producer = CostEventProducer(client, name="t-full", spool_dir=tmp_path / "spool", spool_max_bytes=4096,
                                 retry_interval=0.05)
    rec = _recorder(producer)
    server = EmbeddedRedis(tmp_path / "redis", port)
    try:
        rec.check_can_spend()
        n = 0
        while n < 500:  # 4096 bytes hold a dozen events; 500 means the limit is not enforced
            n += 1
            await _llm(rec, n)
            try:
                rec.check_can_spend()
            except CostRecordingUnavailable as err:
                assert "spool full" in str(err)
                break
        else:
            pytest.fail("a full spool did not refuse new paid calls")
        assert cost_events.COST_SPOOL_FULL._value.get() == 1  # the alert's metric
        await _llm(rec, n + 1)  # a call already paid for is still spooled beyond the limit, never dropped
        assert producer.pending == n + 1
        server.start()
        assert await producer.flush() == 0
        rec.check_can_spend()
        assert cost_events.COST_SPOOL_FULL._value.get() == 0
        assert [e.usage.input_tokens for e in await _stream(server.url)] == list(range(1, n + 2))
    finally:
        await producer.aclose()
        await client.aclose()
        server.stop()
