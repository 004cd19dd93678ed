"""The one start-up failure path: a failing build stops the process with one line and exit status 1."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import asyncpg
    from frugal.common.service import StartupError, run_service
    from frugal.common.settings import ServiceSettings

    async def build(settings):
        if "{case}" == "startup":
            raise StartupError("scorer artifact checksum mismatch: rebuild it with the training script")
        await asyncpg.connect("postgresql://nobody@127.0.0.1:1/none", timeout=2)

    run_service(ServiceSettings, build)
""")


@pytest.mark.parametrize(("case", "expected"), [
    ("startup", "svc: cannot start: scorer artifact checksum mismatch: rebuild it with the training script"),
    ("database", "svc: cannot start: ConnectionRefusedError"),
])
def test_failed_build_prints_one_line_and_exits_1(case: str, expected: str) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(case=case)], capture_output=True, text=True,
                          timeout=60, env={"SERVICE_NAME": "svc", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_setting_exits_2_naming_the_variable() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(case="startup")], capture_output=True, text=True,
                          timeout=60, env={"SERVICE_NAME": "svc", "GRPC_PORT": "not-a-port", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "GRPC_PORT" in proc.stderr and "Traceback" not in proc.stderr
