"""Deterministic synthetic media for demos and tests (NumPy only, no models, no network).

- `speech_like(...)`: voiced, vowel-like syllables (a glottal pulse train shaped by formant resonances),
  which Silero VAD classifies as speech; `tone(...)` and `noise(...)` are not speech, for negative checks.
  It is not intelligible speech: STT of it needs the recorded transcript (offline stand-in) or a real voice.
- `slide_frames(...)`: a screen share of "slides" (title bar, text lines, a chart) with a blinking cursor,
  a scroll and slide changes, the content vision-dedup is meant to thin out.

    python -m frugal.devkit.demo.synth DIR      # regenerates the demo session's WAV and video files
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from frugal.gateway.replay.media import Pcm, write_wav

SR = 16000
# Formants (Hz, bandwidth Hz, gain) of five vowels: /a/, /i/, /u/, /e/, /o/.
VOWELS = (
    ((800, 80, 1.0), (1200, 90, 0.5), (2500, 120, 0.2)),
    ((300, 60, 1.0), (2300, 100, 0.4), (3000, 120, 0.2)),
    ((350, 60, 1.0), (800, 80, 0.4), (2400, 120, 0.1)),
    ((500, 70, 1.0), (1900, 100, 0.4), (2600, 120, 0.2)),
    ((500, 70, 1.0), (900, 80, 0.5), (2500, 120, 0.1)),
)


def _resonator(src: np.ndarray, freq: float, bandwidth: float, sample_rate: int) -> np.ndarray:
    """A two-pole resonance (the classic formant filter), run sample by sample."""
    r = float(np.exp(-np.pi * bandwidth / sample_rate))
    a1, a2, g = 2 * r * float(np.cos(2 * np.pi * freq / sample_rate)), -r * r, 1 - r
    out = np.empty(len(src))
    y1 = y2 = 0.0
    for i, s in enumerate(src.tolist()):
        y = g * s + a1 * y1 + a2 * y2
        out[i] = y
        y2, y1 = y1, y
    return out


def speech_like(seconds: float, *, seed: int = 0, pitch_hz: float = 120.0, sample_rate: int = SR) -> np.ndarray:
    """`seconds` of vowel syllables (180-280 ms, 40 ms gaps) as float32 peaking at 0.5."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    total, k = 0, int(rng.integers(5))
    target = int(seconds * sample_rate)
    while total < target:
        n = int((0.18 + 0.05 * (k % 3)) * sample_rate)
        t = np.arange(n) / sample_rate
        f0 = (pitch_hz + 10 * (k % 4)) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = np.cumsum(f0 / sample_rate)
        src = np.diff(np.concatenate([[0.0], (phase % 1.0) - 0.5])) + 0.02 * rng.standard_normal(n)
        syllable = sum(gain * _resonator(src, f, bw, sample_rate) for f, bw, gain in VOWELS[k % len(VOWELS)])
        gap = 0.001 * rng.standard_normal(int(0.04 * sample_rate))
        out += [np.asarray(syllable) * np.sin(np.linspace(0, np.pi, n)) ** 0.5, gap]
        total += n + len(gap)
        k += 1
    x: np.ndarray = np.concatenate(out)[:target]
    peak = float(np.abs(x).max()) + 1e-9
    return (0.5 * x / peak).astype(np.float32)


def tone(seconds: float, hz: float = 440.0, sample_rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, *, seed: int = 0, level: float = 0.05, sample_rate: int = SR) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(int(seconds * sample_rate))).astype(np.float32)


def to_pcm(*parts: np.ndarray, sample_rate: int = SR) -> Pcm:
    x: np.ndarray = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return Pcm(samples=np.clip(x * 32767, -32768, 32767).astype(np.int16), sample_rate=sample_rate)


def utterance(seconds: float, *, seed: int, lead_s: float = 0.4, tail_s: float = 0.8) -> Pcm:
    """Silence, speech-like audio, silence: one spoken turn."""
    return to_pcm(np.zeros(int(lead_s * SR), np.float32), speech_like(seconds, seed=seed),
                  np.zeros(int(tail_s * SR), np.float32))


# ---- screen share -----------------------------------------------------------------------------------

PALETTE = ((24, 64, 160), (20, 120, 90), (150, 60, 30), (90, 40, 130))


def _slide(width: int, height: int, index: int, scroll: int = 0) -> np.ndarray:
    rng = np.random.default_rng(1000 + index)
    img = np.full((height, width, 3), 248, np.uint8)
    bar = max(height // 8, 8)
    img[:bar] = PALETTE[index % len(PALETTE)]
    # "title" blocks in the bar
    for x in range(width // 20, width // 2, width // 12):
        img[bar // 3 : 2 * bar // 3, x : x + width // 16] = 255
    # body: text lines (dark bars of varying length), scrolled by `scroll` pixels
    line_h = max(height // 30, 3)
    body = np.full((height * 2, width, 3), 248, np.uint8)
    for row, y in enumerate(range(line_h, body.shape[0] - line_h, line_h * 2)):
        length = int(width * (0.3 + 0.4 * rng.random()))
        body[y : y + line_h, width // 20 : width // 20 + length] = (60 + (row * 7) % 60,) * 3
    # a bar chart on the right
    for k in range(5):
        h = int(height * 0.1 * (1 + rng.random() * 3))
        x0 = int(width * 0.62) + k * width // 18
        body[height - h : height, x0 : x0 + width // 24] = PALETTE[(index + k) % len(PALETTE)]
    img[bar:] = body[scroll : scroll + height - bar]
    return img


def slide_frames(seconds: float, fps: float, *, width: int = 640, height: int = 360,
                 changes: tuple[float, ...] = (12.0, 30.0, 48.0), scroll_at: float = 20.0) -> Iterator[np.ndarray]:
    """RGB frames of a slide deck: a slide change at each of `changes`, a scroll at `scroll_at` (over
    one second), and a text cursor blinking at 1 Hz (a change too small to be worth a vision call)."""
    for i in range(int(seconds * fps)):
        t = i / fps
        index = sum(1 for c in changes if t >= c)
        scroll = 0
        if t >= scroll_at and index == sum(1 for c in changes if scroll_at >= c):
            scroll = int(min(t - scroll_at, 1.0) * height * 0.4)
        img = _slide(width, height, index, scroll)
        if int(t * 2) % 2 == 0:  # cursor
            img[height - 40 : height - 22, width // 20 : width // 20 + 3] = 20
        yield img


def write_video(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    import fractions

    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=fractions.Fraction(fps).limit_denominator(1000))
        stream.options = {"crf": "10", "b": "400k"}
        first = True
        for rgb in frames:
            if first:
                stream.height, stream.width = rgb.shape[0], rgb.shape[1]
                stream.pix_fmt = "yuv420p"
                first = False
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frame_folder(folder: Path, frames: Iterator[np.ndarray]) -> int:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, rgb in enumerate(frames, start=1):
        Image.fromarray(rgb).save(folder / f"frame_{n:05d}.png", optimize=True)
    return n


DEMO_UTTERANCES = {"audio/pricing-question.wav": (2.4, 11), "audio/sso-question.wav": (3.0, 12)}


def write_demo_media(directory: Path, *, seconds: float = 60.0, fps: float = 4.0) -> None:
    for rel, (length, seed) in DEMO_UTTERANCES.items():
        write_wav(directory / rel, utterance(length, seed=seed))
    write_video(directory / "screen.webm", slide_frames(seconds, fps), fps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m frugal.devkit.demo.synth", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--fps", type=float, default=4.0)
    args = p.parse_args(argv)
    write_demo_media(args.directory, seconds=args.seconds, fps=args.fps)
    print(f"wrote demo media under {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
