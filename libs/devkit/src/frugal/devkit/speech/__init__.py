"""Driving livekit STT/TTS engines in tests: push PCM through a recognize stream, collect a synthesis."""

from __future__ import annotations

from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import stt, tts


async def run_stt_stream(engine: stt.STT[Any], pcm: np.ndarray, sample_rate: int, *, step: int = 320) -> None:
    """Opens one stream, pushes `pcm` (int16 mono) in `step`-sample frames, ends the input, reads every event
    and closes the stream."""
    stream = engine.stream()
    for i in range(0, len(pcm), step):
        chunk = pcm[i:i + step]
        stream.push_frame(rtc.AudioFrame(chunk.tobytes(), sample_rate, 1, len(chunk)))
    stream.end_input()
    async for _ in stream:
        pass
    await stream.aclose()


async def synthesized_pcm(engine: tts.TTS[Any], text: str) -> bytes:
    """All the audio one `synthesize` call produces."""
    out = b""
    async with engine.synthesize(text) as stream:
        async for ev in stream:
            out += ev.frame.data.tobytes()
    return out
