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
- per tile (`tile_size` thumbnail pixels), when it last moved;
- the last kept frame's luma at the resolution it was sent, compressed in bands of rows. A detail pixel is
  the mean of a block of frame pixels; when an edit draws the new glyph over the old one's strokes (a 3
  becoming an 8, 28,336 becoming 80,336) the pixels that turned on and off share blocks and their means
  barely move. Where the detail image moved at all, the frame's own pixels are compared, so the count of
  changed pixels is the same whatever the block size (exactly the detail rule when the frame is ~640 wide).

Decision, outside volatile pixels:
1. nothing changed since the last kept frame -> skip ("duplicate", or "periodic_change" when the only
   difference is in volatile pixels);
2. a large change (area >= `large_change_area`, or pHash distance > `phash_threshold`) is kept once the
   screen has been still for `fast_settle_ms` ("changed"), or as soon as everything outside a small
   still-moving region has settled (a window that opens with a video playing in it);
3. a small change (area >= `min_change_area`: a typed line, a number changed on a slide; or at least
   `min_detail_pixels` pixels *of the frame as sent* that moved by more than `detail_diff_threshold`: one
   digit in a cell) is kept once the screen has been still for `settle_ms` ("detail_changed"); typing
   keeps the screen moving, so a line is taken when the typist pauses, not once per keystroke;
4. smaller changes are skipped ("small_change": a cursor blink or a clock tick not yet recognised as
   periodic);
5. while things move, frames are skipped ("scrolling" when a vertical shift explains the motion,
   "in_motion" otherwise, "settling" in the quiet time before a keep); continuous large motion still
   yields a frame every `max_stale_ms` ("motion_checkpoint"), every `max_stale_speaking_ms` while the
   user speaks (they may be talking about what is scrolling by).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from frugal.vision.frames import Thumbnail, u8
from frugal.vision.phash import hamming, phash

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

_NEVER = -1e15  # "long ago", finite so that differences stay finite
_GROUP_KERNEL = np.ones((7, 7), dtype=np.uint8)
# Longest wait for a next frame before the quiet-time timer keeps a pending change.
MAX_TIMER_WAIT_MS = 1000
# Longest volatile gap: per-pixel event ages are kept modulo 2**16 ticks of 16 ms (see _TICK_MS).
MAX_VOLATILE_GAP_MS = 300_000
KEPT_REASONS = ("first_frame", "resolution_changed", "changed", "detail_changed", "motion_checkpoint")
SKIPPED_REASONS = ("duplicate", "periodic_change", "small_change", "pointer_motion", "scrolling", "in_motion",
                   "settling")


@dataclass(frozen=True, slots=True)
class DedupConfig:
    phash_threshold: int = 10
    pixel_diff_threshold: int = 12
    min_change_area: float = 0.0004
    large_change_area: float = 0.02
    settle_ms: int = 500
    fast_settle_ms: int = 100
    max_stale_ms: int = 8000
    max_stale_speaking_ms: int = 4000
    volatile_min_events: int = 2
    volatile_event_spacing_ms: int = 250
    volatile_gap_ms: int = 2200
    volatile_dilate: int = 1
    max_volatile_area: float = 0.35
    thumb_long_side: int = 160
    tile_size: int = 10
    # Scroll detection: largest vertical shift tried, in thumbnail rows.
    max_scroll_rows: int = 16
    # Detail image (~640 px wide): a pixel there changed when it moved by more than this many levels...
    detail_diff_threshold: int = 40
    # ...and this many pixels of the frame as sent that moved by more than that are an edit worth a call (a
    # digit redrawn over another in 11 px text is ~20-40 of them). Counted on the detail image first; where
    # that falls short, at the frame's own resolution (block averages of overlapping strokes cancel out).
    min_detail_pixels: int = 12
    # Detail pixels that must move between two frames for the screen to count as moving.
    min_detail_motion: int = 3
    # Largest side (detail pixels) of a mouse pointer: a change that is only a sprite of at most this size
    # moving elsewhere is pointer motion.
    pointer_max_side: int = 24
    # A tile that has been moving for most of the last few seconds (a video, a video call tile) is left out
    # like a volatile pixel: activity = time-weighted share of frames in which it moved (time constant
    # active_tau_ms); active from active_threshold on.
    active_tau_ms: int = 4000
    active_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.volatile_gap_ms <= MAX_VOLATILE_GAP_MS:
            raise ValueError(f"volatile_gap_ms must be in (0, {MAX_VOLATILE_GAP_MS}], got {self.volatile_gap_ms}")

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
    # Kept by the quiet-time timer: no further frame came, the last one is the settled screen.
    by_timer: bool = False


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


def _mask_to_thumb(mask: BoolArray, shape: tuple[int, int]) -> BoolArray:
    """A detail-resolution mask reduced to the thumbnail: a thumbnail pixel is set when any of its block is."""
    h, w = shape
    if mask.shape == shape:
        return mask
    small: BoolArray = cv2.resize(mask.view(np.uint8) * np.uint8(255), (w, h), interpolation=cv2.INTER_AREA) > 0
    return small


def _mask_to_detail(mask: BoolArray, shape: tuple[int, int]) -> BoolArray:
    h, w = shape
    if mask.shape == shape:
        return mask
    big: BoolArray = cv2.resize(mask.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return big


# Band height (rows of the frame as sent) of the compressed kept luma: a small edit decompresses a few bands.
_NATIVE_BAND_ROWS = 32


@dataclass(frozen=True, slots=True)
class _NativeRef:
    """A luma plane kept compressed (zlib level 1, ~1-3 ms at 720p; a screen compresses 10-40x) in bands of
    rows, so that comparing one region decompresses only the bands it covers."""

    shape: tuple[int, int]
    bands: tuple[bytes, ...]

    @classmethod
    def of(cls, luma: npt.NDArray[np.uint8]) -> _NativeRef:
        h, w = luma.shape
        b = _NATIVE_BAND_ROWS
        return cls((h, w), tuple(zlib.compress(np.ascontiguousarray(luma[y : y + b]).tobytes(), 1)
                                 for y in range(0, h, b)))

    @property
    def nbytes(self) -> int:
        return sum(len(band) for band in self.bands)

    def rows(self, y0: int, y1: int) -> npt.NDArray[np.uint8]:
        b = _NATIVE_BAND_ROWS
        first, last = y0 // b, -(-y1 // b)
        raw = b"".join(zlib.decompress(self.bands[i]) for i in range(first, last))
        out: npt.NDArray[np.uint8] = np.frombuffer(raw, dtype=np.uint8).reshape(-1, self.shape[1])
        return out[y0 - first * b : y1 - first * b]


# Per-pixel event times are 16 ms ticks in a uint16 (modulo 2**16, ~17 min; half the memory of float32 ms):
# ages are differences modulo 2**16, kept unambiguous by re-ageing pixels whose last event is older than
# the volatile gap once _REFRESH_TICKS have passed (frames are at most a gap apart, or all pixels are
# re-aged): no age exceeds _REFRESH_TICKS + 2 gaps + 1 < 2**16 (the gap is at most 300 s = 18,750 ticks).
_TICK_MS = 16
_REFRESH_TICKS = 16384


@dataclass(slots=True)
class DedupTracker:
    """Decision state of one video track. Not thread-safe: one frame at a time.

    Times are the sender's milliseconds. Nothing depends on the frame rate: stillness is the time since the
    last frame that moved, a motion run is the frames that moved without a still frame between them, and a
    change that is still pending when frames stop coming is kept by `flush` once its quiet time is over
    (`due_ms` says when; the server runs the timer).
    """

    config: DedupConfig = field(default_factory=DedupConfig)
    _geo: _Geometry | None = None
    _kept: npt.NDArray[np.uint8] | None = None
    _kept_detail: npt.NDArray[np.uint8] | None = None
    # The kept frame's luma as sent, compressed (None: the detail image is the frame's resolution already).
    _kept_native: _NativeRef | None = None
    _kept_hash: int = 0
    _kept_t: float = 0.0
    # The last frame's thumbnail (its detail image is not held: the timer is given the frame's again).
    _prev: npt.NDArray[np.uint8] | None = None
    _prev_hash: int = 0
    _anchor: npt.NDArray[np.uint8] | None = None
    _anchor_detail: npt.NDArray[np.uint8] | None = None
    _last_t: float = _NEVER
    _frame_gap: float = 0.0
    _gap_ewma: float = 0.0
    _last_motion_t: float = _NEVER
    _prev_moving: bool = False
    _motion_run_start: float = _NEVER
    _run_frames: int = 0
    _tile_last_motion: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    _tile_activity: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    _tile_last_raw_motion: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    # Per detail pixel: tick of its last separate change (uint16, see _TICK_MS) and how many there were.
    _px_last_event: npt.NDArray[np.uint16] = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint16))
    _px_events: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    _t0: float = 0.0
    # Ticks since _t0 (offset so that a never-changed pixel, tick 0, is older than the gap) at the last frame
    # and at the last re-ageing.
    _tick: int = 0
    _refreshed_tick: int = 0
    # Pending change: (due time, reason it would be kept with, area, bbox) or None.
    _pending: tuple[float, str, float, tuple[int, int, int, int]] | None = None
    frames: int = 0
    kept: int = 0
    _kernel: npt.NDArray[np.uint8] = field(init=False)
    # volatile_dilate thumbnail pixels, in detail pixels.
    _kernel_d: npt.NDArray[np.uint8] = field(init=False)

    def __post_init__(self) -> None:
        r = self.config.volatile_dilate
        self._kernel = np.ones((2 * r + 1, 2 * r + 1), dtype=np.uint8)
        self._kernel_d = self._kernel

    @property
    def kept_thumbnail(self) -> npt.NDArray[np.uint8] | None:
        return self._kept

    def due_ms(self) -> float | None:
        """When the change seen last would be kept if no further frame arrives (sender ms), or None."""
        return None if self._pending is None else self._pending[0]

    def flush(self, t_ms: float, thumb: Thumbnail) -> Decision | None:
        """The quiet-time timer: no frame came since the last one, which shows a change that has now been
        still long enough. Keeps that last frame and returns the decision. The caller holds the frame and
        gives its thumbnail again (`thumb`, with its luma plane: holding the detail image and the luma of
        every frame that might be kept would cost more than making them again for the few that are)."""
        if self._pending is None or t_ms < self._pending[0] or self._prev is None or self._kept_detail is None:
            return None
        det = thumb.detail if thumb.detail is not None else thumb.pixels
        if thumb.pixels.shape != self._prev.shape or det.shape != self._kept_detail.shape:
            raise ValueError("flush: not the thumbnail of this track's last frame (its size differs)")
        _, reason, area, bbox = self._pending
        self._pending = None
        self._kept, self._kept_detail, self._kept_hash = self._prev, det, self._prev_hash
        self._kept_native = self._native_of(thumb)
        self._kept_t = self._last_t
        self.kept += 1
        return Decision(True, reason, self._prev_hash, 0, area, bbox, by_timer=True)

    def discard_pending(self) -> None:
        """Forgets the change the timer would keep (its frame cannot be used after all)."""
        self._pending = None

    @staticmethod
    def _native_of(thumb: Thumbnail) -> _NativeRef | None:
        """The compressed luma of a kept frame, when it is finer than the detail image."""
        if thumb.luma is None or thumb.detail is None or thumb.detail_factor <= thumb.luma_factor:
            return None
        return _NativeRef.of(thumb.luma)

    def decide(self, thumb: Thumbnail, t_ms: float, *, user_speaking: bool = False) -> Decision:
        self.frames += 1
        t = max(float(t_ms), self._last_t)
        self._frame_gap = t - self._last_t
        if self._last_t > _NEVER and self._frame_gap > 0:
            gap = min(self._frame_gap, float(MAX_TIMER_WAIT_MS))
            self._gap_ewma = gap if self._gap_ewma <= 0 else 0.7 * self._gap_ewma + 0.3 * gap
        self._last_t = t
        cur = thumb.pixels
        det = thumb.detail if thumb.detail is not None else cur
        h = phash(cur)
        geo = self._geo
        if geo is None or self._kept is None or self._prev is None or self._kept_detail is None:
            return self._keep(thumb, cur, det, h, t, "first_frame")
        if ((geo.width, geo.height) != (thumb.width, thumb.height) or geo.shape != cur.shape
                or self._kept_detail.shape != det.shape):
            return self._keep(thumb, cur, det, h, t, "resolution_changed")
        self._pending = None
        prev = self._prev
        assert self._anchor is not None and self._anchor_detail is not None
        return self._decide(thumb, cur, det, h, t, prev, user_speaking)

    def _decide(self, thumb: Thumbnail, cur: npt.NDArray[np.uint8], det: npt.NDArray[np.uint8], h: int,
                t: float, prev: npt.NDArray[np.uint8], user_speaking: bool) -> Decision:
        cfg = self.config
        geo = self._geo
        assert geo is not None and self._anchor is not None and self._anchor_detail is not None
        assert self._kept is not None and self._kept_detail is not None
        thr, thr_d = cfg.pixel_diff_threshold, cfg.detail_diff_threshold
        # Motion is measured against per-pixel anchors that follow the frame only where a pixel moved by more
        # than the threshold: slow drifts (a fade, a video's gradient) accumulate until they count.
        moved_px: BoolArray = cv2.absdiff(cur, self._anchor) > thr
        np.copyto(self._anchor, cur, where=moved_px)
        moved_d: BoolArray = cv2.absdiff(det, self._anchor_detail) > thr_d
        np.copyto(self._anchor_detail, det, where=moved_d)
        self._prev, self._prev_hash = cur, h

        # Recurrence per detail pixel: separate changes (>= volatile_event_spacing_ms apart) with no pause
        # longer than volatile_gap_ms. Pixels that changed volatile_min_events times are periodic or animated.
        gap = cfg.volatile_gap_ms // _TICK_MS
        now = self._advance_ticks(t, gap)
        changed_any = moved_d | _mask_to_detail(moved_px, det.shape)
        idx = np.flatnonzero(changed_any)  # usually few pixels move: update only those
        if idx.size:
            last = self._px_last_event.ravel()
            counts = self._px_events.ravel()
            since = now - last[idx]  # uint16: modulo 2**16
            c = np.where(since > gap, 0, counts[idx])
            event = since >= -(-cfg.volatile_event_spacing_ms // _TICK_MS)
            c[event] = np.minimum(c[event], 254) + 1
            counts[idx] = c
            last[idx[event]] = now
        # Activity is judged on all motion, periodic pixels included: a video is both.
        raw_moved_tiles = geo.tiles_any(moved_px | _mask_to_thumb(moved_d, cur.shape))
        vol_d = (self._px_events >= cfg.volatile_min_events) & ((now - self._px_last_event) <= gap)
        volatile_area = 0.0
        vol_t: BoolArray | None = None
        if vol_d.any():
            vol_d = cv2.dilate(vol_d.view(np.uint8), self._kernel_d) > 0
            volatile_area = float(np.count_nonzero(vol_d)) / vol_d.size
            if volatile_area > cfg.max_volatile_area:
                volatile_area = 0.0  # that much "periodic" change is real motion (a long scroll)
            else:
                vol_t = _mask_to_thumb(vol_d, cur.shape)
                moved_px &= ~vol_t
                moved_d &= ~vol_d

        moved_tiles = geo.tiles_any(moved_px | _mask_to_thumb(moved_d, cur.shape))
        # Tiles that keep moving (time-weighted share of frames that moved them, over ~active_tau_ms).
        w = 1.0 - float(np.exp(-max(self._frame_gap, 1.0) / cfg.active_tau_ms))
        self._tile_activity *= 1.0 - w
        self._tile_activity[raw_moved_tiles] += w
        self._tile_last_raw_motion[raw_moved_tiles] = t
        # Active while it keeps moving: a region that stopped (streamed output that finished) is visible again
        # after settle_ms, not after its activity has decayed.
        active = (self._tile_activity >= cfg.active_threshold) & (t - self._tile_last_raw_motion <= cfg.settle_ms)
        if active.any():
            active = cv2.dilate(active.view(np.uint8), np.ones((3, 3), np.uint8)) > 0
            if float(geo.tile_pixels[active].sum()) <= cfg.max_volatile_area:
                act_t = geo.expand(active)
                vol_t = act_t if vol_t is None else vol_t | act_t
                act_d = _mask_to_detail(act_t, det.shape)
                vol_d = act_d if volatile_area == 0 else vol_d | act_d
                volatile_area = float(np.count_nonzero(vol_d)) / vol_d.size
                moved_px &= ~act_t
                moved_d &= ~act_d
        raw_diff: BoolArray = cv2.absdiff(cur, self._kept) > thr
        diff = raw_diff & ~vol_t if vol_t is not None else raw_diff
        moving = bool(moved_px.any()) or int(np.count_nonzero(moved_d)) >= cfg.min_detail_motion
        self._tile_last_motion[moved_tiles] = t
        if moving:
            # A run of motion is the frames that moved with no still frame between them, however far apart.
            if not self._prev_moving:
                self._motion_run_start = t
                self._run_frames = 0
            self._run_frames += 1
            self._last_motion_t = t
        self._prev_moving = moving
        still_ms = t - self._last_motion_t

        distance = hamming(h, self._kept_hash)
        n_changed = int(np.count_nonzero(diff))
        area = n_changed / diff.size
        big = area >= cfg.large_change_area or distance > cfg.phash_threshold
        diff_d: BoolArray | None = None
        n_detail = n_native = 0
        raw_diff_d: BoolArray | None = None
        native_d: BoolArray | None = None
        if not big:
            absdiff_d = u8(cv2.absdiff(det, self._kept_detail))
            raw_diff_d = absdiff_d > thr_d
            diff_d = raw_diff_d & ~vol_d if volatile_area > 0 else raw_diff_d
            n_detail = int(np.count_nonzero(diff_d))
            if area < cfg.min_change_area and n_detail < cfg.min_detail_pixels:
                n_native, native_d = self._native_change(thumb, absdiff_d, vol_d if volatile_area > 0 else None)
        n_fine = max(n_detail, n_native)
        if n_changed == 0 and n_fine < cfg.min_detail_pixels:
            if raw_diff.any():
                reason = "periodic_change"
            else:
                reason = "small_change" if n_fine else "duplicate"
            return Decision(False, reason, h, distance, 0.0, (0, 0, 0, 0), volatile_area)
        if n_changed:
            bbox = geo.bbox(diff)
        else:
            bbox = self._detail_bbox(native_d if n_native > n_detail else diff_d, thumb)
        small = not big and (area >= cfg.min_change_area or n_fine >= cfg.min_detail_pixels)
        # Judged on the change before volatile masking: a pointer that slowed down as it came to rest has
        # made the pixels where it rests look periodic.
        if small and raw_diff_d is not None and self._pointer_only(raw_diff_d, det, self._kept_detail):
            return Decision(False, "pointer_motion", h, distance, area, bbox, volatile_area)

        def keep(reason: str) -> Decision:
            self._kept, self._kept_detail, self._kept_hash, self._kept_t = cur, det, h, t
            self._kept_native = self._native_of(thumb)
            self.kept += 1
            return Decision(True, reason, h, distance, area, bbox, volatile_area)

        if big and still_ms >= cfg.fast_settle_ms:
            return keep("changed")
        if small and still_ms >= cfg.settle_ms:
            return keep("detail_changed")
        if big and moving:
            # The change has settled while something elsewhere keeps moving (a video in a window that just
            # opened, before its tiles count as active): the part of the change
            # outside the moving region is most of it, and has not moved for the quiet time. "Keeps moving":
            # moved within the last fast_settle_ms, or in this frame when frames are sparser than that.
            window = max(float(cfg.fast_settle_ms), 1.5 * self._frame_gap)
            recent = (t - self._tile_last_motion) < window
            moving_area = float(geo.tile_pixels[recent].sum())
            if moving_area <= cfg.max_volatile_area and self._run_frames >= 2:
                chg = diff if diff_d is None else diff | _mask_to_thumb(diff_d, diff.shape)
                settled = chg & ~geo.expand(recent)
                n_settled, n_chg = int(np.count_nonzero(settled)), int(np.count_nonzero(chg))
                if n_chg and n_settled >= 0.5 * n_chg:
                    region = geo.tiles_any(settled)
                    region_still = t - float(self._tile_last_motion[region].max()) if region.any() else 0.0
                    if region_still >= cfg.fast_settle_ms:
                        return keep("changed")
        if not big and not small:
            return Decision(False, "small_change", h, distance, area, bbox, volatile_area)
        stale_limit = cfg.max_stale_speaking_ms if user_speaking else cfg.max_stale_ms
        if big and moving and t - max(self._kept_t, self._motion_run_start) >= stale_limit:
            return keep("motion_checkpoint")
        if moving:
            reason = "scrolling" if self._looks_like_scroll(moved_px, cur, prev) else "in_motion"
        else:
            reason = "settling"
        # Kept after the quiet time if the screen stays as it is, whether or not another frame comes.
        # The timer is for frames that stop coming, not for the gap to the next one: it waits at least 1.5
        # frame intervals (at most MAX_TIMER_WAIT_MS) past this frame.
        quiet = cfg.fast_settle_ms if big else cfg.settle_ms
        wait = min(float(MAX_TIMER_WAIT_MS), 1.5 * self._gap_ewma)
        due = max(self._last_motion_t + quiet, t + wait)
        self._pending = (due, "changed" if big else "detail_changed", area, bbox)
        return Decision(False, reason, h, distance, area, bbox, volatile_area)

    def _advance_ticks(self, t: float, gap: int) -> np.uint16:
        """This frame's event tick (uint16); re-ages stale pixels so that ages modulo 2**16 stay exact."""
        tick = int((t - self._t0) // _TICK_MS) + gap + 1
        now = np.uint16(tick & 0xFFFF)
        if tick - self._tick > gap:
            # No frame for longer than the gap: every pixel's last event is older than it.
            self._px_last_event.fill(np.uint16((tick - gap - 1) & 0xFFFF))
            self._px_events.fill(0)
            self._refreshed_tick = tick
        elif tick - self._refreshed_tick >= _REFRESH_TICKS:
            stale = (now - self._px_last_event) > gap
            self._px_last_event[stale] = np.uint16((tick - gap - 1) & 0xFFFF)
            self._px_events[stale] = 0
            self._refreshed_tick = tick
        self._tick = tick
        return now

    def _native_change(self, thumb: Thumbnail, absdiff_d: npt.NDArray[np.uint8], vol_d: BoolArray | None
                       ) -> tuple[int, BoolArray | None]:
        """Pixels of the frame as sent that moved by more than detail_diff_threshold since the kept frame,
        looked for where the detail image moved at all (and next to it: a stroke that moved may have left a
        neighbouring block), outside volatile pixels. Returns their count and the detail pixels holding them."""
        ref, luma, det = self._kept_native, thumb.luma, thumb.detail
        if ref is None or luma is None or det is None or luma.shape != ref.shape:
            return 0, None
        r = thumb.detail_factor // thumb.luma_factor
        thr = self.config.detail_diff_threshold
        # A pixel that moved by more than thr moves its block's mean by more than thr / r^2, unless other
        # pixels of the block moved the other way (overlapping strokes): those are found as neighbours.
        cand = absdiff_d > thr // (r * r)
        if vol_d is not None:
            cand &= ~vol_d
        if r <= 1 or not cand.any():
            return 0, None
        grow: BoolArray = cv2.dilate(cand.view(np.uint8), np.ones((3, 3), np.uint8)) > 0
        if vol_d is not None:
            grow &= ~vol_d
        rows, cols = np.flatnonzero(grow.any(axis=1)), np.flatnonzero(grow.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        old = ref.rows(y0 * r, y1 * r)[:, x0 * r : x1 * r]
        new = luma[y0 * r : y1 * r, x0 * r : x1 * r]
        moved = (cv2.absdiff(np.ascontiguousarray(new), np.ascontiguousarray(old)) > thr)
        per_block = moved.reshape(y1 - y0, r, x1 - x0, r).sum(axis=(1, 3)) * grow[y0:y1, x0:x1]
        n = int(per_block.sum())
        if n == 0:
            return 0, None
        where = np.zeros(det.shape, dtype=bool)
        where[y0:y1, x0:x1] = per_block > 0
        return n, where

    def _detail_bbox(self, diff_d: BoolArray | None, thumb: Thumbnail) -> tuple[int, int, int, int]:
        if diff_d is None:
            return (0, 0, 0, 0)
        rows = np.flatnonzero(diff_d.any(axis=1))
        if rows.size == 0:
            return (0, 0, 0, 0)
        cols = np.flatnonzero(diff_d.any(axis=0))
        k = thumb.detail_factor or thumb.factor
        x0, y0 = int(cols[0]) * k, int(rows[0]) * k
        x1 = min(thumb.width, (int(cols[-1]) + 1) * k)
        y1 = min(thumb.height, (int(rows[-1]) + 1) * k)
        return (x0, y0, x1 - x0, y1 - y0)

    def _pointer_only(self, diff_d: BoolArray, det: npt.NDArray[np.uint8], kept: npt.NDArray[np.uint8]) -> bool:
        """The change since the last kept frame is one small sprite that left one place and is now at another
        (a mouse pointer that moved): two small blobs of about the same size, and the pixels the kept frame
        showed at one (the sprite) look like what this frame shows at the other. Blob shapes depend on the
        background under the sprite, so sizes and mean sprite levels are compared, not pixel by pixel."""
        side = self.config.pointer_max_side
        # Parts of one sprite over a background of its own colour show no change: group nearby pieces.
        mask = cv2.dilate(diff_d.view(np.uint8), _GROUP_KERNEL)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n != 3:  # background + exactly two blobs
            return False
        blobs = []
        for i in (1, 2):
            x, y, w, h = (int(v) for v in stats[i][:4])
            if max(w, h) > side + 6:  # the grouping dilation adds 3 pixels a side
                return False
            sel = (labels[y : y + h, x : x + w] == i) & diff_d[y : y + h, x : x + w]
            if not sel.any():
                return False
            then = kept[y : y + h, x : x + w][sel].astype(np.int16)
            now = det[y : y + h, x : x + w][sel].astype(np.int16)
            blobs.append((int(np.count_nonzero(sel)), float(then.mean()), float(now.mean()),
                          float(np.mean(then > now))))
        (na, a_then, a_now, a_dark), (nb, b_then, b_now, b_dark) = blobs
        if min(na, nb) < 0.2 * max(na, nb):
            return False
        # A sprite leaves one place (its pixels there all change one way) and covers another (the other way);
        # an edit turns some strokes on and others off in the same place.
        if not ((a_dark >= 0.8 and b_dark <= 0.2) or (a_dark <= 0.2 and b_dark >= 0.8)):
            return False
        # The sprite was at a and is now at b, or the other way round.
        return min(abs(a_then - b_now), abs(b_then - a_now)) < 0.35 * max(abs(a_then - a_now), abs(b_then - b_now))

    def _keep(self, thumb: Thumbnail, cur: npt.NDArray[np.uint8], det: npt.NDArray[np.uint8], h: int, t: float,
              reason: str) -> Decision:
        distance = -1 if self._geo is None or reason == "resolution_changed" else hamming(h, self._kept_hash)
        self._geo = _Geometry.make(thumb, self.config.tile_size)
        rd = self.config.volatile_dilate * max(1, thumb.factor // max(1, thumb.detail_factor or thumb.factor))
        self._kernel_d = np.ones((2 * rd + 1, 2 * rd + 1), dtype=np.uint8)
        self._tile_last_motion = np.full(self._geo.tiles, _NEVER)
        self._tile_activity = np.zeros(self._geo.tiles)
        self._tile_last_raw_motion = np.full(self._geo.tiles, _NEVER)
        self._t0 = t
        self._tick = self._refreshed_tick = self.config.volatile_gap_ms // _TICK_MS + 1
        self._px_last_event = np.zeros(det.shape, dtype=np.uint16)  # tick 0: older than the gap
        self._px_events = np.zeros(det.shape, dtype=np.uint8)
        self._last_motion_t = _NEVER
        self._motion_run_start = _NEVER
        self._prev_moving = False
        self._run_frames = 0
        self._pending = None
        self._kept, self._kept_hash, self._kept_t, self._prev, self._prev_hash = cur, h, t, cur, h
        self._kept_detail = det
        self._kept_native = self._native_of(thumb)
        self._anchor = cur.copy()
        self._anchor_detail = det.copy()
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


def thumb_change(a: npt.NDArray[np.uint8] | None, b: npt.NDArray[np.uint8], factor: int, width: int, height: int,
                 threshold: int) -> tuple[float, tuple[int, int, int, int]]:
    """Changed fraction and bounding box (frame pixels) between two thumbnails of the same track."""
    if a is None or a.shape != b.shape:
        return 1.0, (0, 0, width, height)
    diff: npt.NDArray[np.bool_] = cv2.absdiff(a, b) > threshold
    n = int(np.count_nonzero(diff))
    if n == 0:
        return 0.0, (0, 0, 0, 0)
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    x0, y0 = int(cols[0]) * factor, int(rows[0]) * factor
    x1, y1 = min(width, (int(cols[-1]) + 1) * factor), min(height, (int(rows[-1]) + 1) * factor)
    return n / diff.size, (x0, y0, x1 - x0, y1 - y0)
