"""The dedup decision: is this frame something a person would call new?

Works on the luma thumbnail of each frame (one pixel = the mean of a k x k block, k an integer so that
the thumbnail is ~160 px wide: 8x8 pixels at 720p) and keeps, per track:

- the last *kept* thumbnail and its pHash: the change map (thumbnail pixels that differ by more than
  `pixel_diff_threshold` levels), its area and bounding box, and the Hamming distance are measured
  against it;
- a per-pixel *anchor* that follows the frame only where it moved by more than the threshold: motion is
  measured against it, so slow drifts (a fade, a video's gradient) add up until they count;
- per pixel, how many separate changes it went through (at least `volatile_event_spacing_ms` apart, with
  no pause longer than `volatile_gap_ms`). A pixel with `volatile_min_events` such changes is *volatile*:
  a blinking cursor, a clock's digits, a small video, a status bar counter. Volatile pixels (and their
  `volatile_dilate` neighbourhood) are left out of the change map and of motion while they stay that way,
  as long as they cover at most `max_volatile_area` of the frame (beyond that it is real motion, such as
  a long scroll or a full-screen video);
- per tile (`tile_size` thumbnail pixels), when it last moved.

Decision, outside volatile pixels:
1. nothing changed since the last kept frame -> skip ("duplicate", or "periodic_change" when the only
   difference is in volatile pixels);
2. a large change (area >= `large_change_area`, or pHash distance > `phash_threshold`) is kept once the
   screen has been still for `fast_settle_ms` ("changed"), or as soon as everything outside a small
   still-moving region has settled (a window that opens with a video playing in it);
3. a small change (area >= `min_change_area`: a typed line, a number changed on a slide) is kept once
   the screen has been still for `settle_ms` ("detail_changed"); typing keeps the screen moving, so a
   line is taken when the typist pauses, not once per keystroke;
4. smaller changes are skipped ("small_change": a cursor blink or a clock tick not yet recognised as
   periodic);
5. while things move, frames are skipped ("scrolling" when a vertical shift explains the motion,
   "in_motion" otherwise, "settling" in the quiet time before a keep); continuous large motion still
   yields a frame every `max_stale_ms` ("motion_checkpoint"), every `max_stale_speaking_ms` while the
   user speaks (they may be talking about what is scrolling by).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from frugal.vision.frames import Thumbnail
from frugal.vision.phash import hamming, phash

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

_NEVER = -1e15  # "long ago", finite so that differences stay finite
KEPT_REASONS = ("first_frame", "resolution_changed", "changed", "detail_changed", "motion_checkpoint")
SKIPPED_REASONS = ("duplicate", "periodic_change", "small_change", "scrolling", "in_motion", "settling")


@dataclass(frozen=True, slots=True)
class DedupConfig:
    phash_threshold: int = 10
    pixel_diff_threshold: int = 12
    min_change_area: float = 0.0004
    large_change_area: float = 0.02
    settle_ms: int = 700
    fast_settle_ms: int = 100
    max_stale_ms: int = 3000
    max_stale_speaking_ms: int = 1500
    volatile_min_events: int = 2
    volatile_event_spacing_ms: int = 400
    volatile_gap_ms: int = 2200
    volatile_dilate: int = 1
    max_volatile_area: float = 0.15
    thumb_long_side: int = 160
    tile_size: int = 10
    # Scroll detection: largest vertical shift tried, in thumbnail rows.
    max_scroll_rows: int = 16


@dataclass(frozen=True, slots=True)
class Decision:
    kept: bool
    reason: str
    hash: int
    # Hamming distance to the last kept frame's pHash; -1 when there is none.
    distance: int
    # Changed fraction of the frame (outside volatile tiles) since the last kept frame.
    changed_area: float
    # Bounding box of that change, in frame pixels (x, y, width, height); zeros when nothing changed.
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    # Fraction of the frame covered by tiles currently treated as volatile.
    volatile_area: float = 0.0


@dataclass(slots=True)
class _Geometry:
    width: int
    height: int
    factor: int
    shape: tuple[int, int]
    tiles: tuple[int, int]
    tile_size: int
    tile_pixels: FloatArray
    tile_of_pixel: npt.NDArray[np.intp]
    # Zero-padded scratch buffer, a whole number of tiles in each direction.
    pad: npt.NDArray[np.float32]

    @classmethod
    def make(cls, thumb: Thumbnail, tile: int) -> _Geometry:
        h, w = thumb.pixels.shape
        ty, tx = -(-h // tile), -(-w // tile)
        ones = np.zeros((ty * tile, tx * tile), dtype=np.float64)
        ones[:h, :w] = 1.0
        counts = ones.reshape(ty, tile, tx, tile).sum(axis=(1, 3))
        rows = np.arange(h) // tile
        cols = np.arange(w) // tile
        index = (rows[:, None] * tx + cols[None, :]).astype(np.intp)
        return cls(thumb.width, thumb.height, thumb.factor, (h, w), (ty, tx), tile, counts / (h * w), index,
                   np.zeros((ty * tile, tx * tile), dtype=np.float32))

    def tiles_any(self, px: BoolArray) -> BoolArray:
        """Per tile: does any pixel of `px` fall in it (an exact box mean over whole tiles, > 0)."""
        h, w = self.shape
        self.pad[:h, :w] = px
        ty, tx = self.tiles
        out: BoolArray = cv2.resize(self.pad, (tx, ty), interpolation=cv2.INTER_AREA) > 0
        return out

    def expand(self, tiles: BoolArray) -> BoolArray:
        out: BoolArray = tiles.reshape(-1)[self.tile_of_pixel]
        return out

    def bbox(self, px: BoolArray) -> tuple[int, int, int, int]:
        rows = np.flatnonzero(px.any(axis=1))
        if rows.size == 0:
            return (0, 0, 0, 0)
        cols = np.flatnonzero(px.any(axis=0))
        k = self.factor
        x0, y0 = int(cols[0]) * k, int(rows[0]) * k
        x1 = min(self.width, (int(cols[-1]) + 1) * k)
        y1 = min(self.height, (int(rows[-1]) + 1) * k)
        return (x0, y0, x1 - x0, y1 - y0)


@dataclass(slots=True)
class DedupTracker:
    """Decision state of one video track. Not thread-safe: one frame at a time."""

    config: DedupConfig = field(default_factory=DedupConfig)
    _geo: _Geometry | None = None
    _kept: npt.NDArray[np.uint8] | None = None
    _kept_hash: int = 0
    _kept_t: float = 0.0
    _prev: npt.NDArray[np.uint8] | None = None
    _anchor: npt.NDArray[np.uint8] | None = None
    _last_t: float = _NEVER
    _last_motion_t: float = _NEVER
    _motion_run_start: float = _NEVER
    _tile_last_motion: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    _px_last_event: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    _px_events: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    frames: int = 0
    kept: int = 0
    _kernel: npt.NDArray[np.uint8] = field(init=False)

    def __post_init__(self) -> None:
        r = self.config.volatile_dilate
        self._kernel = np.ones((2 * r + 1, 2 * r + 1), dtype=np.uint8)

    def decide(self, thumb: Thumbnail, t_ms: float, *, user_speaking: bool = False) -> Decision:
        cfg = self.config
        self.frames += 1
        t = max(float(t_ms), self._last_t)
        self._last_t = t
        cur = thumb.pixels
        h = phash(cur)
        geo = self._geo
        if geo is None or self._kept is None or self._prev is None:
            return self._keep(thumb, cur, h, t, "first_frame", reset=True)
        if (geo.width, geo.height) != (thumb.width, thumb.height) or geo.shape != cur.shape:
            return self._keep(thumb, cur, h, t, "resolution_changed", reset=True)

        thr = cfg.pixel_diff_threshold
        prev = self._prev
        # Motion is measured against a per-pixel anchor that follows the frame only when a pixel moved by
        # more than the threshold: slow drifts (a fade, a video's gradient) accumulate until they count.
        anchor = self._anchor
        assert anchor is not None
        moved_px: BoolArray = cv2.absdiff(cur, anchor) > thr
        np.copyto(anchor, cur, where=moved_px)
        self._prev = cur
        moved_tiles = geo.tiles_any(moved_px)
        self._tile_last_motion[moved_tiles] = t
        # Recurrence per pixel: separate changes (>= volatile_event_spacing_ms apart) with no pause longer
        # than volatile_gap_ms. Pixels that changed volatile_min_events times are periodic or animated.
        gap = cfg.volatile_gap_ms
        idx = np.flatnonzero(moved_px)  # usually few pixels move: update only those
        if idx.size:
            last = self._px_last_event.ravel()
            counts = self._px_events.ravel()
            since = t - last[idx]
            c = np.where(since > gap, 0, counts[idx])
            event = since >= cfg.volatile_event_spacing_ms
            c[event] = np.minimum(c[event], 254) + 1
            counts[idx] = c
            last[idx[event]] = t
        vol_px = (self._px_events >= cfg.volatile_min_events) & (self._px_last_event >= t - gap)
        volatile_area = 0.0
        if vol_px.any():
            volatile: BoolArray = cv2.dilate(vol_px.view(np.uint8), self._kernel) > 0
            volatile_area = float(np.count_nonzero(volatile)) / volatile.size
            if volatile_area > cfg.max_volatile_area:
                volatile_area = 0.0

        raw_diff: BoolArray = cv2.absdiff(cur, self._kept) > thr
        if volatile_area > 0:
            diff = raw_diff & ~volatile
            moved_px &= ~volatile
        else:
            diff = raw_diff
        moving = bool(moved_px.any())
        if moving:
            if t - self._last_motion_t > cfg.settle_ms:
                self._motion_run_start = t
            self._last_motion_t = t
        still_ms = t - self._last_motion_t

        distance = hamming(h, self._kept_hash)
        n_changed = int(np.count_nonzero(diff))
        area = n_changed / diff.size
        if n_changed == 0:
            reason = "periodic_change" if raw_diff.any() else "duplicate"
            return Decision(False, reason, h, distance, 0.0, (0, 0, 0, 0), volatile_area)
        bbox = geo.bbox(diff)
        big = area >= cfg.large_change_area or distance > cfg.phash_threshold

        def keep(reason: str) -> Decision:
            self._kept, self._kept_hash, self._kept_t = cur, h, t
            self.kept += 1
            return Decision(True, reason, h, distance, area, bbox, volatile_area)

        if big and still_ms >= cfg.fast_settle_ms:
            return keep("changed")
        if not big and area >= cfg.min_change_area and still_ms >= cfg.settle_ms:
            return keep("detail_changed")
        if big and moving:
            recent = (t - self._tile_last_motion) < cfg.fast_settle_ms
            moving_area = float(geo.tile_pixels[recent].sum())
            if moving_area <= cfg.max_volatile_area:
                settled = diff & ~geo.expand(recent)
                if np.count_nonzero(settled) / diff.size >= cfg.large_change_area and \
                        t - self._motion_run_start >= cfg.fast_settle_ms:
                    return keep("changed")
        if not big and area < cfg.min_change_area:
            return Decision(False, "small_change", h, distance, area, bbox, volatile_area)
        stale_limit = cfg.max_stale_speaking_ms if user_speaking else cfg.max_stale_ms
        if big and moving and t - max(self._kept_t, self._motion_run_start) >= stale_limit:
            return keep("motion_checkpoint")
        if moving:
            reason = "scrolling" if self._looks_like_scroll(moved_px, cur, prev) else "in_motion"
        else:
            reason = "settling"
        return Decision(False, reason, h, distance, area, bbox, volatile_area)

    def _keep(self, thumb: Thumbnail, cur: npt.NDArray[np.uint8], h: int, t: float, reason: str,
              *, reset: bool) -> Decision:
        distance = -1 if self._geo is None or reason == "resolution_changed" else hamming(h, self._kept_hash)
        if reset:
            self._geo = _Geometry.make(thumb, self.config.tile_size)
            tiles = self._geo.tiles
            self._tile_last_motion = np.full(tiles, _NEVER)
            self._px_last_event = np.full(cur.shape, _NEVER)
            self._px_events = np.zeros(cur.shape, dtype=np.uint8)
            self._last_motion_t = _NEVER
            self._motion_run_start = _NEVER
        self._kept, self._kept_hash, self._kept_t, self._prev = cur, h, t, cur
        self._anchor = cur.copy()
        self.kept += 1
        return Decision(True, reason, h, distance, 1.0, (0, 0, thumb.width, thumb.height))

    def _looks_like_scroll(self, moved_px: BoolArray, cur: npt.NDArray[np.uint8],
                           prev: npt.NDArray[np.uint8]) -> bool:
        """Motion over a large area that a vertical shift of the previous thumbnail explains."""
        if np.count_nonzero(moved_px) < 0.05 * moved_px.size:
            return False
        rows = np.flatnonzero(moved_px.any(axis=1))
        cols = np.flatnonzero(moved_px.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        # Row-mean profiles of the moving region: a vertical scroll shifts the profile, other motion does not.
        a = cur[y0:y1, x0:x1].mean(axis=1)
        b = prev[y0:y1, x0:x1].mean(axis=1)
        n = a.shape[0]
        base = float(np.abs(a - b).mean())
        if base == 0 or n < 8:
            return False
        best = base
        for dy in range(1, min(self.config.max_scroll_rows, n // 2) + 1):
            best = min(best, float(np.abs(a[dy:] - b[:-dy]).mean()), float(np.abs(a[:-dy] - b[dy:]).mean()))
        return best < 0.5 * base
