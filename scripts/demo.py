"""`make demo`: the whole mesh on a fresh machine with no keys and no Docker.

Starts the embedded Postgres (pgvector) and Redis, starts the five services as child processes (each applies
its own migrations), registers the demo tenant, ingests the demo knowledge base, replays the recorded demo
session (demo/session) through the media gateway, and prints a final report read from billing's ledger.
Everything stops at the end, on Ctrl-C and on errors. Options: --speed N (timeline speed-up, default 2),
--keep-stack (leave Postgres/Redis running).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speed", type=float, default=2.0, help="timeline speed-up of the replay (default 2)")
    p.add_argument("--keep-stack", action="store_true", help="leave the embedded Postgres and Redis running")
    args = p.parse_args()
    # gRPC core's own INFO lines ("skipping fork() handlers" each time the clean-up runs pg_ctl while the
    # replay's gRPC threads are still parked) are noise here; ERROR is gRPC's documented default level. It is
    # set before anything loads gRPC, is inherited by the services, and an explicit GRPC_VERBOSITY wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

    from frugal.devkit.devstack import DevStack, DevStackError
    from frugal.devkit.localmesh import LocalMesh

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("livekit", "livekit.agents", "frugal.common.cost_events"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    stack = DevStack.from_env()
    was_running = stack.postgres.running() and stack.redis.running()
    print("starting the embedded dev stack (PostgreSQL + pgvector, Redis) ...", flush=True)
    try:
        stack.start()
    except DevStackError as err:
        print(f"demo: dev stack failed: {err}", file=sys.stderr)
        return 1
    env = stack.env()
    try:
        # Its own database, recreated every run: the demo never depends on what `make dev` left behind.
        demo_dsn = stack.postgres.fresh_database("frugal_demo")
    except DevStackError as err:
        print(f"demo: could not create the demo database: {err}", file=sys.stderr)
        return 1
    log_dir = stack.root / "logs" / "demo"
    mesh = LocalMesh.on_free_ports(demo_dsn, env["REDIS_URL"], log_dir=log_dir,
                                   extra_env={"LOG_LEVEL": "INFO"})

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        print(f"starting the five services (logs in {log_dir}) ...", flush=True)
        t0 = time.monotonic()
        mesh.start(timeout_s=180)
        for name, port in mesh.ports.items():
            print(f"  {name:<14} 127.0.0.1:{port}")
        print(f"mesh up in {time.monotonic() - t0:.0f}s\n", flush=True)
        code = asyncio.run(_replay(mesh, args.speed))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        code = 130
    except (RuntimeError, TimeoutError, OSError) as err:
        print(f"demo failed: {err}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
        codes = mesh.stop()
        print("services stopped: " + ", ".join(f"{n}={c}" for n, c in codes.items()))
        if not (args.keep_stack or was_running or os.environ.get("FRUGAL_DEV_KEEP_STACK") == "1"):
            stack.stop()
            print("dev stack stopped")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return code


async def _replay(mesh: object, speed: float) -> int:
    from frugal.common.settings import load_settings
    from frugal.devkit.demo.session import demo_main
    from frugal.devkit.localmesh import LocalMesh
    from frugal.gateway.config import Settings

    assert isinstance(mesh, LocalMesh)
    addrs = {f"{k.split('-')[0]}_addr": f"127.0.0.1:{v}" for k, v in mesh.ports.items() if k != "media-gateway"}
    settings = load_settings(Settings, redis_url=mesh.redis_url, grpc_port=0, metrics_port=0, **addrs)
    # Non-zero when any turn failed: `make demo` must not look green over a broken mesh.
    return await demo_main(settings, ROOT / "demo" / "session", ROOT / "demo" / "kb", speed=speed,
                           write=lambda line: print(line, flush=True))


if __name__ == "__main__":
    raise SystemExit(main())
