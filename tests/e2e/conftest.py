"""The whole mesh as real processes on a fresh database and the session's Redis, on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from frugal.devkit.localmesh import LocalMesh


@pytest.fixture
async def mesh(new_database: Callable[[], Awaitable[str]], redis_url: str, tmp_path: Path) -> AsyncIterator[LocalMesh]:
    dsn = await new_database()
    m = LocalMesh.on_free_ports(dsn, redis_url, log_dir=tmp_path / "logs")
    try:
        m.start(timeout_s=180)
    except BaseException:
        for log in sorted((tmp_path / "logs").glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        raise
    yield m
    m.stop()
