"""Speech providers (Deepgram STT, ElevenLabs TTS, or labelled offline stand-ins) and their cost events.

Offline stand-ins never pretend: the offline STT cannot recognise speech, it hands out transcripts it was
given (a recorded session's), and the offline TTS produces silence of a plausible length. Their cost events
say `offline` and `estimated`, are priced at zero real spend, and carry the list price the real provider
would have charged as an attribute.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from livekit import rtc
from livekit.agents import AgentSession, stt, tts, utils
from livekit.agents.language import LanguageCode
from livekit.agents.metrics import STTMetrics, TTSMetrics
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.voice.events import SpeechCreatedEvent

# livekit plugins register themselves on import, which must happen on the main thread.
from livekit.plugins import deepgram, elevenlabs

from frugal.common.cost_events import CostEvent, CostEventProducer, CostKind
from frugal.common.cost_recorder import CostRecorder
from frugal.common.pricing import PriceCatalog
from frugal.common.usage import UsageAmounts
from frugal.gateway import metrics
from frugal.gateway.config import Settings

log = logging.getLogger(__name__)

try:
    # The speech a TTS request is made for: livekit-agents keeps it in this context variable in the tasks that
    # generate a speech, and its own metrics handler reads it there to set TTSMetrics.speech_id (on the engine
    # it watches, not the one the meter watches). Private: without it rows say nothing, and
    # test_gateway_long_answers fails.
    from livekit.agents.voice.agent_activity import _SpeechHandleContextVar as _SPEECH
except ImportError:  # pragma: no cover - a livekit-agents that moved it
    _SPEECH = None  # type: ignore[assignment]

SERVICE = "media-gateway"
OFFLINE_STT_MODEL = "offline-stt"
OFFLINE_TTS_MODEL = "offline-tts"
# Offline TTS: seconds of (silent) audio per character, about 15 characters per second of speech.
OFFLINE_SECONDS_PER_CHAR = 0.065


@dataclass(frozen=True, slots=True)
class ProviderLabel:
    """Who serves a speech kind: the catalog model priced, and the list-price model offline runs stand in for."""

    kind: CostKind
    provider: str
    model: str
    offline: bool
    list_price_model: str

    def describe(self) -> str:
        return f"{self.provider}/{self.model}" + (f" (offline stand-in for {self.list_price_model})" if self.offline
                                                  else "")


class TranscriptFeed:
    """Transcripts the offline STT hands out, in order: in replay, the recorded session's own."""

    def __init__(self) -> None:
        self._texts: collections.deque[str] = collections.deque()

    def push(self, text: str) -> None:
        self._texts.append(text)

    def pop(self) -> str | None:
        return self._texts.popleft() if self._texts else None

    def __len__(self) -> int:
        return len(self._texts)


class OfflineSTT(stt.STT[Any]):
    """Labelled stand-in for Deepgram when DEEPGRAM_API_KEY is not set. It does not recognise speech: each
    speech segment the VAD cuts gets the next transcript from its feed, or nothing (the segment is ignored)."""

    def __init__(self, feed: TranscriptFeed | None = None) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self.feed = feed if feed is not None else TranscriptFeed()
        self._warned = False

    @property
    def model(self) -> str:
        return OFFLINE_STT_MODEL

    @property
    def provider(self) -> str:
        return "offline"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        seconds = utils.audio.calculate_audio_duration(buffer)
        text = self.feed.pop()
        if text is None:
            if not self._warned:
                log.warning("offline STT (no DEEPGRAM_API_KEY) cannot recognise speech; %.1fs segment ignored", seconds)
                self._warned = True
            text = ""
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=uuid.uuid4().hex,
            alternatives=[stt.SpeechData(language=LanguageCode("en"), text=text, confidence=0.0,
                                         metadata={"offline": True, "source": "recorded transcript"})],
        )


class OfflineTTS(tts.TTS[Any]):
    """Labelled stand-in for ElevenLabs when no key is set: silence as long as the text would take to say."""

    def __init__(self, sample_rate: int = 24000) -> None:
        super().__init__(capabilities=tts.TTSCapabilities(streaming=False), sample_rate=sample_rate, num_channels=1)

    @property
    def model(self) -> str:
        return OFFLINE_TTS_MODEL

    @property
    def provider(self) -> str:
        return "offline"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return SilentStream(tts=self, input_text=text, conn_options=conn_options)


class SilentStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        rate = self._tts.sample_rate
        output_emitter.initialize(request_id=uuid.uuid4().hex, sample_rate=rate, num_channels=1, mime_type="audio/pcm")
        samples = int(rate * OFFLINE_SECONDS_PER_CHAR * len(self.input_text))
        output_emitter.push(bytes(2 * samples))
        output_emitter.flush()


def build_stt(settings: Settings, *, feed: TranscriptFeed | None = None,
              http_session: aiohttp.ClientSession | None = None) -> tuple[stt.STT[Any], ProviderLabel]:
    if settings.deepgram_api_key:
        kwargs: dict[str, Any] = {"model": settings.deepgram_model, "api_key": settings.deepgram_api_key,
                                  "http_session": http_session}
        if settings.deepgram_base_url:
            kwargs["base_url"] = settings.deepgram_base_url
        return deepgram.STT(**kwargs), ProviderLabel(CostKind.STT, "deepgram", settings.deepgram_model, False,
                                                     settings.deepgram_model)
    return OfflineSTT(feed), ProviderLabel(CostKind.STT, "offline", OFFLINE_STT_MODEL, True, settings.deepgram_model)


def build_tts(
    settings: Settings, *, http_session: aiohttp.ClientSession | None = None
) -> tuple[tts.TTS[Any], ProviderLabel]:
    if settings.elevenlabs_api_key:
        kwargs: dict[str, Any] = {"model": settings.elevenlabs_model, "api_key": settings.elevenlabs_api_key,
                                  "http_session": http_session, "encoding": settings.elevenlabs_encoding}
        if settings.elevenlabs_base_url:
            kwargs["base_url"] = settings.elevenlabs_base_url
        if settings.elevenlabs_voice_id:
            kwargs["voice_id"] = settings.elevenlabs_voice_id
        return elevenlabs.TTS(**kwargs), ProviderLabel(CostKind.TTS, "elevenlabs", settings.elevenlabs_model, False,
                                                       settings.elevenlabs_model)
    return OfflineTTS(), ProviderLabel(CostKind.TTS, "offline", OFFLINE_TTS_MODEL, True, settings.elevenlabs_model)


class SpeechCostMeter:
    """Turns the STT/TTS usage livekit-agents reports (audio seconds pushed, characters synthesised) into cost
    events, one per provider request, priced by the catalog."""

    def __init__(
        self,
        producer: CostEventProducer | None,
        catalog: PriceCatalog,
        *,
        tenant_id: str,
        session_id: str,
    ) -> None:
        self.producer = producer
        self.catalog = catalog
        self.recorder = CostRecorder(producer, catalog, service=SERVICE)
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.events: list[CostEvent] = []
        self._queue: asyncio.Queue[CostEvent | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._seq = 0
        self._watched: list[tuple[stt.STT[Any] | tts.TTS[Any], Any]] = []
        # What each TTS request spoke, for the naive baseline (frugal.common.session_cost folds an answer's
        # sentences into one answer): the session's speech at the time, and which speeches are model answers.
        self._session: AgentSession[Any] | None = None
        self._labels: dict[CostKind, ProviderLabel] = {}
        self._answers: set[str] = set()

    def why_not_spend(self) -> str | None:
        """Why no paid STT/TTS request may start now (its cost event could not be spooled), or None."""
        return self.recorder.why_not_spend()

    def watch_session(self, session: AgentSession[Any]) -> None:
        """Learns which speeches are model answers (`speech_created` with source generate_reply) and which are
        fixed phrases (`say`: the greeting, apologies)."""
        self._session = session

        def on_speech(ev: SpeechCreatedEvent) -> None:
            if ev.source == "generate_reply":
                self._answers.add(ev.speech_handle.id)

        session.on("speech_created", on_speech)

    def utterance(self) -> dict[str, str]:
        """`utterance=answer` with `answer_id` (the speech id), or `utterance=fixed`, for what is being spoken now;
        nothing when no session is watched or nothing is being spoken."""
        # Not `session.current_speech`: that is the speech being played, and the next one is synthesised while
        # the last plays (measured: an answer's sentences synthesised under the greeting's handle).
        speech = _SPEECH.get(None) if _SPEECH is not None and self._session is not None else None
        if speech is None:
            return {}
        if speech.id in self._answers:
            return {"utterance": "answer", "answer_id": speech.id}
        return {"utterance": "fixed"}

    def watch_stt(self, engine: stt.STT[Any], label: ProviderLabel) -> None:
        self._labels[label.kind] = label
        def on_metrics(m: Any) -> None:
            if isinstance(m, STTMetrics) and m.audio_duration > 0:
                self.record(label, UsageAmounts(audio_seconds=round(m.audio_duration, 3), requests=1,
                                                estimated=label.offline), m.request_id)

        engine.on("metrics_collected", on_metrics)
        self._watched.append((engine, on_metrics))

    def watch_tts(self, engine: tts.TTS[Any], label: ProviderLabel) -> None:
        self._labels[label.kind] = label
        def on_metrics(m: Any) -> None:
            if isinstance(m, TTSMetrics) and m.characters_count > 0:
                self.record(label, UsageAmounts(characters=m.characters_count, requests=1, estimated=label.offline),
                            m.request_id, attributes=self.utterance())

        engine.on("metrics_collected", on_metrics)
        self._watched.append((engine, on_metrics))

    def record(self, label: ProviderLabel, usage: UsageAmounts, request_id: str = "",
               attributes: dict[str, str] | None = None) -> CostEvent:
        """One cost event per STT/TTS request (frugal.common.cost_recorder: own id per attempt; the one
        offline rule: an offline stand-in is priced at the list price of the model it stands in for)."""
        self._seq += 1
        event = self.recorder.build(
            usage=usage, tenant_id=self.tenant_id, kind=label.kind, provider=label.provider, model=label.model,
            key=(self.session_id, str(self._seq), request_id), session_id=self.session_id,
            request_id=request_id or None, offline=label.offline, priced_as=label.list_price_model,
            attributes={"list_price_model": label.list_price_model, **(attributes or {})},
        )
        self.events.append(event)
        metrics.SPEECH_EVENTS.labels(kind=label.kind.value, offline=str(label.offline).lower()).inc()
        if self.producer is not None:
            self._ensure_worker()
            self._queue.put_nowait(event)
        return event

    def record_free(self, *, kind: CostKind, provider: str, model: str, offline: bool, saved_by: str,
                    attributes: dict[str, str]) -> CostEvent:
        """A zero-cost record of work a lever saved (frugal.common.cost_recorder.CostRecorder.build_free),
        kept and sent like the meter's other events."""
        self._seq += 1
        label = self._labels.get(kind)
        # Offline, priced like the engine's own rows: at the list price of the model stood in for.
        priced_as = label.list_price_model if offline and label is not None else None
        if priced_as is not None:
            attributes = {"list_price_model": priced_as, **attributes}
        event = self.recorder.build_free(
            saved_by=saved_by, tenant_id=self.tenant_id, kind=kind, provider=provider, model=model,
            key=(self.session_id, str(self._seq), saved_by), session_id=self.session_id, offline=offline,
            priced_as=priced_as, attributes=attributes)
        self.events.append(event)
        if self.producer is not None:
            self._ensure_worker()
            self._queue.put_nowait(event)
        return event

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="speech-cost-events")

    async def _drain(self) -> None:
        assert self.producer is not None
        while True:
            event = await self._queue.get()
            if event is None:
                return
            await self.recorder.emit(event)  # spools when Redis is down; logs anything else

    async def aclose(self) -> None:
        for engine, cb in self._watched:
            engine.off("metrics_collected", cb)
        self._watched.clear()
        if self._worker is not None and not self._worker.done():
            self._queue.put_nowait(None)
            await asyncio.gather(self._worker, return_exceptions=True)


def silence(seconds: float, sample_rate: int = 16000) -> rtc.AudioFrame:
    n = int(seconds * sample_rate)
    return rtc.AudioFrame(bytes(2 * n), sample_rate, 1, n)
