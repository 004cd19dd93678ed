"""The compose start order, driven offline against a real PostgreSQL that starts late.

`make up` on a fresh volume starts the migration one-shots as soon as the Postgres container is
healthy, and a managed database may come up after a pod's init container. Here: the migration entrypoint
(`python -m frugal.common.migrations`, the one-shots' and init containers' command) is started first, an
embedded PostgreSQL (frugal.devkit.devstack.EmbeddedPostgres) on a free port a few seconds later; the
runner must wait, retry and apply. The compose Postgres healthcheck command (`pg_isready -h 127.0.0.1`)
runs against the same server: failing before it listens on TCP, passing after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frugal.devkit.devstack import DATABASE, DevStackError, EmbeddedPostgres, free_port, pg_bin_for
from frugal.devkit.devstack import _run_user as pg_run_user

MIGRATE = [sys.executable, "-m", "frugal.common.migrations", "--package=frugal.billing.migrations",
           "--component=billing", "--app-role=frugal_billing", "--app-password=frugal-dev-billing"]


@pytest.fixture
def late_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "pg", free_port())
    try:
        yield pg
    finally:
        try:
            pg.stop()
        except DevStackError:
            pass


def _pg_isready(port: int) -> subprocess.CompletedProcess[str]:
    """The compose healthcheck command, `pg_isready -h 127.0.0.1 -U frugal -d frugal`, on this port."""
    exe = pg_bin_for(pg_run_user()) / "pg_isready"
    return subprocess.run([str(exe), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", DATABASE],
                          capture_output=True, text=True, timeout=30)


def test_migrations_wait_for_a_database_that_starts_late(late_postgres: EmbeddedPostgres) -> None:
    dsn = late_postgres.admin_dsn
    assert _pg_isready(late_postgres.port).returncode != 0  # nothing listens yet: the healthcheck fails
    runner = subprocess.Popen([*MIGRATE, f"--dsn={dsn}", "--wait-seconds=120"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        time.sleep(3)  # the runner is retrying now
        assert runner.poll() is None, runner.communicate()
        late_postgres.start()
        assert _pg_isready(late_postgres.port).returncode == 0  # the healthcheck passes once it listens
        out, err = runner.communicate(timeout=180)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 0, err
    assert "database not ready" in err and "retrying" in err  # it did wait
    assert "billing: applied" in out and "0001_" in out
    # Idempotent: a second run (every `make up`) applies nothing and needs no wait.
    again = subprocess.run([*MIGRATE, f"--dsn={dsn}", "--wait-seconds=0"], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "applied 0 migration(s)" in again.stdout, again.stderr


def test_without_waiting_a_late_database_fails_at_once() -> None:
    """What the one-shots did before: one attempt, then `rag` and `billing` never start. Bounded and clear."""
    port = free_port()
    proc = subprocess.run([*MIGRATE, f"--dsn=postgresql://postgres@127.0.0.1:{port}/frugal", "--wait-seconds=0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("migrations failed:"), proc.stderr


def test_wrong_credentials_are_not_retried(late_postgres: EmbeddedPostgres) -> None:
    """Waiting is for a database that is not there yet; a bad DSN must fail at once, not after the wait."""
    late_postgres.start()
    bad = f"postgresql://postgres@127.0.0.1:{late_postgres.port}/frugal?options=-c%20no_such_setting%3D1"
    proc = subprocess.run([*MIGRATE, f"--dsn={bad}", "--wait-seconds=60"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "migrations failed" in proc.stderr, proc.stderr
    assert "retrying" not in proc.stderr  # one attempt: it did not sit out the wait


def _compose_healthcheck(port: int, socket_dir: str) -> subprocess.CompletedProcess[str]:
    """docker-compose.yml's postgres healthcheck, as Compose runs it (CMD-SHELL), in an environment like the
    image's: pg_isready's default socket directory is where the server listens (PGHOST)."""
    from deploy.checks import tools
    from deploy.checks.base import COMPOSE, ToolMissing

    try:
        test = tools.compose_config(COMPOSE)["services"]["postgres"]["healthcheck"]["test"]
    except ToolMissing as err:
        pytest.skip(str(err))
    assert test[0] == "CMD-SHELL"
    command = test[1].replace("-U frugal", "-U postgres") + f" -p {port}"
    bindir = pg_bin_for(pg_run_user())
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bindir}:/usr/bin:/bin", "PGHOST": socket_dir})


def test_the_healthcheck_ignores_the_init_time_server(late_postgres: EmbeddedPostgres) -> None:
    """On a fresh volume the postgres image runs its init scripts on a temporary server that listens on the
    Unix socket only (listen_addresses=''), then restarts. A socket healthcheck (`pg_isready` without -h)
    passes during that window and lets the migrations in too early; the compose one (`pg_isready -h
    127.0.0.1`) does not, and passes once the real server listens on TCP."""
    late_postgres.start()
    assert _compose_healthcheck(late_postgres.port, str(late_postgres.data)).returncode == 0
    late_postgres.stop()
    late_postgres.stop()
    sock = str(late_postgres.data)
    late_postgres._cmd("pg_ctl", "-D", sock, "-l", f"{sock}/init-server.log", "-w", "-t", "60", "-o",
                       f"-p {late_postgres.port} -c listen_addresses='' -k {sock}", "start")
    try:
        exe = str(pg_bin_for(pg_run_user()) / "pg_isready")
        over_socket = subprocess.run([exe, "-h", sock, "-p", str(late_postgres.port), "-U", "postgres"],
                                     capture_output=True, text=True, timeout=30)
        assert over_socket.returncode == 0, over_socket.stdout + over_socket.stderr  # the old check: "ready"
        assert _compose_healthcheck(late_postgres.port, sock).returncode != 0  # the compose check: not yet
    finally:
        late_postgres._cmd("pg_ctl", "-D", sock, "-m", "fast", "-w", "stop", check=False)
