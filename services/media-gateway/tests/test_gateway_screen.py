"""Screen-share sampling without a LiveKit server: throttling by speaking state, newest-frame mailbox,
I420 conversion, and the StreamFrames client surviving a vision-dedup outage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest
from livekit import rtc

from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.common.grpc_client import create_channel
from frugal.gateway.replay.media import rgb_frame
from frugal.gateway.screen import FrameThrottle, LatestSlot, TrackSampler, VisionFrameStreamer, i420_bytes


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
    assert (w2, h2) == (32, 18)
    assert len(data2) == 32 * 18 + 2 * 16 * 9
    y2 = np.frombuffer(data2[: w2 * h2], np.uint8).reshape(h2, w2)
    assert y2[:, :14].mean() < 30 and y2[:, 18:].mean() > 220


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
