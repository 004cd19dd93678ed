"""A livekit-agents `llm.LLM` whose stream is the router's `Respond` server-streaming RPC.

Every turn carries the tenant and session ids (metadata) and a deadline. Router errors never kill the
session: the stream ends with a short spoken apology instead (and the turn report says why).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from livekit.agents import llm
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr

from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common.history_window import history_window
from frugal.common.tenancy import REQUEST_ID_METADATA_KEY, SESSION_METADATA_KEY, TENANT_METADATA_KEY
from frugal.common.usage import UsageAmounts
from frugal.gateway import metrics

log = logging.getLogger(__name__)

TIER_NAMES = {common_pb2.TIER_LITE: "lite", common_pb2.TIER_STANDARD: "standard", common_pb2.TIER_PREMIUM: "premium"}

APOLOGIES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "Sorry, this workspace has reached its usage limit for now, "
    "so I can't answer that.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Sorry, that took me too long. Could you ask again?",
    grpc.StatusCode.UNAVAILABLE: "Sorry, I can't reach my answering service right now. Please try again in a moment.",
}
DEFAULT_APOLOGY = "Sorry, something went wrong on my side. Please try again."
CUT_OFF_APOLOGY = " Sorry, I lost the rest of that answer."


def turn_metadata(tenant_id: str, session_id: str, request_id: str) -> tuple[tuple[str, str], ...]:
    """The metadata every turn carries; the request id is the turn id, so logs of all hops join on it."""
    return ((TENANT_METADATA_KEY, tenant_id), (SESSION_METADATA_KEY, session_id), (REQUEST_ID_METADATA_KEY, request_id))


def apology_for(code: grpc.StatusCode) -> str:
    return APOLOGIES.get(code, DEFAULT_APOLOGY)


@dataclass
class TurnReport:
    """What one answered turn cost and who answered it (from the router's final chunk)."""

    turn_id: str
    text: str
    answer: str = ""
    tier: str | None = None
    model: str = ""
    provider: str = ""
    offline: bool = False
    cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    usage: UsageAmounts | None = None
    cost_event_ids: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    score: float | None = None
    first_token_ms: float | None = None
    total_ms: float = 0.0
    error_code: str | None = None
    error_detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error_code is None


TurnListener = Callable[[TurnReport], None]

ROLES = {"user": router_pb2.ROLE_USER, "assistant": router_pb2.ROLE_ASSISTANT, "system": router_pb2.ROLE_SYSTEM,
         "developer": router_pb2.ROLE_SYSTEM}


def turn_input_from_chat(chat_ctx: llm.ChatContext, history_max: int) -> router_pb2.TurnInput:
    """The newest user message is the turn; what precedes it (system instructions first) is history."""
    msgs: list[tuple[str, str]] = []
    for item in chat_ctx.items:
        if item.type != "message":
            continue
        text = (item.text_content or "").strip()
        if text and item.role in ROLES:
            msgs.append((item.role, text))
    text = ""
    if msgs and msgs[-1][0] == "user":
        text = msgs.pop()[1]
    system = [m for m in msgs if m[0] != "user" and ROLES[m[0]] == router_pb2.ROLE_SYSTEM][:1]
    convo = [m for m in msgs if ROLES[m[0]] != router_pb2.ROLE_SYSTEM]
    convo = history_window(convo, history_max)  # moves in steps: the prompt prefix stays cacheable
    history = [router_pb2.ChatMessage(role=ROLES[r], content=c) for r, c in [*system, *convo]]
    return router_pb2.TurnInput(text=text, history=history)


class RouterLLM(llm.LLM[Any]):
    """One instance per session: it knows the tenant and the session it speaks for."""

    def __init__(
        self,
        stub: router_pb2_grpc.RouterServiceAsyncStub,
        *,
        tenant_id: str,
        session_id: str,
        timeout_s: float = 30.0,
        history_max: int = 12,
        skip_rag: bool = False,
        skip_vision: bool = False,
        on_turn: TurnListener | None = None,
    ) -> None:
        super().__init__()
        self.stub = stub
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.timeout_s = timeout_s
        self.history_max = history_max
        self.skip_rag = skip_rag
        self.skip_vision = skip_vision
        self._listeners: list[TurnListener] = [on_turn] if on_turn else []
        self.reports: list[TurnReport] = []

    @property
    def model(self) -> str:
        return "frugal-router"

    @property
    def provider(self) -> str:
        return "frugal-mesh"

    def add_listener(self, listener: TurnListener) -> None:
        self._listeners.append(listener)

    def _report(self, report: TurnReport) -> None:
        self.reports.append(report)
        metrics.TURNS.labels(outcome="ok" if report.ok else (report.error_code or "error").lower(),
                             tier=report.tier or "none").inc()
        for listener in self._listeners:
            try:
                listener(report)
            except Exception:
                log.exception("turn listener failed")

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> RouterLLMStream:
        return RouterLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class RouterLLMStream(llm.LLMStream):
    def __init__(
        self, router: RouterLLM, *, chat_ctx: llm.ChatContext, tools: list[llm.Tool], conn_options: APIConnectOptions
    ) -> None:
        super().__init__(router, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._router = router

    def _send_text(self, chunk_id: str, text: str) -> None:
        self._event_ch.send_nowait(llm.ChatChunk(id=chunk_id, delta=llm.ChoiceDelta(role="assistant", content=text)))

    async def _run(self) -> None:
        r = self._router
        turn = turn_input_from_chat(self._chat_ctx, r.history_max)
        turn_id = uuid.uuid4().hex
        report = TurnReport(turn_id=turn_id, text=turn.text)
        if not turn.text:
            # Nothing to answer (e.g. a reply requested without user input): say nothing, spend nothing.
            log.info("no user message to answer; skipping the router")
            return
        request = router_pb2.RespondRequest(turn=turn, turn_id=turn_id, skip_rag=r.skip_rag, skip_vision=r.skip_vision)
        md = turn_metadata(r.tenant_id, r.session_id, turn_id)
        started = time.perf_counter()
        answer: list[str] = []
        call = r.stub.Respond(request, timeout=r.timeout_s, metadata=md)
        try:
            async for msg in call:
                kind = msg.WhichOneof("payload")
                if kind == "started":
                    d = msg.started.decision
                    report.tier, report.model, report.score = TIER_NAMES.get(d.tier), d.model, d.score
                elif kind == "delta":
                    if report.first_token_ms is None:
                        report.first_token_ms = (time.perf_counter() - started) * 1000
                    if msg.delta.text:
                        answer.append(msg.delta.text)
                        self._send_text(turn_id, msg.delta.text)
                elif kind == "completed":
                    self._complete(report, msg.completed, turn_id)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            report.error_code, report.error_detail = code.name, err.details() or ""
            text = CUT_OFF_APOLOGY if answer else apology_for(code)
            log.warning("router Respond failed (%s: %s); apologising", code.name, err.details(),
                        extra={"tenant_id": r.tenant_id, "session_id": r.session_id, "turn_id": turn_id})
            answer.append(text)
            self._send_text(turn_id, text)
        except asyncio.CancelledError:
            call.cancel()
            report.error_code = "CANCELLED"
            raise
        finally:
            report.answer = "".join(answer)
            report.total_ms = (time.perf_counter() - started) * 1000
            metrics.TURN_SECONDS.observe(report.total_ms / 1000)
            r._report(report)

    def _complete(self, report: TurnReport, done: router_pb2.RespondCompleted, turn_id: str) -> None:
        report.tier = TIER_NAMES.get(done.tier, report.tier)
        report.model = done.provider.model or report.model
        report.provider = done.provider.provider
        report.offline = done.provider.offline
        report.cost_usd = done.cost_usd
        report.baseline_cost_usd = done.baseline_cost_usd
        report.usage = UsageAmounts.from_proto(done.usage)
        report.cost_event_ids = list(done.cost_event_ids)
        report.fallbacks = [f"{f.from_model}->{f.to_model} ({f.reason})" for f in done.fallbacks]
        report.context = {
            router_pb2.ContextSource.Name(c.source).removeprefix("CONTEXT_SOURCE_").lower():
            router_pb2.ContextState.Name(c.state).removeprefix("CONTEXT_STATE_").lower()
            for c in done.context
        }
        usage = done.usage
        self._event_ch.send_nowait(llm.ChatChunk(id=turn_id, usage=llm.CompletionUsage(
            completion_tokens=usage.output_tokens, prompt_tokens=usage.input_tokens,
            total_tokens=usage.input_tokens + usage.output_tokens,
        )))
