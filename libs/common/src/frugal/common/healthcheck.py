"""gRPC health probe for container healthchecks (compose, `docker run`): the image has no grpc_health_probe.

    python -m frugal.common.healthcheck [HOST:PORT] [--service NAME] [--timeout SECONDS]

Calls grpc.health.v1.Health/Check; exits 0 when the answer is SERVING, 1 otherwise (NOT_SERVING during the
shutdown drain, unreachable, timeout), 2 on bad usage. Without a target it probes 127.0.0.1:$GRPC_PORT.
Kubernetes uses its native gRPC probes instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout_s: float = 2.0) -> tuple[bool, str]:
    """Returns (serving, description)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            return False, f"{target}: {err.code().name}: {err.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def wait_serving(
    target: str, timeout_s: float, *, alive: Callable[[], bool] | None = None, interval_s: float = 0.2
) -> None:
    """Blocks until `target` reports SERVING. Raises TimeoutError after `timeout_s`, and RuntimeError as soon
    as `alive()` says the server's process is gone (no point waiting for a process that exited)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"{target}: the server exited before serving")
        if check(target, timeout_s=1.0)[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target}: not serving after {timeout_s:.0f}s")
        time.sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frugal.common.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default=None, help="HOST:PORT (default 127.0.0.1:$GRPC_PORT)")
    parser.add_argument("--service", default="", help="service name to check (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    target = args.target
    if target is None:
        port = os.environ.get("GRPC_PORT", "")
        if not port.isdigit():
            print("healthcheck: no target given and GRPC_PORT is not set", file=sys.stderr)
            return 2
        target = f"127.0.0.1:{port}"
    serving, description = check(target, args.service, args.timeout)
    print(description, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
