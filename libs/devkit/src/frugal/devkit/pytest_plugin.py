"""Pytest plugin: real PostgreSQL (pgvector) and Redis for tests.

With a reachable Docker engine the servers come from testcontainers; otherwise from the embedded dev
stack binaries, in a temporary directory on free ports. Real servers either way. Loaded by the root
conftest (`pytest_plugins = ["frugal.devkit.pytest_plugin"]`).

Fixtures:
- `pg_admin_dsn` (session): superuser DSN of a database with the `vector` extension.
- `new_database` (function): factory `await new_database()` -> admin DSN of a fresh, empty database.
- `redis_url` (session), `redis_client` (function, flushed before the test).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from frugal.devkit.devstack import EmbeddedPostgres, EmbeddedRedis, free_port


def docker_available() -> bool:
    if os.environ.get("FRUGAL_TEST_NO_DOCKER"):
        return False
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if sock.startswith("unix://") and not Path(sock[7:]).exists():
        return False
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        # Trust auth, as in the embedded server: the services' app roles are created without passwords.
        container = PostgresContainer("pgvector/pgvector:0.8.1-pg17", driver=None).with_env(
            "POSTGRES_HOST_AUTH_METHOD", "trust"
        )
        with container as pg:
            dsn = pg.get_connection_url()
            _create_extension(dsn)
            yield dsn
        return
    with tempfile.TemporaryDirectory(prefix="frugal-pg-") as tmp:
        os.chmod(tmp, 0o755)
        server = EmbeddedPostgres(Path(tmp), free_port())
        server.start()
        try:
            yield server.admin_dsn
        finally:
            server.stop()


def _create_extension(dsn: str) -> None:
    import asyncio

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await conn.close()

    asyncio.run(run())


@pytest_asyncio.fixture
async def new_database(pg_admin_dsn: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    created: list[str] = []

    async def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        dsn = pg_admin_dsn.rsplit("/", 1)[0] + "/" + name
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await conn.close()
        return dsn

    yield make
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        for name in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def with_user(dsn: str, user: str) -> str:
    """The same server and database, connecting as `user` (trust auth in tests)."""
    scheme, rest = dsn.split("://", 1)
    hostpart = rest.split("@", 1)[-1]
    return f"{scheme}://{user}@{hostpart}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.4-alpine") as rc:
            yield f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
        return
    with tempfile.TemporaryDirectory(prefix="frugal-redis-") as tmp:
        server = EmbeddedRedis(Path(tmp), free_port())
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
