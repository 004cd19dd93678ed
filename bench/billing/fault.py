"""Fault run: N cost events through the real producer while every part of the pipeline is killed once.

    uv run python bench/billing/fault.py [--events 20000] [--tenants 20] [--timeout 600]

Parts, each its own process: the producer (CostRecorder + CostEventProducer with its disk spool), Redis (the
dev stack's EmbeddedRedis: AOF, appendfsync everysec, noeviction), PostgreSQL (EmbeddedPostgres) and two
ledger consumers (the real LedgerConsumer). Schedule, by events the producer has reported recorded:
- 15 %: Redis is killed (SIGKILL); the producer spools to disk; 2 % later the producer is killed too (SIGKILL,
  its spool holding events Redis never saw); Redis restarts from its AOF, the producer restarts, adopts the
  dead producer's spool, replays it in order, and resumes after the last event it had reported recorded (the
  tail it had sent but not reported is sent again: same ids, same payloads, deduplicated by the ledger);
- 45 %: PostgreSQL stops without a checkpoint (pg_ctl -m immediate: crash recovery at restart) for 3 s;
- 70 % and 85 %: each consumer is killed (SIGKILL) and restarted under its name (it re-reads its own pending
  entries; the other reclaims idle ones meanwhile).
Then it waits for the stream to drain and prints: produced, in the ledger, lost, doubled, dead-lettered, and
the ledger's sum against the produced sum. Exit status 0 only when lost == doubled == dead-lettered == 0 and
the sums are equal.

Each event i has a deterministic attempt nonce ("fault-i") and timestamp, as a real job that can be re-run
after a crash persists them with the attempt: a re-sent event is the same event. (With a fresh random nonce
per re-run, the re-sent tail would be charged twice: "doubled" counts exactly that.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from frugal.api.billing.v1 import billing_pb2
from frugal.billing.consumer import ConsumerConfig, LedgerConsumer
from frugal.billing.server import APP_ROLE, MIGRATIONS_PACKAGE
from frugal.billing.state import StatePublisher
from frugal.billing.tenants import TenantRegistry
from frugal.common.cost_events import CostEventProducer, CostKind
from frugal.common.cost_recorder import CostRecorder
from frugal.common.db import create_pool
from frugal.common.migrations import apply_migrations
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.usage import UsageAmounts
from frugal.devkit.devstack import EmbeddedPostgres, EmbeddedRedis, free_port

STREAM, GROUP, DLQ = "cost-events", "billing-ledger", "cost-events-dlq"
SERVICE = "fault"


def tenant_of(i: int, tenants: int) -> str:
    return f"fault_t{i % tenants}"


def usage_of(i: int) -> UsageAmounts:
    return UsageAmounts(input_tokens=100 + i % 900, output_tokens=10 + i % 90, requests=1)


# ------------------------------------------------------------------------------------------------ roles


async def producer_role(args: argparse.Namespace) -> int:
    client = create_redis(args.redis_url, socket_timeout=1.0)
    producer = CostEventProducer(client, name="fault-producer", spool_dir=args.spool_dir, retry_interval=0.2)
    rec = CostRecorder(producer, default_catalog(), service=SERVICE)
    base = datetime.fromisoformat(args.base_ts)
    await producer.start()
    for i in range(args.start, args.total):
        await rec.record(usage=usage_of(i), tenant_id=tenant_of(i, args.tenants), kind=CostKind.LLM,
                         provider="google", model="gemini-2.5-flash-lite", tier="lite", key=("event", str(i)),
                         nonce=f"fault-{i}", occurred_at=base + timedelta(milliseconds=i),
                         attributes={"fault_i": str(i)})
        print(f"acked {i}", flush=True)  # emit returned: in Redis, or fsynced in the spool
        if i % 100 == 99:
            await asyncio.sleep(0.02)  # a paced producer, so that the faults land mid-run
    for _ in range(3000):  # the spool replays in the background; wait (bounded) until it is empty
        if not await producer.flush():
            break
        await asyncio.sleep(0.2)  # noqa: ASYNC110 - polling Redis, not an in-process condition
    print("done", flush=True)
    await producer.aclose()
    await client.aclose()
    return 0


async def consumer_role(args: argparse.Namespace) -> int:
    pool = await create_pool(args.app_dsn, min_size=1, max_size=4)
    redis = create_redis(args.redis_url, socket_timeout=2.0)
    consumer = LedgerConsumer(
        pool, redis, default_catalog(),
        ConsumerConfig(consumer=args.name, batch_size=500, block_ms=200, claim_idle_ms=3000, maintenance_s=0.5),
        publisher=StatePublisher(pool, redis),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    await stop.wait()
    await consumer.aclose()
    await redis.aclose()
    await pool.close()
    return 0


# ----------------------------------------------------------------------------------------- orchestrator


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.proc: asyncio.subprocess.Process | None = None
        self.acked = -1
        self.done = False
        self._reader: asyncio.Task[None] | None = None

    async def start(self, extra: list[str] | None = None) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, *self.argv, *(extra or []), stdout=asyncio.subprocess.PIPE, env=self.env)
        self._reader = asyncio.create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode().strip()
            if line.startswith("acked "):
                self.acked = max(self.acked, int(line.split()[1]))
            elif line == "done":
                self.done = True

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                await self.kill()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


def _redis_kill(rs: EmbeddedRedis) -> None:
    pid = int(rs.pidfile.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def _pg_crash(pg: EmbeddedPostgres) -> None:
    pg._cmd("pg_ctl", "-D", str(pg.data), "-m", "immediate", "-w", "stop")


async def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"fault run: timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _drained(redis_url: str) -> bool:
    r = create_redis(redis_url, socket_timeout=2.0)
    try:
        groups: Any = await r.xinfo_groups(STREAM)
        info = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        if info is None or int(info["pending"]):
            return False
        last: Any = await r.xrevrange(STREAM, count=1)
        return not last or last[0][0] == info["last-delivered-id"]
    except Exception:
        return False
    finally:
        await r.aclose()


async def orchestrate(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="frugal-fault-"))
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(tmp / "pg", free_port())
    rs = EmbeddedRedis(tmp / "redis", free_port())
    children: list[Child] = []
    started = time.monotonic()
    log = print
    try:
        pg.start()
        rs.start()
        admin = pg.admin_dsn
        await apply_migrations(admin, package=MIGRATIONS_PACKAGE, component="billing", app_role=APP_ROLE)
        scheme, rest = admin.split("://", 1)
        app_dsn = f"{scheme}://{APP_ROLE}@{rest.split('@', 1)[-1]}"
        pool = await create_pool(app_dsn, min_size=1, max_size=2)
        try:
            reg = TenantRegistry(pool)
            for t in range(args.tenants):
                await reg.upsert(billing_pb2.TenantPolicy(tenant_id=tenant_of(t, args.tenants), monthly_budget_usd=-1))
        finally:
            await pool.close()

        env = {**os.environ, "LOG_LEVEL": "ERROR", "PYTHONUNBUFFERED": "1"}
        base_ts = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        n = args.events
        prod = Child("producer", ["--role", "producer", "--redis-url", rs.url, "--spool-dir", str(tmp / "spool"),
                                  "--total", str(n), "--tenants", str(args.tenants), "--base-ts", base_ts], env)
        cons = [Child(f"consumer-{k}", ["--role", "consumer", "--app-dsn", app_dsn, "--redis-url", rs.url,
                                        "--name", f"fault-c{k}"], env) for k in (1, 2)]
        children = [prod, *cons]
        for c in cons:
            await c.start()
        await prod.start(["--start", "0"])
        kills: list[str] = []

        await _wait(lambda: prod.acked >= int(n * 0.15), args.timeout, "15 %")
        _redis_kill(rs)
        kills.append(f"redis SIGKILL at event {prod.acked}")
        mark = prod.acked
        await _wait(lambda: prod.acked >= min(n - 1, mark + int(n * 0.02)), args.timeout, "spooling")
        await prod.kill()
        kills.append(f"producer SIGKILL at event {prod.acked} (Redis down: events in its spool)")
        rs.start()
        kills.append("redis restarted from its AOF")
        resume = prod.acked + 1
        await prod.start(["--start", str(resume)])
        kills.append(f"producer restarted, resuming at event {resume}")

        await _wait(lambda: prod.acked >= int(n * 0.45), args.timeout, "45 %")
        _pg_crash(pg)
        kills.append(f"postgres stopped -m immediate at event {prod.acked}")
        await asyncio.sleep(3.0)
        pg.start()
        kills.append("postgres restarted (crash recovery)")

        for k, frac in ((0, 0.70), (1, 0.85)):
            await _wait(lambda f=frac: prod.acked >= int(n * f), args.timeout, f"{frac:.0%}")
            await cons[k].kill()
            kills.append(f"{cons[k].name} SIGKILL at event {prod.acked}")
            await asyncio.sleep(1.0)
            await cons[k].start()
            kills.append(f"{cons[k].name} restarted")

        await _wait(lambda: prod.done, args.timeout, "the producer to finish")
        deadline = time.monotonic() + args.timeout
        while not await _drained(rs.url):
            if time.monotonic() > deadline:
                raise TimeoutError("fault run: the stream did not drain")
            await asyncio.sleep(0.2)
        for c in children:
            await c.stop()

        catalog = default_catalog()
        produced_sum = sum((Decimal(repr(catalog.cost("gemini-2.5-flash-lite", usage_of(i)))).quantize(
            Decimal("1e-12")) for i in range(n)), Decimal(0))
        conn = await asyncpg.connect(admin)
        try:
            rows = await conn.fetchval("SELECT count(*) FROM cost_ledger")
            distinct = await conn.fetchval("SELECT count(DISTINCT attributes->>'fault_i') FROM cost_ledger")
            in_range = await conn.fetchval(
                "SELECT count(DISTINCT attributes->>'fault_i') FROM cost_ledger "
                "WHERE (attributes->>'fault_i')::int BETWEEN 0 AND $1", n - 1)
            ledger_sum = await conn.fetchval("SELECT coalesce(sum(cost_usd), 0) FROM cost_ledger")
            rollup_sum = await conn.fetchval(
                "SELECT coalesce(sum(online_usd + offline_usd), 0) FROM tenant_monthly_spend")
        finally:
            await conn.close()
        r = create_redis(rs.url)
        try:
            dlq = await r.xlen(DLQ)
            left = await r.xlen(STREAM)
        finally:
            await r.aclose()
        lost = n - in_range
        doubled = rows - distinct
        for line in kills:
            log(f"  fault: {line}")
        log(f"produced {n} events over {args.tenants} tenants in {time.monotonic() - started:.1f}s")
        log(f"ledger rows {rows}, distinct events {distinct}: lost {lost}, doubled {doubled}, "
            f"dead-lettered {dlq}, left in the stream {left}")
        log(f"ledger sum {ledger_sum} USD, produced sum {produced_sum} USD, roll-up {rollup_sum} USD: "
            f"{'equal' if ledger_sum == produced_sum == rollup_sum else 'DIFFERENT'}")
        ok = lost == 0 and doubled == 0 and dlq == 0 and ledger_sum == produced_sum == rollup_sum
        log("fault run: OK" if ok else "fault run: FAILED")
        return 0 if ok else 1
    finally:
        for c in children:
            with contextlib.suppress(Exception):
                await c.kill()
        rs.stop()
        pg.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["orchestrator", "producer", "consumer"], default="orchestrator")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--timeout", type=float, default=600.0, help="bound on each wait, seconds")
    p.add_argument("--redis-url")
    p.add_argument("--app-dsn")
    p.add_argument("--spool-dir")
    p.add_argument("--name")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--total", type=int, default=0)
    p.add_argument("--base-ts")
    args = p.parse_args()
    if args.role != "orchestrator":
        # The children report through stdout; their expected outage warnings would drown the figures.
        logging.basicConfig(level=logging.CRITICAL)
    role = {"orchestrator": orchestrate, "producer": producer_role, "consumer": consumer_role}[args.role]
    return asyncio.run(role(args))


if __name__ == "__main__":
    sys.exit(main())
