"""Run the whole mesh locally: embedded Postgres+Redis, then the five services as child processes.

    python -m frugal.devkit.localmesh        # `make dev`: serve until Ctrl-C, then stop everything

Services apply their own migrations at start (MIGRATION_DATABASE_URL) and connect as their
non-owner roles. `LocalMesh` is also used by the demo and by the e2e tests (with free ports).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from frugal.common import service_table
from frugal.common.healthcheck import wait_serving
from frugal.devkit.devstack import DevStack, DevStackError, free_port

# (name, module, database role or None), in start order (dependencies first): the one service table.
SERVICES: tuple[tuple[str, str, str | None], ...] = tuple(
    (s.name, s.package, s.db_role) for s in service_table.SERVICES
)


def _addr_env(ports: Mapping[str, int]) -> dict[str, str]:
    return service_table.addresses({s.name: "127.0.0.1" for s in service_table.SERVICES}, ports)


@dataclass
class LocalMesh:
    """Child processes of the five services, wired to one Postgres and one Redis."""

    admin_dsn: str
    redis_url: str
    ports: dict[str, int] = field(default_factory=lambda: {s.name: s.grpc_port for s in service_table.SERVICES})
    metrics_ports: dict[str, int] = field(
        default_factory=lambda: {s.name: s.metrics_port for s in service_table.SERVICES})
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    services: tuple[str, ...] = tuple(n for n, _, _ in SERVICES)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[TextIO] = field(default_factory=list)

    @classmethod
    def on_free_ports(cls, admin_dsn: str, redis_url: str, **kw: object) -> LocalMesh:
        names = [n for n, _, _ in SERVICES]
        return cls(admin_dsn, redis_url, ports={n: free_port() for n in names},
                   metrics_ports={n: free_port() for n in names}, **kw)  # type: ignore[arg-type]

    def env_for(self, name: str, role: str | None) -> dict[str, str]:
        # No LiveKit unless asked for (extra_env): livekit-agents writes LIVEKIT_* into its own process's
        # environment for its job processes, so a test that ran a worker must not leak a server URL here.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FRUGAL_TEST", "LIVEKIT_"))}
        env.update(_addr_env(self.ports))
        env.update({
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.ports[name]),
            "METRICS_PORT": str(self.metrics_ports[name]),
            "REDIS_URL": self.redis_url,
            "LOG_FORMAT": env.get("LOG_FORMAT", "text"),
            "SHUTDOWN_DELAY_SECONDS": "0",
            "SHUTDOWN_GRACE_SECONDS": "5",
        })
        if role is not None:
            scheme, rest = self.admin_dsn.split("://", 1)
            env["DATABASE_URL"] = f"{scheme}://{role}@{rest.split('@', 1)[-1]}"
            env["MIGRATION_DATABASE_URL"] = self.admin_dsn
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 90.0) -> None:
        try:
            for name, module, role in SERVICES:
                if name not in self.services:
                    continue
                out: int | TextIO = subprocess.DEVNULL
                if self.log_dir is not None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    fh = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
                    self._logs.append(fh)
                    out = fh
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", module], env=self.env_for(name, role), stdout=out,
                    stderr=subprocess.STDOUT if self.log_dir is not None else None, start_new_session=True,
                )
                # Dependencies first: billing and rag apply migrations before others call them.
                self.wait_healthy(name, timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, name: str, timeout_s: float) -> None:
        """Blocks until `name` reports SERVING (plain blocking gRPC: usable with or without a loop)."""
        proc = self.procs.get(name)
        try:
            wait_serving(f"127.0.0.1:{self.ports[name]}", timeout_s,
                         alive=None if proc is None else lambda: proc.poll() is None)
        except RuntimeError:
            where = f"; see {self.log_dir / (name + '.log')}" if self.log_dir else ""
            code = proc.returncode if proc is not None else None
            raise RuntimeError(f"{name} exited with status {code} during start-up{where}") from None
        except TimeoutError:
            raise TimeoutError(f"{name} not healthy after {timeout_s:.0f}s") from None

    def stop(self, timeout_s: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every service (reverse start order), wait, SIGKILL stragglers. Returns exit codes."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait()
        self.procs.clear()
        for fh in self._logs:
            fh.close()
        self._logs.clear()
        return codes

def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A local process's Prometheus /metrics as {"name{labels}": value} (comments and blank lines skipped)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:  # noqa: S310 - local only
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out



def main() -> int:
    stack = DevStack.from_env()
    try:
        stack.start()
    except DevStackError as err:
        print(f"dev stack: {err}", file=sys.stderr)
        return 1
    env = stack.env()
    mesh = LocalMesh(env["PG_ADMIN_URL"], env["REDIS_URL"], log_dir=stack.root / "logs")
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"postgres {env['PG_ADMIN_URL']}  redis {env['REDIS_URL']}")
    try:
        mesh.start()
    except (RuntimeError, TimeoutError) as err:
        print(f"mesh failed to start: {err}", file=sys.stderr)
        return 1
    for name, _, _ in SERVICES:
        print(f"  {name:<14} grpc 127.0.0.1:{mesh.ports[name]}  metrics :{mesh.metrics_ports[name]}  "
              f"log {mesh.log_dir / (name + '.log') if mesh.log_dir else '-'}")
    print("all five services are up; try: grpcurl -plaintext 127.0.0.1:50051 list   (Ctrl-C stops everything)")
    try:
        while not stopping:
            for name, proc in mesh.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with status {proc.returncode}; stopping", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        codes = mesh.stop()
        print("stopped: " + ", ".join(f"{n}={c}" for n, c in codes.items()))
        if os.environ.get("FRUGAL_DEV_KEEP_STACK") != "1":
            stack.stop()
            print("dev stack stopped (set FRUGAL_DEV_KEEP_STACK=1 to keep Postgres/Redis running)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
