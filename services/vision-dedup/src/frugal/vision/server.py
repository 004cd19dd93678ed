"""gRPC wiring of the vision-dedup service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from redis.exceptions import RedisError

from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.common.cost_events import CostEventProducer
from frugal.common.grpc_server import GrpcApp, service_full_name
from frugal.common.pricing import PriceCatalog, PriceCatalogError, default_catalog
from frugal.common.redis_client import aclose_cost_redis, create_cost_redis, create_redis
from frugal.common.service import StartupError
from frugal.common.tenancy import TenancyError, current_identity, validate_session_id
from frugal.vision import metrics
from frugal.vision.analysis import (
    Analyzer,
    CircuitBreaker,
    GeminiVisionProvider,
    OfflineVisionProvider,
    StreamAnalyzer,
    VisionProvider,
)
from frugal.vision.config import Settings
from frugal.vision.context_store import ContextStore
from frugal.vision.frames import FrameLimits, format_name
from frugal.vision.pipeline import Outcome, StreamCore

SERVICE_NAME = service_full_name(vision_pb2.DESCRIPTOR, "VisionService")
log = logging.getLogger(__name__)

_DONE = object()


def error_kind(message: str) -> str:
    """Metric label of a malformed-frame message ("size mismatch: ..." -> "size_mismatch")."""
    head = message.split(":", 1)[0].strip().lower()
    return head.replace(" ", "_") if head in {"size mismatch", "oversized", "invalid size", "unknown format",
                                               "undecodable jpeg", "undecodable png", "missing frame",
                                               "too many tracks", "invalid track"} else "other"


class VisionServiceServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, settings: Settings, analyzer: Analyzer, store: ContextStore, executor: ThreadPoolExecutor
                 ) -> None:
        self._settings = settings
        self._dedup = settings.dedup_config()
        self._limits = FrameLimits(settings.max_frame_width, settings.max_frame_height, settings.max_frame_pixels,
                                   settings.max_decode_pixels)
        self._analyzer = analyzer
        self._store = store
        self._executor = executor

    # ------------------------------------------------------------------------------------ StreamFrames
    async def StreamFrames(  # type: ignore[override]
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """A coroutine (responses go out with context.write), not a generator: its `finally` runs however the
        call ends (client gone, oversized message, idle timeout, shutdown), so nothing it counts leaks."""
        ident = current_identity()
        assert ident is not None and ident.tenant_id is not None and ident.session_id is not None
        tenant, session = ident.tenant_id, ident.session_id
        cfg = self._settings
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=cfg.stream_buffer)
        inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

        async def emit_analysis(analysis: vision_pb2.FrameAnalysis) -> None:
            await out.put(vision_pb2.StreamFramesResponse(analysis=analysis))

        core = StreamCore(self._dedup, self._limits, max_tracks=cfg.max_tracks_per_stream)
        analyses = StreamAnalyzer(self._analyzer, tenant, session, ident.request_id, emit_analysis,
                                  maxsize=cfg.vision_queue_size, pixel_diff_threshold=cfg.pixel_diff_threshold)
        stats = {"frames": 0, "kept": 0, "errors": 0, "timer": 0}
        arrived: dict[str, float] = {}  # track -> server time its last frame arrived

        async def read() -> None:
            # A failure (oversized message, client gone) ends this task with the error: the loop watches it.
            async for req in request_iterator:
                await inbox.put(req)
            await inbox.put(_DONE)

        async def write() -> None:
            while True:
                item = await out.get()
                if item is _DONE:
                    return
                await context.write(item)

        async def send(outcome: Outcome) -> None:
            if outcome.decision is not None:
                metrics.record_decision(tenant, outcome.decision.kept, outcome.decision.reason)
                metrics.HASH_SECONDS.labels(format=outcome.format).observe(outcome.verdict.processing_ms / 1000)
            elif outcome.error is not None:
                metrics.FRAMES_ERROR.labels(tenant=tenant, kind=error_kind(outcome.error)).inc()
            kind = outcome.verdict.kind
            stats["kept"] += kind == vision_pb2.VERDICT_KIND_KEPT
            stats["errors"] += kind == vision_pb2.VERDICT_KIND_ERROR
            await out.put(vision_pb2.StreamFramesResponse(verdict=outcome.verdict))
            if outcome.job is not None:
                analyses.submit(outcome.job)

        def next_timer() -> tuple[str, float, float] | None:
            """(track, sender ms it is due at, server time it fires) of the earliest quiet-time timer."""
            due = core.next_due()
            if due is None:
                return None
            tid, due_ms, last_ms = due
            return tid, due_ms, arrived.get(tid, loop.time()) + max(0.0, due_ms - last_ms) / 1000

        metrics.ACTIVE_STREAMS.inc()
        tracks_counted = 0
        reader = asyncio.create_task(read(), name=f"vision-read-{session}")
        writer = asyncio.create_task(write(), name=f"vision-write-{session}")
        analyses.start()
        last_frame_at = loop.time()
        getter: asyncio.Future[Any] | None = None
        try:
            while True:
                timer = next_timer()
                idle_left = last_frame_at + cfg.stream_idle_timeout_s - loop.time()
                wait = idle_left if timer is None else min(idle_left, timer[2] - loop.time())
                if getter is None:
                    getter = asyncio.ensure_future(inbox.get())
                watch: set[asyncio.Future[Any]] = {getter} if reader.done() else {getter, reader}
                done, _ = await asyncio.wait(watch, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    item = getter.result()
                    getter = None
                elif reader in done:
                    if reader.cancelled() or reader.exception() is not None:
                        # The call failed under us (an oversized message: grpc has already ended it with
                        # RESOURCE_EXHAUSTED; the client went away): nothing more can be sent.
                        err = None if reader.cancelled() else reader.exception()
                        log.info("stream of session %s ended by the transport: %s", session,
                                 f"{type(err).__name__}: {err}"[:300])
                        return
                    continue  # it ended normally: _DONE is in the inbox
                else:
                    if timer is not None and loop.time() >= timer[2] - 0.001:
                        # No further frame came: the pending change has been still for its quiet time.
                        fired = await loop.run_in_executor(self._executor, core.fire, timer[0], timer[1])
                        if fired is not None:
                            stats["timer"] += 1
                            await send(fired)
                        continue
                    if loop.time() - last_frame_at >= cfg.stream_idle_timeout_s:
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                            f"no frame for {cfg.stream_idle_timeout_s:g}s "
                                            "(STREAM_IDLE_TIMEOUT_S): stream closed; open a new one to send more")
                    continue
                if item is _DONE:
                    break
                last_frame_at = loop.time()
                metrics.FRAMES_RECEIVED.labels(tenant=tenant, format=format_name(int(item.frame.format))).inc()
                outcome = await loop.run_in_executor(self._executor, core.handle, item)
                stats["frames"] += 1
                if outcome.decision is not None:
                    arrived[item.frame.track_id] = loop.time()
                    if len(core.tracks) != tracks_counted:
                        metrics.TRACKS.inc(len(core.tracks) - tracks_counted)
                        tracks_counted = len(core.tracks)
                await send(outcome)
            # The client half-closed (the share or the recording ended): no frame will come to confirm or
            # replace what is pending, so each pending change is decided now, as its timer would have, and a
            # kept one is analysed before the stream ends.
            while (timer := next_timer()) is not None:
                fired = await loop.run_in_executor(self._executor, core.fire, timer[0], timer[1])
                if fired is None:
                    break
                stats["timer"] += 1
                await send(fired)
            await analyses.drain()
            await out.put(_DONE)
            await asyncio.wait({writer})
            if not writer.cancelled() and writer.exception() is not None:
                log.info("stream of session %s: the client is gone, last responses not delivered", session)
        finally:
            # Counted down before anything is awaited: a call cancelled again during cleanup skips the rest.
            metrics.TRACKS.dec(tracks_counted)
            metrics.ACTIVE_STREAMS.dec()
            analyses.cancel()
            pending = [t for t in (reader, writer, getter) if t is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await analyses.aclose()
            log.info("stream ended: %d frames, %d kept (%d by the quiet-time timer), %d malformed, %d analysed, "
                     "%d coalesced", stats["frames"], stats["kept"], stats["timer"], stats["errors"],
                     analyses.analysed, analyses.coalesced)

    # -------------------------------------------------------------------------------------- GetContext
    async def GetContext(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        ident = current_identity()
        assert ident is not None and ident.tenant_id is not None and ident.session_id is not None
        session = request.session_id or ident.session_id
        try:
            validate_session_id(session)
        except TenancyError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if request.limit < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be >= 0, got {request.limit}")
        try:
            analyses = await self._store.recent(ident.tenant_id, session, request.limit or None)
        except (RedisError, OSError) as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"context store unavailable: {err}")
        return vision_pb2.GetContextResponse(analyses=analyses)


def build_provider(settings: Settings, catalog: PriceCatalog, executor: ThreadPoolExecutor) -> VisionProvider:
    key = settings.api_key()
    if not key:
        log.warning("no GEMINI_API_KEY/GOOGLE_API_KEY: vision analyses come from the offline provider "
                    "(pixel statistics only, labelled offline)")
        return OfflineVisionProvider(executor)
    model = settings.vision_model or catalog.tier_model(settings.vision_tier)
    catalog.price(model)  # unknown model -> PriceCatalogError at start
    return GeminiVisionProvider(key, model, base_url=settings.gemini_base_url,
                                timeout_s=settings.vision_timeout_seconds,
                                max_output_tokens=settings.vision_max_output_tokens,
                                max_image_side=settings.vision_max_image_side, executor=executor)


async def build_app(settings: Settings) -> GrpcApp:
    try:
        catalog = PriceCatalog.load(settings.price_catalog_path) if settings.price_catalog_path else default_catalog()
        executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="vision")
        provider = build_provider(settings, catalog, executor)
    except PriceCatalogError as err:
        raise StartupError(f"price catalog: {err}") from err
    redis = create_redis(settings.redis_url)
    cost_redis = create_cost_redis(settings, redis)
    producer = CostEventProducer.from_settings(settings, cost_redis)
    store = ContextStore(redis, size=settings.context_size, ttl_s=settings.context_ttl_seconds)
    analyzer = Analyzer(provider, catalog, producer, store, max_concurrency=settings.vision_max_concurrency,
                        timeout_s=settings.vision_timeout_seconds, executor=executor,
                        tenant_share=settings.vision_tenant_share,
                        breaker=CircuitBreaker(settings.vision_breaker_failures, settings.vision_breaker_cooldown_s),
                        offline_priced_as=settings.vision_model or catalog.tier_model(settings.vision_tier))
    app = GrpcApp(settings, services=[SERVICE_NAME])
    servicer = VisionServiceServicer(settings, analyzer, store, executor)
    vision_pb2_grpc.add_VisionServiceServicer_to_server(servicer, app.server)

    async def close() -> None:
        await analyzer.aclose()
        await producer.aclose()
        await aclose_cost_redis(cost_redis, redis)
        await redis.aclose()
        with contextlib.suppress(Exception):
            executor.shutdown(wait=False, cancel_futures=True)

    app.on_shutdown(close)
    return app
