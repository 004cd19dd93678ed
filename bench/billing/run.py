"""Ledger ingestion benchmark: events/s written exactly once at 1, 50 and 500 active tenants, old and new path.

    uv run python bench/billing/run.py [--quick] [--events N] [--tenants 1,50,500] [--paths old,new]
                                                [--pg-dsn ADMIN_DSN --redis-url URL]

What it does, per (path, tenant count):
- empties the ledger and the stream, then XADDs a backlog of N cost events spread over T active tenants (LLM,
  vision, STT mixed), plus 5 % replays of the same events (producer retries): exactly-once is ON, the
  duplicates must be detected and acknowledged, not written;
- starts one consumer process (the real LedgerConsumer: consumer group, XACK after commit, budget state
  published to Redis after each commit) and measures the wall time from "go" until every entry is
  acknowledged;
- checks exactly-once: ledger rows == distinct events, month-to-date roll-up == sum of the ledger, nothing
  pending, nothing dead-lettered.
Paths: "old" = one transaction per tenant per batch (LEDGER_PER_TENANT_TRANSACTIONS=true, batch 500, 4 tenant
transactions in flight), the path before issue 13; "new" = ONE transaction per batch whatever the number of
tenants (billing_ingest_batch), one MULTI/EXEC for XACK + XDEL + budget states, batch 5000 (the default).

With no --pg-dsn the bench starts the embedded PostgreSQL of the dev stack, which runs with fsync=off: commits
are cheaper than on a durable production database, so treat absolute numbers as an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from frugal.api.billing.v1 import billing_pb2
from frugal.billing.consumer import ConsumerConfig, LedgerConsumer
from frugal.billing.ledger import TenantWriteResult
from frugal.billing.server import APP_ROLE, MIGRATIONS_PACKAGE
from frugal.billing.state import StatePublisher
from frugal.billing.tenants import TenantRegistry
from frugal.common.cost_events import CostEvent, CostKind, make_event_id
from frugal.common.db import create_pool
from frugal.common.migrations import apply_migrations
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.usage import UsageAmounts
from frugal.devkit.devstack import EmbeddedPostgres, EmbeddedRedis, free_port

MAX_TENANTS = 500


def tenant_ids(n: int) -> list[str]:
    return [f"bench_t{i}" for i in range(n)]
STREAM, GROUP = "cost-events", "billing-ledger"


def _with_user(dsn: str, user: str) -> str:
    scheme, rest = dsn.split("://", 1)
    return f"{scheme}://{user}@{rest.split('@', 1)[-1]}"


def make_events(n: int, seed: int, tenants: list[str]) -> list[CostEvent]:
    rng = random.Random(seed)
    catalog = default_catalog()
    out: list[CostEvent] = []
    now = datetime.now(UTC)
    for i in range(n):
        tenant = tenants[i % len(tenants)] if i < len(tenants) else rng.choice(tenants)
        roll = rng.random()
        extra: dict[str, Any]
        if roll < 0.7:
            tier = rng.choices(["lite", "standard", "premium"], weights=[6, 3, 1])[0]
            model = catalog.tier_model(tier)  # type: ignore[arg-type]
            usage = UsageAmounts(input_tokens=rng.randint(200, 4000), output_tokens=rng.randint(20, 600))
            kind, extra = CostKind.LLM, {"tier": tier}
        elif roll < 0.85:
            model, kind = "gemini-2.5-flash", CostKind.VISION
            usage = UsageAmounts(input_tokens=300, output_tokens=60, images=1)
            extra = {"covered_seconds": rng.uniform(1, 30), "frames_considered": rng.randint(5, 150)}
        else:
            model, kind = "nova-3", CostKind.STT
            usage = UsageAmounts(audio_seconds=rng.uniform(1, 20))
            extra = {}
        out.append(CostEvent(
            event_id=make_event_id("bench", str(seed), str(i)), tenant_id=tenant, session_id=f"s{i % 50}",
            request_id=f"r{i}", service="bench", kind=kind, provider="bench", model=model, usage=usage,
            cost_usd=catalog.cost(model, usage), occurred_at=now, **extra,
        ))
    return out


# ------------------------------------------------------------------------------------------ worker process


def _worker(cfg: dict[str, Any], ready: Any, go: Any, stop: Any, results: Any) -> None:
    asyncio.run(_worker_async(cfg, ready, go, stop, results))


async def _worker_async(cfg: dict[str, Any], ready: Any, go: Any, stop: Any, results: Any) -> None:
    pool = await create_pool(cfg["app_dsn"], min_size=cfg["concurrency"], max_size=cfg["concurrency"] + 1)
    redis = create_redis(cfg["redis_url"])
    latencies: list[float] = []

    async def on_commit(result: TenantWriteResult) -> None:
        if result.write_seconds:
            latencies.append(result.write_seconds)

    consumer = LedgerConsumer(
        pool, redis, default_catalog(),
        ConsumerConfig(stream=STREAM, group=GROUP, consumer=cfg["name"], batch_size=cfg["batch"], block_ms=200,
                       claim_idle_ms=60_000, maintenance_s=2.0, write_concurrency=cfg["concurrency"],
                       per_tenant_transactions=cfg["old"]),
        publisher=StatePublisher(pool, redis), after_commit=on_commit,
    )
    await consumer.ensure_group()
    ready.release()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, go.wait)
    cpu0 = time.process_time()
    await consumer.start()
    await loop.run_in_executor(None, stop.wait)
    await consumer.aclose()
    cpu = time.process_time() - cpu0
    t = consumer.totals
    results.put({"name": cfg["name"], "latencies": latencies, "written": t.written, "duplicates": t.duplicates,
                 "dead_lettered": t.dead_lettered, "cpu": cpu})
    await redis.aclose()
    await pool.close()


# ------------------------------------------------------------------------------------------------ runner


@dataclass
class RunResult:
    label: str
    consumers: int
    entries: int
    distinct: int
    seconds: float
    latencies: list[float]
    ok: bool
    detail: str
    # CPU seconds spent during the run: the consumer process, PostgreSQL (postmaster and backends), Redis.
    cpu: dict[str, float] = field(default_factory=dict)

    def cpu_us(self, part: str) -> float:
        return self.cpu.get(part, float("nan")) / self.entries * 1e6

    @property
    def ceiling(self) -> float:
        """events/s if the three parts had the machine's 2 cores to themselves and overlapped perfectly:
        an upper bound from the CPU they used, not a measurement."""
        c, p, r = (self.cpu.get(k, 0.0) for k in ("consumer", "postgres", "redis"))
        busiest = max(c, p + r, (c + p + r) / 2)
        return self.entries / busiest if busiest > 0 else float("nan")

    @property
    def rate(self) -> float:
        return self.entries / self.seconds

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * 1000


def _ticks(pid: int, children: bool = False) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # utime, stime (and cutime, cstime: exited children, such as finished backends)
    return int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)


def _children(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


class ServerCpu:
    """CPU seconds of the embedded PostgreSQL (postmaster, its backends and helpers) and Redis, from /proc."""

    def __init__(self, pg: EmbeddedPostgres | None, rs: EmbeddedRedis | None) -> None:
        self._pg = int((pg.data / "postmaster.pid").read_text().split()[0]) if pg is not None else None
        self._rs = int(rs.pidfile.read_text().strip()) if rs is not None and rs.pidfile.exists() else None
        self._hz = os.sysconf("SC_CLK_TCK")

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._pg is not None:
            ticks = _ticks(self._pg, children=True) + sum(_ticks(c) for c in _children(self._pg))
            out["postgres"] = ticks / self._hz
        if self._rs is not None:
            out["redis"] = _ticks(self._rs) / self._hz
        return out


async def _reset(admin_dsn: str, redis_url: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("TRUNCATE cost_ledger, tenant_monthly_spend")
    finally:
        await conn.close()
    redis = create_redis(redis_url)
    try:
        await redis.delete(STREAM, "cost-events-dlq")
    finally:
        await redis.aclose()


async def _fill(redis_url: str, events: list[CostEvent], dup_fraction: float, seed: int) -> int:
    rng = random.Random(seed + 1)
    stream = list(events) + rng.sample(events, int(len(events) * dup_fraction))
    rng.shuffle(stream)
    redis = create_redis(redis_url)
    try:
        for i in range(0, len(stream), 500):
            pipe = redis.pipeline(transaction=False)
            for ev in stream[i:i + 500]:
                pipe.xadd(STREAM, ev.to_stream_fields())  # type: ignore[arg-type]
            await pipe.execute()
    finally:
        await redis.aclose()
    return len(stream)


async def _drained(redis: Any) -> bool:
    groups: Any = await redis.xinfo_groups(STREAM)
    info = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
    if info is None or int(info["pending"]):
        return False
    last: Any = await redis.xrevrange(STREAM, count=1)
    return not last or last[0][0] == info["last-delivered-id"]


async def _check(admin_dsn: str, redis_url: str, distinct: int) -> tuple[bool, str]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM cost_ledger")
        uniq = await conn.fetchval("SELECT count(DISTINCT event_id) FROM cost_ledger")
        ledger_sum = await conn.fetchval("SELECT coalesce(sum(cost_usd), 0) FROM cost_ledger")
        rollup = await conn.fetchval("SELECT coalesce(sum(online_usd + offline_usd), 0) FROM tenant_monthly_spend")
        rollup_n = await conn.fetchval("SELECT coalesce(sum(events), 0) FROM tenant_monthly_spend")
    finally:
        await conn.close()
    redis = create_redis(redis_url)
    try:
        dlq = await redis.xlen("cost-events-dlq")
    finally:
        await redis.aclose()
    ok = rows == uniq == distinct == rollup_n and ledger_sum == rollup and dlq == 0
    return ok, (f"ledger rows {rows} (distinct {uniq}) for {distinct} events, roll-up {rollup_n} events, "
                f"sum {ledger_sum} vs roll-up {rollup}, dead-lettered {dlq}")


async def run(label: str, k: int, events: list[CostEvent], *, admin_dsn: str, app_dsn: str, redis_url: str,
              batch: int, concurrency: int, seed: int, old: bool, servers: ServerCpu | None = None,
              dup_fraction: float = 0.05) -> RunResult:
    await _reset(admin_dsn, redis_url)
    entries = await _fill(redis_url, events, dup_fraction, seed)
    ctx = mp.get_context("spawn")
    ready, go, stop, results = ctx.Semaphore(0), ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=({"name": f"bench-{label}-{i}", "app_dsn": app_dsn, "redis_url": redis_url,
                                           "batch": batch, "concurrency": concurrency, "old": old},
                                          ready, go, stop, results))
        for i in range(k)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        await asyncio.get_running_loop().run_in_executor(None, ready.acquire)
    redis = create_redis(redis_url)
    before = servers.sample() if servers is not None else {}
    started = time.perf_counter()
    go.set()
    try:
        while True:
            if await _drained(redis):
                break
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
        after = servers.sample() if servers is not None else {}
    finally:
        stop.set()
        await redis.aclose()
    outs = [await asyncio.get_running_loop().run_in_executor(None, results.get) for _ in procs]
    for p in procs:
        p.join(30)
    latencies = [x for o in outs for x in o["latencies"]]
    ok, detail = await _check(admin_dsn, redis_url, len(events))
    written = sum(o["written"] for o in outs)
    dups = sum(o["duplicates"] for o in outs)
    ok = ok and written == len(events) and dups == entries - len(events)
    detail += f"; consumers wrote {written}, duplicates acknowledged {dups} of {entries - len(events)} replays"
    cpu = {part: after[part] - before[part] for part in after}
    cpu["consumer"] = sum(o["cpu"] for o in outs)
    return RunResult(label, k, entries, len(events), seconds, latencies, ok, detail, cpu)


async def main_async(args: argparse.Namespace) -> int:
    tmp: tempfile.TemporaryDirectory[str] | None = None
    pg: EmbeddedPostgres | None = None
    rs: EmbeddedRedis | None = None
    try:
        if args.pg_dsn and args.redis_url:
            admin_dsn, redis_url = args.pg_dsn, args.redis_url
        else:
            tmp = tempfile.TemporaryDirectory(prefix="frugal-bench-billing-")
            os.chmod(tmp.name, 0o755)
            pg = EmbeddedPostgres(Path(tmp.name) / "pg", free_port())
            rs = EmbeddedRedis(Path(tmp.name) / "redis", free_port())
            print("starting embedded PostgreSQL (fsync=off) and Redis ...", flush=True)
            pg.start()
            rs.start()
            admin_dsn, redis_url = pg.admin_dsn, rs.url
        await apply_migrations(admin_dsn, package=MIGRATIONS_PACKAGE, component="billing", app_role=APP_ROLE)
        app_dsn = _with_user(admin_dsn, APP_ROLE)
        pool = await create_pool(app_dsn, min_size=1, max_size=4)
        try:
            registry = TenantRegistry(pool)
            all_tenants = tenant_ids(max(args.tenants))
            for i in range(0, len(all_tenants), 25):
                await asyncio.gather(*(registry.upsert(billing_pb2.TenantPolicy(tenant_id=t, monthly_budget_usd=1e6))
                                       for t in all_tenants[i:i + 25]))
        finally:
            await pool.close()

        servers = ServerCpu(pg, rs) if pg is not None and rs is not None else None
        n = args.events or (6_000 if args.quick else 20_000)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (other work on the machine "
              f"slows every figure); {n} distinct events + 5 % replays per run, one consumer process\n", flush=True)
        table: dict[tuple[str, int], RunResult] = {}
        for t in args.tenants:
            events = make_events(n, seed=t, tenants=tenant_ids(t))
            for path in args.paths:
                old = path == "old"
                r = await run(f"{path}-{t}", 1, events, admin_dsn=admin_dsn, app_dsn=app_dsn, redis_url=redis_url,
                              batch=500 if old else args.batch, concurrency=4 if old else 1, seed=t, old=old,
                              servers=servers)
                table[(path, t)] = r
                print(f"{path:3s} path, {t:3d} active tenants: {r.entries:6d} entries in {r.seconds:6.2f}s = "
                      f"{r.rate:8.0f} events/s   transaction p50 {r.pct(50):6.1f} ms p99 {r.pct(99):6.1f} ms "
                      f"({len(r.latencies)} transactions)  exactly-once: {'OK' if r.ok else 'FAILED'}", flush=True)
                print(f"    CPU per event: consumer {r.cpu_us('consumer'):5.1f} us, postgres "
                      f"{r.cpu_us('postgres'):5.1f} us, redis {r.cpu_us('redis'):5.1f} us; load average "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
                if not r.ok:
                    print(f"  {r.detail}", flush=True)
        print("\nevents/s      " + "".join(f"{t:>10d} tenants" for t in args.tenants))
        for path in args.paths:
            print(f"{path:3s} path     " + "".join(f"{table[(path, t)].rate:>18.0f}" for t in args.tenants))
        if "old" in args.paths and "new" in args.paths:
            print("new / old    " + "".join(f"{table[('new', t)].rate / table[('old', t)].rate:>17.1f}x"
                                           for t in args.tenants))
        if servers is not None:
            print("ceiling (CPU used / 2 idle cores, perfect overlap: a bound, not a measurement)")
            for path in args.paths:
                print(f"{path:3s} path     " + "".join(f"{table[(path, t)].ceiling:>18.0f}" for t in args.tenants))
        if "new" in args.paths and MAX_TENANTS in args.tenants:
            r = table[("new", MAX_TENANTS)]
            print(f"target >= 20000 events/s at 500 tenants: {r.rate:.0f} ({'met' if r.rate >= 20_000 else 'NOT met'})")
        return 0 if all(r.ok for r in table.values()) else 1
    finally:
        if rs is not None:
            rs.stop()
        if pg is not None:
            pg.stop()
        if tmp is not None:
            tmp.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run: 6000 events per (path, tenant count)")
    p.add_argument("--events", type=int, default=0, help="distinct events per run (default 20000, quick 6000)")
    p.add_argument("--tenants", default="1,50,500", help="comma-separated active tenant counts")
    p.add_argument("--paths", default="old,new", help="old (per-tenant transactions), new (one per batch)")
    p.add_argument("--batch", type=int, default=5000, help="LEDGER_BATCH_SIZE of the new path")
    p.add_argument("--pg-dsn", default=None, help="admin DSN of an existing database (else embedded)")
    p.add_argument("--redis-url", default=None)
    args = p.parse_args()
    args.tenants = [int(x) for x in args.tenants.split(",") if x]
    args.paths = [x for x in args.paths.split(",") if x]
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
