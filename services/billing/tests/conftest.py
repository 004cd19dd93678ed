"""Fixtures of the billing tests: a migrated database, the service on a loopback port, event factories.

Everything is real: PostgreSQL (embedded or testcontainers), Redis 6.2+, gRPC over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.billing.config import Settings
from frugal.billing.server import Billing, build_billing, migrate
from frugal.common.cost_events import CostEvent, CostKind, make_event_id
from frugal.common.db import create_pool
from frugal.common.usage import UsageAmounts
from frugal.devkit.pytest_plugin import with_user

APP_ROLE = "frugal_billing"


@dataclass
class BillingDb:
    admin_dsn: str
    app_dsn: str


def make_settings(db: BillingDb, redis_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, database_url=db.app_dsn,
        migration_database_url=db.admin_dsn, redis_url=redis_url, shutdown_delay_seconds=0,
        shutdown_grace_seconds=2, log_format="text", db_pool_min=1, db_pool_max=6,
        ledger_block_ms=100, ledger_maintenance_seconds=0.2, ledger_claim_idle_ms=60_000,
        budget_refresh_seconds=3600, budget_state_ttl_seconds=7200,
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
async def billing_db(new_database: Callable[[], Awaitable[str]], redis_url: str) -> BillingDb:
    admin = await new_database()
    db = BillingDb(admin, with_user(admin, APP_ROLE))
    await migrate(make_settings(db, redis_url))
    return db


@dataclass
class Service:
    billing: Billing
    stub: billing_pb2_grpc.BillingServiceStub
    channel: grpc.aio.Channel
    settings: Settings


@pytest.fixture
async def start_service(
    billing_db: BillingDb, redis_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Factory: `svc = await start_service(ledger_consumer_enabled=False, ...)`; stopped at teardown."""
    started: list[Service] = []

    async def start(**overrides: Any) -> Service:
        settings = make_settings(billing_db, redis_url, **overrides)
        billing = await build_billing(settings)
        port = await billing.app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        svc = Service(billing, billing_pb2_grpc.BillingServiceStub(channel), channel, settings)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        await svc.channel.close()
        await svc.billing.app.stop(1.0)


@pytest.fixture
async def service(start_service: Callable[..., Awaitable[Service]]) -> Service:
    """The service without its ledger consumer (tenant and usage tests drive consumers themselves)."""
    return await start_service(ledger_consumer_enabled=False)


def md(tenant: str | None, session: str = "s1") -> tuple[tuple[str, str], ...]:
    out = [("x-session-id", session)]
    if tenant is not None:
        out.append(("x-tenant-id", tenant))
    return tuple(out)


async def upsert(stub: Any, tenant: str, **fields: Any) -> Any:
    policy = billing_pb2.TenantPolicy(tenant_id=tenant, **fields)
    return await stub.UpsertTenant(billing_pb2.UpsertTenantRequest(policy=policy), metadata=md(tenant), timeout=10)


_seq = itertools.count()


def event(tenant: str, **kw: Any) -> CostEvent:
    """A valid LLM cost event (premium-tier by default unless overridden)."""
    n = next(_seq)
    base: dict[str, Any] = dict(
        event_id=make_event_id("test", uuid.uuid4().hex, str(n)), tenant_id=tenant, session_id="s1",
        request_id=f"r{n}", service="router", kind=CostKind.LLM, provider="google",
        model="gemini-2.5-flash-lite", tier="lite", usage=UsageAmounts(input_tokens=1000, output_tokens=200),
        cost_usd=1000 * 0.10 / 1e6 + 200 * 0.40 / 1e6, occurred_at=datetime.now(UTC),
    )
    base.update(kw)
    return CostEvent.model_validate(base)


async def xadd_events(redis: aioredis.Redis, events: list[CostEvent], stream: str = "cost-events") -> list[str]:
    pipe = redis.pipeline(transaction=False)
    for ev in events:
        pipe.xadd(stream, ev.to_stream_fields())  # type: ignore[arg-type]
    ids = await pipe.execute()
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 60.0, what: str = "") -> None:
    """Polls until `predicate()` is true; fails after `timeout_s` (a hang guard, not a performance check)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.05)


async def drained(redis: aioredis.Redis, stream: str = "cost-events", group: str = "billing-ledger") -> bool:
    """Every entry of the stream was delivered to the group and acknowledged."""
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except Exception:
        return False
    info = next((g for g in groups if _s(g["name"]) == group), None)
    if info is None or int(info["pending"]):
        return False
    last: Any = await redis.xrevrange(stream, count=1)
    return not last or _s(last[0][0]) == _s(info["last-delivered-id"])


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def app_pool(db: BillingDb, size: int = 4) -> asyncpg.Pool:
    return await create_pool(db.app_dsn, min_size=1, max_size=size)


class Kit:
    """Helpers shared by the test modules (test modules cannot import each other under importlib mode)."""

    md = staticmethod(md)
    upsert = staticmethod(upsert)
    event = staticmethod(event)
    xadd_events = staticmethod(xadd_events)
    make_settings = staticmethod(make_settings)
    wait_for = staticmethod(wait_for)
    drained = staticmethod(drained)
    app_pool = staticmethod(app_pool)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
