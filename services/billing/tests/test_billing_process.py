"""Real processes: a standalone consumer that dies between the ledger commit and XACK (os._exit, nothing
cleaned up), restarted -> every event once; the service process (`python -m frugal.billing`) with its
consumer, stopped by SIGTERM; the operator CLI against it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.billing.cli import CRASH_EXIT_CODE
from frugal.common.db import tenant_transaction
from frugal.devkit.devstack import free_port


def _env(db: Any, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRUGAL_TEST")}
    env.update({
        "DATABASE_URL": db.app_dsn, "MIGRATION_DATABASE_URL": db.admin_dsn, "REDIS_URL": redis_url,
        "LOG_FORMAT": "text", "LOG_LEVEL": "WARNING", "LEDGER_BLOCK_MS": "100", "LEDGER_MAINTENANCE_SECONDS": "0.2",
        "GRPC_HOST": "127.0.0.1", "METRICS_PORT": "0", "SHUTDOWN_DELAY_SECONDS": "0", "SHUTDOWN_GRACE_SECONDS": "3",
    })
    env.update(extra)
    return env


async def _run(args: list[str], env: dict[str, str], limit_s: float = 90) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "frugal.billing", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def _register(db: Any, kit: Any, *tenants: str) -> Any:
    pool = await kit.app_pool(db)
    for tid in tenants:
        async with tenant_transaction(pool, tid) as conn:
            assert await conn.fetchval("SELECT billing_register_tenant($1)", tid) is None
            await conn.execute("INSERT INTO tenants (tenant_id, display_name, plan) VALUES ($1, $1, 'p')", tid)
    return pool


async def test_consumer_process_killed_after_commit_then_restarted(
    billing_db: Any, redis_url: str, redis_client: aioredis.Redis, kit: Any
) -> None:
    pool = await _register(billing_db, kit, "acme", "beta")
    try:
        events = [kit.event("acme" if i % 3 else "beta") for i in range(90)]
        stream_ids = dict(zip((e.event_id for e in events), await kit.xadd_events(redis_client, events), strict=True))
        env = _env(billing_db, redis_url, LEDGER_BATCH_SIZE="30", LEDGER_WRITE_CONCURRENCY="1")
        crashed = await _run(["consume", "--consumer", "worker-1", "--exit-after-commits", "1"], env)
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr

        async def ledger() -> list[str]:
            ids: list[str] = []
            for tid in ("acme", "beta"):
                async with tenant_transaction(pool, tid) as conn:
                    ids += [r[0] for r in await conn.fetch("SELECT event_id FROM cost_ledger")]
            return ids

        committed = await ledger()
        assert committed, "the first tenant transaction committed before the crash"
        pending: Any = await redis_client.xpending_range("cost-events", "billing-ledger", "-", "+", 1000)
        pending_ids = {p["message_id"].decode() for p in pending}
        # Written but never acknowledged: exactly the window the exactly-once design must cover.
        assert {stream_ids[eid] for eid in committed} <= pending_ids

        # Restart under the same name (as a restarted pod would): it resumes its own pending entries.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "frugal.billing", "consume", "--consumer", "worker-1", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await kit.wait_for(lambda: kit.drained(redis_client), timeout_s=90, what="stream drained")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        totals = json.loads(out.decode().strip().splitlines()[-1])
        assert totals["duplicates"] == len(committed)
        assert totals["written"] == len(events) - len(committed)
        final = await ledger()
        assert sorted(final) == sorted(e.event_id for e in events)
    finally:
        await pool.close()


async def test_service_process_consumes_serves_cli_and_stops_on_sigterm(
    billing_db: Any, redis_url: str, redis_client: aioredis.Redis, kit: Any
) -> None:
    port = free_port()
    env = _env(billing_db, redis_url, GRPC_PORT=str(port), BILLING_ADDR=f"127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "frugal.billing", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            async def serving() -> bool:
                try:
                    r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    return bool(r.status == health_pb2.HealthCheckResponse.SERVING)
                except grpc.aio.AioRpcError:
                    return False

            await kit.wait_for(serving, timeout_s=90, what="billing serving")

        up = await _run(["tenants", "upsert", "--id", "demo", "--name", "Demo Inc", "--budget", "25",
                         "--mix", "0.6,0.3,0.1", "--kb"], env)
        assert up.returncode == 0, up.stderr
        created = json.loads(up.stdout)
        assert created["created"] is True and created["policy"]["monthly_budget_usd"] == 25
        # Unset flags keep their values: only the budget changes.
        up2 = await _run(["tenants", "upsert", "--id", "demo", "--budget", "30"], env)
        assert up2.returncode == 0, up2.stderr
        policy = json.loads(up2.stdout)["policy"]
        assert policy["display_name"] == "Demo Inc" and policy["knowledge_base_enabled"] is True
        assert policy["target_mix"]["lite"] == 0.6 and policy["monthly_budget_usd"] == 30

        await kit.xadd_events(redis_client, [kit.event("demo") for _ in range(20)])
        await kit.wait_for(lambda: kit.drained(redis_client), timeout_s=60, what="consumed inside the service")
        usage = await _run(["usage", "--id", "demo"], env)
        assert usage.returncode == 0, usage.stderr
        assert int(json.loads(usage.stdout)["events"]) == 20

        # An event for a tenant registered too late is dead-lettered, then replayed by an operator.
        late = kit.event("late")
        await kit.xadd_events(redis_client, [late])
        await kit.wait_for(lambda: kit.drained(redis_client), timeout_s=60, what="late event dead-lettered")
        listed = await _run(["dlq", "list"], env)
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(r["reason"], r["tenant_id"]) for r in rows] == [("unknown_tenant", "late")]
        assert (await _run(["tenants", "upsert", "--id", "late"], env)).returncode == 0
        replay = await _run(["dlq", "replay", "--all"], env)
        assert replay.returncode == 0 and "replayed 1" in replay.stdout, replay.stderr
        await kit.wait_for(lambda: kit.drained(redis_client), timeout_s=60, what="replayed event written")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            late_usage = await billing_pb2_grpc.BillingServiceStub(ch).GetUsage(
                billing_pb2.GetUsageRequest(), metadata=kit.md("late"), timeout=10)
        assert late_usage.events == 1
        assert await redis_client.xlen("cost-events-dlq") == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()[-3000:]
