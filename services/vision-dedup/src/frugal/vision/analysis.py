"""Vision analysis of kept frames: providers (Gemini, offline), the coalescing queue, cost events.

- `GeminiVisionProvider`: the official `google-genai` SDK (async client), image part + short prompt; usage
  from the response's `usageMetadata` (thinking tokens are billed as output).
- `OfflineVisionProvider`: used when no GEMINI_API_KEY/GOOGLE_API_KEY is set (and as the fallback when a
  Gemini call fails). It says so in every description, reports `offline=True`, estimated usage, zero cost,
  and describes only what it can compute from the pixels: size, where and how much the screen changed,
  brightness, dominant colours. It never claims to have read the screen.
- `StreamAnalyzer`: one per StreamFrames call. A bounded queue of kept frames with one worker; when the
  model is slower than the stream and the queue is full, the oldest waiting frame is dropped in favour of
  the newest (its count goes into `coalesced_frames`).
- `Analyzer`: shared by all streams; runs a call (bounded concurrency), prices it, emits one cost event,
  stores the analysis in the session context (Redis) and returns it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from google import genai
from google.genai import types as gtypes
from redis.exceptions import RedisError

from frugal.api.common.v1 import common_pb2
from frugal.api.vision.v1 import vision_pb2
from frugal.common.cost_events import CostEvent, CostEventProducer, CostKind
from frugal.common.cost_recorder import CostRecorder
from frugal.common.metrics import AI_REQUESTS_TOTAL
from frugal.common.pricing import PriceCatalog, TierName
from frugal.common.usage import UsageAmounts
from frugal.vision import metrics
from frugal.vision.context_store import ContextStore
from frugal.vision.dedup import thumb_change
from frugal.vision.frames import encode_for_model, frame_to_bgr

log = logging.getLogger(__name__)

SERVICE = "vision-dedup"
OFFLINE_MODEL = "offline-vision"
# Gemini bills an image that fits in 384x384 as 258 tokens, larger ones per 768x768 tile.
IMAGE_TOKENS = 258
# System prompt + per-frame prompt, in tokens (about 4 characters each), when no usage was reported.
PROMPT_TOKENS_ESTIMATE = 150

SYSTEM_PROMPT = (
    "You describe one frame of a user's shared screen for a voice assistant that will answer the user's "
    "questions about it. Be factual and brief (at most 80 words): the application or page, the main "
    "content, and any text that matters (titles, numbers, code, error messages). Mention what changed "
    "when told where the change is. Never invent text you cannot read."
)


@dataclass(slots=True)
class AnalysisJob:
    frame: Any  # vision_pb2.Frame, already validated
    track_id: str
    sequence: int
    timestamp_ms: int
    width: int
    height: int
    reason: str
    changed_area: float
    bbox: tuple[int, int, int, int]
    # Frames of this track seen by dedup up to this one, and the track's first timestamp.
    frames_seen: int
    track_start_ms: int
    coalesced: int = 0
    # The frame's luma thumbnail: the change told to the model is measured from the last *analysed* frame
    # (frames kept in between may have been coalesced away).
    thumb: npt.NDArray[np.uint8] | None = None
    thumb_factor: int = 0
    # "analysed": changed_area/bbox are relative to the previous analysed frame of the track.
    relative_to: str = "kept"


@dataclass(frozen=True, slots=True)
class ProviderResult:
    description: str
    usage: UsageAmounts
    provider: str
    model: str
    offline: bool


class VisionProvider(Protocol):
    provider: str
    model: str
    offline: bool

    async def describe(self, job: AnalysisJob, previous: str | None) -> ProviderResult: ...

    async def aclose(self) -> None: ...


def _region_name(bbox: tuple[int, int, int, int], width: int, height: int, area: float) -> str:
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "nowhere"
    if area >= 0.5 or (w * h >= 0.8 * width * height):
        return "most of the screen"
    cx, cy = (x + w / 2) / width, (y + h / 2) / height
    row = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "middle")
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "center")
    return "the center" if (row, col) == ("middle", "center") else f"the {row}-{col}"


def change_sentence(job: AnalysisJob) -> str:
    if job.reason in ("first_frame", "resolution_changed") and job.relative_to != "analysed":
        return "This is the first frame analysed for this track."
    x, y, w, h = job.bbox
    since = "the previous analysed frame" if job.relative_to == "analysed" else "the previous kept frame"
    skipped = (f" {job.coalesced} kept frame(s) in between were not analysed (the model was busy)."
               if job.coalesced else "")
    if job.changed_area <= 0:
        return f"Nothing visible changed since {since} (reason: {job.reason}).{skipped}"
    area = f"{job.changed_area:.1%}" if job.changed_area >= 0.001 else "a small detail (under 0.1%)"
    return (
        f"Since {since} {area} of the screen changed, in "
        f"{_region_name(job.bbox, job.width, job.height, job.changed_area)} "
        f"(x={x}, y={y}, {w}x{h} px; reason: {job.reason}).{skipped}"
    )


_PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("white", (245, 245, 245)), ("light grey", (190, 190, 190)), ("grey", (128, 128, 128)),
    ("dark grey", (60, 60, 60)), ("black", (10, 10, 10)), ("red", (200, 40, 40)), ("orange", (240, 140, 30)),
    ("yellow", (235, 215, 50)), ("green", (50, 160, 70)), ("teal", (30, 140, 140)), ("blue", (40, 90, 200)),
    ("navy", (25, 35, 90)), ("purple", (130, 60, 170)), ("pink", (230, 120, 170)), ("brown", (120, 80, 40)),
)
_PALETTE_RGB = np.array([c for _, c in _PALETTE], dtype=np.float32)


def pixel_facts(frame: Any) -> tuple[float, list[tuple[str, float]]]:
    """Mean brightness in [0, 1] and the dominant palette colours (name, share) of a frame."""
    bgr = frame_to_bgr(frame)
    h, w = bgr.shape[:2]
    scale = min(1.0, 96 / max(w, h))
    small = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    rgb = small[:, :, ::-1].reshape(-1, 3).astype(np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    d = ((rgb[:, None, :] - _PALETTE_RGB[None, :, :]) ** 2).sum(axis=2)
    counts = np.bincount(d.argmin(axis=1), minlength=len(_PALETTE)) / len(rgb)
    top = [(_PALETTE[i][0], float(counts[i])) for i in np.argsort(-counts)[:3] if counts[i] >= 0.03]
    return float(luma.mean() / 255.0), top


class OfflineVisionProvider:
    """Local stand-in: pixel statistics only, clearly labelled, zero cost, usage estimated."""

    provider = "offline"
    model = OFFLINE_MODEL
    offline = True

    def __init__(self, executor: Executor | None = None, *, note: str = "no GEMINI_API_KEY/GOOGLE_API_KEY set") -> None:
        self._executor = executor
        self._note = note

    async def describe(self, job: AnalysisJob, previous: str | None, *, note: str | None = None) -> ProviderResult:
        loop = asyncio.get_running_loop()
        brightness, colours = await loop.run_in_executor(self._executor, pixel_facts, job.frame)
        tone = ("mostly light" if brightness >= 0.6 else
                "mostly dark" if brightness <= 0.35 else "mixed light and dark")
        colour_text = ", ".join(f"{name} {share:.0%}" for name, share in colours) or "no dominant colour"
        text = (
            f"[offline vision: {note or self._note}; pixel statistics only, the screen content was not read] "
            f"Frame {job.width}x{job.height}. {change_sentence(job)} The screen is {tone} "
            f"(mean brightness {brightness:.0%}); dominant colours: {colour_text}."
        )
        # What the real model would have been billed, marked as an estimate; offline calls cost nothing.
        usage = UsageAmounts(input_tokens=IMAGE_TOKENS + 90, output_tokens=len(text) // 4, images=1, requests=1,
                             estimated=True)
        return ProviderResult(text, usage, self.provider, self.model, True)

    async def aclose(self) -> None:
        return None


class GeminiVisionProvider:
    provider = "google"
    offline = False

    def __init__(self, api_key: str, model: str, *, base_url: str | None = None, timeout_s: float = 20.0,
                 max_output_tokens: int = 300, max_image_side: int = 768, executor: Executor | None = None) -> None:
        self.model = model
        self.max_output_tokens = max_output_tokens
        self._max_side = max_image_side
        self._executor = executor
        options = gtypes.HttpOptions(
            base_url=base_url, timeout=int(timeout_s * 1000), retry_options=gtypes.HttpRetryOptions(attempts=1)
        )
        self._client = genai.Client(api_key=api_key, http_options=options)

    async def describe(self, job: AnalysisJob, previous: str | None) -> ProviderResult:
        loop = asyncio.get_running_loop()
        image, mime, w, h = await loop.run_in_executor(self._executor, encode_for_model, job.frame, self._max_side)
        prompt = f"Shared screen frame ({job.width}x{job.height}, sent as {w}x{h}). {change_sentence(job)}"
        if previous:
            prompt += f" Previous description: {previous[:400]}"
        response = await self._client.aio.models.generate_content(
            model=self.model,
            contents=[gtypes.Content(role="user", parts=[gtypes.Part.from_bytes(data=image, mime_type=mime),
                                                         gtypes.Part.from_text(text=prompt)])],
            config=gtypes.GenerateContentConfig(
                system_instruction=SYSTEM_PROMPT,
                max_output_tokens=self.max_output_tokens,
                temperature=0.2,
                thinking_config=gtypes.ThinkingConfig(thinking_budget=0),
            ),
        )
        text = (response.text or "").strip()
        meta = response.usage_metadata
        if meta is not None and meta.prompt_token_count is not None:
            usage = UsageAmounts(
                input_tokens=meta.prompt_token_count or 0,
                output_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
                images=1, requests=1,
            )
        else:  # the API always reports usage; if it did not, say the numbers are ours
            usage = UsageAmounts(input_tokens=IMAGE_TOKENS + len(prompt) // 4, output_tokens=len(text) // 4,
                                 images=1, requests=1, estimated=True)
        return ProviderResult(text or "(the model returned no description)", usage, self.provider, self.model, False)

    async def aclose(self) -> None:
        await self._client.aio.aclose()


@dataclass(slots=True)
class _Slot:
    sem: asyncio.Semaphore
    users: int = 0  # holding or waiting


class TenantSlots:
    """At most `slots` concurrent holders per tenant. A tenant's semaphore lives only while someone holds or
    waits for it: a long-running service sees an unbounded number of tenants over its life."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    @contextlib.asynccontextmanager
    async def hold(self, tenant_id: str) -> AsyncIterator[None]:
        slot = self._slots.get(tenant_id)
        if slot is None:
            slot = self._slots[tenant_id] = _Slot(asyncio.Semaphore(self.slots))
        slot.users += 1
        try:
            async with slot.sem:
                yield
        finally:
            slot.users -= 1
            if not slot.users:
                del self._slots[tenant_id]


class Analyzer:
    """Runs analyses for every stream: bounded concurrency, pricing, cost events, context store."""

    def __init__(self, provider: VisionProvider, catalog: PriceCatalog, producer: CostEventProducer,
                 store: ContextStore, *, max_concurrency: int = 4, timeout_s: float = 20.0,
                 executor: Executor | None = None, tenant_share: float = 0.5,
                 breaker: CircuitBreaker | None = None, offline_priced_as: str | None = None) -> None:
        self.provider = provider
        self.catalog = catalog
        # The one offline rule: an offline analysis is priced as the vision model it stands in for (the
        # configured one; the catalog's standard tier by default).
        self.offline_priced_as = offline_priced_as or catalog.tier_model("standard")
        self.producer = producer
        self.recorder = CostRecorder(producer, catalog, service=SERVICE)
        self.store = store
        self.timeout_s = timeout_s
        self._fallback = OfflineVisionProvider(executor)
        self._sem = asyncio.Semaphore(max_concurrency)
        # No tenant may hold more than its share of the model slots: one tenant's burst (or a hung model
        # answering one tenant slowly) leaves slots for the others.
        self.tenant_slots = max(1, math.ceil(max_concurrency * tenant_share))
        self._per_tenant = TenantSlots(self.tenant_slots)
        self.breaker = breaker or CircuitBreaker()

    def _tier(self, model: str) -> TierName | None:
        return next((t for t, m in self.catalog.tiers.items() if m == model), None)

    async def analyse(self, job: AnalysisJob, *, tenant_id: str, session_id: str, request_id: str | None,
                      previous: str | None, covered_seconds: float, frames_considered: int
                      ) -> vision_pb2.FrameAnalysis:
        p = self.provider
        started = time.perf_counter()
        fallback_error: str | None = None
        async with self._per_tenant.hold(tenant_id), self._sem:
            unbillable = None if p.offline else self.recorder.why_not_spend()
            if unbillable is not None:
                # No paid call whose cost could not be recorded durably: the frame gets the labelled offline
                # description instead, as when the circuit is open.
                outcome = "cost_recording_unavailable"
                fallback_error = unbillable
                result = await self._fallback.describe(job, previous, note=f"{p.model} not called ({unbillable})")
            elif not p.offline and not self.breaker.allow():
                outcome = "circuit_open"
                fallback_error = f"circuit open after {self.breaker.failures} failed calls"
                result = await self._fallback.describe(job, previous, note=f"{p.model} not called ({fallback_error})")
            else:
                try:
                    result = await asyncio.wait_for(p.describe(job, previous), self.timeout_s)
                    outcome = "ok"
                    self.breaker.record(True)
                except asyncio.CancelledError:
                    if not p.offline:  # the request may have reached the provider: it is billed anyway
                        await asyncio.shield(self._emit_unfinished_attempt(job, tenant_id, session_id, request_id,
                                                                           "cancelled"))
                    raise
                except Exception as err:  # provider errors, timeouts: fall back to local facts, labelled as such
                    if p.offline:
                        raise
                    self.breaker.record(False)
                    fallback_error = f"{type(err).__name__}: {str(err)[:200]}" if str(err) else type(err).__name__
                    log.warning("vision call to %s failed, offline fallback: %s", p.model, fallback_error)
                    outcome = "timeout" if _is_timeout(err) else "error"
                    if outcome == "timeout":
                        await self._emit_unfinished_attempt(job, tenant_id, session_id, request_id, "timeout")
                    result = await self._fallback.describe(job, previous,
                                                           note=f"{p.model} call failed ({fallback_error})")
        elapsed = time.perf_counter() - started
        metrics.VISION_CALLS.labels(provider=p.provider, model=p.model, offline=str(p.offline).lower(),
                                    outcome=outcome).inc()
        metrics.VISION_CALL_SECONDS.labels(provider=p.provider, model=p.model).observe(elapsed)
        AI_REQUESTS_TOTAL.labels(service=SERVICE, kind="vision", provider=p.provider, model=p.model,
                                 outcome=outcome).inc()
        tier = self._tier(result.model)
        attributes = {"track_id": job.track_id, "sequence": str(job.sequence), "coalesced_frames": str(job.coalesced),
                      "reason": job.reason}
        if fallback_error is not None:
            attributes["fallback_from"] = p.model
            attributes["error"] = fallback_error
        event = await self._record_cost(result, tier=tier, tenant_id=tenant_id, session_id=session_id,
                                        request_id=request_id, job=job, covered_seconds=covered_seconds,
                                        frames_considered=frames_considered, attributes=attributes,
                                        stands_in_for=p.model if not p.offline else self.offline_priced_as)
        cost = event.cost_usd
        analysis = vision_pb2.FrameAnalysis(
            sequence=job.sequence,
            track_id=job.track_id,
            timestamp_ms=job.timestamp_ms,
            description=result.description,
            provider=common_pb2.ProviderInfo(provider=result.provider, model=result.model, offline=result.offline),
            usage=event.usage.to_proto(),
            cost_usd=cost,
            coalesced_frames=job.coalesced,
            completed_at_ms=int(time.time() * 1000),
        )
        offline = str(result.offline).lower()
        metrics.VISION_COST.labels(tenant=tenant_id, model=result.model, offline=offline).inc(cost)
        try:
            await self.store.add(tenant_id, session_id, analysis)
        except (RedisError, OSError) as err:
            log.error("could not store the analysis in the session context: %s", err)
        return analysis

    async def _record_cost(
        self, result: ProviderResult, *, tier: TierName | None, tenant_id: str, session_id: str,
        request_id: str | None, job: AnalysisJob, covered_seconds: float, frames_considered: int,
        attributes: dict[str, str], stands_in_for: str | None,
    ) -> CostEvent:
        """One cost event per vision call (frugal.common.cost_recorder: own id per attempt, the one offline
        rule: an offline analysis is priced at the list price of the model it stands in for)."""
        return await self.recorder.record(
            usage=result.usage, outcome="fallback" if "error" in attributes else "ok",
            tenant_id=tenant_id, kind=CostKind.VISION, provider=result.provider, model=result.model,
            key=(session_id, job.track_id, str(job.sequence), str(job.timestamp_ms)), session_id=session_id,
            request_id=request_id, tier=tier, offline=result.offline, priced_as=stands_in_for,
            covered_seconds=max(0.0, covered_seconds), frames_considered=max(0, frames_considered),
            attributes=attributes,
        )

    async def _emit_unfinished_attempt(self, job: AnalysisJob, tenant_id: str, session_id: str,
                                       request_id: str | None, how: str) -> None:
        """A call that timed out (or was cancelled) on our side reached the provider, which bills it: one
        cost event for that attempt, with estimated usage (the image, the prompt, and the output cap)."""
        p = self.provider
        usage = UsageAmounts(input_tokens=IMAGE_TOKENS + PROMPT_TOKENS_ESTIMATE,
                             output_tokens=int(getattr(p, "max_output_tokens", 300)), images=1, requests=1,
                             estimated=True)
        event = await self.recorder.record(
            usage=usage, outcome=how, tenant_id=tenant_id, kind=CostKind.VISION, provider=p.provider,
            model=p.model, key=(session_id, job.track_id, str(job.sequence), str(job.timestamp_ms), how),
            session_id=session_id, request_id=request_id, tier=self._tier(p.model), offline=False,
            attributes={"track_id": job.track_id, "sequence": str(job.sequence), "outcome": how,
                        "usage_basis": "estimated: no response (image + prompt estimate, output at the cap)"},
        )
        metrics.VISION_COST.labels(tenant=tenant_id, model=p.model, offline="false").inc(event.cost_usd)

    async def aclose(self) -> None:
        await self.provider.aclose()


def _is_timeout(err: BaseException) -> bool:
    # asyncio's and aiohttp's timeouts are TimeoutError; httpx's are not, but say so in their name.
    return isinstance(err, TimeoutError) or "Timeout" in type(err).__name__


class CircuitBreaker:
    """Stops calling a model that keeps failing: after `threshold` consecutive failures (errors, timeouts),
    calls are refused for `cooldown_s`; then one trial call at a time goes through until one succeeds."""

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        if self._trial or self.clock() - self._opened_at < self.cooldown_s:
            return False
        self._trial = True  # half-open: this one call decides
        return True

    def record(self, ok: bool) -> None:
        self._trial = False
        if ok:
            self.failures = 0
            if self._opened_at is not None:
                metrics.CIRCUIT_OPEN.set(0)
            self._opened_at = None
            return
        self.failures += 1
        if self.failures >= self.threshold:
            if self._opened_at is None:
                log.error("vision model failed %d times in a row: circuit open for %.0fs", self.failures,
                          self.cooldown_s)
            self._opened_at = self.clock()
            metrics.CIRCUIT_OPEN.set(1)


@dataclass(slots=True)
class _Coverage:
    timestamp_ms: int
    frames_seen: int


@dataclass(slots=True)
class StreamAnalyzer:
    """Per-stream queue of kept frames; coalesces to the newest when full; one worker."""

    analyzer: Analyzer
    tenant_id: str
    session_id: str
    request_id: str | None
    emit: Callable[[vision_pb2.FrameAnalysis], Awaitable[None]]
    maxsize: int = 1
    submitted: int = 0
    analysed: int = 0
    coalesced: int = 0
    _pending: collections.deque[AnalysisJob] = field(default_factory=collections.deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _busy: bool = False
    _coverage: dict[str, _Coverage] = field(default_factory=dict)
    # Per track: the last description and the thumbnail of the frame it describes.
    _previous: dict[str, tuple[str, npt.NDArray[np.uint8] | None]] = field(default_factory=dict)
    pixel_diff_threshold: int = 12
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._idle.set()
        self._task = asyncio.create_task(self._run(), name=f"vision-analysis-{self.session_id}")

    def submit(self, job: AnalysisJob) -> None:
        self.submitted += 1
        self._idle.clear()
        if len(self._pending) >= self.maxsize:
            dropped = self._pending.popleft()
            job.coalesced += dropped.coalesced + 1
            self.coalesced += 1
            metrics.COALESCED.labels(tenant=self.tenant_id).inc()
        else:
            metrics.QUEUE_DEPTH.inc()
        self._pending.append(job)
        self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Waits until every submitted frame was analysed (or coalesced), or the worker died."""
        while self._task is not None and not self._task.done() and (self._pending or self._busy):
            waiter = asyncio.ensure_future(self._idle.wait())
            try:
                await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._pending.popleft()
            metrics.QUEUE_DEPTH.dec()
            self._busy = True
            try:
                await self._process(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("vision analysis failed for frame %s of track %s", job.sequence, job.track_id)
            finally:
                self._busy = False

    async def _process(self, job: AnalysisJob) -> None:
        prev = self._coverage.get(job.track_id, _Coverage(job.track_start_ms, 0))
        covered = (job.timestamp_ms - prev.timestamp_ms) / 1000.0
        considered = job.frames_seen - prev.frames_seen
        self._coverage[job.track_id] = _Coverage(job.timestamp_ms, job.frames_seen)
        before = self._previous.get(job.track_id)
        if before is not None and job.thumb is not None:
            # What the model is told changed: since the frame it last described, not since the last kept
            # frame (which it may never have seen when frames were coalesced).
            job.changed_area, job.bbox = thumb_change(before[1], job.thumb, job.thumb_factor or 1, job.width,
                                                      job.height, self.pixel_diff_threshold)
            job.relative_to = "analysed"
        analysis = await self.analyzer.analyse(
            job, tenant_id=self.tenant_id, session_id=self.session_id, request_id=self.request_id,
            previous=before[0] if before else None, covered_seconds=covered, frames_considered=considered,
        )
        self._previous[job.track_id] = (analysis.description, job.thumb)
        self.analysed += 1
        await self.emit(analysis)

    def cancel(self) -> None:
        """Drops what waits and cancels the worker, without awaiting (safe in any cleanup path)."""
        metrics.QUEUE_DEPTH.dec(len(self._pending))
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        self.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
