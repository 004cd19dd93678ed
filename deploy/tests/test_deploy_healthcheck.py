"""The image's health probe (`python -m frugal.common.healthcheck`) against a real gRPC server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from frugal.common.grpc_server import GrpcApp
from frugal.common.settings import ServiceSettings


async def _probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "frugal.common.healthcheck", *args], capture_output=True,
                              text=True, timeout=30, env={**os.environ, **(env or {})})

    return await asyncio.to_thread(run)


async def test_probe_follows_the_server_lifecycle() -> None:
    settings = ServiceSettings(grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, shutdown_delay_seconds=0,
                               shutdown_grace_seconds=1)
    app = GrpcApp(settings, services=[])
    port = await app.start()
    try:
        ok = await _probe(f"127.0.0.1:{port}")
        assert ok.returncode == 0, ok.stderr
        assert "SERVING" in ok.stdout
        by_env = await _probe(env={"GRPC_PORT": str(port)})
        assert by_env.returncode == 0, by_env.stderr
        unknown = await _probe(f"127.0.0.1:{port}", "--service", "no.such.Service")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        # The first step of the SIGTERM drain (GrpcApp.stop): health says NOT_SERVING, the listener stays open.
        await app.health.enter_graceful_shutdown()
        draining = await _probe(f"127.0.0.1:{port}")
        assert draining.returncode == 1 and "NOT_SERVING" in draining.stderr
    finally:
        await app.stop()
    gone = await _probe(f"127.0.0.1:{port}", "--timeout", "1")
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr


async def test_probe_without_target_or_port_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_PORT"}
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "frugal.common.healthcheck"],
                                   capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2 and "GRPC_PORT is not set" in proc.stderr
