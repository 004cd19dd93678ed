"""Scoring dedup policies on the labelled corpus (used by the tests and bench/vision).

A meaningful event at frame e is *caught* when the policy keeps a frame in [e, e + tolerance), not
later than the next event; otherwise it is *missed*. Kept frames that catch no event are *extra*.
Rates are per minute of screen share; reductions are against sending every frame at 1 FPS (60/min)
and at 30 FPS (1800/min).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from frugal.api.vision.v1 import vision_pb2
from frugal.devkit.vision.corpus import FPS, CorpusFrame, rgb_to_i420
from frugal.vision.dedup import DedupConfig, DedupTracker
from frugal.vision.frames import FrameLimits, luma_thumbnail


@dataclass(frozen=True, slots=True)
class Figures:
    scenario: str
    policy: str
    frames: int
    kept: int
    events: int
    missed: int
    extra: int
    missed_notes: tuple[str, ...] = ()

    @property
    def seconds(self) -> float:
        return self.frames / FPS

    @property
    def kept_per_minute(self) -> float:
        return self.kept * 60.0 / self.seconds if self.frames else 0.0

    @property
    def reduction_vs_1fps(self) -> float:
        return 1.0 - self.kept_per_minute / 60.0

    @property
    def reduction_vs_30fps(self) -> float:
        return 1.0 - self.kept_per_minute / (60.0 * FPS)


def score(scenario: str, policy: str, kept: Sequence[bool], labels: Sequence[bool],
          notes: Sequence[str] | None = None, tolerance_s: float = 1.0) -> Figures:
    if len(kept) != len(labels):
        raise ValueError("kept and labels differ in length")
    tol = int(round(tolerance_s * FPS))
    events = [i for i, m in enumerate(labels) if m]
    kept_idx = [i for i, k in enumerate(kept) if k]
    useful: set[int] = set()
    missed: list[str] = []
    for n, e in enumerate(events):
        end = min(e + tol, events[n + 1] if n + 1 < len(events) else len(kept))
        hit = next((j for j in kept_idx if e <= j < end), None)
        if hit is None:
            missed.append(f"frame {e} ({e / FPS:.2f}s): {notes[e] if notes else 'event'}")
        else:
            useful.add(hit)
    return Figures(scenario, policy, len(kept), len(kept_idx), len(events), len(missed),
                   len(kept_idx) - len(useful), tuple(missed))


def every_nth(n_frames: int, step: int) -> list[bool]:
    return [i % step == 0 for i in range(n_frames)]


def i420_frame(frame: CorpusFrame, *, track_id: str = "screen") -> Any:
    h, w = frame.rgb.shape[:2]
    return vision_pb2.Frame(format=vision_pb2.FRAME_FORMAT_I420, width=w, height=h, timestamp_ms=frame.timestamp_ms,
                            track_id=track_id, sequence=frame.index, data=rgb_to_i420(frame.rgb))


@dataclass(slots=True)
class DedupPolicy:
    """This service's decision, fed exactly as the server feeds it (I420 proto -> thumbnail -> tracker)."""

    config: DedupConfig = field(default_factory=DedupConfig)
    limits: FrameLimits = field(default_factory=FrameLimits)
    tracker: DedupTracker = field(init=False)
    reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tracker = DedupTracker(self.config)

    def __call__(self, frame: CorpusFrame) -> bool:
        thumb = luma_thumbnail(i420_frame(frame), self.limits, self.config.thumb_long_side)
        d = self.tracker.decide(thumb, frame.timestamp_ms)
        self.reasons.append(d.reason)
        return d.kept


@dataclass(slots=True)
class SeedRule:
    """The seed's rule: pHash of every frame, keep when the Hamming distance to the last kept frame is
    above the threshold (10). `hash_distance(a, b)` and `hash_fn(frame)` are injected so that the
    reference (imagehash, a dev dependency) stays out of the service code."""

    hash_fn: Callable[[CorpusFrame], Any]
    hash_distance: Callable[[Any, Any], int]
    threshold: int = 10
    last: Any = None
    hashes: list[Any] = field(default_factory=list)

    def __call__(self, frame: CorpusFrame) -> bool:
        h = self.hash_fn(frame)
        self.hashes.append(h)
        if self.last is None or self.hash_distance(h, self.last) > self.threshold:
            self.last = h
            return True
        return False


def run(frames: Iterable[CorpusFrame], policies: dict[str, Callable[[CorpusFrame], bool]]
        ) -> tuple[list[bool], list[str], dict[str, list[bool]]]:
    labels: list[bool] = []
    notes: list[str] = []
    kept: dict[str, list[bool]] = {name: [] for name in policies}
    for f in frames:
        labels.append(f.meaningful)
        notes.append(f.note)
        for name, policy in policies.items():
            kept[name].append(policy(f))
    return labels, notes, kept


def format_table(rows: Sequence[Figures]) -> str:
    head = (f"{'scenario':<17} {'policy':<10} {'frames':>6} {'kept':>5} {'kept/min':>8} {'vs 1fps':>8} "
            f"{'vs 30fps':>8} {'events':>6} {'missed':>6} {'extra':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.scenario:<17} {r.policy:<10} {r.frames:>6} {r.kept:>5} {r.kept_per_minute:>8.1f} "
            f"{r.reduction_vs_1fps:>7.1%} {r.reduction_vs_30fps:>8.1%} {r.events:>6} {r.missed:>6} {r.extra:>5}"
        )
    return "\n".join(lines)


def totals(rows: Sequence[Figures], policy: str) -> Figures:
    sel = [r for r in rows if r.policy == policy]
    return Figures("ALL", policy, sum(r.frames for r in sel), sum(r.kept for r in sel), sum(r.events for r in sel),
                   sum(r.missed for r in sel), sum(r.extra for r in sel),
                   tuple(n for r in sel for n in r.missed_notes))
