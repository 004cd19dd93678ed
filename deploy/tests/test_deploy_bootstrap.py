"""The compose bootstrap step (deploy/compose/bootstrap.py) against real billing and rag processes (a fresh
database, the session's Redis): after it, the demo tenant exists and its knowledge base is ingested; a
second run (every `make up`) changes nothing; it fails with a clear line when a service is unreachable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from deploy.checks.base import ROOT
from frugal.devkit.devstack import free_port
from frugal.devkit.localmesh import LocalMesh

BOOTSTRAP = ROOT / "deploy" / "compose" / "bootstrap.py"
KB = ROOT / "demo" / "kb"


@pytest.fixture
async def billing_and_rag(new_database: Callable[[], Awaitable[str]], redis_url: str,
                          tmp_path: Path) -> AsyncIterator[LocalMesh]:
    dsn = await new_database()
    mesh = LocalMesh.on_free_ports(dsn, redis_url, log_dir=tmp_path / "logs", services=("billing", "rag"))
    try:
        await asyncio.to_thread(mesh.start, 180)
    except BaseException:
        for log in sorted((tmp_path / "logs").glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        mesh.stop()
        raise
    yield mesh
    mesh.stop()


async def _bootstrap(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return await asyncio.to_thread(
        subprocess.run, [sys.executable, str(BOOTSTRAP), "--kb", str(KB)], capture_output=True, text=True,
        timeout=300, env={**os.environ, **env})


async def test_bootstrap_registers_the_tenant_and_ingests_the_kb(billing_and_rag: LocalMesh) -> None:
    env = {"BILLING_ADDR": f"127.0.0.1:{billing_and_rag.ports['billing']}",
           "RAG_ADDR": f"127.0.0.1:{billing_and_rag.ports['rag']}"}
    first = await _bootstrap(env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "bootstrap: tenant org_lumen registered" in first.stdout
    docs = sorted(p.name for p in KB.glob("*.md"))
    for name in docs:
        assert f"kb/{name}:" in first.stdout and "created" in first.stdout, first.stdout
    assert "lk room join --url ws://127.0.0.1:7880" in first.stdout and "token " in first.stdout
    again = await _bootstrap(env)
    assert again.returncode == 0, again.stderr
    assert "already registered" in again.stdout
    assert "created" not in again.stdout  # content-hash dedup: nothing ingested twice


async def test_bootstrap_fails_clearly_when_billing_is_unreachable() -> None:
    proc = await _bootstrap({"BILLING_ADDR": f"127.0.0.1:{free_port()}", "RAG_ADDR": f"127.0.0.1:{free_port()}"})
    assert proc.returncode == 1
    assert proc.stderr.startswith("bootstrap failed:"), proc.stderr
