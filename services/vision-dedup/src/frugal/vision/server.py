"""gRPC wiring of the vision-dedup service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import grpc
from redis.exceptions import RedisError

from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.common.cost_events import CostEventProducer
from frugal.common.grpc_server import GrpcApp, service_full_name
from frugal.common.pricing import PriceCatalog, PriceCatalogError, default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.tenancy import TenancyError, current_identity, validate_session_id
from frugal.vision import metrics
from frugal.vision.analysis import (
    AnalysisJob,
    Analyzer,
    GeminiVisionProvider,
    OfflineVisionProvider,
    StreamAnalyzer,
    VisionProvider,
)
from frugal.vision.config import Settings
from frugal.vision.context_store import ContextStore
from frugal.vision.dedup import Decision, DedupConfig, DedupTracker
from frugal.vision.frames import FrameError, FrameLimits, format_name, luma_thumbnail
from frugal.vision.phash import to_hex

SERVICE_NAME = service_full_name(vision_pb2.DESCRIPTOR, "VisionService")
log = logging.getLogger(__name__)

_DONE = object()


def error_kind(message: str) -> str:
    """Metric label of a malformed-frame message ("size mismatch: ..." -> "size_mismatch")."""
    head = message.split(":", 1)[0].strip().lower()
    return head.replace(" ", "_") if head in {"size mismatch", "oversized", "invalid size", "unknown format",
                                               "undecodable jpeg", "undecodable png", "missing frame"} else "other"


@dataclass(slots=True)
class _Track:
    tracker: DedupTracker
    start_ms: int
    clock_origin: float = field(default_factory=time.monotonic)
    frames: int = 0


class VisionServiceServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, settings: Settings, analyzer: Analyzer, store: ContextStore, executor: ThreadPoolExecutor
                 ) -> None:
        self._settings = settings
        self._dedup = settings.dedup_config()
        self._limits = FrameLimits(settings.max_frame_width, settings.max_frame_height, settings.max_frame_pixels)
        self._analyzer = analyzer
        self._store = store
        self._executor = executor

    # ------------------------------------------------------------------------------------ StreamFrames
    async def StreamFrames(self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
                           ) -> AsyncIterator[Any]:
        ident = current_identity()
        assert ident is not None and ident.tenant_id is not None and ident.session_id is not None
        tenant, session = ident.tenant_id, ident.session_id
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=self._settings.stream_buffer)

        async def emit_analysis(analysis: vision_pb2.FrameAnalysis) -> None:
            await out.put(vision_pb2.StreamFramesResponse(analysis=analysis))

        analyses = StreamAnalyzer(self._analyzer, tenant, session, ident.request_id, emit_analysis,
                                  maxsize=self._settings.vision_queue_size)
        tracks: dict[str, _Track] = {}
        stats = {"frames": 0, "kept": 0, "errors": 0}

        async def read() -> None:
            try:
                async for req in request_iterator:
                    verdict, job = await self._handle_frame(req, tenant, tracks, self._dedup)
                    stats["frames"] += 1
                    if verdict.kind == vision_pb2.VERDICT_KIND_KEPT:
                        stats["kept"] += 1
                    elif verdict.kind == vision_pb2.VERDICT_KIND_ERROR:
                        stats["errors"] += 1
                    await out.put(vision_pb2.StreamFramesResponse(verdict=verdict))
                    if job is not None:
                        analyses.submit(job)
                # The client half-closed: finish the analyses already paid for, then end the stream.
                await analyses.drain()
            finally:
                await out.put(_DONE)

        metrics.ACTIVE_STREAMS.inc()
        analyses.start()
        reader = asyncio.create_task(read(), name=f"vision-stream-{session}")
        try:
            while True:
                item = await out.get()
                if item is _DONE:
                    break
                yield item
            await reader  # re-raises a reader failure
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await analyses.aclose()
            metrics.ACTIVE_STREAMS.dec()
            log.info("stream ended: %d frames, %d kept, %d malformed, %d analysed, %d coalesced",
                     stats["frames"], stats["kept"], stats["errors"], analyses.analysed, analyses.coalesced)

    async def _handle_frame(self, req: Any, tenant: str, tracks: dict[str, _Track], cfg: DedupConfig
                            ) -> tuple[Any, AnalysisJob | None]:
        started = time.perf_counter()
        frame = req.frame
        verdict = vision_pb2.FrameVerdict(sequence=frame.sequence, track_id=frame.track_id,
                                          timestamp_ms=frame.timestamp_ms, distance=-1)
        fmt = format_name(int(frame.format))
        metrics.FRAMES_RECEIVED.labels(tenant=tenant, format=fmt).inc()
        if not req.HasField("frame"):
            return self._error(verdict, tenant, "missing frame: the request carries no frame", started), None
        track = tracks.get(frame.track_id)
        if track is None:
            track = _Track(DedupTracker(cfg), frame.timestamp_ms)
        t_ms = float(frame.timestamp_ms) if frame.timestamp_ms > 0 else (time.monotonic() - track.clock_origin) * 1000
        loop = asyncio.get_running_loop()
        try:
            decision, width, height = await loop.run_in_executor(self._executor, self._decide, track, frame, t_ms)
        except FrameError as err:
            return self._error(verdict, tenant, str(err), started), None
        except cv2.error as err:  # a decoder that raised instead of returning nothing
            msg = str(err).strip().splitlines()[-1][:200] if str(err).strip() else "decoder error"
            return self._error(verdict, tenant, f"undecodable {fmt.upper()}: {msg}", started), None
        tracks.setdefault(frame.track_id, track)
        track.frames += 1
        elapsed = time.perf_counter() - started
        metrics.HASH_SECONDS.labels(format=fmt).observe(elapsed)
        metrics.record_decision(tenant, decision.kept, decision.reason)
        x, y, w, h = decision.bbox
        verdict.kind = vision_pb2.VERDICT_KIND_KEPT if decision.kept else vision_pb2.VERDICT_KIND_SKIPPED
        verdict.reason = decision.reason
        verdict.hash = to_hex(decision.hash)
        verdict.distance = decision.distance
        verdict.changed_area = decision.changed_area
        verdict.change_x, verdict.change_y, verdict.change_width, verdict.change_height = x, y, w, h
        verdict.processing_ms = elapsed * 1000
        job = None
        if decision.kept:
            job = AnalysisJob(frame=frame, track_id=frame.track_id, sequence=frame.sequence,
                              timestamp_ms=frame.timestamp_ms, width=width, height=height, reason=decision.reason,
                              changed_area=decision.changed_area, bbox=decision.bbox, frames_seen=track.frames,
                              track_start_ms=track.start_ms)
        return verdict, job

    def _decide(self, track: _Track, frame: Any, t_ms: float) -> tuple[Decision, int, int]:
        thumb = luma_thumbnail(frame, self._limits, self._dedup.thumb_long_side)
        return track.tracker.decide(thumb, t_ms, user_speaking=frame.user_speaking), thumb.width, thumb.height

    def _error(self, verdict: Any, tenant: str, message: str, started: float) -> Any:
        metrics.FRAMES_ERROR.labels(tenant=tenant, kind=error_kind(message)).inc()
        verdict.kind = vision_pb2.VERDICT_KIND_ERROR
        verdict.reason = f"malformed: {message}"
        verdict.processing_ms = (time.perf_counter() - started) * 1000
        return verdict

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
        raise SystemExit(f"config error: {err}") from err
    redis = create_redis(settings.redis_url)
    producer = CostEventProducer(redis)
    store = ContextStore(redis, size=settings.context_size, ttl_s=settings.context_ttl_seconds)
    analyzer = Analyzer(provider, catalog, producer, store, max_concurrency=settings.vision_max_concurrency,
                        timeout_s=settings.vision_timeout_seconds, executor=executor)
    app = GrpcApp(settings, services=[SERVICE_NAME])
    servicer = VisionServiceServicer(settings, analyzer, store, executor)
    vision_pb2_grpc.add_VisionServiceServicer_to_server(servicer, app.server)

    async def close() -> None:
        await analyzer.aclose()
        await producer.aclose()
        await redis.aclose()
        with contextlib.suppress(Exception):
            executor.shutdown(wait=False, cancel_futures=True)

    app.on_shutdown(close)
    return app
