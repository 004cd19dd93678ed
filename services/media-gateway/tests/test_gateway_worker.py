"""The real livekit-agents `AgentServer` run by the gateway's lifecycle (`lifecycle.serve`), with simulated jobs
(no LiveKit media server exists here): registration with a stand-in of LiveKit's worker websocket (a TEST DOUBLE
of the server side of the agent protocol: register, then record status updates), drain on SIGTERM with a live
session, health after the worker dies, tenancy from dispatch metadata, metrics of a job process on /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from livekit.agents import AgentServer, JobContext
from livekit.agents.job import JobAcceptArguments, RunningJobInfo
from livekit.protocol import agent as agent_proto
from livekit.protocol import models

from frugal.devkit.demo import synth
from frugal.devkit.devstack import free_port
from frugal.devkit.localmesh import scrape_metrics
from frugal.gateway import lifecycle, worker
from frugal.gateway.config import Settings
from frugal.gateway.replay.runner import ReplayAudioInput, SimulatedAudioOutput

TENANT = "org_lumen"
WAIT_S = 60.0  # safety net against a hang, never a measured assertion
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeLiveKit:
    """The server side of LiveKit's agent worker protocol, as far as registration and status go."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.registrations = 0
        self.attempts = 0
        # While set, a worker's register message is never answered (a LiveKit that accepts but does not admit).
        self.hold = False
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/agent", self._agent)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"ws://127.0.0.1:{self.port}"

    async def _agent(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        first = agent_proto.WorkerMessage()
        first.ParseFromString(await ws.receive_bytes())
        assert first.HasField("register")
        self.attempts += 1
        if self.hold:
            async for _ in ws:
                pass
            self._sockets.discard(ws)
            return ws
        self.registrations += 1
        reply = agent_proto.ServerMessage(register=agent_proto.RegisterWorkerResponse(worker_id="AW_test"))
        await ws.send_bytes(reply.SerializeToString())
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            m = agent_proto.WorkerMessage()
            m.ParseFromString(msg.data)
            if m.HasField("update_worker"):
                self.statuses.append(m.update_worker.status)
        self._sockets.discard(ws)
        return ws

    async def drop_connections(self) -> None:
        for ws in list(self._sockets):
            await ws.close()

    async def stop(self) -> None:
        """LiveKit goes away: sockets closed, nothing listens any more."""
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest_asyncio.fixture
async def livekit() -> AsyncIterator[FakeLiveKit]:
    fake = FakeLiveKit()
    await fake.start()
    yield fake
    await fake.stop()


async def health_status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(resp.status)


async def until(predicate: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def fake_job(job_id: str, room: str, *, metadata: str = "", room_metadata: str = "") -> RunningJobInfo:
    """What LiveKit would assign: a job with dispatch metadata, for a room (run without a media connection)."""
    job = agent_proto.Job(id=job_id, type=agent_proto.JobType.JT_ROOM, metadata=metadata,
                          room=models.Room(name=room, sid=f"RM_{job_id}", metadata=room_metadata))
    return RunningJobInfo(accept_arguments=JobAcceptArguments(identity="agent", name="", metadata=""), job=job,
                          url="", token="", worker_id="AW_test", fake_job=True)


@pytest.fixture
def gateway_env(monkeypatch: pytest.MonkeyPatch, mesh: dict[str, str], dead_addr: str, redis_url: str,
                tmp_path: Any) -> Callable[..., Settings]:
    """Environment the job reads its settings from (job threads/processes load them like production)."""
    env = {"BILLING_ADDR": mesh["billing"], "ROUTER_ADDR": mesh["router"], "VISION_ADDR": dead_addr,
           "RAG_ADDR": dead_addr, "REDIS_URL": redis_url, "TENANT_FROM_ROOM_NAME": "false", "WELCOME_MESSAGE": "",
           "LOG_FORMAT": "text"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(worker, "_request_clients", None)

    def make(url: str, **overrides: Any) -> Settings:
        base: dict[str, Any] = {"livekit_url": url, "livekit_api_key": "devkey", "livekit_api_secret": "secret" * 6,
                                "grpc_port": free_port(), "metrics_port": 0, "job_executor": "thread",
                                "idle_processes": 0, "worker_health_interval_s": 0.1,
                                "job_metrics_dir": str(tmp_path / "job-metrics"), "shutdown_delay_seconds": 0}
        base.update(overrides)
        return Settings(**base)

    return make


async def test_sigterm_drains_a_live_session_and_tenancy_comes_from_dispatch_metadata(
    livekit: FakeLiveKit, gateway_env: Callable[..., Settings]
) -> None:
    in_call = threading.Event()
    hang_up = threading.Event()
    seen: dict[str, Any] = {}

    async def call(ctx: JobContext) -> None:
        """The gateway's job (tenant, session, router) with a caller speaking a real WAV turn into it."""
        job = await worker.open_job(ctx)
        assert job is not None
        seen["tenant"] = job.tenant.tenant_id
        mic, speaker = ReplayAudioInput(), SimulatedAudioOutput(speed=10.0)
        session = job.parts.session
        session.input.audio, session.output.audio = mic, speaker
        job.parts.feed.push("How much is the Business plan?")
        await session.start(agent=job.parts.agent)
        pcm = synth.utterance(2.0, seed=11)
        for frame in pcm.frames(20):
            mic.push(frame)
            await asyncio.sleep(0.02)
        quiet = synth.to_pcm(np.zeros(320, np.float32))
        while not job.parts.llm.reports:
            mic.push(next(quiet.frames(20)))
            await asyncio.sleep(0.02)
        seen["report"] = job.parts.llm.reports[0]
        in_call.set()
        while not hang_up.is_set():  # the call goes on during the drain
            mic.push(next(quiet.frames(20)))
            await asyncio.sleep(0.05)
        seen["hung_up_while_draining"] = True
        await speaker.aclose()
        ctx.shutdown("caller hung up")

    settings = gateway_env(await livekit_url(livekit), drain_timeout_s=120)
    server = worker.build_server(settings, job_entrypoint=call)
    serving = asyncio.create_task(lifecycle.serve(settings, server=server))
    try:
        await until(lambda: health_is(settings.grpc_port, SERVING), "SERVING after registration")
        # A room whose name names no tenant: the signed dispatch metadata decides.
        await server._proc_pool.launch_job(fake_job("AJ_drain", "support-line", metadata='{"tenant_id": "org_lumen"}'))
        await until(in_call.is_set, "the caller's turn answered")
        assert seen["tenant"] == TENANT and seen["report"].ok
        assert seen["report"].text == "How much is the Business plan?"

        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: health_is(settings.grpc_port, NOT_SERVING), "NOT_SERVING on SIGTERM")
        await until(lambda: server.draining, "the worker draining")
        await until(lambda: agent_proto.WorkerStatus.WS_FULL in livekit.statuses, "LiveKit told: no more jobs")
        assert len(server.active_jobs) == 1 and not serving.done()  # the live call was not cut
        hang_up.set()
        await asyncio.wait_for(serving, WAIT_S)
        assert seen.get("hung_up_while_draining") is True
    finally:
        hang_up.set()
        if not serving.done():
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


async def livekit_url(fake: FakeLiveKit) -> str:
    return f"ws://127.0.0.1:{fake.port}"


async def health_is(port: int, status: int) -> bool:
    try:
        return await health_status(port) == status
    except grpc.aio.AioRpcError:
        return False


async def test_health_is_not_serving_when_the_worker_dies(
    livekit: FakeLiveKit, gateway_env: Callable[..., Settings]
) -> None:
    settings = gateway_env(await livekit_url(livekit), livekit_max_retry=1)
    server = worker.build_server(settings)
    stop = asyncio.Event()
    livekit.hold = True
    serving = asyncio.create_task(lifecycle.serve(settings, server=server, stop=stop))
    try:
        # Connected but not (yet) admitted by LiveKit: the worker runs, yet no job can reach it.
        await until(lambda: livekit.attempts >= 1, "the worker's register message")
        await until(lambda: health_is(settings.grpc_port, NOT_SERVING), "NOT_SERVING before registration")
        await asyncio.sleep(0.5)  # several health refreshes later: still NOT_SERVING
        assert await health_status(settings.grpc_port) == NOT_SERVING and not serving.done()
        livekit.hold = False
        await livekit.drop_connections()  # the worker reconnects and is admitted this time
        await until(lambda: health_is(settings.grpc_port, SERVING), "SERVING after registration")
        await livekit.stop()  # LiveKit unreachable: the worker retries, then gives up
        await until(lambda: health_is(settings.grpc_port, NOT_SERVING), "NOT_SERVING once unregistered")
        await until(lambda: server._connection_failed, "the worker giving up")
        await asyncio.sleep(0.3)  # several health refreshes later it still reports the dead worker
        assert await health_status(settings.grpc_port) == NOT_SERVING
        stop.set()
        await asyncio.wait_for(serving, WAIT_S)
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


async def test_metrics_of_a_job_process_are_on_the_gateway_metrics(
    livekit: FakeLiveKit, gateway_env: Callable[..., Settings]
) -> None:
    metrics_port = free_port()
    settings = gateway_env(await livekit_url(livekit), job_executor="process", metrics_port=metrics_port,
                           drain_timeout_s=1)
    server: AgentServer = worker.build_server(settings, job_metrics_dir=settings.job_metrics_dir)
    stop = asyncio.Event()
    serving = asyncio.create_task(lifecycle.serve(settings, server=server, stop=stop))
    try:
        await until(lambda: health_is(settings.grpc_port, SERVING), "SERVING after registration")
        before = await asyncio.to_thread(scrape_metrics, metrics_port)
        assert before.get("gateway_active_sessions", 0.0) == 0.0 and before["gateway_active_jobs"] == 0.0
        # The real entrypoint, in a job process: the session's gauge is set there, not here.
        await server._proc_pool.launch_job(fake_job("AJ_metrics", "desk", room_metadata='{"tenant_id": "org_lumen"}'))

        async def job_visible() -> bool:
            m = await asyncio.to_thread(scrape_metrics, metrics_port)
            return m.get("gateway_active_sessions") == 1.0 and m.get("gateway_active_jobs") == 1.0

        await until(job_visible, "the job process's session on /metrics")
        pids = {getattr(p, "pid", None) for p in server._proc_pool.processes}
        assert os.getpid() not in pids  # it really ran in another process
        stop.set()
        await asyncio.wait_for(serving, WAIT_S)
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


def test_the_unused_turn_detector_model_is_not_preloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """livekit-agents would load its ~240 MiB end-of-turn model into every job process; turn detection here
    is Silero VAD (TURN_HANDLING), so the worker switches the preload off."""
    from livekit.agents.ipc import _preload

    from frugal.gateway.agent import TURN_HANDLING

    monkeypatch.delenv(worker.PRELOAD_LOCAL_INFERENCE_ENV, raising=False)
    worker.build_server(Settings(grpc_port=0, metrics_port=0))
    assert os.environ[worker.PRELOAD_LOCAL_INFERENCE_ENV] == "0"
    assert _preload.ENV_PRELOAD_LOCAL_INFERENCE == worker.PRELOAD_LOCAL_INFERENCE_ENV  # the name livekit reads
    assert TURN_HANDLING["turn_detection"] == "vad"
