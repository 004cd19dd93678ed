"""A fresh clone in a directory other users cannot traverse (a 0700 home, a `mktemp -d` folder), started as
root: PostgreSQL runs as an unprivileged user who cannot reach the clone, so the dev stack must place what
that user needs where it can reach it and say where, or fail with one clear line."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from frugal.devkit.devstack import free_port

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the unreachable-clone case only exists when run as root")


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    if not os.access(found, os.X_OK):
        pytest.skip("uv is not installed")
    return found


@pytest.fixture(scope="module")
def private_clone() -> Iterator[Path]:
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout")
    home = Path(tempfile.mkdtemp(prefix="frugal-private-"))  # mode 0700, like `mktemp -d`
    assert home.stat().st_mode & 0o777 == 0o700
    try:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(home / "repo")], check=True, timeout=120)
        env = {**os.environ, "UV_FROZEN": "1"}
        env.pop("VIRTUAL_ENV", None)
        subprocess.run([_uv(), "sync", "--frozen", "--quiet"], cwd=home / "repo", check=True, timeout=600, env=env)
        yield home / "repo"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _devstack(
    clone: Path, command: str, staging: Path, pg_port: int, redis_port: int
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FRUGAL_DEVSTACK_STAGING": str(staging), "FRUGAL_PG_PORT": str(pg_port),
           "FRUGAL_REDIS_PORT": str(redis_port), "UV_FROZEN": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        [_uv(), "run", "--frozen", "python", "-m", "frugal.devkit.devstack", command,
         "--dir", str(clone / ".devstack")],
        cwd=clone, capture_output=True, text=True, timeout=300, env=env,
    )


@pytest.mark.integration
def test_devstack_starts_from_a_clone_other_users_cannot_reach(private_clone: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix="frugal-staging-", dir="/var/tmp"))
    staging.chmod(0o755)
    pg_port, redis_port = free_port(), free_port()
    try:
        started = _devstack(private_clone, "start", staging, pg_port, redis_port)
        assert started.returncode == 0, started.stderr
        # It says where it put what the PostgreSQL user needs, and that place is outside the clone.
        assert f"PostgreSQL binaries staged at {staging}" in started.stderr
        assert f"PostgreSQL data placed at {staging}" in started.stderr
        status = _devstack(private_clone, "status", staging, pg_port, redis_port)
        assert "postgres: running" in status.stdout, status.stdout + status.stderr
        query = subprocess.run(
            [_uv(), "run", "--frozen", "python", "-c",
             "import asyncio, asyncpg, sys\n"
             "async def main():\n"
             f"    c = await asyncpg.connect('postgresql://postgres@127.0.0.1:{pg_port}/frugal')\n"
             "    print(await c.fetchval(\"SELECT extversion FROM pg_extension WHERE extname = 'vector'\"))\n"
             "    await c.close()\n"
             "asyncio.run(main())"],
            cwd=private_clone, capture_output=True, text=True, timeout=120,
        )
        assert query.returncode == 0 and query.stdout.strip(), query.stderr
    finally:
        _devstack(private_clone, "stop", staging, pg_port, redis_port)
        shutil.rmtree(staging, ignore_errors=True)


@pytest.mark.integration
def test_unreachable_staging_fails_with_one_clear_line(private_clone: Path) -> None:
    # Staging inside the private clone is as unreachable as the clone: the error names the fix, no traceback.
    staging = private_clone / ".staging"
    failed = _devstack(private_clone, "start", staging, free_port(), free_port())
    try:
        assert failed.returncode == 1
        assert "Traceback" not in failed.stderr
        error_lines = [line for line in failed.stderr.splitlines() if line.startswith("devstack: ")]
        named_fix = ["world-traversable" in line and "FRUGAL_DEVSTACK_STAGING" in line for line in error_lines]
        assert any(named_fix), failed.stderr
    finally:
        _devstack(private_clone, "stop", staging, free_port(), free_port())
