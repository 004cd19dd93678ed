"""The screen path as deployed, on a simulated clock: a LiveKit track at 5, 15 or 30 FPS -> the gateway's
`TrackSampler` (its rate cap and trailing edge) -> vision-dedup's `StreamCore` (the per-stream code the
server runs for every frame, and its quiet-time timers). Nothing is re-implemented here: only the clock
and the network are simulated (zero latency, every frame delivered).

A meaningful change at corpus time e is *caught within tol* when a frame showing it (captured at or after
e, before the next change) is sent to the model at a time in [e, e + tol). Kept frames that catch nothing
are *extra*. "Sent to the model" = kept by vision-dedup (the model keeps up; coalescing only lowers it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc

from frugal.api.vision.v1 import vision_pb2
from frugal.devkit.vision.corpus import FPS, CorpusFrame
from frugal.gateway.screen import FrameThrottle, TrackSampler, VisionFrameStreamer
from frugal.vision.dedup import DedupConfig
from frugal.vision.frames import FrameLimits
from frugal.vision.pipeline import StreamCore


def rgb_video_frame(rgb: np.ndarray) -> rtc.VideoFrame:
    h, w = rgb.shape[:2]
    rgba = np.empty((h, w, 4), dtype=np.uint8)
    rgba[:, :, :3] = rgb
    rgba[:, :, 3] = 255
    return rtc.VideoFrame(w, h, rtc.VideoBufferType.RGBA, rgba.tobytes())


class _Capture(VisionFrameStreamer):
    """The gateway's streamer with the network replaced by a direct hand-over."""

    def __init__(self, deliver: Callable[[vision_pb2.Frame], None]) -> None:
        self.track_id = "screen"
        self._deliver = deliver

    def offer(self, frame: vision_pb2.Frame) -> None:
        self._deliver(frame)


@dataclass(slots=True)
class Keep:
    at_ms: float  # when the frame went to the model
    index: int  # corpus frame it shows
    reason: str


@dataclass(slots=True)
class PathRun:
    scenario: str
    track_fps: int
    speaking: bool
    seconds: float
    events: list[tuple[int, str]]
    keeps: list[Keep]
    frames_sent: int
    cpu_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


class PathSim:
    """One track through the whole path; `feed` the 30 FPS corpus frames in order, then `finish`. Several
    simulations can share one pass over the frames (the corpus is rendered once)."""

    def __init__(self, *, track_fps: int, speaking: bool, active_fps: float = 5.0, idle_fps: float = 5.0,
                 max_width: int = 1280, config: DedupConfig | None = None, scenario: str = "") -> None:
        self.step = max(1, round(FPS / track_fps))
        self.track_fps, self.speaking, self.scenario = track_fps, speaking, scenario
        self.core = StreamCore(config or DedupConfig(), FrameLimits())
        self.keeps: list[Keep] = []
        self.events: list[tuple[int, str]] = []
        self.reasons: dict[str, int] = {}
        self._arrival: dict[str, float] = {}
        self.now_ms = 0.0
        self.sent = 0
        self.cpu = 0.0
        self._last = self._last_sent = 0
        throttle = FrameThrottle(active_fps, idle_fps)
        throttle.set_speaking(speaking)
        self.sampler = TrackSampler(_Capture(self._deliver), throttle, max_width=max_width)

    def _deliver(self, frame: vision_pb2.Frame) -> None:
        self.sent += 1
        c0 = time.thread_time()
        out = self.core.handle(vision_pb2.StreamFramesRequest(frame=frame), now=self.now_ms / 1000)
        self.cpu += time.thread_time() - c0
        self._arrival[frame.track_id] = self.now_ms
        if out.decision is not None:
            self.reasons[out.decision.reason] = self.reasons.get(out.decision.reason, 0) + 1
            if out.decision.kept:
                self.keeps.append(Keep(self.now_ms, round(frame.timestamp_ms * FPS / 1000), out.decision.reason))

    def _timer_at(self) -> tuple[float, str, float] | None:
        due = self.core.next_due()
        if due is None:
            return None
        tid, due_ms, last_ms = due
        return self._arrival.get(tid, self.now_ms) + max(0.0, due_ms - last_ms), tid, due_ms

    def _run_until(self, limit_ms: float) -> None:
        while True:
            held = self.sampler.due()
            timer = self._timer_at()
            cands = []
            if held is not None and held * 1000 < limit_ms:
                cands.append((held * 1000, "sampler"))
            if timer is not None and timer[0] < limit_ms:
                cands.append((timer[0], "timer"))
            if not cands:
                return
            at, what = min(cands)
            self.now_ms = at
            if what == "sampler":
                c0 = time.thread_time()
                self.sampler.flush(at / 1000 + 1e-9)
                self.cpu += time.thread_time() - c0
            else:
                assert timer is not None
                fired = self.core.fire(timer[1], timer[2])
                if fired is not None and fired.decision is not None and fired.job is not None:
                    idx = round(fired.job.frame.timestamp_ms * FPS / 1000)
                    key = "timer:" + fired.decision.reason
                    self.reasons[key] = self.reasons.get(key, 0) + 1
                    self.keeps.append(Keep(self.now_ms, idx, fired.decision.reason))

    def feed(self, f: CorpusFrame, video_frame: rtc.VideoFrame | None = None) -> None:
        if f.meaningful:
            self.events.append((f.index, f.note))
        self._last = f.index
        if f.index % self.step:
            return
        self._last_sent = f.index
        self._run_until(f.timestamp_ms)
        self.now_ms = f.timestamp_ms
        vf = video_frame if video_frame is not None else rgb_video_frame(f.rgb)
        c0 = time.thread_time()
        self.sampler.push(vf, at=f.timestamp_ms / 1000, timestamp_ms=f.timestamp_ms)
        self.cpu += time.thread_time() - c0

    def finish(self, tail_s: float = 3.0) -> PathRun:
        self._run_until((self._last + 1) * 1000 / FPS + tail_s * 1000)
        # A change after the track's last frame was never on the wire: it cannot be caught, nor counted.
        events = [e for e in self.events if e[0] <= self._last_sent]
        return PathRun(self.scenario, self.track_fps, self.speaking, (self._last + 1) / FPS, events, self.keeps,
                       self.sent, self.cpu, self.reasons)


def run_path(frames: Iterable[CorpusFrame], *, track_fps: int, speaking: bool, active_fps: float = 5.0,
             idle_fps: float = 5.0, max_width: int = 1280, config: DedupConfig | None = None,
             scenario: str = "", tail_s: float = 3.0) -> PathRun:
    sim = PathSim(track_fps=track_fps, speaking=speaking, active_fps=active_fps, idle_fps=idle_fps,
                  max_width=max_width, config=config, scenario=scenario)
    for f in frames:
        sim.feed(f)
    return sim.finish(tail_s)


def seed_rule_keeps(frames: Iterable[CorpusFrame], hash_fn: Callable[[CorpusFrame], Any],
                    distance: Callable[[Any, Any], int], *, fps: float = 1.0, threshold: int = 10) -> list[Keep]:
    """The seed's rule on the same frames: every frame at `fps`, keep when its pHash is more than
    `threshold` bits from the last kept one's."""
    step = max(1, round(FPS / fps))
    out: list[Keep] = []
    last: Any = None
    for f in frames:
        if f.index % step:
            continue
        h = hash_fn(f)
        if last is None or distance(h, last) > threshold:
            last = h
            out.append(Keep(float(f.timestamp_ms), f.index, "seed"))
    return out


@dataclass(frozen=True, slots=True)
class PathScore:
    events: int
    kept: int
    missed_1s: int
    missed_2_5s: int
    extra: int
    seconds: float
    missed_notes: tuple[str, ...] = ()

    @property
    def kept_per_minute(self) -> float:
        return self.kept * 60.0 / self.seconds if self.seconds else 0.0

    def __add__(self, other: PathScore) -> PathScore:
        return PathScore(self.events + other.events, self.kept + other.kept, self.missed_1s + other.missed_1s,
                         self.missed_2_5s + other.missed_2_5s, self.extra + other.extra,
                         self.seconds + other.seconds, self.missed_notes + other.missed_notes)


def score_path(events: Sequence[tuple[int, str]], keeps: Sequence[Keep], seconds: float, n_frames: int,
               label: str = "") -> PathScore:
    ev = sorted(events)
    useful: set[int] = set()

    def caught(n: int, tol_ms: float) -> int | None:
        e, _ = ev[n]
        nxt = ev[n + 1][0] if n + 1 < len(ev) else n_frames + 10**9
        e_ms = e * 1000 / FPS
        for j, k in enumerate(keeps):
            if e <= k.index < nxt and e_ms <= k.at_ms < e_ms + tol_ms:
                return j
        return None

    m1 = m25 = 0
    notes: list[str] = []
    for n in range(len(ev)):
        hit = caught(n, 2500.0)
        if hit is None:
            m25 += 1
            m1 += 1
            notes.append(f"{label} {ev[n][1]} at {ev[n][0] / FPS:.2f}s: not within 2.5 s")
            continue
        useful.add(hit)
        if caught(n, 1000.0) is None:
            m1 += 1
            notes.append(f"{label} {ev[n][1]} at {ev[n][0] / FPS:.2f}s: later than 1 s")
    return PathScore(len(ev), len(keeps), m1, m25, len(keeps) - len(useful), seconds, tuple(notes))


