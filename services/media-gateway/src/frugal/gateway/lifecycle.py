"""The gateway process: gRPC health, /metrics and the LiveKit worker, started and stopped as one.

- Health is SERVING only while the worker is registered with LiveKit: a worker that cannot connect (bad key,
  server unreachable) or that gave up reconnecting reports NOT_SERVING, so the liveness probe restarts the pod.
- SIGTERM: health NOT_SERVING at once, then `AgentServer.drain()` (LiveKit stops dispatching jobs here; live
  sessions finish, up to DRAIN_TIMEOUT_S), then the worker closes what is left, then gRPC and /metrics stop.
- `gateway_active_jobs` (the KEDA scaling signal) is the worker's running jobs, refreshed with health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import tempfile

from grpc_health.v1 import health, health_pb2
from livekit.agents import AgentServer

from frugal.common.service import build_or_exit
from frugal.gateway import metrics
from frugal.gateway.config import Settings
from frugal.gateway.job_metrics import GatewayMetricsServer, mark_job_process_dead
from frugal.gateway.server import build_app

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def worker_registered(server: AgentServer) -> bool:
    """Whether LiveKit can dispatch jobs to this worker now. livekit-agents 1.8 has no public flag for it:
    `_connecting` is set while it (re)connects and cleared once LiveKit acknowledged the registration."""
    return (not getattr(server, "_closed", True) and not getattr(server, "_connecting", True)
            and not getattr(server, "_connection_failed", False) and server.id != "unregistered")


class WorkerSupervisor:
    """Runs the AgentServer, mirrors its registration into gRPC health, drains it on shutdown."""

    def __init__(self, server: AgentServer, health_servicer: health.aio.HealthServicer, *,
                 interval_s: float = 1.0, job_metrics_dir: str | None = None) -> None:
        self.server = server
        self.health = health_servicer
        self.interval_s = interval_s
        self.job_metrics_dir = job_metrics_dir
        self.stopping = False
        self.failure: BaseException | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._serving: bool | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        await self._set(False)
        self.server.on("worker_registered", lambda *_: self._changed.set())
        self.server.on("worker_started", self._watch_processes)
        self._run_task = asyncio.create_task(self.server.run(), name="livekit-worker")
        self._run_task.add_done_callback(self._on_run_done)
        self._watch_task = asyncio.create_task(self._watch(), name="livekit-worker-health")

    def _watch_processes(self, *_: object) -> None:
        if self.job_metrics_dir is None:
            return
        job_dir = self.job_metrics_dir

        def on_closed(proc: object) -> None:
            pid = getattr(proc, "pid", None)
            if isinstance(pid, int):
                mark_job_process_dead(job_dir, pid)

        self.server._proc_pool.on("process_closed", on_closed)

    def _on_run_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if (err := task.exception()) is not None:
            self.failure = err
            log.error("the LiveKit worker stopped: %s; health is NOT_SERVING until the process restarts", err)
        elif not self.stopping:
            log.error("the LiveKit worker stopped unexpectedly; health is NOT_SERVING")
        self._changed.set()

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    async def _set(self, serving: bool) -> None:
        if serving != self._serving:
            self._serving = serving
            await self.health.set("", SERVING if serving else NOT_SERVING)
            metrics.WORKER_REGISTERED.set(1 if serving else 0)
            log.info("health %s (LiveKit worker %s)", "SERVING" if serving else "NOT_SERVING",
                     "registered" if serving else "not registered")

    def _refresh_jobs(self) -> None:
        with contextlib.suppress(AttributeError):  # before run() built the process pool
            metrics.ACTIVE_JOBS.set(len(self.server.active_jobs))

    async def _watch(self) -> None:
        while True:
            alive = self._run_task is not None and not self._run_task.done()
            await self._set(alive and not self.stopping and worker_registered(self.server))
            self._refresh_jobs()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval_s)

    async def drain_and_close(self, timeout_s: float | None) -> None:
        """NOT_SERVING, no new jobs, live sessions finish for up to `timeout_s` (None: no drain, e.g. when the
        process is failing), then everything closes."""
        self.stopping = True
        self._changed.set()
        await self._set(False)
        if timeout_s is not None and self._run_task is not None and not self._run_task.done():
            jobs = len(self.server.active_jobs)
            log.info("draining the LiveKit worker: %d live session(s), up to %.0fs", jobs, timeout_s)
            try:
                # AgentServer.drain takes whole seconds, and 0 would mean "wait forever".
                await self.server.drain(timeout=max(1, math.ceil(timeout_s)))
                log.info("drained: every session ended")
            except TimeoutError:
                log.warning("drain timed out after %.0fs: closing %d session(s)", timeout_s,
                            len(self.server.active_jobs))
        await self.server.aclose()
        self._refresh_jobs()
        for task in (self._watch_task, self._run_task):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (self._watch_task, self._run_task) if t is not None),
                             return_exceptions=True)


async def serve(settings: Settings, *, server: AgentServer | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serves until SIGTERM/SIGINT (or `stop`), then drains and stops. `server` overrides the worker built
    from the settings (tests); without LIVEKIT_URL and no `server`, only health and metrics run."""
    from frugal.gateway.worker import build_server

    job_dir = settings.job_metrics_dir or tempfile.mkdtemp(prefix="gateway-job-metrics-")
    # /metrics is ours (merged); a failing build stops with one line (the one start-up path).
    app = await build_or_exit(settings.service_name, build_app(settings.model_copy(update={"metrics_port": 0})))
    metrics_server = GatewayMetricsServer(settings.metrics_port, job_dir) if settings.metrics_port else None
    if server is None and settings.livekit_url:
        server = build_server(settings, job_metrics_dir=job_dir)
    elif server is None:
        log.warning("LIVEKIT_URL is not set: the LiveKit worker is not started (health and metrics only)")
    supervisor = (WorkerSupervisor(server, app.health, interval_s=settings.worker_health_interval_s,
                                   job_metrics_dir=job_dir) if server is not None else None)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        if metrics_server is not None:
            log.info("metrics (main and job processes) on port %d", metrics_server.start())
        if supervisor is not None:
            await supervisor.start()
        await stop.wait()
        log.info("stop requested")
        await app.health.set("", NOT_SERVING)
        if supervisor is not None:
            await supervisor.drain_and_close(settings.drain_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if supervisor is not None and not supervisor.stopping:
            await supervisor.drain_and_close(None)
        await app.stop()
        if metrics_server is not None:
            metrics_server.stop()
