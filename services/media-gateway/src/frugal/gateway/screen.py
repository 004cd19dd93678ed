"""Screen-share sampling: cap the frame rate, send frames to vision-dedup, survive its restarts.

Where the rate is set: here, and only as a cap (ACTIVE_FPS while the user speaks, IDLE_FPS otherwise, both
5 by default). Frames to vision-dedup are cheap (about a millisecond of CPU each); what costs is a vision
model call, and vision-dedup decides those. So the gateway sends enough frames for dedup's time rules to
work (a change is seen within 200 ms) and never drops the frame that shows where the screen came to rest:
a frame the cap rejects is held and sent when the cap allows, unless a newer one replaces it (a trailing
edge), so a share whose track stops delivering frames after a change (a static screen) still sends it.

Plain classes, usable without a LiveKit server: `FrameThrottle` (the cap), `LatestSlot` (a one-frame
mailbox: a sender that falls behind only ever gets the newest frame), `VisionFrameStreamer` (one
`StreamFrames` stream per track, reconnecting with backoff) and `TrackSampler` (frame in -> sent now, held,
or replaced). `ScreenShareManager` wires them to the screen-share tracks of an `rtc.Room`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc
import numpy as np
from livekit import rtc
from PIL import Image

from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.common.tenancy import REQUEST_ID_METADATA_KEY, SESSION_METADATA_KEY, TENANT_METADATA_KEY
from frugal.gateway import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class FrameThrottle:
    """At most `active_fps` frames per second while the user speaks, `idle_fps` otherwise.

    Times are seconds on any monotonic clock (wall clock live, the session timeline in replay).
    """

    def __init__(self, active_fps: float, idle_fps: float) -> None:
        if active_fps <= 0 or idle_fps <= 0:
            raise ValueError("frame rates must be positive")
        self.active_fps = active_fps
        self.idle_fps = idle_fps
        self.speaking = False
        self._last_sent: float | None = None

    @property
    def fps(self) -> float:
        return self.active_fps if self.speaking else self.idle_fps

    def set_speaking(self, speaking: bool) -> None:
        self.speaking = speaking

    def admit(self, now: float) -> bool:
        """True when a frame captured at `now` should be sent (and records it as sent)."""
        # A small tolerance keeps frames that arrive a hair early (capture jitter) on the target rate.
        if self._last_sent is None or now - self._last_sent >= (1.0 / self.fps) * 0.98:
            self._last_sent = now
            return True
        return False

    def next_slot(self) -> float:
        """The earliest time a frame would be admitted."""
        return 0.0 if self._last_sent is None else self._last_sent + (1.0 / self.fps) * 0.98


class LatestSlot(Generic[T]):
    """A one-item mailbox: `put` replaces an item not yet taken, so a slow consumer gets the newest."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._event = asyncio.Event()
        self._closed = False
        self.replaced = 0

    def close(self) -> None:
        """After the pending item (if any) is taken, `get` returns None."""
        self._closed = True
        self._event.set()

    def put(self, item: T) -> bool:
        """Returns True when an older item was dropped."""
        dropped = self._item is not None
        if dropped:
            self.replaced += 1
        self._item = item
        self._event.set()
        return dropped

    async def wait_item(self) -> bool:
        """Waits until an item is there (True) or the slot is closed and empty (False); takes nothing."""
        while self._item is None:
            if self._closed:
                return False
            self._event.clear()
            await self._event.wait()
        return True

    def take_nowait(self) -> T | None:
        item, self._item = self._item, None
        self._event.clear()
        return item

    async def get(self) -> T | None:
        """The newest item; None once closed and empty."""
        while self._item is None:
            if self._closed:
                return None
            self._event.clear()
            await self._event.wait()
        return self.take_nowait()


def i420_bytes(frame: rtc.VideoFrame, max_width: int = 0) -> tuple[int, int, bytes]:
    """The frame as tightly packed I420 (Y, U, V), scaled down to at most `max_width` wide.

    Scaling averages the source pixels each output pixel covers (area interpolation, Pillow's BOX filter):
    a one-pixel stroke fades but stays, where dropping every other pixel would remove it.
    """
    if frame.type != rtc.VideoBufferType.I420:
        frame = frame.convert(rtc.VideoBufferType.I420)
    w, h = frame.width, frame.height
    if not max_width or w <= max_width:
        return w, h, bytes(frame.data)
    cw, ch = (w + 1) // 2, (h + 1) // 2
    buf = np.frombuffer(frame.data, dtype=np.uint8)
    y = buf[: w * h].reshape(h, w)
    u = buf[w * h : w * h + cw * ch].reshape(ch, cw)
    v = buf[w * h + cw * ch : w * h + 2 * cw * ch].reshape(ch, cw)
    # Even output sizes keep the chroma planes exactly half the luma plane.
    nw = max(2, max_width - max_width % 2)
    nh = max(2, round(h * nw / w / 2) * 2)
    planes = [_area_resize(y, nw, nh), _area_resize(u, nw // 2, nh // 2), _area_resize(v, nw // 2, nh // 2)]
    return nw, nh, b"".join(planes)


def _area_resize(plane: np.ndarray, width: int, height: int) -> bytes:
    return Image.fromarray(np.ascontiguousarray(plane)).resize((width, height), Image.Resampling.BOX).tobytes()


@dataclass
class StreamStats:
    """Counters of one track's frames; `kept`/`skipped` are vision-dedup's verdicts."""

    offered: int = 0
    sent: int = 0
    dropped_behind: int = 0
    kept: int = 0
    skipped: int = 0
    errors: int = 0
    analyses: int = 0
    analyses_offline: int = 0
    analysis_cost_usd: float = 0.0
    streams_opened: int = 0
    failures: int = 0
    last_error: str = ""
    connected: bool = False
    verdict_reasons: dict[str, int] = field(default_factory=dict)
    kept_by_timer: int = 0
    unknown: int = 0


def verdict_kind_label(kind: int) -> str:
    """Metric label of a verdict kind; a value this build does not know (a newer server) is "unknown"."""
    try:
        return vision_pb2.VerdictKind.Name(kind).removeprefix("VERDICT_KIND_").lower()
    except ValueError:
        return "unknown"


VisionEventListener = Callable[[str, vision_pb2.StreamFramesResponse], None]


class VisionFrameStreamer:
    """One `StreamFrames` stream for one track. Frames are offered without blocking; the stream sends the
    newest one whenever it can. When vision-dedup is down or restarts, the stream is reopened with
    exponential backoff; frames offered meanwhile are dropped (voice never waits for vision)."""

    def __init__(
        self,
        stub: vision_pb2_grpc.VisionServiceAsyncStub,
        *,
        tenant_id: str,
        session_id: str,
        track_id: str,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 5.0,
        on_event: VisionEventListener | None = None,
    ) -> None:
        self.stub = stub
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.track_id = track_id
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.on_event = on_event
        self.stats = StreamStats()
        self._slot: LatestSlot[vision_pb2.Frame] = LatestSlot()
        self._task: asyncio.Task[None] | None = None
        self._finishing = False
        self._closed = False
        self._connected_event = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"vision-stream-{self.track_id}")
            self._task.add_done_callback(_log_task_failure)

    def offer(self, frame: vision_pb2.Frame) -> None:
        """Queue a frame for sending (replacing one that was not sent yet). Never blocks."""
        self.stats.offered += 1
        if self._closed or self._finishing:
            return
        if self._slot.put(frame):
            self.stats.dropped_behind += 1
            metrics.FRAMES_DROPPED.labels(reason="behind" if self.stats.connected else "vision_unavailable").inc()

    async def wait_connected(self, within_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), within_s)
        return self._connected_event.is_set()

    async def finish(self, within_s: float = 10.0) -> None:
        """Ends the request stream after the pending frame and waits for the last verdicts and analyses."""
        self._finishing = True
        self._slot.close()  # the request stream ends after the frame still pending, if any
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), within_s)
            except TimeoutError:
                log.warning("vision stream %s did not finish in %.1fs", self.track_id, within_s)
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((TENANT_METADATA_KEY, self.tenant_id), (SESSION_METADATA_KEY, self.session_id),
                (REQUEST_ID_METADATA_KEY, f"{self.session_id}:{self.track_id}:{self.stats.streams_opened}"[:128]))

    async def _run(self) -> None:
        backoff = self.backoff_min_s
        while not self._closed:
            got_response = False
            # A stream is opened when there is a frame to send: a static screen sends nothing for minutes,
            # and vision-dedup closes idle streams.
            if not await self._slot.wait_item():
                return  # closed with nothing left to send
            try:
                got_response = await self._one_stream()
                if self._finishing:
                    return
            except grpc.aio.AioRpcError as err:
                self.stats.failures += 1
                self.stats.last_error = f"{err.code().name}: {err.details()}"
                if self._finishing and err.code() is grpc.StatusCode.CANCELLED:
                    return
                log.warning("vision stream %s failed (%s); retrying in %.1fs", self.track_id, self.stats.last_error,
                            backoff, extra={"session_id": self.session_id})
            finally:
                self.stats.connected = False
                self._connected_event.clear()
            if self._finishing and not got_response:
                return  # vision is down at the end: nothing more will come back
            backoff = self.backoff_min_s if got_response else min(backoff * 2, self.backoff_max_s)
            # Frames that waited for a dead stream are stale: drop them instead of sending them late.
            if self._slot.take_nowait() is not None:
                self.stats.dropped_behind += 1
                metrics.FRAMES_DROPPED.labels(reason="vision_unavailable").inc()
            await asyncio.sleep(backoff)
            metrics.VISION_RECONNECTS.inc()

    async def _requests(self) -> AsyncIterator[vision_pb2.StreamFramesRequest]:
        while True:
            frame = await self._slot.get()
            if frame is None:
                return
            self.stats.sent += 1
            metrics.FRAMES_SENT.inc()
            yield vision_pb2.StreamFramesRequest(frame=frame)

    async def _one_stream(self) -> bool:
        """Runs one stream until it ends; True when the server answered at least once."""
        self.stats.streams_opened += 1
        call = self.stub.StreamFrames(self._requests(), metadata=self._metadata())
        got = False
        try:
            async for resp in call:
                if not got:
                    got = True
                    self.stats.connected = True
                    self._connected_event.set()
                self._handle(resp)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed or (task is not None and task.cancelling()):
                raise
            # grpc.aio reports a call it cancelled itself (e.g. the connection failed while the request
            # stream was being written) as CancelledError: a stream failure like any other.
            self.stats.failures += 1
            self.stats.last_error = "CANCELLED: stream cancelled by the gRPC client"
        finally:
            if not call.done():
                call.cancel()
        return got

    def _handle(self, resp: vision_pb2.StreamFramesResponse) -> None:
        kind = resp.WhichOneof("event")
        if kind == "verdict":
            v = resp.verdict
            if v.kind == vision_pb2.VERDICT_KIND_KEPT:
                self.stats.kept += 1
                if v.by_timer:  # keeps a frame an earlier verdict skipped: counted once, as kept
                    self.stats.skipped = max(0, self.stats.skipped - 1)
                    self.stats.kept_by_timer += 1
            elif v.kind == vision_pb2.VERDICT_KIND_SKIPPED:
                self.stats.skipped += 1
            elif v.kind == vision_pb2.VERDICT_KIND_ERROR:
                self.stats.errors += 1
            else:  # a kind added by a newer vision-dedup: counted, never fatal
                self.stats.unknown += 1
            reason = v.reason.split(":", 1)[0] or "?"
            self.stats.verdict_reasons[reason] = self.stats.verdict_reasons.get(reason, 0) + 1
            metrics.VERDICTS.labels(kind=verdict_kind_label(v.kind)).inc()
        elif kind == "analysis":
            a = resp.analysis
            self.stats.analyses += 1
            self.stats.analyses_offline += int(a.provider.offline)
            self.stats.analysis_cost_usd += a.cost_usd
        if self.on_event is not None:
            try:
                self.on_event(self.track_id, resp)
            except Exception:
                log.exception("vision event listener failed")


class TrackSampler:
    """Frames of one track in; the ones the rate cap admits go (as I420) to the track's streamer. A frame the
    cap rejects is held and sent at the next slot (`flush`), unless a newer frame replaces it first."""

    def __init__(
        self,
        streamer: VisionFrameStreamer,
        throttle: FrameThrottle,
        *,
        source: str = "screen_share",
        max_width: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.streamer = streamer
        self.throttle = throttle
        self.source = source
        self.max_width = max_width
        self.clock = clock
        self.received = 0
        self.throttled = 0
        self.sent_late = 0
        self._sequence = 0
        self._held: tuple[rtc.VideoFrame, float, int | None] | None = None

    def push(self, frame: rtc.VideoFrame, *, at: float | None = None, timestamp_ms: int | None = None) -> bool:
        """Offers the frame if the cap admits it at time `at` (default: the clock), else holds it (replacing
        a held one, which is then dropped). True when offered now."""
        now = self.clock() if at is None else at
        self.received += 1
        metrics.FRAMES_IN.labels(source=self.source).inc()
        if not self.throttle.admit(now):
            if self._held is not None:
                self.throttled += 1
                metrics.FRAMES_DROPPED.labels(reason="throttled").inc()
            self._held = (frame, now, timestamp_ms)
            return False
        if self._held is not None:  # superseded by this newer frame
            self.throttled += 1
            metrics.FRAMES_DROPPED.labels(reason="throttled").inc()
            self._held = None
        self._send(frame, now, timestamp_ms)
        return True

    def due(self) -> float | None:
        """When the held frame (if any) may be sent."""
        return None if self._held is None else self.throttle.next_slot()

    def flush(self, now: float | None = None) -> bool:
        """Sends the held frame if its slot has come. True when one was sent."""
        now = self.clock() if now is None else now
        if self._held is None or not self.throttle.admit(now):
            return False
        frame, captured, timestamp_ms = self._held
        self._held = None
        self.sent_late += 1
        self._send(frame, captured, timestamp_ms)
        return True

    def _send(self, frame: rtc.VideoFrame, captured: float, timestamp_ms: int | None) -> None:
        self._sequence += 1
        width, height, data = i420_bytes(frame, self.max_width)
        self.streamer.offer(vision_pb2.Frame(
            format=vision_pb2.FRAME_FORMAT_I420, width=width, height=height,
            timestamp_ms=int(captured * 1000) if timestamp_ms is None else timestamp_ms,
            track_id=self.streamer.track_id, user_speaking=self.throttle.speaking, sequence=self._sequence,
            data=data,
        ))

    async def consume(self, frames: AsyncIterable[rtc.VideoFrame]) -> None:
        """Pushes every frame; while a frame is held, waits for the next one only until its slot comes."""
        it = frames.__aiter__()
        nxt: asyncio.Future[rtc.VideoFrame] | None = None
        try:
            while True:
                if nxt is None:
                    nxt = asyncio.ensure_future(it.__anext__())
                due = self.due()
                timeout = None if due is None else max(0.0, due - self.clock())
                done, _ = await asyncio.wait({nxt}, timeout=timeout)
                if not done:
                    self.flush()
                    continue
                try:
                    frame = nxt.result()
                except StopAsyncIteration:
                    self.flush(self.clock() + 3600)  # the track ended: what was held is its last frame
                    return
                nxt = None
                self.push(frame)
        finally:
            if nxt is not None and not nxt.done():
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)


async def video_frames(stream: rtc.VideoStream) -> AsyncIterator[rtc.VideoFrame]:
    async for event in stream:
        yield event.frame


class ScreenShareManager:
    """Samples every screen-share track of a room (and camera tracks when enabled)."""

    def __init__(
        self,
        room: rtc.Room,
        stub: vision_pb2_grpc.VisionServiceAsyncStub,
        *,
        tenant_id: str,
        session_id: str,
        active_fps: float,
        idle_fps: float,
        camera_enabled: bool = False,
        max_width: int = 0,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.room = room
        self.stub = stub
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.active_fps = active_fps
        self.idle_fps = idle_fps
        self.camera_enabled = camera_enabled
        self.max_width = max_width
        self.backoff = (backoff_min_s, backoff_max_s)
        self.speaking = False
        self.samplers: dict[str, TrackSampler] = {}
        self._readers: dict[str, tuple[asyncio.Task[None], rtc.VideoStream]] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def wanted(self, publication: rtc.RemoteTrackPublication) -> bool:
        if publication.kind != rtc.TrackKind.KIND_VIDEO:
            return False
        if publication.source == rtc.TrackSource.SOURCE_SCREENSHARE:
            return True
        return self.camera_enabled and publication.source == rtc.TrackSource.SOURCE_CAMERA

    def attach(self) -> None:
        self.room.on("track_published", self._on_published)
        self.room.on("track_subscribed", self._on_subscribed)
        self.room.on("track_unsubscribed", self._on_unsubscribed)
        for participant in self.room.remote_participants.values():
            for pub in participant.track_publications.values():
                self._on_published(pub, participant)
                if pub.track is not None and pub.subscribed:
                    self._on_subscribed(pub.track, pub, participant)

    def set_speaking(self, speaking: bool) -> None:
        self.speaking = speaking
        for sampler in self.samplers.values():
            sampler.throttle.set_speaking(speaking)

    def _on_published(self, pub: rtc.RemoteTrackPublication, _participant: rtc.RemoteParticipant) -> None:
        # The job connects audio-only: video is subscribed here, and only what we sample.
        if self.wanted(pub) and not pub.subscribed:
            pub.set_subscribed(True)

    def _on_subscribed(self, track: rtc.Track, pub: rtc.RemoteTrackPublication, _p: rtc.RemoteParticipant) -> None:
        if not self.wanted(pub) or track.sid in self._readers:
            return
        streamer = VisionFrameStreamer(self.stub, tenant_id=self.tenant_id, session_id=self.session_id,
                                       track_id=track.sid, backoff_min_s=self.backoff[0], backoff_max_s=self.backoff[1])
        throttle = FrameThrottle(self.active_fps, self.idle_fps)
        throttle.set_speaking(self.speaking)
        source = "screen_share" if pub.source == rtc.TrackSource.SOURCE_SCREENSHARE else "camera"
        sampler = TrackSampler(streamer, throttle, source=source, max_width=self.max_width)
        # capacity=1: when this reader falls behind, Python keeps only the newest decoded frame.
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.I420, capacity=1)
        streamer.start()
        task = asyncio.create_task(sampler.consume(video_frames(stream)), name=f"screen-{track.sid}")
        task.add_done_callback(_log_task_failure)
        self.samplers[track.sid] = sampler
        self._readers[track.sid] = (task, stream)
        log.info("sampling %s track %s", source, track.sid, extra={"session_id": self.session_id})

    def _on_unsubscribed(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, _p: rtc.RemoteParticipant) -> None:
        entry = self._readers.pop(track.sid, None)
        sampler = self.samplers.pop(track.sid, None)
        if entry is not None and sampler is not None:
            task = asyncio.create_task(self._stop(entry[0], entry[1], sampler), name=f"screen-stop-{track.sid}")
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _stop(self, task: asyncio.Task[None], stream: rtc.VideoStream, sampler: TrackSampler) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await stream.aclose()
        await sampler.streamer.aclose()

    async def aclose(self) -> None:
        self.room.off("track_published", self._on_published)
        self.room.off("track_subscribed", self._on_subscribed)
        self.room.off("track_unsubscribed", self._on_unsubscribed)
        entries = [(self._readers.pop(sid), self.samplers.pop(sid)) for sid in list(self._readers)]
        await asyncio.gather(*(self._stop(t, s, sp) for (t, s), sp in entries), return_exceptions=True)
        await asyncio.gather(*self._stopping, return_exceptions=True)


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
