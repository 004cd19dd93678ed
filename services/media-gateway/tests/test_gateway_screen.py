"""Screen-share sampling without a LiveKit server: throttling by speaking state, newest-frame mailbox,
I420 conversion, and the StreamFrames client surviving a vision-dedup outage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.common.grpc_client import create_channel
from frugal.gateway.replay.media import rgb_frame
from frugal.gateway.screen import (
    FrameThrottle,
    LatestSlot,
    TrackSampler,
    VisionFrameStreamer,
    i420_bytes,
    verdict_kind_label,
)


def admitted_per_second(throttle: FrameThrottle, start: float, end: float, capture_fps: float = 30.0) -> float:
    n = 0
    t = start
    while t < end:
        n += throttle.admit(t)
        t += 1.0 / capture_fps
    return n / (end - start)


def test_throttle_follows_speaking_state() -> None:
    throttle = FrameThrottle(active_fps=2.0, idle_fps=0.5)
    idle = admitted_per_second(throttle, 0.0, 20.0)
    throttle.set_speaking(True)
    speaking = admitted_per_second(throttle, 20.0, 30.0)
    throttle.set_speaking(False)
    idle_again = admitted_per_second(throttle, 30.0, 50.0)
    assert idle == pytest.approx(0.5, abs=0.06)
    assert speaking == pytest.approx(2.0, abs=0.11)
    assert idle_again == pytest.approx(0.5, abs=0.06)


def test_throttle_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        FrameThrottle(active_fps=0, idle_fps=1)


async def test_latest_slot_gives_a_slow_consumer_the_newest_item() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert await slot.get() == 3
    assert slot.replaced == 2
    getter = asyncio.create_task(slot.get())
    await asyncio.sleep(0)
    slot.put(4)
    assert await asyncio.wait_for(getter, 1) == 4
    slot.close()
    assert await slot.get() is None


def test_i420_conversion_and_downscale() -> None:
    rgb = np.zeros((72, 128, 3), np.uint8)
    rgb[:, 64:] = 255  # right half white
    w, h, data = i420_bytes(rgb_frame(rgb))
    assert (w, h) == (128, 72)
    assert len(data) == 128 * 72 + 2 * 64 * 36
    y = np.frombuffer(data[: w * h], np.uint8).reshape(h, w)
    assert y[:, :60].mean() < 30 and y[:, 70:].mean() > 220
    w2, h2, data2 = i420_bytes(rgb_frame(rgb), max_width=40)
    assert (w2, h2) == (40, 22)
    assert len(data2) == 40 * 22 + 2 * 20 * 11
    y2 = np.frombuffer(data2[: w2 * h2], np.uint8).reshape(h2, w2)
    assert y2[:, :18].mean() < 30 and y2[:, 22:].mean() > 220


def test_downscale_averages_so_thin_strokes_survive() -> None:
    """A one-pixel line at an odd column vanishes when every other pixel is dropped; area interpolation
    keeps it (fainter)."""
    rgb = np.full((720, 1920, 3), 255, np.uint8)
    rgb[:, 961] = 0  # a vertical hairline
    rgb[401, :] = 0  # a horizontal one
    w, h, data = i420_bytes(rgb_frame(rgb), max_width=1280)
    assert (w, h) == (1280, 480)
    y = np.frombuffer(data[: w * h], np.uint8).reshape(h, w).astype(int)
    assert y[:, 640].mean() < y[:, 100].mean() - 40  # the vertical line is still there
    assert y[267].mean() < y[100].mean() - 40  # and the horizontal one


async def test_streamer_keeps_going_while_vision_is_down(dead_addr: str) -> None:
    channel = create_channel(dead_addr)
    streamer = VisionFrameStreamer(vision_pb2_grpc.VisionServiceStub(channel), tenant_id="org_x", session_id="s-1",
                                   track_id="TR_1", backoff_min_s=0.02, backoff_max_s=0.05)
    sampler = TrackSampler(streamer, FrameThrottle(10.0, 10.0))
    streamer.start()
    frame = rgb_frame(np.full((36, 64, 3), 128, np.uint8))
    try:
        for i in range(20):
            assert sampler.push(frame, at=i * 0.2) is True
            await asyncio.sleep(0.02)
        assert streamer.stats.failures >= 2  # it kept retrying
        assert streamer.stats.connected is False
        assert streamer.stats.kept == 0
        assert streamer.stats.last_error.startswith("UNAVAILABLE")
        # frames offered while it was down were dropped, never queued up
        assert streamer.stats.offered == 20
        assert streamer.stats.sent + streamer.stats.dropped_behind <= 20
        await streamer.finish(within_s=2.0)
    finally:
        await streamer.aclose()
        await channel.close()


def test_sampler_marks_frames_with_speaking_state() -> None:
    class Capture(VisionFrameStreamer):
        def __init__(self) -> None:
            self.track_id = "TR_2"
            self.frames: list[vision_pb2.Frame] = []

        def offer(self, frame: vision_pb2.Frame) -> None:
            self.frames.append(frame)

    capture = Capture()
    throttle = FrameThrottle(active_fps=4.0, idle_fps=1.0)
    sampler = TrackSampler(capture, throttle)
    frame = rgb_frame(np.zeros((18, 32, 3), np.uint8))
    for i in range(40):  # 10 s at 4 fps; the user speaks from 5 s on
        throttle.set_speaking(i >= 20)
        sampler.push(frame, at=i * 0.25)
    quiet = [f for f in capture.frames if not f.user_speaking]
    loud = [f for f in capture.frames if f.user_speaking]
    assert len(quiet) == 5 and len(loud) == 20
    assert [f.sequence for f in capture.frames] == list(range(1, 26))
    assert all(f.format == vision_pb2.FRAME_FORMAT_I420 and f.width == 32 and f.track_id == "TR_2"
               for f in capture.frames)
    assert sampler.throttled == 15


def test_video_frame_type_is_i420_after_conversion() -> None:
    frame = rgb_frame(np.zeros((10, 16, 3), np.uint8)).convert(rtc.VideoBufferType.I420)
    assert frame.type == rtc.VideoBufferType.I420


async def test_streamer_reconnects_when_vision_dedup_restarts(redis_url: str) -> None:
    """Real vision-dedup on a fixed port: verdicts flow, the service stops (frames are dropped, nothing
    blocks), it comes back on the same port, and the same streamer gets verdicts again."""
    from frugal.devkit.devstack import free_port
    from frugal.vision.config import Settings as VisionSettings
    from frugal.vision.server import build_app

    port = free_port()
    settings = VisionSettings(grpc_host="127.0.0.1", grpc_port=port, metrics_port=0, redis_url=redis_url,
                              gemini_api_key=None)
    channel = create_channel(f"127.0.0.1:{port}")
    streamer = VisionFrameStreamer(vision_pb2_grpc.VisionServiceStub(channel), tenant_id="org_x", session_id="s-vr",
                                   track_id="TR_R", backoff_min_s=0.05, backoff_max_s=0.2)
    sampler = TrackSampler(streamer, FrameThrottle(20.0, 20.0))
    frames = [rgb_frame(np.full((90, 160, 3), shade, np.uint8)) for shade in (30, 220)]
    t = 0.0

    async def push_until(predicate: Callable[[], bool], within_s: float) -> None:
        nonlocal t
        deadline = asyncio.get_running_loop().time() + within_s
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, streamer.stats
            t += 0.1
            sampler.push(frames[int(t * 2) % 2], at=t)  # the screen changes every half second
            await asyncio.sleep(0.05)

    app = await build_app(settings)
    await app.start()
    streamer.start()
    try:
        await push_until(lambda: streamer.stats.kept >= 1, 20)
        await app.stop(0.2)
        failures = streamer.stats.failures
        await push_until(lambda: streamer.stats.failures > failures, 20)
        kept_before = streamer.stats.kept
        app = await build_app(settings)
        await app.start()
        await push_until(lambda: streamer.stats.kept > kept_before and streamer.stats.connected, 30)
        assert streamer.stats.streams_opened >= 2
    finally:
        await streamer.aclose()
        await app.stop(0.2)
        await channel.close()


class _Capture(VisionFrameStreamer):
    def __init__(self) -> None:
        self.track_id = "TR_3"
        self.frames: list[vision_pb2.Frame] = []

    def offer(self, frame: vision_pb2.Frame) -> None:
        self.frames.append(frame)


def test_the_frame_where_the_screen_came_to_rest_is_never_dropped() -> None:
    """The cap is a trailing edge: a frame it rejects is held and sent at the next slot, unless a newer one
    replaces it. A share whose track stops after a change (a static screen) still delivers that change."""
    capture = _Capture()
    sampler = TrackSampler(capture, FrameThrottle(active_fps=5.0, idle_fps=5.0))
    a = rgb_frame(np.zeros((18, 32, 3), np.uint8))
    b = rgb_frame(np.full((18, 32, 3), 200, np.uint8))
    assert sampler.push(a, at=0.0) is True
    assert sampler.push(b, at=0.05) is False  # too soon: held, not dropped
    due = sampler.due()
    assert due is not None and 0.19 <= due <= 0.2
    assert sampler.flush(0.1) is False and len(capture.frames) == 1
    assert sampler.flush(0.2) is True
    assert len(capture.frames) == 2 and capture.frames[1].timestamp_ms == 50  # its capture time
    assert sampler.due() is None and sampler.sent_late == 1
    # a newer frame replaces a held one: only the newest goes out
    sampler.push(a, at=0.25)
    sampler.push(b, at=0.3)
    assert sampler.push(a, at=0.45) is True
    assert sampler.throttled == 2 and [f.timestamp_ms for f in capture.frames][-1] == 450


async def test_consume_sends_the_held_frame_when_the_track_goes_quiet() -> None:
    capture = _Capture()
    clock = [0.0]
    sampler = TrackSampler(capture, FrameThrottle(5.0, 5.0), clock=lambda: clock[0])
    frames = [rgb_frame(np.full((18, 32, 3), v, np.uint8)) for v in (0, 200)]
    quiet = asyncio.Event()

    async def track() -> AsyncIterator[rtc.VideoFrame]:
        for f in frames:  # two frames 10 ms apart, then nothing (a static screen)
            yield f
            clock[0] += 0.01
        quiet.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(sampler.consume(track()))
    await quiet.wait()
    clock[0] = 0.25  # the next slot has come; consume() wakes on its own (no further frame)
    for _ in range(200):
        if len(capture.frames) == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(capture.frames) == 2 and capture.frames[1].timestamp_ms == 10


def test_unknown_verdict_kinds_from_a_newer_server_are_tolerated() -> None:
    assert verdict_kind_label(vision_pb2.VERDICT_KIND_KEPT) == "kept"
    assert verdict_kind_label(42) == "unknown"
    streamer = VisionFrameStreamer(vision_pb2_grpc.VisionServiceStub(create_channel("127.0.0.1:1")),
                                   tenant_id="org_x", session_id="s-u", track_id="TR_U")
    streamer._handle(vision_pb2.StreamFramesResponse(verdict=vision_pb2.FrameVerdict(
        kind=42, reason="something new")))  # type: ignore[arg-type]
    streamer._handle(vision_pb2.StreamFramesResponse(verdict=vision_pb2.FrameVerdict(
        kind=vision_pb2.VERDICT_KIND_SKIPPED, reason="settling", sequence=7)))
    streamer._handle(vision_pb2.StreamFramesResponse(verdict=vision_pb2.FrameVerdict(
        kind=vision_pb2.VERDICT_KIND_KEPT, reason="changed", sequence=7, by_timer=True)))
    assert streamer.stats.unknown == 1
    # the timer's verdict turns the earlier skip into a keep: the frame is counted once
    assert (streamer.stats.kept, streamer.stats.skipped, streamer.stats.kept_by_timer) == (1, 0, 1)


async def test_replay_sends_the_frame_held_at_the_end_of_the_recording(tmp_path: Path) -> None:
    """A recording faster than the rate cap ends on a frame the cap held: it is sent at its slot, not lost
    (vision-dedup then decides it when the stream half-closes)."""
    from PIL import Image

    from frugal.gateway.replay.runner import ReplayClock, _play_screen
    from frugal.gateway.replay.spec import ScreenSpec, SessionSpec

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, v in enumerate((0, 0, 0, 200)):  # 30 FPS: the change is the last frame, 100 ms after the first
        Image.fromarray(np.full((18, 32, 3), v, np.uint8)).save(folder / f"{i:03d}.png")
    spec = SessionSpec(root=tmp_path, title="t", room="r", turns=(), screen=ScreenSpec(frames=folder, fps=30.0))
    capture = _Capture()
    clock = ReplayClock(speed=10.0)
    sampler = TrackSampler(capture, FrameThrottle(5.0, 5.0), clock=clock.now)
    await _play_screen(spec, sampler, clock)
    assert [f.timestamp_ms for f in capture.frames] == [0, 100]
    assert sampler.due() is None and sampler.sent_late == 1
