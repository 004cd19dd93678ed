"""The dedup decision on synthetic thumbnails: every rule and its reason."""

from __future__ import annotations

import cv2
import numpy as np

from frugal.vision.dedup import DedupConfig, DedupTracker
from frugal.vision.frames import Thumbnail, thumbnail_from_luma

RNG = np.random.default_rng(3)
PAGE = RNG.integers(0, 256, (400, 160), dtype=np.uint8)  # a tall textured "document"


def thumb(px: np.ndarray, w: int = 1280, h: int = 720) -> Thumbnail:
    return Thumbnail(np.ascontiguousarray(px), 8, w, h)


def flip(a: np.ndarray) -> np.ndarray:
    """Every pixel moves by at least 128 levels."""
    return np.where(a > 127, 0, 255).astype(np.uint8)


def base() -> np.ndarray:
    return PAGE[:90].copy()


def test_first_duplicate_and_large_change_after_fast_settle() -> None:
    tr = DedupTracker()
    d = tr.decide(thumb(base()), 0)
    assert d.kept and d.reason == "first_frame" and d.distance == -1
    d = tr.decide(thumb(base()), 33)
    assert not d.kept and d.reason == "duplicate" and d.distance == 0 and d.changed_area == 0
    changed = base()
    changed[10:50, 20:100] = flip(changed[10:50, 20:100])
    reasons = [tr.decide(thumb(changed), t) for t in (66, 100, 133, 166, 200)]
    assert [r.reason for r in reasons[:3]] == ["in_motion", "settling", "settling"]
    kept = reasons[3]
    assert kept.kept and kept.reason == "changed" and kept.distance > 0
    assert kept.bbox == (160, 80, 640, 320)  # thumbnail rows 10-49, cols 20-99, times 8
    assert kept.changed_area > 0.2
    assert reasons[4].reason == "duplicate"


def test_small_change_waits_for_the_screen_to_settle_and_tiny_ones_are_skipped() -> None:
    cfg = DedupConfig()
    tr = DedupTracker(cfg)
    tr.decide(thumb(base()), 0)
    typed = base()
    typed[40:42, 30:36] = flip(typed[40:42, 30:36])  # 12 px of 14400: 0.08 %
    out = [tr.decide(thumb(typed), t) for t in range(100, 1000, 100)]
    reasons = [o.reason for o in out]
    assert "detail_changed" in reasons
    first = reasons.index("detail_changed")
    assert 100 + 100 * first >= 100 + cfg.settle_ms and all(r in ("in_motion", "settling") for r in reasons[:first])
    assert out[first].changed_area == 12 / 14400

    tr = DedupTracker(cfg)
    tr.decide(thumb(base()), 0)
    dot = base()
    dot[5, 5] = flip(dot[5, 5])
    assert {tr.decide(thumb(dot), t).reason for t in range(100, 3000, 100)} == {"small_change"}


def test_blinking_region_becomes_periodic_and_does_not_hide_real_changes() -> None:
    tr = DedupTracker()
    on = base()
    off = base()
    off[60:66, 100:102] = flip(off[60:66, 100:102])  # a cursor-sized region, toggling every 500 ms
    tr.decide(thumb(on), 0)
    verdicts = []
    for i in range(1, 60):  # 30 FPS for 2 s
        t = i * 1000 / 30
        verdicts.append(tr.decide(thumb(off if int(t / 500) % 2 else on), t))
    assert not any(v.kept for v in verdicts)
    assert verdicts[-1].volatile_area > 0
    assert {v.reason for v in verdicts[-20:]} <= {"periodic_change", "duplicate"}
    # a real (small) change elsewhere is still seen while the region keeps blinking
    edited = base()
    edited[20:23, 10:20] = flip(edited[20:23, 10:20])
    kept = []
    for i in range(60, 120):
        t = i * 1000 / 30
        frame = edited.copy()
        if int(t / 500) % 2:
            frame[60:66, 100:102] = off[60:66, 100:102]
        v = tr.decide(thumb(frame), t)
        if v.kept:
            kept.append(v)
    assert len(kept) == 1 and kept[0].reason == "detail_changed"
    assert kept[0].bbox == (80, 160, 80, 24)


def test_scrolling_is_debounced_and_the_settled_page_kept() -> None:
    tr = DedupTracker()
    tr.decide(thumb(PAGE[:90]), 0)
    reasons = []
    for i in range(1, 16):  # scroll 6 thumbnail rows (48 px) per frame
        reasons.append(tr.decide(thumb(PAGE[6 * i : 6 * i + 90]), i * 33).reason)
    assert reasons.count("scrolling") >= 12 and "changed" not in reasons
    after = [tr.decide(thumb(PAGE[90:180]), 16 * 33 + k * 33) for k in range(6)]
    assert [a.reason for a in after if a.kept] == ["changed"]


def test_continuous_motion_yields_checkpoints_sooner_while_the_user_speaks() -> None:
    def run(speaking: bool) -> list[float]:
        tr = DedupTracker()
        tr.decide(thumb(PAGE[:90]), 0)
        kept_at: list[float] = []
        for i in range(1, 300):  # 10 s of continuous scrolling
            d = tr.decide(thumb(PAGE[i : i + 90]), i * 33, user_speaking=speaking)
            if d.kept:
                assert d.reason == "motion_checkpoint"
                kept_at.append(i * 33)
        return kept_at

    idle, speaking = run(False), run(True)
    cfg = DedupConfig()
    assert len(idle) == 1 and idle[0] >= cfg.max_stale_ms
    assert len(speaking) == 2 and speaking[0] >= cfg.max_stale_speaking_ms


def luma_page(seed: int = 1) -> np.ndarray:
    """A 1280x720 "page": light background, dark text-like strokes."""
    rng = np.random.default_rng(seed)
    img = np.full((720, 1280), 235, np.uint8)
    for row in range(60, 700, 24):
        for col in range(40, 1200, 90):
            if rng.random() < 0.8:
                img[row : row + 10, col : col + int(rng.integers(30, 80))] = 40
    return img


def test_sparse_frames_keep_changes_and_the_timer_keeps_a_change_no_frame_follows() -> None:
    page = luma_page()
    other = luma_page(2)
    tr = DedupTracker()
    assert tr.decide(thumbnail_from_luma(page), 0).reason == "first_frame"
    # Frames 2 s apart: each new screen is seen once; nothing confirms it is still, so the timer does.
    d = tr.decide(thumbnail_from_luma(other), 2000)
    assert not d.kept and tr.due_ms() is not None
    due = tr.due_ms()
    assert due is not None and 2000 < due <= 3000
    again = thumbnail_from_luma(other)  # the caller makes the held frame's thumbnail again
    assert tr.flush(due - 1, again) is None  # not yet
    kept = tr.flush(due, again)
    assert kept is not None and kept.kept and kept.by_timer and kept.reason == "changed"
    assert tr.due_ms() is None and tr.flush(due + 5000, again) is None  # kept once
    # the next frame of the same screen is a duplicate of what the timer kept
    assert tr.decide(thumbnail_from_luma(other), 4000).reason == "duplicate"
    # a frame that comes before the timer is due replaces it: kept by the frame, not twice
    tr.decide(thumbnail_from_luma(page), 6000)
    d = tr.decide(thumbnail_from_luma(page), 6200)
    assert d.kept and d.reason == "changed" and tr.due_ms() is None


def test_an_edit_that_vanishes_in_the_thumbnail_is_kept() -> None:
    page = luma_page()
    tr = DedupTracker()
    tr.decide(thumbnail_from_luma(page), 0)
    edited = page.copy()
    edited[71:81, 1210:1220] = 40  # a digit-sized stroke in blank space: 100 pixels of 921,600
    t0 = thumbnail_from_luma(page).pixels.astype(int)
    t1 = thumbnail_from_luma(edited).pixels.astype(int)
    changed = np.count_nonzero(np.abs(t1 - t0) > DedupConfig().pixel_diff_threshold) / t0.size
    assert changed < DedupConfig().min_change_area  # too small for the thumbnail rules
    out = [tr.decide(thumbnail_from_luma(edited), t) for t in range(200, 1400, 200)]
    assert [o.reason for o in out if o.kept] == ["detail_changed"]


def test_pointer_motion_is_not_kept() -> None:
    page = luma_page()
    arrow = np.zeros((19, 12), bool)
    for r in range(19):
        arrow[r, : max(1, min(12, r * 12 // 17))] = True

    def with_pointer(x: int, y: int) -> np.ndarray:
        img = page.copy()
        img[y : y + 19, x : x + 12][arrow] = 0
        return img

    tr = DedupTracker()
    tr.decide(thumbnail_from_luma(with_pointer(100, 100)), 0)
    reasons = []
    for k, (x, y) in enumerate([(300, 200), (500, 300), (700, 420), (900, 500), (900, 500), (900, 500),
                                (900, 500), (900, 500), (900, 500), (300, 600), (300, 600), (300, 600),
                                (300, 600), (300, 600)]):
        d = tr.decide(thumbnail_from_luma(with_pointer(x, y)), 200 * (k + 1))
        reasons.append(d.reason)
        assert not d.kept, reasons
    assert "pointer_motion" in reasons
    assert tr.flush(1e9, thumbnail_from_luma(with_pointer(300, 600))) is None


def test_resolution_change_resets_the_track() -> None:
    tr = DedupTracker()
    tr.decide(thumb(base()), 0)
    d = tr.decide(thumb(PAGE[:120, :160], w=1280, h=960), 33)
    assert d.kept and d.reason == "resolution_changed" and d.distance == -1
    assert tr.decide(thumb(PAGE[:120, :160], w=1280, h=960), 66).reason == "duplicate"


def test_a_motion_run_lasts_across_sparse_frames() -> None:
    """Frames a second apart, every one moved: one run of motion (not a new run per frame), so continuous
    motion still gets its checkpoint."""
    tr = DedupTracker()
    tr.decide(thumb(PAGE[:90]), 0)
    kept = []
    for i in range(1, 20):
        d = tr.decide(thumb(PAGE[12 * i : 12 * i + 90] if 12 * i + 90 <= 400 else PAGE[400 - 90 - i : 400 - i]),
                      i * 1000)
        if d.kept:
            kept.append((i, d.reason))
    # the run began with the first moved frame (1 s): its checkpoint comes max_stale_ms later
    assert kept and kept[0] == (1 + DedupConfig().max_stale_ms // 1000, "motion_checkpoint")


def sheet(value: str) -> np.ndarray:
    """A 1280x720 form: anti-aliased 11 px numbers in boxes, one field showing `value`."""
    img = np.full((720, 1280), 248, np.uint8)
    for r in range(12):
        for c in range(4):
            cv2.rectangle(img, (60 + c * 300, 40 + r * 55), (260 + c * 300, 70 + r * 55), 210, 1)
            text = value if (r, c) == (5, 2) else f"{(r * 7919 + c * 104729) % 99999:,}"
            cv2.putText(img, text, (70 + c * 300, 62 + r * 55), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 25, 1, cv2.LINE_AA)
    return img


def test_a_glyph_redrawn_over_another_is_kept_though_block_means_barely_move() -> None:
    """1,350 -> 1,850: the 8 is drawn over the 3's strokes, so in the 2x2 block means of the detail image the
    pixels that turned on and off cancel out; at the frame's own resolution they do not."""
    cfg = DedupConfig()
    before, after = thumbnail_from_luma(sheet("1,350")), thumbnail_from_luma(sheet("1,850"))
    assert before.detail is not None and after.detail is not None and after.detail_factor == 2
    in_detail = np.count_nonzero(cv2.absdiff(before.detail, after.detail) > cfg.detail_diff_threshold)
    at_frame = np.count_nonzero(cv2.absdiff(sheet("1,350"), sheet("1,850")) > cfg.detail_diff_threshold)
    assert in_detail < cfg.min_detail_pixels <= at_frame  # the detail image alone would skip it

    tr = DedupTracker(cfg)
    tr.decide(before, 0)
    out = [tr.decide(thumbnail_from_luma(sheet("1,850")), t) for t in range(200, 1400, 200)]
    kept = [o for o in out if o.kept]
    assert [o.reason for o in kept] == ["detail_changed"]
    x, y, w, h = kept[0].bbox  # where the field is, not the whole sheet
    assert 600 <= x <= 700 and 300 <= y <= 340 and w <= 60 and h <= 30

    # Kept by the timer (frames stopped), then edited again: measured against the frame the timer kept.
    tr = DedupTracker(cfg)
    tr.decide(thumbnail_from_luma(luma_page()), 0)
    assert not tr.decide(thumbnail_from_luma(sheet("1,350")), 2000).kept
    due = tr.due_ms()
    assert due is not None
    flushed = tr.flush(due, thumbnail_from_luma(sheet("1,350")))
    assert flushed is not None and flushed.kept
    # (after the volatile gap: pixels changing twice within it would count as periodic)
    out = [tr.decide(thumbnail_from_luma(sheet("1,850")), t) for t in range(6000, 7200, 200)]
    assert [o.reason for o in out if o.kept] == ["detail_changed"]


def test_the_same_page_with_the_frame_resolution_unchanged_is_a_duplicate() -> None:
    """The frame-resolution comparison only looks where the detail image moved: an unchanged sheet costs
    nothing and stays a duplicate; a sub-threshold shimmer is skipped."""
    tr = DedupTracker()
    tr.decide(thumbnail_from_luma(sheet("1,350")), 0)
    assert tr.decide(thumbnail_from_luma(sheet("1,350")), 200).reason == "duplicate"
    shimmer = sheet("1,350")
    shimmer[300:303, 100:104] = np.clip(shimmer[300:303, 100:104].astype(int) + 30, 0, 255).astype(np.uint8)
    d = tr.decide(thumbnail_from_luma(shimmer), 400)
    assert not d.kept and d.reason in ("small_change", "duplicate")


def test_event_ages_stay_exact_when_the_16_ms_ticks_wrap() -> None:
    """Per-pixel event times are uint16 ticks of 16 ms (modulo ~17.5 min). A region that blinked, then
    stayed still for exactly one wrap plus a little, must not look as if it had just blinked: its next real
    change is kept."""
    tr = DedupTracker()
    page = base()
    tr.decide(thumb(page), 0)
    on = page.copy()
    on[40:44, 60:64] = flip(on[40:44, 60:64])
    t = 0
    for k in range(1, 9):  # blinks every 500 ms: periodic after two
        t = 500 * k
        tr.decide(thumb(on if k % 2 else page), t)
    last_blink = t
    assert tr.decide(thumb(page), t + 500).reason in ("periodic_change", "duplicate")
    t += 500
    change_at = last_blink + 65536 * 16 + 50 * 16  # an age of 65,586 ticks: 50 modulo 2**16
    while t + 1000 < change_at:
        t += 1000
        tr.decide(thumb(page), t)
    out = [tr.decide(thumb(on), change_at + dt) for dt in (0, 200, 400, 600, 800, 1000)]
    assert [o.reason for o in out if o.kept] == ["detail_changed"], [o.reason for o in out]
