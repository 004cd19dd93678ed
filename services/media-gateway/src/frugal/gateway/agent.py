"""The agent and its `AgentSession`, assembled the same way for a LiveKit room, the console and replay."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from livekit.agents import Agent, AgentSession, ErrorEvent, TurnHandlingOptions, llm, vad

# livekit plugins register themselves on import, which must happen on the main thread.
from livekit.plugins import silero

from frugal.common.cost_events import CostEventProducer, CostKind
from frugal.common.pricing import PriceCatalog
from frugal.common.session_cost import SessionCost
from frugal.gateway import session_end, spend_guard, stt_gate, tts_cache
from frugal.gateway.clients import MeshClients, ResolvedTenant
from frugal.gateway.config import Settings
from frugal.gateway.long_answers import LongAnswerPolicy, LongAnswers
from frugal.gateway.router_fallback import fallback_llm
from frugal.gateway.router_llm import RouterLLM, TurnReport, apology_for, status_of
from frugal.gateway.speech import ProviderLabel, SpeechCostMeter, TranscriptFeed, build_stt, build_tts
from frugal.gateway.tools import knowledge_base_tool

log = logging.getLogger(__name__)

# Local, explicit turn handling: VAD decides when the user's turn ends (no cloud turn detector), VAD
# decides interruptions, and no preemptive generation (it would pay for answers to half-finished turns).
TURN_HANDLING = TurnHandlingOptions(
    turn_detection="vad",
    endpointing={"mode": "fixed", "min_delay": 0.5, "max_delay": 3.0},
    interruption={"mode": "vad", "min_duration": 0.5},
    preemptive_generation={"enabled": False},
)


def load_vad() -> vad.VAD:
    """Silero VAD: its ONNX model ships in the plugin wheel, so this works offline."""
    return silero.VAD.load()


class FrugalAgent(Agent):
    def __init__(self, *, instructions: str, welcome: str | None,
                 tools: list[llm.Tool | llm.Toolset] | None = None) -> None:
        super().__init__(instructions=instructions, tools=list(tools or []))
        self.welcome = welcome

    async def on_enter(self) -> None:
        if self.welcome:
            # A fixed greeting: spoken (TTS is billed), never sent to a model.
            self.session.say(self.welcome)


def speak_apology_on_failure(session: AgentSession[Any]) -> None:
    """When an answer finally fails (retries and fallbacks exhausted), say so out loud. The apology is the
    gateway's, not the model's: it is spoken but kept out of the chat history the router sees next turn."""

    def on_error(ev: ErrorEvent) -> None:
        err = ev.error
        if not isinstance(err, llm.LLMError) or err.recoverable:
            return
        try:
            session.say(apology_for(status_of(err.error)), add_to_chat_ctx=False)
        except RuntimeError:
            log.debug("session closing: no apology spoken")

    session.on("error", on_error)


@dataclass
class SessionParts:
    session: AgentSession[None]
    agent: FrugalAgent
    llm: RouterLLM
    meter: SpeechCostMeter
    feed: TranscriptFeed
    stt_label: ProviderLabel
    tts_label: ProviderLabel
    tenant: ResolvedTenant
    session_id: str
    # Where long answers go in full: set `long_answers.post` once there is a room chat (worker.join_room).
    long_answers: LongAnswers
    notes: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    # The whole-session cost, set when the session closes (frugal.gateway.session_end).
    cost: SessionCost | None = None

    async def aclose(self) -> None:
        # Closing the session flushes STT/TTS streams, whose final usage arrives then: the meter must still
        # listen, so it closes (and sends what it holds) after the session.
        await self.session.aclose()
        await self.meter.aclose()
        if self.cost is None:  # once, however often it is closed
            self.cost = session_end.finish(self.meter.events, self.llm.reports, self.meter.catalog,
                                           wall_seconds=time.monotonic() - self.started_at,
                                           session_id=self.session_id)


def welcome_text(settings: Settings, tenant: ResolvedTenant) -> str | None:
    if not settings.welcome_message:
        return None
    return settings.welcome_message.replace("{display_name}", tenant.display_name)


def build_session(
    settings: Settings,
    clients: MeshClients,
    tenant: ResolvedTenant,
    session_id: str,
    *,
    vad_model: vad.VAD,
    producer: CostEventProducer | None,
    catalog: PriceCatalog,
    feed: TranscriptFeed | None = None,
    http_session: aiohttp.ClientSession | None = None,
    user_away_timeout: float | None = 15.0,
    tts_store: tts_cache.AudioStore | None = None,
) -> SessionParts:
    """`tts_store`: where the TTS audio cache lives (the worker passes the cache Redis); default the
    process's bounded LRU."""
    feed = feed if feed is not None else TranscriptFeed()
    stt_engine, stt_label = build_stt(settings, feed=feed, http_session=http_session)
    tts_engine, tts_label = build_tts(settings, http_session=http_session)
    reports: list[TurnReport] = []
    long_answers = LongAnswers(LongAnswerPolicy(settings.long_answer_spoken_chars, settings.long_answer_notice))
    router = RouterLLM(clients.router, tenant_id=tenant.tenant_id, session_id=session_id,
                       timeout_s=settings.router_timeout_s, history_max=settings.history_max_messages,
                       reports=reports, long_answers=long_answers)
    session_llm: llm.LLM[Any] = router
    routers = [router]
    if clients.router_fallback is not None:
        # A second router deployment (e.g. another zone): livekit's FallbackAdapter moves to it when the
        # first one fails with a retryable error, and back once it recovers.
        backup = RouterLLM(clients.router_fallback, tenant_id=tenant.tenant_id, session_id=session_id,
                           timeout_s=settings.router_timeout_s, history_max=settings.history_max_messages,
                           reports=reports, long_answers=long_answers)
        routers.append(backup)
        session_llm = fallback_llm([(router, clients.router_channel), (backup, clients.router_fallback_channel)],
                                   attempt_timeout=settings.router_timeout_s)
    meter = SpeechCostMeter(producer, catalog, tenant_id=tenant.tenant_id, session_id=session_id)
    stt_engine = stt_gate.maybe_gate(stt_engine, offline=stt_label.offline, meter=meter)  # STT only on speech
    meter.watch_stt(stt_engine, stt_label)
    meter.watch_tts(tts_engine, tts_label)
    # No paid synthesis while its cost could not be recorded. Inside the cache: its hits cost nothing and
    # still play, and it keeps none of the guard's silence.
    tts_engine = spend_guard.guard_tts(tts_engine, offline=tts_label.offline, why_not=meter.why_not_spend)
    tts_engine = tts_cache.maybe_cache(  # repeated utterances from the audio cache (after the meter's watch)
        tts_engine, tenant_id=tenant.tenant_id, voice=settings.elevenlabs_voice_id or "default",
        session_id=session_id, meter=meter, provider=tts_label.provider, model=tts_label.model,
        offline=tts_label.offline, store=tts_store)
    session: AgentSession[None] = AgentSession(
        vad=vad_model, stt=stt_engine, tts=tts_engine, llm=session_llm, turn_handling=TURN_HANDLING,
        user_away_timeout=user_away_timeout,
    )
    meter.watch_session(session)  # which TTS requests speak answers (the naive baseline sizes answers)

    def chat_only(report: TurnReport) -> None:
        # A long answer's rest went to the room chat unspoken: a zero-cost row, so the naive agent speaks it.
        if report.chat_only_chars:
            meter.record_free(kind=CostKind.TTS, provider=tts_label.provider, model=tts_label.model,
                              offline=tts_label.offline, saved_by="long_to_chat",
                              attributes={"chat_only_characters": str(report.chat_only_chars),
                                          **meter.utterance()})

    for answering in routers:
        answering.add_listener(chat_only)
    speak_apology_on_failure(session)
    tools: list[llm.Tool | llm.Toolset] = []
    if settings.kb_tool_enabled and tenant.policy.knowledge_base_enabled:
        tools.append(knowledge_base_tool(clients.rag, tenant_id=tenant.tenant_id, session_id=session_id,
                                         top_k=settings.kb_tool_top_k, timeout_s=settings.rag_timeout_s))
    instructions = settings.agent_instructions
    agent = FrugalAgent(instructions=instructions, welcome=welcome_text(settings, tenant), tools=tools)
    notes = [f"STT {stt_label.describe()}", f"TTS {tts_label.describe()}",
             f"tools {', '.join(t.info.name for t in tools if isinstance(t, llm.FunctionTool)) or 'none'}"]
    if clients.router_fallback is not None:
        notes.append(f"router fallback {settings.router_fallback_addr}")
    return SessionParts(session=session, agent=agent, llm=router, meter=meter, feed=feed, stt_label=stt_label,
                        tts_label=tts_label, tenant=tenant, session_id=session_id, long_answers=long_answers,
                        notes=notes)
