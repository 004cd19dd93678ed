"""No paid speech request while its cost could not be recorded durably.

When the cost-event spool is full or cannot be written (the cost Redis away for long), the router refuses
turns and rag and vision-dedup start no paid call. The gateway's speech does the same:
- TTS (`SpendGuardedTTS`, right around the paid engine, inside the audio cache): an utterance that is not in
  the cache gets the offline stand-in's silence of the same length (a `NotCalledStream`) and no request goes
  to the provider. The cache keeps no such silence as a phrase's audio, and its hits still play: they cost
  nothing, so a greeting or an apology heard before is still heard during the outage.
- STT: the gate (frugal.gateway.stt_gate) holds back audio chunks it would have sent.
Each refusal is logged (at most every 10 s) and counted in `gateway_speech_not_called_total{kind}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from livekit.agents import tokenize, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from frugal.gateway import metrics
from frugal.gateway.speech import OfflineTTS, SilentStream
from frugal.gateway.wrapped_engine import ReportsInnerEngine

log = logging.getLogger(__name__)

WhyNot = Callable[[], str | None]  # None: a paid request may start; else why not


class RefusalLog:
    """Counts every refusal; logs the first one and then at most one every `every_s` seconds."""

    def __init__(self, kind: str, every_s: float = 10.0) -> None:
        self.kind = kind
        self.every_s = every_s
        self.refused = 0
        self._last = -float("inf")

    def refused_because(self, why: str) -> None:
        self.refused += 1
        metrics.SPEECH_NOT_CALLED.labels(kind=self.kind).inc()
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            log.warning("%s not sent to the provider (%d so far): %s", self.kind.upper(), self.refused, why)


class NotCalledStream(SilentStream):
    """A refused utterance's silence: a stand-in, not the phrase's audio (frugal.gateway.tts_cache keeps none)."""


class SpendGuardedTTS(ReportsInnerEngine, tts.TTS[Any]):
    """`inner` while paid requests may start, the offline stand-in's silence while they may not."""

    inner: tts.TTS[Any]

    def __init__(self, inner: tts.TTS[Any], why_not: WhyNot) -> None:
        super().__init__(capabilities=inner.capabilities, sample_rate=inner.sample_rate,
                         num_channels=inner.num_channels)
        self.inner = inner
        self._why_not = why_not
        self._silence = OfflineTTS(sample_rate=inner.sample_rate)
        self.refusals = RefusalLog("tts")

    def _refused(self) -> bool:
        why = self._why_not()
        if why is None:
            return False
        self.refusals.refused_because(why)
        return True

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        if self._refused():
            return NotCalledStream(tts=self._silence, input_text=text, conn_options=conn_options)
        return self.inner.synthesize(text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> tts.SynthesizeStream:
        # Checked when the session opens the utterance's stream (one per reply).
        if self._refused():
            adapter = tts.StreamAdapter(tts=self._silence, sentence_tokenizer=tokenize.blingfire.SentenceTokenizer())
            return adapter.stream(conn_options=conn_options)
        return self.inner.stream(conn_options=conn_options)

    async def aclose(self) -> None:
        await self.inner.aclose()


def guard_tts(engine: tts.TTS[Any], *, offline: bool, why_not: WhyNot) -> tts.TTS[Any]:
    """The gateway hook: a paid TTS engine behind the guard; the offline stand-in costs nothing and is left."""
    return engine if offline else SpendGuardedTTS(engine, why_not)
