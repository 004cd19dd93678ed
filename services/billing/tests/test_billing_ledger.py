"""The exactly-once ledger on a real Redis Stream and PostgreSQL: duplicates, poison events, a consumer
crashing between commit and XACK, two consumers at once, reclaiming a dead consumer's entries."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from frugal.api.billing.v1 import billing_pb2
from frugal.billing.consumer import ConsumerConfig, LedgerConsumer
from frugal.billing.ledger import TenantWriteResult
from frugal.billing.state import StatePublisher
from frugal.common.cost_events import CostKind
from frugal.common.db import tenant_transaction
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.tenant_state import read_budget
from frugal.common.usage import UsageAmounts

CFG = ConsumerConfig(batch_size=50, block_ms=100, claim_idle_ms=60_000, maintenance_s=0.2, write_concurrency=3)


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the consumer handles it."""


@pytest.fixture
async def ledger_env(billing_db: Any, redis_url: str, redis_client: aioredis.Redis, kit: Any) -> AsyncIterator[Any]:
    """Tenants registered (through the real service), an app-role pool, a consumer factory."""
    pool = await kit.app_pool(billing_db, size=8)
    redis = create_redis(redis_url)
    consumers: list[LedgerConsumer] = []

    class Env:
        db = billing_db

        @staticmethod
        def consumer(name: str, *, after_commit: Any = None, publisher: bool = True, **cfg: Any) -> LedgerConsumer:
            pub = StatePublisher(pool, redis) if publisher else None
            c = LedgerConsumer(pool, redis, default_catalog(), replace(CFG, consumer=name, **cfg),
                               publisher=pub, after_commit=after_commit)
            consumers.append(c)
            return c

    Env.pool = pool  # type: ignore[attr-defined]
    Env.redis = redis  # type: ignore[attr-defined]
    for tid in ("acme", "beta", "org_abc"):
        async with tenant_transaction(pool, tid) as conn:
            assert await conn.fetchval("SELECT billing_register_tenant($1)", tid) is None
            await conn.execute(
                "INSERT INTO tenants (tenant_id, display_name, plan, monthly_budget_usd) VALUES ($1, $1, 'p', 0) "
                "ON CONFLICT DO NOTHING", tid)
    yield Env
    for c in consumers:
        await c.aclose(2.0)
    await redis.aclose()
    await pool.close()


async def _ledger(pool: asyncpg.Pool, tenant: str) -> list[asyncpg.Record]:
    async with tenant_transaction(pool, tenant) as conn:
        return list(await conn.fetch("SELECT * FROM cost_ledger ORDER BY event_id"))


async def _spend(pool: asyncpg.Pool, tenant: str) -> tuple[Decimal, int]:
    async with tenant_transaction(pool, tenant) as conn:
        rec = await conn.fetchrow("SELECT coalesce(sum(online_usd + offline_usd), 0) AS usd, "
                                  "coalesce(sum(events), 0) AS n FROM tenant_monthly_spend")
    assert rec is not None
    return rec["usd"], int(rec["n"])


async def _dlq(redis: aioredis.Redis) -> list[dict[str, str]]:
    rows: Any = await redis.xrange("cost-events-dlq")
    return [{k.decode(): v.decode(errors="replace") for k, v in fields.items()} for _, fields in rows]


# Both write paths: the default set-based batch (migrations/0003) and LEDGER_PER_TENANT_TRANSACTIONS=true, whose
# SQL is its own (ledger._INSERT) and must keep the same rules: a replay changes nothing, offline spend is not spend.
WRITE_PATHS = pytest.mark.parametrize("per_tenant", [False, True], ids=["batch", "per-tenant"])


@WRITE_PATHS
async def test_duplicates_are_written_once_and_acknowledged(ledger_env: Any, kit: Any, per_tenant: bool) -> None:
    redis = ledger_env.redis
    events = [kit.event("acme") for _ in range(30)] + [kit.event("beta") for _ in range(10)]
    # Every event twice in the stream (producer retry), a few three times, interleaved.
    stream = events + events[::-1] + events[:5]
    await kit.xadd_events(redis, stream)
    c = ledger_env.consumer("c1", per_tenant_transactions=per_tenant)
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    assert c.totals.written == 40 and c.totals.duplicates == len(stream) - 40 and c.totals.dead_lettered == 0
    assert len(await _ledger(ledger_env.pool, "acme")) == 30
    assert len(await _ledger(ledger_env.pool, "beta")) == 10
    # The same events again, after they were written: all duplicates, spend unchanged.
    spend_before = await _spend(ledger_env.pool, "acme")
    await kit.xadd_events(redis, events)
    await kit.wait_for(lambda: kit.drained(redis), what="replays drained")
    assert c.totals.written == 40 and c.totals.duplicates == len(stream)
    assert await _spend(ledger_env.pool, "acme") == spend_before
    expected = sum(Decimal(repr(e.cost_usd)) for e in events if e.tenant_id == "acme")
    assert spend_before == (expected, 30)
    assert await _dlq(redis) == []


async def test_poison_events_go_to_the_dead_letter_stream(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    # An event of beta, written first; later an acme event reuses its event_id.
    beta_first = kit.event("beta")
    await kit.xadd_events(redis, [beta_first])
    c = ledger_env.consumer("c1")
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="first event written")
    good = kit.event("acme")
    ids: dict[str, str] = {}
    ids["unparseable"] = (await redis.xadd("cost-events", {"event": b"{not json"})).decode()
    ids["no_field"] = (await redis.xadd("cost-events", {"something": "else"})).decode()
    bad_schema = json.loads(good.model_dump_json()) | {"event_id": "evt-bad-kind-1", "kind": "teleport"}
    ids["invalid"] = (await redis.xadd("cost-events", {"event": json.dumps(bad_schema)})).decode()
    bad_tenant = json.loads(good.model_dump_json()) | {"event_id": "evt-bad-tenant-1", "tenant_id": "Bad Tenant"}
    ids["bad_tenant"] = (await redis.xadd("cost-events", {"event": json.dumps(bad_tenant)})).decode()
    inf_doc = json.loads(good.model_dump_json()) | {"event_id": "evt-infinite-1", "cost_usd": "__INF__"}
    infinite = json.dumps(inf_doc).replace('"__INF__"', "Infinity")
    ids["infinite"] = (await redis.xadd("cost-events", {"event": infinite})).decode()
    unknown = kit.event("ghost_tenant")
    ids["unknown"] = (await kit.xadd_events(redis, [unknown]))[0]
    # Same event_id as an event of another tenant already in the ledger.
    stolen = kit.event("acme", event_id=beta_first.event_id)
    ids["collision"] = (await kit.xadd_events(redis, [stolen]))[0]
    # Baseline overflows the ledger's numeric column: only the database can tell; the batch is isolated.
    overflow = kit.event("acme", kind=CostKind.VISION, model="gemini-2.5-flash", tier=None, cost_usd=5000.0,
                         usage=UsageAmounts(images=1), covered_seconds=1e13)
    batch_mates = [kit.event("acme") for _ in range(4)]
    ids["overflow"] = (await kit.xadd_events(redis, [batch_mates[0], overflow, *batch_mates[1:]]))[1]
    await kit.xadd_events(redis, [good])
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    dlq = {row["stream_id"]: row for row in await _dlq(redis)}
    expected = {
        ids["unparseable"]: "unparseable", ids["no_field"]: "unparseable", ids["invalid"]: "invalid",
        ids["bad_tenant"]: "invalid", ids["infinite"]: "invalid", ids["unknown"]: "unknown_tenant",
        ids["collision"]: "event_id_conflict", ids["overflow"]: "db_rejected",
    }
    assert {sid: row["reason"] for sid, row in dlq.items()} == expected
    assert dlq[ids["unknown"]]["tenant_id"] == "ghost_tenant" and "not registered" in dlq[ids["unknown"]]["detail"]
    assert json.loads(dlq[ids["unknown"]]["event"])["event_id"] == unknown.event_id  # payload kept for replay
    assert dlq[ids["unparseable"]]["event"] == "{not json"
    assert json.loads(dlq[ids["no_field"]]["fields"]) == {"something": "else"}
    assert "not finite" in dlq[ids["infinite"]]["detail"]
    assert "NumericValueOutOfRange" in dlq[ids["overflow"]]["detail"]
    acme = {r["event_id"] for r in await _ledger(ledger_env.pool, "acme")}
    assert acme == {good.event_id, *(e.event_id for e in batch_mates)}
    assert [r["event_id"] for r in await _ledger(ledger_env.pool, "beta")] == [beta_first.event_id]
    assert c.totals.dead_lettered == 8 and c.totals.written == 6  # beta_first, good, 4 batch mates


async def test_crash_between_commit_and_ack_then_reclaim(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    events = [kit.event(random.choice(["acme", "beta"])) for _ in range(120)]
    await kit.xadd_events(redis, events)
    commits: list[TenantWriteResult] = []

    async def crash(result: TenantWriteResult) -> None:
        commits.append(result)
        raise SimulatedCrash

    doomed = ledger_env.consumer("doomed", after_commit=crash, write_concurrency=1)
    await doomed.start()
    task = doomed.task
    assert task is not None
    with pytest.raises(BaseException):  # noqa: B017 - the simulated crash, wrapped by the TaskGroup
        await task
    assert commits and commits[0].inserted
    # One transaction per batch, whatever the number of tenants: the whole first batch committed at once.
    written_before_ack = {e.event_id for e in events[:50]}
    pending: Any = await redis.xpending("cost-events", "billing-ledger")
    # The whole first batch, committed but never acknowledged, and the second, read ahead while the first
    # transaction ran (parsed, never written).
    assert pending["pending"] == 100
    in_ledger = {r["event_id"] for t in ("acme", "beta") for r in await _ledger(ledger_env.pool, t)}
    assert in_ledger == written_before_ack

    # A new consumer reclaims the dead one's entries once they are idle, and finishes the stream.
    rescuer = ledger_env.consumer("rescuer", claim_idle_ms=50)
    await rescuer.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    rows = [r for t in ("acme", "beta") for r in await _ledger(ledger_env.pool, t)]
    assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in events)
    assert rescuer.totals.duplicates == len(written_before_ack)
    assert rescuer.totals.written == len(events) - len(written_before_ack)
    for tenant in ("acme", "beta"):
        usd, n = await _spend(ledger_env.pool, tenant)
        mine = [e for e in events if e.tenant_id == tenant]
        assert (usd, n) == (sum(Decimal(repr(e.cost_usd)) for e in mine), len(mine))


async def test_restart_under_the_same_name_resumes_its_own_pending(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    events = [kit.event("acme") for _ in range(30)]
    await kit.xadd_events(redis, events)

    async def crash(_result: TenantWriteResult) -> None:
        raise SimulatedCrash

    first = ledger_env.consumer("pod-1", after_commit=crash)
    await first.start()
    assert first.task is not None
    with pytest.raises(BaseException):  # noqa: B017
        await first.task
    # Same name, long claim timeout: it must find its own pending entries at start, not wait for XAUTOCLAIM.
    again = ledger_env.consumer("pod-1", claim_idle_ms=3_600_000)
    await again.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    assert again.totals.duplicates == 30 and again.totals.written == 0
    assert len(await _ledger(ledger_env.pool, "acme")) == 30


async def test_two_consumers_at_once_write_every_event_once(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    tenants = ["acme", "beta", "org_abc"]
    rng = random.Random(7)
    events = [kit.event(rng.choice(tenants), cost_usd=rng.randint(1, 10_000) / 1e6) for _ in range(600)]
    # Aggressive reclaiming: the two consumers steal each other's in-flight entries all the time.
    a = ledger_env.consumer("a", claim_idle_ms=10, batch_size=40)
    b = ledger_env.consumer("b", claim_idle_ms=10, batch_size=40)
    await a.start()
    await b.start()
    for chunk in range(0, len(events), 100):
        part = events[chunk:chunk + 100]
        await kit.xadd_events(redis, part + rng.sample(part, 20))  # with duplicates
        await asyncio.sleep(0.01)
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    assert a.totals.written > 0 and b.totals.written > 0, (a.totals, b.totals)
    assert a.totals.written + b.totals.written == len(events)
    for tenant in tenants:
        mine = sorted(e.event_id for e in events if e.tenant_id == tenant)
        rows = await _ledger(ledger_env.pool, tenant)
        assert sorted(r["event_id"] for r in rows) == mine
        usd, n = await _spend(ledger_env.pool, tenant)
        assert n == len(mine)
        assert usd == sum(r["cost_usd"] for r in rows)
    assert await _dlq(redis) == []


async def test_entries_delivered_too_often_are_dead_lettered(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    ev = kit.event("acme")
    sid = (await kit.xadd_events(redis, [ev]))[0]
    await redis.xgroup_create("cost-events", "billing-ledger", id="0", mkstream=True)
    await redis.xreadgroup("billing-ledger", "flaky", {"cost-events": ">"}, count=10)
    # As if 'flaky' had failed on it many times (XCLAIM RETRYCOUNT sets the delivery counter).
    await redis.execute_command("XCLAIM", "cost-events", "billing-ledger", "flaky", 0, sid, "RETRYCOUNT", 50)
    c = ledger_env.consumer("flaky", max_deliveries=10)
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    dlq = await _dlq(redis)
    assert [(r["stream_id"], r["reason"]) for r in dlq] == [(sid, "max_deliveries")]
    assert await _ledger(ledger_env.pool, "acme") == []


async def test_deleted_entries_are_dead_lettered_not_lost(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    ids = await kit.xadd_events(redis, [kit.event("acme") for _ in range(3)])
    await redis.xgroup_create("cost-events", "billing-ledger", id="0", mkstream=True)
    await redis.xreadgroup("billing-ledger", "dead", {"cost-events": ">"}, count=10)
    await redis.xdel("cost-events", ids[1])  # trimmed or deleted while pending
    c = ledger_env.consumer("alive", claim_idle_ms=10)
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    assert [(r["stream_id"], r["reason"]) for r in await _dlq(redis)] == [(ids[1], "deleted")]
    assert len(await _ledger(ledger_env.pool, "acme")) == 2


async def test_ledger_rls_and_append_only(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    await kit.xadd_events(redis, [kit.event("acme"), kit.event("beta")])
    c = ledger_env.consumer("c1")
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    pool = ledger_env.pool
    async with tenant_transaction(pool, "acme") as conn:
        assert {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM cost_ledger")} == {"acme"}
        assert await conn.fetchval("SELECT count(*) FROM cost_ledger WHERE tenant_id = 'beta'") == 0
        assert await conn.fetchval("SELECT count(*) FROM tenant_monthly_spend WHERE tenant_id = 'beta'") == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM cost_ledger") == 0  # no tenant set: nothing
    for stmt in ("UPDATE cost_ledger SET cost_usd = 0", "DELETE FROM cost_ledger"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with tenant_transaction(pool, "acme") as conn:
                await conn.execute(stmt)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # WITH CHECK: cannot write another tenant's row
        async with tenant_transaction(pool, "acme") as conn:
            await conn.execute(
                "INSERT INTO cost_ledger (event_id, tenant_id, service, kind, provider, model, cost_usd, "
                "baseline_cost_usd, occurred_at, stream_id, catalog_version) "
                "VALUES ('x-1', 'beta', 's', 'llm', 'p', 'm', 1, 1, now(), '0-1', 'v')")


@WRITE_PATHS
async def test_budget_state_follows_the_ledger(ledger_env: Any, kit: Any, per_tenant: bool) -> None:
    redis = ledger_env.redis
    pool = ledger_env.pool
    async with tenant_transaction(pool, "acme") as conn:
        await conn.execute("UPDATE tenants SET monthly_budget_usd = 1.0, downgrade_at = 0.5, refuse_at = 0.9")
    last_month = datetime.now(UTC).replace(day=1) - timedelta(days=3)
    await kit.xadd_events(redis, [
        kit.event("acme", cost_usd=0.30),
        kit.event("acme", cost_usd=0.25),
        kit.event("acme", cost_usd=5.0, occurred_at=last_month),  # another month: not this budget
        kit.event("acme", cost_usd=5.0, offline=True, usage=UsageAmounts(input_tokens=10, estimated=True)),
    ])
    c = ledger_env.consumer("c1", per_tenant_transactions=per_tenant)
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    state = await read_budget(redis, "acme")
    assert state is not None
    assert state.spent_usd == pytest.approx(0.55) and state.fraction_used == pytest.approx(0.55)
    assert state.status == billing_pb2.BUDGET_STATUS_DOWNGRADE
    assert state.month == f"{datetime.now(UTC):%Y-%m}"
    await kit.xadd_events(redis, [kit.event("acme", cost_usd=0.36)])
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    state = await read_budget(redis, "acme")
    assert state is not None and state.status == billing_pb2.BUDGET_STATUS_EXHAUSTED
    assert state.spent_usd == pytest.approx(0.91)
    beta = await read_budget(redis, "beta")
    assert beta is None  # no beta events were written: nothing published for it here


async def test_consumer_metrics(ledger_env: Any, kit: Any) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "written": value("billing_events_written_total", kind="llm"),
        "dup": value("billing_events_duplicate_total"),
        "dlq": value("billing_events_dead_lettered_total", reason="unparseable"),
        "cost": value("billing_ledger_cost_usd_total", tenant_id="beta", kind="llm", model="gemini-2.5-flash-lite",
                      tier="lite", offline="false"),
        "tokens": value("billing_ledger_tokens_total", tenant_id="beta", model="gemini-2.5-flash-lite",
                        token_type="output"),
        "writes": value("billing_ledger_write_seconds_count"),
    }
    redis = ledger_env.redis
    evs = [kit.event("beta") for _ in range(5)]
    await kit.xadd_events(redis, evs + evs[:2])
    await redis.xadd("cost-events", {"event": "]["})
    c = ledger_env.consumer("c1")
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    assert value("billing_events_written_total", kind="llm") - before["written"] == 5
    assert value("billing_events_duplicate_total") - before["dup"] == 2
    assert value("billing_events_dead_lettered_total", reason="unparseable") - before["dlq"] == 1
    cost = value("billing_ledger_cost_usd_total", tenant_id="beta", kind="llm", model="gemini-2.5-flash-lite",
                 tier="lite", offline="false") - before["cost"]
    assert cost == pytest.approx(sum(e.cost_usd for e in evs))
    assert value("billing_ledger_tokens_total", tenant_id="beta", model="gemini-2.5-flash-lite",
                 token_type="output") - before["tokens"] == 5 * 200
    assert value("billing_ledger_write_seconds_count") > before["writes"]
    await c.maintenance()
    assert value("billing_consumer_pending_entries") == 0
    assert value("billing_consumer_lag_seconds") == 0


async def test_acknowledged_entries_are_trimmed_pending_ones_kept(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    await kit.xadd_events(redis, [kit.event("acme") for _ in range(300)])
    c = ledger_env.consumer("c1", retention_s=1)
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained")
    await c.aclose()
    # Entries appended now stay: not delivered yet (and younger than the retention).
    tail = await kit.xadd_events(redis, [kit.event("acme") for _ in range(3)])
    await asyncio.sleep(1.1)
    await c.refresh_gauges_and_trim()
    remaining: Any = await redis.xrange("cost-events")
    remaining_ids = [sid.decode() for sid, _ in remaining]
    assert set(tail) <= set(remaining_ids)
    assert len(remaining_ids) < 303  # acknowledged entries older than the retention were trimmed
    c2 = ledger_env.consumer("c2")
    await c2.start()
    await kit.wait_for(lambda: kit.drained(redis), what="tail drained")
    assert len(await _ledger(ledger_env.pool, "acme")) == 303



async def test_database_outage_loses_nothing_and_dead_letters_nothing(ledger_env: Any, kit: Any) -> None:
    """The app role cannot log in and its connections are killed: entries stay pending, are not re-read in a
    loop (delivery counters are not burnt toward LEDGER_MAX_DELIVERIES), and are written once it is back."""
    redis = ledger_env.redis
    admin = await asyncpg.connect(ledger_env.db.admin_dsn)
    try:
        await admin.execute("ALTER ROLE frugal_billing NOLOGIN")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'frugal_billing'")
        events = [kit.event(random.choice(["acme", "beta"])) for _ in range(40)]
        await kit.xadd_events(redis, events)
        c = ledger_env.consumer("c1", max_deliveries=3)
        await c.start()

        async def stuck() -> bool:
            if not await redis.exists("cost-events") or not await redis.xinfo_groups("cost-events"):
                return False
            pending: Any = await redis.xpending("cost-events", "billing-ledger")
            return bool(pending["pending"] == 40 and c._db_down)

        await kit.wait_for(stuck, what="consumer waiting for the database")
        lag_before = REGISTRY.get_sample_value("billing_consumer_lag_seconds") or 0.0
        await asyncio.sleep(1.0)  # several back-off rounds while the database is down
        await asyncio.sleep(0.6)
        # The lag gauge keeps moving during the outage (its alert must be able to fire when it matters).
        assert (REGISTRY.get_sample_value("billing_consumer_lag_seconds") or 0.0) > lag_before + 0.5
        rows: Any = await redis.xpending_range("cost-events", "billing-ledger", "-", "+", 100)
        assert max(r["times_delivered"] for r in rows) == 1
        assert await _dlq(redis) == []
    finally:
        await admin.execute("ALTER ROLE frugal_billing LOGIN")
        await admin.close()
    await kit.wait_for(lambda: kit.drained(redis), what="stream drained after the outage")
    assert await _dlq(redis) == []
    written = [r["event_id"] for t in ("acme", "beta") for r in await _ledger(ledger_env.pool, t)]
    assert sorted(written) == sorted(e.event_id for e in events)


async def test_conflicting_duplicate_is_dead_lettered_never_merged(ledger_env: Any, kit: Any) -> None:
    """Stripe's rule: a key reused with another payload is an error, not a replay (first-wins hid it)."""
    redis = ledger_env.redis
    original = kit.event("acme", cost_usd=0.5)
    replay = original  # the same payload again (producer retry, spool replay): a duplicate
    conflicting = original.model_copy(update={"cost_usd": 0.75})
    await kit.xadd_events(redis, [original])
    c = ledger_env.consumer("c1")
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="first drained")
    ids = await kit.xadd_events(redis, [replay, conflicting])
    same_batch = kit.event("beta", cost_usd=0.1)
    ids2 = await kit.xadd_events(redis, [same_batch, same_batch.model_copy(update={"cost_usd": 0.2})])
    await kit.wait_for(lambda: kit.drained(redis), what="second drained")
    rows = await _ledger(ledger_env.pool, "acme")
    assert [(r["event_id"], float(r["cost_usd"])) for r in rows] == [(original.event_id, 0.5)]
    assert [float(r["cost_usd"]) for r in await _ledger(ledger_env.pool, "beta")] == [0.1]
    dlq = {d["stream_id"]: d for d in await _dlq(redis)}
    assert set(dlq) == {ids[1], ids2[1]}
    assert all(d["reason"] == "conflicting_duplicate" and "different payload" in d["detail"] for d in dlq.values())
    assert c.totals.duplicates == 1


async def test_timestamps_outside_the_window_are_refused(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    now = datetime.now(UTC)
    ok = [kit.event("acme", occurred_at=now - timedelta(days=34)),
          kit.event("acme", occurred_at=now + timedelta(minutes=4))]
    bad = {
        "timestamp_too_old": [kit.event("acme", occurred_at=datetime(2001, 1, 1, tzinfo=UTC)),
                              kit.event("acme", occurred_at=now - timedelta(days=36))],
        "timestamp_in_future": [kit.event("acme", occurred_at=datetime(2099, 1, 1, tzinfo=UTC)),
                                kit.event("acme", occurred_at=now + timedelta(minutes=6))],
    }
    await kit.xadd_events(redis, ok + [e for es in bad.values() for e in es])
    c = ledger_env.consumer("c1")
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="drained")
    assert sorted(r["event_id"] for r in await _ledger(ledger_env.pool, "acme")) == sorted(e.event_id for e in ok)
    dlq = await _dlq(redis)
    for reason, events in bad.items():
        got = sorted(json.loads(d["event"])["event_id"] for d in dlq if d["reason"] == reason)
        assert got == sorted(e.event_id for e in events)


async def test_committed_entries_leave_the_stream_at_once(ledger_env: Any, kit: Any) -> None:
    redis = ledger_env.redis
    await redis.delete("cost-events")
    await kit.xadd_events(redis, [kit.event(random.choice(["acme", "beta", "org_abc"])) for _ in range(120)])
    c = ledger_env.consumer("c1", maintenance_s=3600)  # no maintenance trim: XDEL at commit does it
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="drained")
    assert await redis.xlen("cost-events") == 0
    assert c.totals.written == 120


async def test_batch_path_keeps_rls_the_ingest_list_shows_only_its_tenants(ledger_env: Any, kit: Any) -> None:
    """billing_ingest_batch writes many tenants in one transaction through app.ingest_tenants; that set
    exposes its tenants only, and a transaction that sets nothing still sees nothing."""
    redis = ledger_env.redis
    await kit.xadd_events(redis, [kit.event(t) for t in ("acme", "beta", "org_abc") for _ in range(5)])
    c = ledger_env.consumer("c1")
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="drained")
    async with ledger_env.pool.acquire() as conn:
        async with conn.transaction():
            assert await conn.fetchval("SELECT count(*) FROM cost_ledger") == 0
            assert await conn.fetchval("SELECT count(*) FROM tenant_monthly_spend") == 0
        async with conn.transaction():
            await conn.execute("""SELECT set_config('app.ingest_tenants', '{"acme": 1, "org_abc": 1}', true)""")
            rows = await conn.fetch("SELECT tenant_id, count(*) AS n FROM cost_ledger GROUP BY 1 ORDER BY 1")
            assert [(r["tenant_id"], r["n"]) for r in rows] == [("acme", 5), ("org_abc", 5)]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # append-only: no UPDATE for the app role
                await conn.execute("UPDATE cost_ledger SET cost_usd = 0")
        async with conn.transaction():
            await conn.execute("""SELECT set_config('app.ingest_tenants', '{"acme": 1}', true)""")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # rows outside the list are refused
                await conn.execute(
                    "INSERT INTO tenant_monthly_spend (tenant_id, month, online_usd) VALUES ('beta', '2026-01-01', 1)")


async def test_values_holding_the_column_separator_are_refused_not_misaligned(ledger_env: Any, kit: Any) -> None:
    """The batch travels as one text per column, values separated by U+001F (U+001E = NULL): an event whose
    text holds either is dead-lettered ("invalid"); its batch mates are written with their own values."""
    redis = ledger_env.redis
    mates = [kit.event("acme", session_id=f"s{i}", request_id="" if i == 1 else f"r{i}") for i in range(3)]
    bad = [kit.event("acme", session_id="a\x1fb"), kit.event("acme", request_id="\x1e"),
           kit.event("acme", model="m\x1f")]
    ids = await kit.xadd_events(redis, [mates[0], *bad, *mates[1:]])
    c = ledger_env.consumer("c1")
    await c.start()
    await kit.wait_for(lambda: kit.drained(redis), what="drained")
    dlq = {d["stream_id"]: d for d in await _dlq(redis)}
    assert set(dlq) == set(ids[1:4])
    assert all(d["reason"] == "invalid" and "U+001F" in d["detail"] for d in dlq.values())
    rows = {r["event_id"]: r for r in await _ledger(ledger_env.pool, "acme")}
    assert set(rows) == {e.event_id for e in mates}
    for e in mates:
        r = rows[e.event_id]
        assert (r["session_id"], r["request_id"], r["model"]) == (e.session_id, e.request_id, e.model)
        assert r["cost_usd"] == Decimal(repr(e.cost_usd)) and r["occurred_at"] == e.occurred_at


# The previous release's call (migrations/0002's signature, one array per column), as that release's
# ledger.write_batch made it: what a not-yet-replaced replica sends during a rolling update.
_PREVIOUS_INGEST = "SELECT * FROM billing_ingest_batch($1, $2, " + ", ".join(f"${i}" for i in range(3, 29)) + ")"


def _previous_columns(events: list[Any], shas: dict[str, str]) -> list[list[object]]:
    cols: list[list[object]] = [[] for _ in range(26)]
    for n, ev in enumerate(sorted(events, key=lambda e: e.event_id)):
        u = ev.usage
        values = (ev.tenant_id, ev.event_id, ev.session_id, ev.request_id, ev.service, ev.kind.value, ev.provider,
                  ev.model, ev.tier, u.input_tokens, u.cached_input_tokens, u.output_tokens, u.audio_seconds,
                  u.characters, u.images, u.requests, u.estimated, ev.offline, Decimal(repr(ev.cost_usd)),
                  Decimal(repr(ev.cost_usd * 2)), ev.covered_seconds, ev.frames_considered, ev.occurred_at,
                  f"1-{n}", json.dumps(ev.attributes), shas.get(ev.event_id))
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    return cols


async def test_the_previous_releases_ingest_call_still_works_after_the_migration(ledger_env: Any, kit: Any) -> None:
    """Rolling update: a billing of the previous release (0002's one-array-per-column call) keeps ingesting
    on a database migrated to this release (0004's adapter over 0003), with 0002's result contract: inserted
    ids listed, replays 'seen' with their stored hash, unknown tenants named, another tenant's id not listed
    (the caller's collision), budget inputs per tenant; values stored exactly."""
    pool = ledger_env.pool
    at = datetime(2026, 12, 2, 10, 30, 15, 123456, tzinfo=UTC)
    a0, b0 = kit.event("acme", occurred_at=at), kit.event("beta", occurred_at=at)
    other = kit.event("org_abc", occurred_at=at)
    shas = {e.event_id: f"sha-{e.event_id[-6:]}" for e in (a0, b0, other)}

    async def call(events: list[Any]) -> list[asyncpg.Record]:
        async with pool.acquire() as conn, conn.transaction():
            return list(await conn.fetch(_PREVIOUS_INGEST, "v-test", at, *_previous_columns(events, shas)))

    first = await call([a0, b0, other])
    assert {(r["r_tenant"], r["r_event_id"]) for r in first if r["r_status"] == "inserted"} == {
        ("acme", a0.event_id), ("beta", b0.event_id), ("org_abc", other.event_id)}

    a1 = kit.event("acme", occurred_at=at, tier=None, cost_usd=0.000123456789,
                   usage=UsageAmounts(input_tokens=7, audio_seconds=1.1, estimated=True), attributes={"k": "v"})
    a2 = kit.event("acme", occurred_at=at, offline=True, cost_usd=0.0)
    ghost = kit.event("ghost_tenant", occurred_at=at)
    stolen = kit.event("acme", occurred_at=at, event_id=other.event_id)  # org_abc's id, org_abc not in the batch
    rows = await call([a0, a1, a2, b0, ghost, stolen])
    by_status: dict[str, set[tuple[str, str | None, str | None]]] = {}
    for r in rows:
        by_status.setdefault(r["r_status"], set()).add((r["r_tenant"], r["r_event_id"], r["r_detail"]))
    assert by_status["inserted"] == {("acme", a1.event_id, None), ("acme", a2.event_id, None)}
    assert by_status["seen"] == {("acme", a0.event_id, shas[a0.event_id]), ("beta", b0.event_id, shas[b0.event_id])}
    assert by_status["unknown_tenant"] == {("ghost_tenant", None, None)}
    assert {t for t, _, _ in by_status["budget"]} == {"acme", "beta"}
    assert not any(r["r_event_id"] == other.event_id for r in rows), "another tenant's id is not listed"
    assert set(by_status) == {"inserted", "seen", "unknown_tenant", "budget"}

    stored = {r["event_id"]: r for r in await _ledger(pool, "acme")}
    assert set(stored) == {a0.event_id, a1.event_id, a2.event_id}
    r1 = stored[a1.event_id]
    assert r1["tier"] is None and r1["cost_usd"] == Decimal("0.000123456789") and r1["occurred_at"] == at
    assert (r1["input_tokens"], r1["audio_seconds"], r1["estimated"], r1["offline"]) == (7, 1.1, True, False)
    assert json.loads(r1["attributes"]) == {"k": "v"} and r1["catalog_version"] == "v-test"
    assert stored[a2.event_id]["offline"] is True
    assert (await _spend(pool, "acme"))[1] == 3  # a0, a1, a2: the replay counted once
    async with tenant_transaction(pool, "org_abc") as conn:
        assert await conn.fetchval("SELECT tenant_id FROM cost_ledger WHERE event_id = $1", other.event_id) == "org_abc"
