"""The frames of one StreamFrames call, without the gRPC and asyncio glue: verdicts, kept-frame jobs, timers.

`StreamCore` is what the server runs for every frame (in its executor) and whenever a track's quiet-time
timer fires; the bench drives the same class on a simulated clock. It bounds what one stream may hold: at
most `max_tracks` tracks, each holding its decision state and, while the quiet-time timer may still keep
it, the last frame seen (as received; dropped once kept, skipped or replaced).

Times: `t_ms` is the sender's capture time (`Frame.timestamp_ms`); frames without one are stamped with the
server's clock since the track began.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import cv2

from frugal.api.vision.v1 import vision_pb2
from frugal.vision.analysis import AnalysisJob
from frugal.vision.dedup import Decision, DedupConfig, DedupTracker
from frugal.vision.frames import FrameError, FrameLimits, Thumbnail, format_name, luma_thumbnail
from frugal.vision.phash import to_hex

MAX_TRACK_ID_LENGTH = 128
log = logging.getLogger(__name__)


@dataclass(slots=True)
class Track:
    tracker: DedupTracker
    start_ms: int
    clock_origin: float = field(default_factory=time.monotonic)
    frames: int = 0
    # The last frame seen, while the quiet-time timer may keep it (when no further frame comes). Only the
    # frame as received: the timer makes its thumbnail again if it keeps it (holding the thumbnail would
    # hold its detail image, and its luma plane a second copy of the frame's bytes).
    last_frame: Any = None
    last_t_ms: float = 0.0


@dataclass(slots=True)
class Outcome:
    """What one frame (or one timer) produced: the verdict to send and, when kept, the job for the model."""

    verdict: Any  # vision_pb2.FrameVerdict
    job: AnalysisJob | None
    decision: Decision | None
    format: str
    error: str | None = None


class StreamCore:
    """Per-stream decision state. Not thread-safe: the server calls it from one task at a time."""

    def __init__(self, config: DedupConfig, limits: FrameLimits, *, max_tracks: int = 4) -> None:
        self.config = config
        self.limits = limits
        self.max_tracks = max_tracks
        self.tracks: dict[str, Track] = {}

    # ------------------------------------------------------------------------------------------ frames
    def handle(self, req: Any, *, now: float | None = None) -> Outcome:
        """Decides one StreamFramesRequest. CPU work (decode, hash): run it off the event loop."""
        started = time.perf_counter()
        frame = req.frame
        verdict = vision_pb2.FrameVerdict(sequence=frame.sequence, track_id=frame.track_id,
                                          timestamp_ms=frame.timestamp_ms, distance=-1)
        fmt = format_name(int(frame.format))
        if not req.HasField("frame"):
            return self._error(verdict, fmt, "missing frame: the request carries no frame", started)
        if len(frame.track_id) > MAX_TRACK_ID_LENGTH:
            return self._error(verdict, fmt, f"invalid track: track_id longer than {MAX_TRACK_ID_LENGTH} characters",
                               started)
        track = self.tracks.get(frame.track_id)
        if track is None and len(self.tracks) >= self.max_tracks:
            return self._error(verdict, fmt, f"too many tracks: this stream already has {len(self.tracks)} "
                               f"(MAX_TRACKS_PER_STREAM={self.max_tracks}); frame of track "
                               f"{frame.track_id!r} ignored", started)
        clock = time.monotonic() if now is None else now
        if track is None:
            track = Track(DedupTracker(self.config), frame.timestamp_ms, clock_origin=clock)
        t_ms = float(frame.timestamp_ms) if frame.timestamp_ms > 0 else (clock - track.clock_origin) * 1000
        try:
            thumb = luma_thumbnail(frame, self.limits, self.config.thumb_long_side)
        except FrameError as err:
            return self._error(verdict, fmt, str(err), started)
        except cv2.error as err:  # a decoder that raised instead of returning nothing
            msg = str(err).strip().splitlines()[-1][:200] if str(err).strip() else "decoder error"
            return self._error(verdict, fmt, f"undecodable {fmt.upper()}: {msg}", started)
        decision = track.tracker.decide(thumb, t_ms, user_speaking=frame.user_speaking)
        self.tracks.setdefault(frame.track_id, track)
        track.frames += 1
        # Only a frame that may still be kept by the timer needs holding on to.
        pending = track.tracker.due_ms() is not None
        track.last_frame = frame if pending else None
        track.last_t_ms = t_ms
        return self._outcome(verdict, fmt, decision, frame, track, thumb, started)

    # ------------------------------------------------------------------------------------------ timers
    def next_due(self) -> tuple[str, float, float] | None:
        """(track id, due time on the sender's clock, that track's last frame time) of the earliest timer."""
        best: tuple[str, float, float] | None = None
        for tid, track in self.tracks.items():
            due = track.tracker.due_ms()
            if due is not None and track.last_frame is not None and (best is None or due < best[1]):
                best = (tid, due, track.last_t_ms)
        return best

    def fire(self, track_id: str, t_ms: float) -> Outcome | None:
        """The timer of `track_id` at sender time `t_ms`: keeps its last frame if it is still pending.
        CPU work when it keeps (the frame's thumbnail again): run it off the event loop."""
        track = self.tracks.get(track_id)
        due = None if track is None else track.tracker.due_ms()
        if track is None or track.last_frame is None or due is None or t_ms < due:
            return None
        started = time.perf_counter()
        frame = track.last_frame
        track.last_frame = None
        try:
            thumb = luma_thumbnail(frame, self.limits, self.config.thumb_long_side)
        except (FrameError, cv2.error) as err:  # it was decoded once: decoding is deterministic
            log.error("track %s: the held frame %d could not be decoded again (%s): not kept", track_id,
                      frame.sequence, err)
            track.tracker.discard_pending()
            return None
        decision = track.tracker.flush(t_ms, thumb)
        if decision is None:
            return None
        verdict = vision_pb2.FrameVerdict(sequence=frame.sequence, track_id=frame.track_id,
                                          timestamp_ms=frame.timestamp_ms, distance=-1, by_timer=True)
        return self._outcome(verdict, format_name(int(frame.format)), decision, frame, track, thumb, started)

    # ----------------------------------------------------------------------------------------- helpers
    def _outcome(self, verdict: Any, fmt: str, decision: Decision, frame: Any, track: Track, thumb: Thumbnail,
                 started: float) -> Outcome:
        x, y, w, h = decision.bbox
        verdict.kind = vision_pb2.VERDICT_KIND_KEPT if decision.kept else vision_pb2.VERDICT_KIND_SKIPPED
        verdict.reason = decision.reason
        verdict.hash = to_hex(decision.hash)
        verdict.distance = decision.distance
        verdict.changed_area = decision.changed_area
        verdict.change_x, verdict.change_y, verdict.change_width, verdict.change_height = x, y, w, h
        verdict.processing_ms = (time.perf_counter() - started) * 1000
        job = None
        if decision.kept:
            job = AnalysisJob(frame=frame, track_id=frame.track_id, sequence=frame.sequence,
                              timestamp_ms=frame.timestamp_ms, width=thumb.width, height=thumb.height,
                              reason=decision.reason, changed_area=decision.changed_area, bbox=decision.bbox,
                              frames_seen=track.frames, track_start_ms=track.start_ms, thumb=thumb.pixels,
                              thumb_factor=thumb.factor)
        return Outcome(verdict, job, decision, fmt)

    def _error(self, verdict: Any, fmt: str, message: str, started: float) -> Outcome:
        verdict.kind = vision_pb2.VERDICT_KIND_ERROR
        verdict.reason = f"malformed: {message}"
        verdict.processing_ms = (time.perf_counter() - started) * 1000
        return Outcome(verdict, None, None, fmt, error=message)
