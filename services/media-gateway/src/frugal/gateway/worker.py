"""The LiveKit worker: one `AgentSession` per room job, for rooms that belong to a known tenant.

Job requests are screened in the worker process (`on_request`: billing `ResolveTenant`, unknown rooms are
rejected); the job itself resolves the tenant again before it connects, so nothing runs for an unknown room
even when a job is dispatched some other way.
"""

from __future__ import annotations

import asyncio
import json
import logging

from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobProcess, JobRequest, room_io, vad

from frugal.common.cost_events import CostEventProducer
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.settings import load_settings
from frugal.gateway import metrics
from frugal.gateway.agent import build_session, load_vad
from frugal.gateway.clients import MeshClients, TenantRejected
from frugal.gateway.config import Settings
from frugal.gateway.screen import ScreenShareManager

log = logging.getLogger(__name__)

_request_clients: MeshClients | None = None


def _settings() -> Settings:
    return load_settings(Settings)


def session_id_for(ctx_job_id: str) -> str:
    return ctx_job_id if ctx_job_id and ctx_job_id[0].isalnum() else f"job-{ctx_job_id}"


async def on_request(req: JobRequest) -> None:
    """Accepts only rooms of a tenant the registry knows."""
    global _request_clients
    settings = _settings()
    if _request_clients is None:
        _request_clients = MeshClients(settings)
    try:
        tenant = await _request_clients.resolve_tenant(req.room.name, session_id_for(req.id))
    except TenantRejected as err:
        metrics.JOBS.labels(outcome="rejected").inc()
        log.warning("job for room %r rejected: %s", req.room.name, err.reason)
        await req.reject()
        return
    metrics.JOBS.labels(outcome="accepted").inc()
    await req.accept(name="Frugal agent", metadata=json.dumps({"tenant_id": tenant.tenant_id}))


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = load_vad()


async def entrypoint(ctx: JobContext) -> None:
    settings = _settings()
    session_id = session_id_for(ctx.job.id)
    room_name = settings.console_room if ctx.is_fake_job() else ctx.job.room.name
    clients = MeshClients(settings)
    try:
        tenant = await clients.resolve_tenant(room_name, session_id)
    except TenantRejected as err:
        metrics.JOBS.labels(outcome="rejected").inc()
        log.warning("not joining room %r: %s", room_name, err.reason)
        await clients.aclose()
        ctx.shutdown(reason=f"rejected: {err.reason}")
        return

    redis = create_redis(settings.redis_url)
    producer = CostEventProducer(redis)
    cached = ctx.proc.userdata.get("vad")
    vad_model = cached if isinstance(cached, vad.VAD) else await asyncio.to_thread(load_vad)
    parts = build_session(settings, clients, tenant, session_id, vad_model=vad_model, producer=producer,
                          catalog=default_catalog(settings.price_catalog_path))
    screen: ScreenShareManager | None = None

    async def cleanup(_reason: str = "") -> None:
        if screen is not None:
            await screen.aclose()
        await parts.aclose()
        await producer.aclose()
        await redis.aclose()
        await clients.aclose()
        metrics.ACTIVE_SESSIONS.dec()

    metrics.ACTIVE_SESSIONS.inc()
    ctx.add_shutdown_callback(cleanup)
    log.info("session %s for tenant %s in room %s (%s)", session_id, tenant.tenant_id, room_name,
             "; ".join(parts.notes))
    if ctx.is_fake_job():
        # Console: the console owns the audio/text I/O; there is no room and no screen share.
        await parts.session.start(agent=parts.agent)
        return

    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    screen = ScreenShareManager(
        ctx.room, clients.vision, tenant_id=tenant.tenant_id, session_id=session_id,
        active_fps=settings.active_fps, idle_fps=settings.idle_fps, camera_enabled=settings.camera_enabled,
        max_width=settings.max_frame_width, backoff_min_s=settings.vision_reconnect_min_s,
        backoff_max_s=settings.vision_reconnect_max_s,
    )
    manager = screen
    parts.session.on("user_state_changed", lambda ev: manager.set_speaking(ev.new_state == "speaking"))
    screen.attach()
    # Text chat in the room (lk.chat) is answered too: RoomIO's text input is on by default; the session's
    # built-in video input stays off (it only feeds realtime models; the screen manager samples instead).
    await parts.session.start(
        agent=parts.agent, room=ctx.room,
        room_options=room_io.RoomOptions(text_input=True, video_input=False),
    )


def build_server(settings: Settings) -> AgentServer:
    server = AgentServer(
        ws_url=settings.livekit_url, api_key=settings.livekit_api_key, api_secret=settings.livekit_api_secret,
        setup_fnc=prewarm,
    )
    server.rtc_session(entrypoint, agent_name=settings.livekit_agent_name, on_request=on_request)
    return server
