"""Reading recorded media: WAV audio as `rtc.AudioFrame`s, a screen share (video file or frame folder) as
timed `rtc.VideoFrame`s."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from livekit import rtc

from frugal.gateway.replay.spec import ScreenSpec

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")


class MediaError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Pcm:
    samples: np.ndarray  # int16, mono
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def frames(self, frame_ms: int = 20) -> Iterator[rtc.AudioFrame]:
        step = self.sample_rate * frame_ms // 1000
        for i in range(0, len(self.samples), step):
            chunk = self.samples[i : i + step]
            yield rtc.AudioFrame(chunk.tobytes(), self.sample_rate, 1, len(chunk))


def read_wav(path: Path) -> Pcm:
    """16-bit PCM WAV (mono, or stereo mixed down)."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise MediaError(f"{path}: only 16-bit PCM WAV is supported (got {8 * w.getsampwidth()}-bit)")
            channels, rate = w.getnchannels(), w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as err:
        raise MediaError(f"{path}: not a readable WAV file ({err})") from err
    if channels > 1:
        raw = raw.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return Pcm(samples=raw.astype(np.int16), sample_rate=rate)


def write_wav(path: Path, pcm: Pcm) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(pcm.sample_rate)
        w.writeframes(pcm.samples.astype("<i2").tobytes())


@dataclass(frozen=True, slots=True)
class TimedFrame:
    at: float  # seconds on the session timeline
    frame: rtc.VideoFrame


def rgb_frame(rgb: np.ndarray) -> rtc.VideoFrame:
    """An (h, w, 3) uint8 RGB image as an RGB24 `rtc.VideoFrame`."""
    h, w, _ = rgb.shape
    return rtc.VideoFrame(w, h, rtc.VideoBufferType.RGB24, np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())


def screen_frames(spec: ScreenSpec) -> Iterator[TimedFrame]:
    if spec.frames is not None:
        yield from _folder_frames(spec.frames, spec.fps, spec.start)
    elif spec.video is not None:
        yield from _video_frames(spec.video, spec.start)


def _folder_frames(folder: Path, fps: float, start: float) -> Iterator[TimedFrame]:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise MediaError(f"{folder}: no {'/'.join(FRAME_EXTENSIONS)} frames")
    for i, path in enumerate(files):
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        yield TimedFrame(at=start + i / fps, frame=rgb_frame(rgb))


def _video_frames(path: Path, start: float) -> Iterator[TimedFrame]:
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise MediaError(f"{path}: cannot open video ({err})") from err
    with container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 1)
            w, h = frame.width, frame.height
            if w % 2 or h % 2:
                yield TimedFrame(at=start + t, frame=rgb_frame(frame.to_ndarray(format="rgb24")))
                continue
            yuv = frame.to_ndarray(format="yuv420p")  # (h * 3 / 2, w): Y, then U and V planes
            yield TimedFrame(at=start + t, frame=rtc.VideoFrame(w, h, rtc.VideoBufferType.I420, yuv.tobytes()))
