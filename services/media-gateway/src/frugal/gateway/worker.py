"""The LiveKit worker: one `AgentSession` per room job, for rooms that belong to a known tenant.

Tenancy: the tenant comes from the job's dispatch metadata, then the room's metadata (both written by a backend
holding the LiveKit API secret), then, when TENANT_FROM_ROOM_NAME allows it (development), the room-name
convention. Job requests are screened in the worker process (`on_request`, billing); the job resolves the tenant
again before it connects, so nothing runs for an unknown tenant even when a job is dispatched some other way.
A billing blip is retried with backoff, and a request still unanswered is declined without `terminate`, so
LiveKit offers the room to another worker instead of dropping it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from livekit.agents import (
    AgentServer,
    AutoSubscribe,
    JobContext,
    JobExecutorType,
    JobProcess,
    JobRequest,
    room_io,
    vad,
)
from redis.asyncio import Redis

from frugal.common.cost_events import CostEventProducer
from frugal.common.pricing import default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.settings import load_settings
from frugal.gateway import metrics, tts_cache
from frugal.gateway.agent import SessionParts, build_session, load_vad
from frugal.gateway.clients import JobTenancy, MeshClients, ResolvedTenant, TenantRejected
from frugal.gateway.config import Settings
from frugal.gateway.long_answers import CHAT_TOPIC
from frugal.gateway.screen import ScreenShareManager

log = logging.getLogger(__name__)

# livekit-agents preloads its local end-of-turn model (~240 MiB) into every job process unless told not to;
# the gateway's turn detection is Silero VAD (loaded in `prewarm`), so that model would never be used.
PRELOAD_LOCAL_INFERENCE_ENV = "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"

_request_clients: MeshClients | None = None


def _settings() -> Settings:
    return load_settings(Settings)


def session_id_for(ctx_job_id: str) -> str:
    return ctx_job_id if ctx_job_id and ctx_job_id[0].isalnum() else f"job-{ctx_job_id}"


def job_tenancy(room_name: str, job_metadata: str, room_metadata: str, *, fake_job: bool,
                settings: Settings) -> JobTenancy:
    if fake_job and not room_name.startswith("tenant_") and not job_metadata and not room_metadata:
        room_name = settings.console_room  # console: no real room, the configured console tenant
    return JobTenancy(room_name=room_name, job_metadata=job_metadata, room_metadata=room_metadata)


async def on_request(req: JobRequest) -> None:
    """Accepts only jobs of a tenant the registry knows."""
    global _request_clients
    settings = _settings()
    if _request_clients is None:
        _request_clients = MeshClients(settings)
    tenancy = job_tenancy(req.room.name, req.job.metadata, req.room.metadata, fake_job=False, settings=settings)
    try:
        tenant = await _request_clients.resolve_with_retry(tenancy, session_id_for(req.id))
    except TenantRejected as err:
        metrics.JOBS.labels(outcome="deferred" if err.transient else "rejected").inc()
        log.warning("job for room %r %s: %s", req.room.name, "deferred" if err.transient else "rejected",
                    err.reason)
        # Transient: another worker (or this one, later) may take it. Otherwise nobody should.
        await req.reject(terminate=not err.transient)
        return
    metrics.JOBS.labels(outcome="accepted").inc()
    await req.accept(name="Frugal agent", metadata=json.dumps({"tenant_id": tenant.tenant_id}))


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = load_vad()


@dataclass
class OpenJob:
    """A job whose tenant is resolved and whose session is built, not started yet."""

    ctx: JobContext
    settings: Settings
    clients: MeshClients
    tenant: ResolvedTenant
    session_id: str
    parts: SessionParts
    producer: CostEventProducer
    redis: Redis
    cache_redis: Redis | None = None
    screen: ScreenShareManager | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self, _reason: str = "") -> None:
        if self.screen is not None:
            await self.screen.aclose()
        # The session first: closing it flushes the STT/TTS streams, whose final usage is reported then, while
        # the cost meter still listens; the meter then sends what it holds before Redis is closed.
        await self.parts.aclose()
        await self.producer.aclose()
        await self.redis.aclose()
        if self.cache_redis is not None:
            await self.cache_redis.aclose()
        await self.clients.aclose()
        metrics.ACTIVE_SESSIONS.dec()


def tts_cache_redis(settings: Settings, cache: tts_cache.TtsCacheSettings) -> Redis | None:
    """The TTS audio cache's Redis: the cache Redis (REDIS_URL), so a tenant's greeting and fixed phrases outlive
    this job's process. Never the persistent, noeviction cost-events Redis: audio there could crowd out cost
    events, so when both URLs name one instance the cache stays in the process."""
    if not cache.enabled or cache.store != "redis":
        return None
    if settings.cost_redis_url == settings.redis_url:
        log.warning("TTS cache kept in-process: REDIS_URL is also the cost-events Redis (set COST_EVENTS_REDIS_URL)")
        return None
    return create_redis(settings.redis_url)


async def open_job(ctx: JobContext) -> OpenJob | None:
    """Resolves the job's tenant and builds its session; None (and the job shut down) when it is rejected."""
    settings = _settings()
    session_id = session_id_for(ctx.job.id)
    tenancy = job_tenancy(ctx.job.room.name, ctx.job.metadata, ctx.job.room.metadata,
                          fake_job=ctx.is_fake_job(), settings=settings)
    clients = MeshClients(settings)
    try:
        tenant = await clients.resolve_with_retry(tenancy, session_id)
    except TenantRejected as err:
        metrics.JOBS.labels(outcome="rejected").inc()
        log.warning("not joining room %r: %s", tenancy.room_name, err.reason)
        await clients.aclose()
        ctx.shutdown(reason=f"rejected: {err.reason}")
        return None

    redis = create_redis(settings.cost_redis_url)  # the job's Redis only carries its cost events
    producer = CostEventProducer.from_settings(settings, redis)
    cached = ctx.proc.userdata.get("vad")
    vad_model = cached if isinstance(cached, vad.VAD) else await asyncio.to_thread(load_vad)
    cache_redis = tts_cache_redis(settings, tts_cache.TtsCacheSettings())
    parts = build_session(settings, clients, tenant, session_id, vad_model=vad_model, producer=producer,
                          catalog=default_catalog(settings.price_catalog_path),
                          tts_store=tts_cache.RedisStore(cache_redis) if cache_redis is not None else None)
    job = OpenJob(ctx=ctx, settings=settings, clients=clients, tenant=tenant, session_id=session_id, parts=parts,
                  producer=producer, redis=redis, cache_redis=cache_redis)
    metrics.ACTIVE_SESSIONS.inc()
    ctx.add_shutdown_callback(job.aclose)
    log.info("session %s for tenant %s in room %s (%s)", session_id, tenant.tenant_id, tenancy.room_name,
             "; ".join(parts.notes))
    return job


async def join_room(job: OpenJob) -> None:
    """Connects to the room, samples its screen share and starts the session on the room's audio and chat."""
    ctx, settings, tenant = job.ctx, job.settings, job.tenant
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    room = ctx.room
    job.parts.long_answers.post = lambda text: room.local_participant.send_text(text, topic=CHAT_TOPIC)
    screen = ScreenShareManager(
        ctx.room, job.clients.vision, tenant_id=tenant.tenant_id, session_id=job.session_id,
        active_fps=settings.active_fps, idle_fps=settings.idle_fps, camera_enabled=settings.camera_enabled,
        max_width=settings.max_frame_width, backoff_min_s=settings.vision_reconnect_min_s,
        backoff_max_s=settings.vision_reconnect_max_s,
    )
    job.screen = screen
    job.parts.session.on("user_state_changed", lambda ev: screen.set_speaking(ev.new_state == "speaking"))
    screen.attach()
    # Text chat in the room (lk.chat) is answered too: RoomIO's text input is on by default; the session's
    # built-in video input stays off (it only feeds realtime models; the screen manager samples instead).
    await job.parts.session.start(
        agent=job.parts.agent, room=ctx.room,
        room_options=room_io.RoomOptions(text_input=True, video_input=False),
    )


async def entrypoint(ctx: JobContext) -> None:
    job = await open_job(ctx)
    if job is None:
        return
    if ctx.is_fake_job():
        # Console and simulated jobs: no room; the console (if any) owns the audio/text I/O.
        await job.parts.session.start(agent=job.parts.agent)
        return
    await join_room(job)


def build_server(
    settings: Settings,
    *,
    job_metrics_dir: str | None = None,
    job_entrypoint: Callable[[JobContext], Awaitable[None]] = entrypoint,
) -> AgentServer:
    os.environ.setdefault(PRELOAD_LOCAL_INFERENCE_ENV, "0")
    server = AgentServer(
        ws_url=settings.livekit_url, api_key=settings.livekit_api_key, api_secret=settings.livekit_api_secret,
        setup_fnc=prewarm, drain_timeout=settings.drain_timeout_s,
        job_executor_type=JobExecutorType(settings.job_executor), num_idle_processes=settings.idle_processes,
        host="127.0.0.1", port=settings.worker_http_port, prometheus_multiproc_dir=job_metrics_dir,
        max_retry=settings.livekit_max_retry,
    )
    server.rtc_session(job_entrypoint, agent_name=settings.livekit_agent_name, on_request=on_request)
    return server
