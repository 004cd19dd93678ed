"""STT only while someone speaks: audio reaches the streaming STT provider only around voice activity.

Deepgram bills streaming STT for every second of audio it receives, silence included. The gate holds audio
back while the VAD hears no speech, with a pre-roll (audio from just before the VAD fired: soft onsets are
detected late) and a post-roll (audio after the VAD let go: trailing words fade out), so no word is cut at
the edges. In between, the connection is kept open the way Deepgram documents it: a `{"type": "KeepAlive"}`
text message at least every 10 seconds (Deepgram closes a stream that gets neither audio nor KeepAlive for
10 s, NET-0001); KeepAlive is not billed. `livekit-plugins-deepgram` already sends one every 5 s from its
own task, so a gated plugin stream stays open; `SttGate.push` also says when one is due on the media clock,
for clients that own the socket.

Voice activity comes from Silero (the model the session's VAD uses, from the plugin wheel), run on 32 ms
windows of 16 kHz audio, in-line, so every frame is decided with the probability of its own window, OR from the
window's level above a tracked noise floor (`NoiseFloor`): Silero misses some speech whole (soft, short,
unusual voices), and a missed word costs a turn while a forwarded noise second costs $0.00013. The settings
(pre/post-roll, release threshold, the level criterion) were chosen held-out by bench/session/gate_tuning.py.

Switch: `STT_GATE_ENABLED` (gateway settings), on by default; off streams everything (the naive client).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from livekit import rtc
from livekit.agents import stt
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from frugal.common.cost_events import CostEvent, CostKind
from frugal.gateway.spend_guard import RefusalLog
from frugal.gateway.wrapped_engine import ReportsInnerEngine

SAMPLE_RATE = 16000
WINDOW = 512  # Silero's window at 16 kHz: 32 ms


@dataclass(frozen=True, slots=True)
class GateConfig:
    enabled: bool = True
    # Speech probability at or above which a window opens the gate (Silero's default activation), and below
    # which it stops counting as speech once open (hysteresis, as Silero's own `neg_threshold`): a soft
    # syllable inside a word does not close the gate.
    threshold: float = 0.5
    release_threshold: float = 0.35
    # Level above the tracked noise floor at which a window opens the gate / still counts as speech, even when
    # Silero's probability does not (None: Silero alone). Silero misses soft, short or unusual speech whole
    # (on the generated sessions 1 utterance in 14 never reached 0.5, and mid-utterance dips last over a
    # second); a word lost is a failed turn, a noise second forwarded costs $0.00013, so the gate errs to
    # forwarding. Stationary noise raises the floor, not the gate (`NoiseFloor`).
    energy_onset_db: float | None = 15.0
    energy_hold_db: float = 9.0
    # Audio kept from before the gate opened, and sent after speech ended, seconds: chosen held-out by
    # bench/session/gate_tuning.py (the largest onset delay / release lag on generated tuning sessions + two
    # windows), floored at livekit's Silero defaults for the same model (prefix_padding_duration 0.5 s,
    # min_silence_duration 0.55 s): the speech the agent's own VAD cuts for an STT.
    pre_roll_s: float = 0.5
    post_roll_s: float = 0.55
    # Media seconds without audio after which a KeepAlive is due (Deepgram's limit is 10 s).
    keepalive_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"GateConfig.threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.release_threshold <= self.threshold:
            raise ValueError("GateConfig.release_threshold must be in (0, threshold]")
        if not 0.0 <= self.pre_roll_s <= 5.0 or not 0.0 <= self.post_roll_s <= 5.0:
            raise ValueError("GateConfig.pre_roll_s and post_roll_s must be in [0, 5] seconds")
        if self.energy_onset_db is not None and not 0.0 < self.energy_hold_db <= self.energy_onset_db <= 60.0:
            raise ValueError("GateConfig: need 0 < energy_hold_db <= energy_onset_db <= 60 dB")
        if not 0.5 <= self.keepalive_interval_s < 10.0:
            raise ValueError("GateConfig.keepalive_interval_s must be in [0.5, 10) seconds (Deepgram closes at 10 s)")


@dataclass(frozen=True, slots=True)
class GateStep:
    """What to do after one pushed frame: audio to send now (oldest first), and whether a KeepAlive is due."""

    forward: tuple[bytes, ...] = ()
    keepalive: bool = False
    opened: bool = False
    closed: bool = False  # the gate just closed: a good moment to ask the provider to finalize


@dataclass
class GateStats:
    seen_s: float = 0.0
    forwarded_s: float = 0.0
    keepalives: int = 0
    # Of forwarded_s, the audio held back because no paid request could start (frugal.gateway.spend_guard).
    withheld_s: float = 0.0
    # Forwarded spans on the media clock, seconds.
    spans: list[tuple[float, float]] = field(default_factory=list)


# Below this level a window is treated as digital silence whatever the floor (a -100 dB floor would make
# dither "loud").
MIN_SPEECH_DBFS = -70.0


def level_dbfs(frame: bytes) -> float:
    """RMS level of 16-bit PCM, dB relative to full scale (-200 for an empty or all-zero frame)."""
    x = np.frombuffer(frame, dtype=np.int16).astype(np.float32)
    if not len(x):
        return -200.0
    rms = float(np.sqrt(np.mean(x * x))) / 32768.0
    return 20.0 * float(np.log10(rms)) if rms > 1e-10 else -200.0


class NoiseFloor:
    """Minimum-statistics noise floor: follows a quieter window at once and rises slowly (RISE_DB_PER_S), so
    speech (never quiet for long: syllables and words have gaps) does not lift it, while a room getting
    noisier does within seconds."""

    RISE_DB_PER_S = 3.0

    def __init__(self) -> None:
        self.db: float | None = None

    def update(self, level_db: float, duration_s: float) -> float:
        if self.db is None or level_db < self.db:
            self.db = level_db
        else:
            self.db = min(self.db + self.RISE_DB_PER_S * duration_s, level_db)
        return self.db


def cast_db(value: float | None) -> float:
    return float("inf") if value is None else value


class SttGate:
    """Frames in, each with its speech probability; what to forward out. Pure: no I/O, no clock but the media's.

    Disabled, it forwards every frame (and never asks for a KeepAlive)."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self.stats = GateStats()
        self.floor = NoiseFloor()
        self._pre: collections.deque[tuple[bytes, float, float]] = collections.deque()  # (frame, start, dur)
        self._pre_s = 0.0
        self._open = False
        self._last_speech_end = -1e9
        self._last_activity = 0.0  # media time of the last audio or KeepAlive sent

    @property
    def is_open(self) -> bool:
        return self._open

    def speech(self, speech_prob: float, level_db: float, duration_s: float) -> tuple[bool, bool]:
        """(opens, holds) for one window: it would open a closed gate / keeps an open one counting as speech."""
        cfg = self.config
        floor = self.floor.update(level_db, duration_s)
        loud = level_db >= MIN_SPEECH_DBFS and cfg.energy_onset_db is not None
        opens = speech_prob >= cfg.threshold or (loud and level_db - floor >= cast_db(cfg.energy_onset_db))
        holds = speech_prob >= cfg.release_threshold or (loud and level_db - floor >= cfg.energy_hold_db)
        return opens, holds

    def push(self, frame: bytes, duration_s: float, speech_prob: float, level_db: float | None = None) -> GateStep:
        """`level_db`: the frame's level (dBFS) when the caller has it; measured from `frame` otherwise."""
        cfg = self.config
        start = self.stats.seen_s
        end = start + duration_s
        self.stats.seen_s = end
        if not cfg.enabled:
            return self._send((frame,), ((start, duration_s),), opened=False, closed=False)
        opens, holds = self.speech(speech_prob, level_dbfs(frame) if level_db is None else level_db, duration_s)
        speech = holds if self._open else opens
        if speech:
            self._last_speech_end = end
            if not self._open:
                self._open = True
                held = [(f, s, d) for f, s, d in self._pre]
                self._pre.clear()
                self._pre_s = 0.0
                frames = tuple(f for f, _, _ in held) + (frame,)
                spans = tuple((s, d) for _, s, d in held) + ((start, duration_s),)
                return self._send(frames, spans, opened=True, closed=False)
            return self._send((frame,), ((start, duration_s),), opened=False, closed=False)
        if self._open:
            if end - self._last_speech_end <= cfg.post_roll_s:
                return self._send((frame,), ((start, duration_s),), opened=False, closed=False)
            self._open = False
            self._hold(frame, start, duration_s)
            return GateStep(closed=True)
        self._hold(frame, start, duration_s)
        if end - self._last_activity >= cfg.keepalive_interval_s:
            self._last_activity = end
            self.stats.keepalives += 1
            return GateStep(keepalive=True)
        return GateStep()

    def _hold(self, frame: bytes, start: float, duration_s: float) -> None:
        self._pre.append((frame, start, duration_s))
        self._pre_s += duration_s
        while self._pre and self._pre_s - self._pre[0][2] >= self.config.pre_roll_s:
            self._pre_s -= self._pre.popleft()[2]

    def _send(self, frames: tuple[bytes, ...], spans: tuple[tuple[float, float], ...], *, opened: bool,
              closed: bool) -> GateStep:
        for s, d in spans:
            self.stats.forwarded_s += d
            if self.stats.spans and abs(self.stats.spans[-1][1] - s) < 1e-6:
                self.stats.spans[-1] = (self.stats.spans[-1][0], s + d)
            else:
                self.stats.spans.append((s, s + d))
        self._last_activity = spans[-1][0] + spans[-1][1]
        return GateStep(forward=frames, opened=opened, closed=closed)


class SpeechProbability:
    """Silero VAD probabilities for consecutive 32 ms windows of 16 kHz mono int16 audio, in-line."""

    def __init__(self) -> None:
        from livekit.plugins.silero import onnx_model  # the session's VAD model, from the plugin wheel

        self._model = onnx_model.OnnxModel(onnx_session=onnx_model.new_inference_session(True),
                                           sample_rate=SAMPLE_RATE)
        self._rest = np.zeros(0, np.float32)

    def windows(self, samples: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """Appends int16 samples; yields (window samples as int16, probability) for each full window."""
        x = np.concatenate([self._rest, samples.astype(np.float32) / 32768.0])
        n = len(x) // WINDOW
        for i in range(n):
            w = x[i * WINDOW:(i + 1) * WINDOW]
            yield (w * 32768.0).astype(np.int16), float(self._model(w))
        self._rest = x[n * WINDOW:]


def gate_pcm(pcm: np.ndarray, config: GateConfig) -> tuple[list[bytes | None], SttGate]:
    """Runs a whole 16 kHz int16 recording through VAD and gate. Returns the send sequence (audio chunks, or
    None where a KeepAlive is due) and the gate (its stats: seconds seen and forwarded, spans, KeepAlives)."""
    gate = SttGate(config)
    vad = SpeechProbability()
    out: list[bytes | None] = []
    for window, prob in vad.windows(pcm):
        step = gate.push(window.tobytes(), WINDOW / SAMPLE_RATE, prob)
        out.extend(step.forward)
        if step.keepalive:
            out.append(None)
    return out, gate


# ---- livekit integration -------------------------------------------------------------------------------


_DEFAULT = GateConfig()


class GateSettings(BaseSettings):
    """`STT_GATE_ENABLED`, `STT_GATE_PRE_ROLL_S`, `STT_GATE_POST_ROLL_S`, `STT_GATE_THRESHOLD`,
    `STT_GATE_ENERGY_ONSET_DB`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="STT_GATE_")

    enabled: bool = True
    pre_roll_s: float = Field(default=_DEFAULT.pre_roll_s, ge=0, le=5)
    post_roll_s: float = Field(default=_DEFAULT.post_roll_s, ge=0, le=5)
    threshold: float = Field(default=_DEFAULT.threshold, gt=0, lt=1)
    # 0 turns the level criterion off (Silero alone).
    energy_onset_db: float = Field(default=_DEFAULT.energy_onset_db or 0.0, ge=0, le=60)

    def config(self) -> GateConfig:
        onset = self.energy_onset_db or None
        return GateConfig(enabled=self.enabled, pre_roll_s=self.pre_roll_s, post_roll_s=self.post_roll_s,
                          threshold=self.threshold,
                          release_threshold=min(_DEFAULT.release_threshold, self.threshold),
                          energy_onset_db=onset,
                          energy_hold_db=min(_DEFAULT.energy_hold_db, onset or _DEFAULT.energy_hold_db))


class GatedSTT(ReportsInnerEngine, stt.STT[Any]):
    """A streaming STT that only receives audio around speech. Transcripts, usage and errors are the wrapped
    engine's (its usage events are the audio it was actually sent: what the provider bills)."""

    inner: stt.STT[Any]

    def __init__(self, inner: stt.STT[Any], config: GateConfig | None = None,
                 on_stream_end: Callable[[SttGate], Awaitable[None]] | None = None,
                 why_not_spend: Callable[[], str | None] | None = None) -> None:
        super().__init__(capabilities=inner.capabilities)
        self.inner = inner
        self.config = config or GateConfig()
        self.gates: list[SttGate] = []  # one per stream, for the session report
        self.on_stream_end = on_stream_end
        # frugal.gateway.spend_guard: while it gives a reason, audio the gate would send is held back.
        self.why_not_spend = why_not_spend
        self.refusals = RefusalLog("stt")

    async def _recognize_impl(self, buffer: Any, *, language: Any = NOT_GIVEN,
                              conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> stt.SpeechEvent:
        return await self.inner.recognize(buffer, language=language, conn_options=conn_options)

    def stream(self, *, language: Any = NOT_GIVEN,
               conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> stt.RecognizeStream:
        gate = SttGate(self.config)
        self.gates.append(gate)
        return _GatedStream(stt=self, inner=self.inner.stream(language=language, conn_options=conn_options),
                            gate=gate, conn_options=conn_options)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _GatedStream(stt.RecognizeStream):
    def __init__(self, *, stt: GatedSTT, inner: stt.RecognizeStream, gate: SttGate,
                 conn_options: APIConnectOptions) -> None:
        # The base class resamples pushed frames to 16 kHz, the rate Silero and the gate work at. A disabled
        # gate passes frames on as pushed (the provider's plugin resamples them, as without the wrapper).
        super().__init__(stt=stt, conn_options=conn_options,
                         sample_rate=SAMPLE_RATE if stt.config.enabled else NOT_GIVEN)
        self._owner = stt  # the base class keeps it as a plain stt.STT
        self._inner = inner
        self._gate = gate

    def _refused(self, seconds: float) -> bool:
        """True (and the audio counted as withheld) while no paid request may start."""
        owner = self._owner
        why = owner.why_not_spend() if owner.why_not_spend is not None else None
        if why is None:
            return False
        owner.refusals.refused_because(why)
        self._gate.stats.withheld_s += seconds
        return True

    async def _run(self) -> None:
        owner = self._owner
        # The lever off: no VAD and no 32 ms windows in front of the provider, each frame sent as it came.
        vad = SpeechProbability() if owner.config.enabled else None
        inner = self._inner

        async def forward() -> None:
            async for ev in inner:
                self._event_ch.send_nowait(ev)

        forwarder = asyncio.create_task(forward(), name="stt-gate-forward")
        try:
            async for data in self._input_ch:
                if not isinstance(data, rtc.AudioFrame):  # a flush from the session: pass it on
                    inner.flush()
                    continue
                if vad is None:
                    self._gate.push(b"", data.duration, 1.0)  # counted as seen and forwarded
                    if not self._refused(data.duration):
                        inner.push_frame(data)
                    continue
                for window, prob in vad.windows(np.frombuffer(data.data, dtype=np.int16)):
                    step = self._gate.push(window.tobytes(), WINDOW / SAMPLE_RATE, prob)
                    if step.forward and self._refused(len(step.forward) * WINDOW / SAMPLE_RATE):
                        continue
                    for chunk in step.forward:
                        inner.push_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, len(chunk) // 2))
                    if step.closed:  # speech ended: ask for the final transcript now
                        inner.flush()
            inner.end_input()
            await forwarder
        finally:
            if not forwarder.done():
                forwarder.cancel()
            await asyncio.gather(forwarder, return_exceptions=True)
            await inner.aclose()
            if owner.on_stream_end is not None:
                try:
                    await owner.on_stream_end(self._gate)
                except Exception:  # a record of audio NOT sent: never fail the stream for it
                    logging.getLogger(__name__).exception("could not record the gated stream")


class _Meter(Protocol):
    """What the hook needs of the session's SpeechCostMeter: its zero-cost record (through the recorder)."""

    def record_free(self, *, kind: CostKind, provider: str, model: str, offline: bool, saved_by: str,
                    attributes: dict[str, str]) -> CostEvent: ...

    def why_not_spend(self) -> str | None: ...


def stream_attributes(gate: SttGate) -> dict[str, str]:
    """What a zero-cost record of a gated stream carries: the audio the gateway had (`stream_seconds`), so the
    session report's naive baseline can price "STT streamed for the whole session" (what was billed is in the
    meter's own events)."""
    return {"stt_gate": "on", "stream_seconds": f"{gate.stats.seen_s:.3f}",
            "forwarded_seconds": f"{gate.stats.forwarded_s - gate.stats.withheld_s:.3f}",
            "keepalives_due": str(gate.stats.keepalives)}


def maybe_gate(engine: stt.STT[Any], *, offline: bool, settings: GateSettings | None = None,
               meter: _Meter | None = None) -> stt.STT[Any]:
    """The gateway hook: a streaming provider STT gets the gate when the lever is on. The offline stand-in is
    not streaming (the session's VAD already cuts its segments), so it is left as it is. With `meter`, each
    gated stream leaves a zero-cost record of the audio it had (through the meter's recorder)."""
    cfg = (settings or GateSettings()).config()
    if offline or not engine.capabilities.streaming:
        return engine
    if not cfg.enabled:
        # The lever is off: every frame goes through as pushed (no VAD, no windows, no resampling, no record
        # of saved audio), but none while its cost could not be recorded (frugal.gateway.spend_guard).
        return engine if meter is None else GatedSTT(engine, cfg, why_not_spend=meter.why_not_spend)
    if meter is None:
        return GatedSTT(engine, cfg)
    async def on_end(gate: SttGate) -> None:
        meter.record_free(kind=CostKind.STT, provider=engine.provider, model=engine.model, offline=False,
                          saved_by="stt_gate", attributes=stream_attributes(gate))

    return GatedSTT(engine, cfg, on_stream_end=on_end, why_not_spend=meter.why_not_spend)
