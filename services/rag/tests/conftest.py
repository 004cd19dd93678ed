"""Fixtures for the rag tests: one migrated database per test module (tests use their own tenant ids),
the service on a loopback port, and helpers for call metadata."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio

from frugal.api.rag.v1 import rag_pb2_grpc
from frugal.common.grpc_server import GrpcApp
from frugal.common.migrations import apply_migrations
from frugal.devkit.pytest_plugin import with_user
from frugal.rag.config import Settings
from frugal.rag.server import APP_ROLE, MIGRATIONS_PACKAGE, build_app


@dataclass(frozen=True)
class RagDb:
    admin_dsn: str
    app_dsn: str


@pytest_asyncio.fixture(scope="module")
async def rag_db(pg_admin_dsn: str) -> AsyncIterator[RagDb]:
    name = f"rag_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    admin = pg_admin_dsn.rsplit("/", 1)[0] + "/" + name
    await apply_migrations(admin, package=MIGRATIONS_PACKAGE, component="rag", app_role=APP_ROLE)
    yield RagDb(admin, with_user(admin, APP_ROLE))
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def make_settings(db: RagDb, redis_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": db.app_dsn,
        "redis_url": redis_url,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "metrics_port": 0,
        "db_pool_min": 1,
        "db_pool_max": 4,
        "shutdown_grace_seconds": 1.0,
        "shutdown_delay_seconds": 0.0,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class RunningRag:
    app: GrpcApp
    channel: grpc.aio.Channel
    stub: rag_pb2_grpc.RagServiceStub
    settings: Settings


RagFactory = Callable[..., Awaitable[RunningRag]]


@pytest_asyncio.fixture
async def start_rag(rag_db: RagDb, redis_url: str) -> AsyncIterator[RagFactory]:
    """`rag = await start_rag(**settings_overrides)`: the real service on a loopback port."""
    running: list[RunningRag] = []

    async def start(**overrides: Any) -> RunningRag:
        settings = make_settings(rag_db, redis_url, **overrides)
        app = await build_app(settings)
        port = await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        rag = RunningRag(app, channel, rag_pb2_grpc.RagServiceStub(channel), settings)
        running.append(rag)
        return rag

    yield start
    for rag in running:
        await rag.channel.close()
        await rag.app.stop(0.5)


@pytest_asyncio.fixture
async def rag(start_rag: RagFactory) -> RunningRag:
    return await start_rag()


@pytest_asyncio.fixture
async def app_pool(rag_db: RagDb) -> AsyncIterator[asyncpg.Pool]:
    """A pool connected as the service's own role (frugal_rag), for direct attacks on isolation."""
    pool = await asyncpg.create_pool(rag_db.app_dsn, min_size=1, max_size=3)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


def build_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF (Helvetica text, one content stream per page), built by hand."""
    objs: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in text.split("\n"):
            esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({esc}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode()
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
            f" /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objs):
        offsets.append(len(out))
        out += f"{i + 1} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@pytest.fixture
def make_pdf() -> Callable[[list[str]], bytes]:
    return build_pdf


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: builds a large corpus (100k chunks); deselect with -m 'not slow'")
