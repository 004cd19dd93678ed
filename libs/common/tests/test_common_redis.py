"""Cost-event producer against a real Redis, including an outage that loses nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent, CostEventProducer, CostKind, make_event_id
from frugal.common.redis_client import create_redis
from frugal.common.usage import UsageAmounts
from frugal.devkit.devstack import EmbeddedRedis, free_port


def _event(i: int) -> CostEvent:
    return CostEvent(event_id=make_event_id("test", str(i)), tenant_id="org_a", service="test", kind=CostKind.LLM,
                     provider="google", model="gemini-2.5-flash", usage=UsageAmounts(input_tokens=i), cost_usd=0.0)


async def test_emit_appends_to_stream(redis_client: aioredis.Redis, redis_url: str) -> None:
    client = create_redis(redis_url)
    producer = CostEventProducer(client)
    event = _event(1)
    try:
        assert await producer.emit(event) is True
    finally:
        await producer.aclose()
        await client.aclose()
    entries: list[Any] = await redis_client.xrange(COST_EVENTS_STREAM)  # type: ignore[assignment]
    assert len(entries) == 1
    assert CostEvent.from_stream_fields(entries[0][1]) == event


async def test_outage_buffers_then_delivers(tmp_path: Path) -> None:
    port = free_port()
    client = create_redis(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
    producer = CostEventProducer(client, retry_interval=0.05)
    server = EmbeddedRedis(tmp_path, port)
    try:
        assert await producer.emit(_event(1)) is False  # nothing listening: buffered, caller unaffected
        assert await producer.emit(_event(2)) is False
        assert producer.pending == 2
        server.start()
        assert await producer.flush() == 0
        check = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        entries: list[Any] = await check.xrange(COST_EVENTS_STREAM)  # type: ignore[assignment]
        await check.aclose()
        assert [CostEvent.from_stream_fields(f).usage.input_tokens for _, f in entries] == [1, 2]
    finally:
        await producer.aclose()
        await client.aclose()
        server.stop()


def test_devstack_is_idempotent_and_recreates_databases() -> None:
    import os
    import tempfile

    from frugal.devkit.devstack import DevStack

    tmp = tempfile.TemporaryDirectory(prefix="frugal-devstack-")
    os.chmod(tmp.name, 0o755)  # as root, postgres runs as an unprivileged user that must reach the data dir
    stack = DevStack(Path(tmp.name) / "stack", free_port(), free_port())
    try:
        stack.start()
        stack.start()  # a second start is a no-op
        assert stack.postgres.running() and stack.redis.running()
        dsn = stack.postgres.fresh_database("frugal_demo_test")
        assert dsn.endswith("/frugal_demo_test")
        assert stack.postgres.fresh_database("frugal_demo_test") == dsn  # drop + create again works
    finally:
        stack.stop()
    assert not stack.postgres.running() and not stack.redis.running()
    tmp.cleanup()


async def test_cost_events_get_their_own_redis_only_when_configured(redis_url: str) -> None:
    from frugal.common.redis_client import aclose_cost_redis, create_cost_redis, create_redis
    from frugal.common.settings import ServiceSettings

    shared = create_redis(redis_url)
    same = create_cost_redis(ServiceSettings(redis_url=redis_url), shared)
    assert same is shared
    other_url = redis_url.rsplit("/", 1)[0] + "/3"
    own = create_cost_redis(ServiceSettings(redis_url=redis_url, cost_events_redis_url=other_url), shared)
    assert own is not shared
    await own.set("cost-probe", b"1")
    assert await shared.get("cost-probe") is None  # another database: the stream never lands among the caches
    await own.delete("cost-probe")
    await aclose_cost_redis(own, shared)
    await aclose_cost_redis(same, shared)
    assert await shared.ping()
    await shared.aclose()
