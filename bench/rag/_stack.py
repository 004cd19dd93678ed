"""Shared support for the rag benchmarks: an embedded PostgreSQL 18 + pgvector and Redis in a temporary
directory on free ports (the project's dev-stack binaries), the rag migrations, and the real service."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from frugal.api.rag.v1 import rag_pb2_grpc
from frugal.common.grpc_server import GrpcApp
from frugal.common.migrations import apply_migrations
from frugal.devkit.devstack import EmbeddedPostgres, EmbeddedRedis, free_port
from frugal.rag.config import Settings
from frugal.rag.server import APP_ROLE, MIGRATIONS_PACKAGE, build_app

REPO_ROOT = Path(__file__).resolve().parents[2]
# <repo>/../shared/data; from a worktree under /work/wt/<name>, two levels up.
SHARED_DATA = next((p for p in (REPO_ROOT.parent / "shared" / "data", REPO_ROOT.parents[1] / "shared" / "data")
                    if p.is_dir()), REPO_ROOT.parent / "shared" / "data")


def with_user(dsn: str, user: str) -> str:
    scheme, rest = dsn.split("://", 1)
    return f"{scheme}://{user}@{rest.split('@', 1)[-1]}"


@dataclass(frozen=True)
class Stack:
    admin_dsn: str
    app_dsn: str
    redis_url: str


@asynccontextmanager
async def bench_stack() -> AsyncIterator[Stack]:
    tmp = tempfile.mkdtemp(prefix="frugal-rag-bench-")
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(Path(tmp) / "pg", free_port())
    redis = EmbeddedRedis(Path(tmp) / "redis", free_port())
    try:
        pg.start()
        redis.start()
        await apply_migrations(pg.admin_dsn, package=MIGRATIONS_PACKAGE, component="rag", app_role=APP_ROLE)
        yield Stack(pg.admin_dsn, with_user(pg.admin_dsn, APP_ROLE), redis.url)
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Service:
    app: GrpcApp
    channel: grpc.aio.Channel
    stub: rag_pb2_grpc.RagServiceStub
    settings: Settings


@asynccontextmanager
async def running_service(stack: Stack, **overrides: Any) -> AsyncIterator[Service]:
    settings = Settings(database_url=stack.app_dsn, redis_url=stack.redis_url, grpc_host="127.0.0.1", grpc_port=0,
                        metrics_port=0, log_level="WARNING", db_pool_max=16, shutdown_delay_seconds=0.0,
                        **overrides)
    app = await build_app(settings)
    port = await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Service(app, channel, rag_pb2_grpc.RagServiceStub(channel), settings)
    finally:
        await channel.close()
        await app.stop(1.0)


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_summary(ms: Sequence[float]) -> str:
    return (f"p50 {percentile(ms, 50):7.2f} ms  p95 {percentile(ms, 95):7.2f} ms  "
            f"p99 {percentile(ms, 99):7.2f} ms  mean {statistics.fmean(ms):7.2f} ms")
