"""A livekit-agents `llm.LLM` whose stream is the router's `Respond` server-streaming RPC.

Every turn carries the tenant and session ids (metadata) and a deadline. Router failures follow the framework's
error model: they are raised as livekit `APIError`s with `retryable` set from the gRPC status, so the session's
own retry and `llm.FallbackAdapter` work; nothing the router did not say is put into the chat history (the
session's apology, if any, is spoken outside the history: see `agent.py`).

Tools: the session's `@function_tool`s go to the router as `ToolDefinition`s (JSON schema); a `tool_call` on
the answer stream becomes a livekit function call, the framework runs the tool, and the next `Respond` carries
the call and its result in the history. Convention shared with the router: in a turn that continues after tool
calls, `history` ends with the ROLE_TOOL results, the user message they answer is in `history` before the
assistant's tool-call message, and `text` repeats that user message (for routing and retrieval); the router
sends such a history as is, without appending `text` again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError, llm
from livekit.agents.llm.tool_context import FunctionTool, RawFunctionTool
from livekit.agents.llm.utils import build_legacy_openai_schema
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr

from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common.history_window import history_window
from frugal.common.limits import MAX_HISTORY_MESSAGES
from frugal.common.tenancy import REQUEST_ID_METADATA_KEY, SESSION_METADATA_KEY, TENANT_METADATA_KEY
from frugal.common.usage import UsageAmounts
from frugal.gateway import metrics
from frugal.gateway.config import DEFAULT_HISTORY_MESSAGES
from frugal.gateway.long_answers import LongAnswers, SpokenCut

log = logging.getLogger(__name__)

TIER_NAMES = {common_pb2.TIER_LITE: "lite", common_pb2.TIER_STANDARD: "standard", common_pb2.TIER_PREMIUM: "premium"}

APOLOGIES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "Sorry, this workspace has reached its usage limit for now, "
    "so I can't answer that.",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Sorry, that took me too long. Could you ask again?",
    grpc.StatusCode.UNAVAILABLE: "Sorry, I can't reach my answering service right now. Please try again in a moment.",
}
DEFAULT_APOLOGY = "Sorry, something went wrong on my side. Please try again."

# gRPC status -> the HTTP status livekit-agents reasons about (4xx is not retried, except 408/429/499).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNKNOWN: 500, grpc.StatusCode.DATA_LOSS: 500,
    # A CANCELLED the gateway did not ask for is the router going away mid-answer: a server error, not the
    # framework's 499 (which it treats as "closed by the client" and swallows).
    grpc.StatusCode.CANCELLED: 503,
}
# RESOURCE_EXHAUSTED is the tenant's budget or rate limit: retrying within the same second changes nothing.
# Posting to the room chat is a data-channel message: seconds mean the room is gone.
CHAT_POST_TIMEOUT_S = 5.0
NOT_RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED})


def turn_metadata(tenant_id: str, session_id: str, request_id: str) -> tuple[tuple[str, str], ...]:
    """The metadata every turn carries; the request id is the turn id, so logs of all hops join on it."""
    return ((TENANT_METADATA_KEY, tenant_id), (SESSION_METADATA_KEY, session_id), (REQUEST_ID_METADATA_KEY, request_id))


def apology_for(code: grpc.StatusCode | None) -> str:
    return APOLOGIES.get(code, DEFAULT_APOLOGY) if code is not None else DEFAULT_APOLOGY


def status_of(error: BaseException | None) -> grpc.StatusCode | None:
    """The router's gRPC status behind a livekit APIError raised here (also through FallbackAdapter)."""
    seen: set[int] = set()
    current = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, APIError) and isinstance(current.body, dict):
            name = current.body.get("grpc_status")
            if isinstance(name, str) and name in grpc.StatusCode.__members__:
                return grpc.StatusCode[name]
        current = current.__cause__
    # FallbackAdapter's "all LLMs failed" carries no cause: every router was unreachable or failing.
    return grpc.StatusCode.UNAVAILABLE if isinstance(error, APIConnectionError) else None


def api_error(err: grpc.aio.AioRpcError, turn_id: str) -> APIError:
    """The livekit-agents error for a failed Respond: connection/timeout errors are retryable, client errors
    and an exhausted budget are not."""
    code = err.code()
    message = f"router Respond failed: {code.name}: {err.details() or ''}"
    body = {"grpc_status": code.name, "turn_id": turn_id}
    if code == grpc.StatusCode.UNAVAILABLE:
        conn = APIConnectionError(message, retryable=True)
        conn.body = body
        return conn
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        timeout = APITimeoutError(message, retryable=True)
        timeout.body = body
        return timeout
    return APIStatusError(message, status_code=HTTP_STATUS.get(code, 500), request_id=turn_id, body=body,
                          retryable=code not in NOT_RETRYABLE)


def enum_label(enum: Any, value: int, prefix: str) -> str:
    """An enum value's short name; a value this build does not know (a newer router) becomes `unknown_<n>`."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return f"unknown_{value}"


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
    tool_calls: list[str] = field(default_factory=list)
    score: float | None = None
    first_token_ms: float | None = None
    total_ms: float = 0.0
    error_code: str | None = None
    error_detail: str = ""
    # Characters that went to the room chat only (a long answer spoken in short: frugal.gateway.long_answers).
    chat_only_chars: int = 0

    @property
    def ok(self) -> bool:
        return self.error_code is None


TurnListener = Callable[[TurnReport], None]

ROLES = {"user": router_pb2.ROLE_USER, "assistant": router_pb2.ROLE_ASSISTANT, "system": router_pb2.ROLE_SYSTEM,
         "developer": router_pb2.ROLE_SYSTEM}


def _trim(convo: list[router_pb2.ChatMessage], cap: int) -> list[router_pb2.ChatMessage]:
    """At most the newest `cap` messages, never starting with a tool result whose call was cut off."""
    if cap <= 0:
        return []
    out = history_window(convo, cap)  # moves in steps: the prompt prefix stays cacheable (prompt caching)
    while out and out[0].role == router_pb2.ROLE_TOOL:
        out = out[1:]
    return out


def turn_request(chat_ctx: llm.ChatContext, history_max: int,
                 expand: Callable[[str], str] | None = None) -> tuple[router_pb2.TurnInput, str]:
    """(turn, per-reply instructions) from the chat context.

    The newest user message is the turn; the first system message (the agent's instructions) heads the history;
    a system message after the newest user message or answer is `generate_reply(instructions=...)`. `expand`
    gives an assistant message's full text where only part of it was spoken (long answers posted to chat)."""
    system: router_pb2.ChatMessage | None = None
    convo: list[router_pb2.ChatMessage] = []
    trailing_instructions: list[str] = []
    for item in chat_ctx.items:
        if item.type == "message":
            text = (item.text_content or "").strip()
            role = ROLES.get(item.role)
            if role is None or not text:
                continue
            if role == router_pb2.ROLE_SYSTEM:
                if system is None and not convo:
                    system = router_pb2.ChatMessage(role=role, content=text)
                else:
                    trailing_instructions.append(text)
                continue
            trailing_instructions.clear()  # instructions before a later message were for an earlier reply
            if expand is not None and role == router_pb2.ROLE_ASSISTANT:
                text = expand(text)
            convo.append(router_pb2.ChatMessage(role=role, content=text))
        elif item.type == "function_call":
            call = router_pb2.ToolCall(id=item.call_id, name=item.name, arguments_json=item.arguments or "{}")
            last = convo[-1] if convo else None
            if last is not None and last.role == router_pb2.ROLE_ASSISTANT:
                last.tool_calls.append(call)  # parallel calls, or calls after the words of the same reply
            else:
                convo.append(router_pb2.ChatMessage(role=router_pb2.ROLE_ASSISTANT, tool_calls=[call]))
        elif item.type == "function_call_output":
            convo.append(router_pb2.ChatMessage(role=router_pb2.ROLE_TOOL, content=item.output,
                                                tool_call_id=item.call_id, tool_error=item.is_error))
    last_user = max((i for i, m in enumerate(convo) if m.role == router_pb2.ROLE_USER), default=-1)
    text = ""
    if last_user == len(convo) - 1 and last_user >= 0:
        text = convo.pop().content
    elif last_user >= 0 and convo[-1].role == router_pb2.ROLE_TOOL:
        # A continuation after tool calls: the history keeps the user message in place (see module doc).
        text = convo[last_user].content
    history = ([system] if system is not None else []) + _trim(convo, history_max)
    return router_pb2.TurnInput(text=text, history=history), "\n".join(trailing_instructions)


def turn_input_from_chat(chat_ctx: llm.ChatContext, history_max: int) -> router_pb2.TurnInput:
    return turn_request(chat_ctx, history_max)[0]


def tool_definitions(tools: list[llm.Tool]) -> list[router_pb2.ToolDefinition]:
    """Function tools as JSON-schema definitions; provider-specific tools have no meaning to the router."""
    out: list[router_pb2.ToolDefinition] = []
    for tool in tools:
        if isinstance(tool, FunctionTool):
            schema = build_legacy_openai_schema(tool, internally_tagged=True)
            out.append(router_pb2.ToolDefinition(name=schema["name"], description=schema["description"],
                                                 parameters_json=json.dumps(schema["parameters"])))
        elif isinstance(tool, RawFunctionTool):
            raw = tool.info.raw_schema
            out.append(router_pb2.ToolDefinition(
                name=tool.info.name, description=str(raw.get("description", "")),
                parameters_json=json.dumps(raw.get("parameters", {"type": "object", "properties": {}})),
            ))
        else:
            log.warning("tool %r is not a function tool; the router cannot offer it", tool)
    return out


RecoveryCheck = Callable[[llm.ChatContext, APIConnectOptions], "llm.LLMStream | None"]


class RouterLLM(llm.LLM[Any]):
    """One instance per session: it knows the tenant and the session it speaks for."""

    def __init__(
        self,
        stub: router_pb2_grpc.RouterServiceAsyncStub,
        *,
        tenant_id: str,
        session_id: str,
        timeout_s: float = 30.0,
        history_max: int = DEFAULT_HISTORY_MESSAGES,
        skip_rag: bool = False,
        skip_vision: bool = False,
        on_turn: TurnListener | None = None,
        reports: list[TurnReport] | None = None,
        long_answers: LongAnswers | None = None,
    ) -> None:
        super().__init__()
        self.stub = stub
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.timeout_s = timeout_s
        self.history_max = min(history_max, MAX_HISTORY_MESSAGES)
        self.skip_rag = skip_rag
        self.skip_vision = skip_vision
        self._listeners: list[TurnListener] = [on_turn] if on_turn else []
        # Shared by the routers of one session (FallbackAdapter): every attempt, in order.
        self.reports: list[TurnReport] = reports if reports is not None else []
        self.long_answers = long_answers
        # Set by frugal.gateway.router_fallback behind a FallbackAdapter: a stream that checks this router's
        # recovery without a paid turn, or None when the call is a real turn.
        self.recovery_check: RecoveryCheck | None = None

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
    ) -> llm.LLMStream:
        if self.recovery_check is not None:
            check = self.recovery_check(chat_ctx, conn_options)
            if check is not None:
                return check
        return RouterLLMStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class RouterLLMStream(llm.LLMStream):
    def __init__(
        self, router: RouterLLM, *, chat_ctx: llm.ChatContext, tools: list[llm.Tool], conn_options: APIConnectOptions
    ) -> None:
        super().__init__(router, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._router = router
        # Once words were spoken a retry would repeat them: a failure after the first delta is final.
        self._retry_on_chunk_sent = False

    def _send_text(self, chunk_id: str, text: str) -> None:
        self._event_ch.send_nowait(llm.ChatChunk(id=chunk_id, delta=llm.ChoiceDelta(role="assistant", content=text)))

    async def _run(self) -> None:
        r = self._router
        long = r.long_answers
        turn, instructions = turn_request(self._chat_ctx, r.history_max,
                                          long.full_answers.expand if long is not None else None)
        # Each attempt is its own paid call: a fresh turn id, so its cost event has its own id.
        turn_id = uuid.uuid4().hex
        report = TurnReport(turn_id=turn_id, text=turn.text)
        if not turn.text and not instructions:
            # Nothing to answer (a reply requested without user input or instructions): spend nothing.
            log.info("no user message to answer; skipping the router")
            return
        request = router_pb2.RespondRequest(turn=turn, turn_id=turn_id, skip_rag=r.skip_rag, skip_vision=r.skip_vision,
                                            tools=tool_definitions(self._tools), instructions=instructions)
        md = turn_metadata(r.tenant_id, r.session_id, turn_id)
        started = time.perf_counter()
        answer: list[str] = []
        cut = long.cutter() if long is not None else None
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
                        say = cut.push(msg.delta.text) if cut is not None else msg.delta.text
                        if say:
                            self._send_text(turn_id, say)
                elif kind == "tool_call":
                    self._send_tool_call(report, msg.tool_call)
                elif kind == "completed":
                    await self._release(cut, report)
                    cut = None
                    self._complete(report, msg.completed, turn_id)
                # Any other payload is from a newer router: ignored, the turn goes on.
            await self._release(cut, report)  # a stream that ended without its completion keeps its words
        except grpc.aio.AioRpcError as err:
            code = err.code()
            report.error_code, report.error_detail = code.name, err.details() or ""
            log.warning("router Respond failed (%s: %s)", code.name, err.details(),
                        extra={"tenant_id": r.tenant_id, "session_id": r.session_id, "turn_id": turn_id})
            raise api_error(err, turn_id) from err
        except asyncio.CancelledError:
            # Interrupted (the user spoke over the answer): the router's call is cancelled too.
            call.cancel()
            report.error_code = "CANCELLED"
            raise
        finally:
            report.answer = "".join(answer)
            report.total_ms = (time.perf_counter() - started) * 1000
            metrics.TURN_SECONDS.observe(report.total_ms / 1000)
            r._report(report)

    async def _release(self, cut: SpokenCut | None, report: TurnReport) -> None:
        """At the end of the answer, what was held back: to the chat when long enough, else spoken."""
        if cut is None:
            return
        if cut.cut:
            await self._post_long_answer(cut, report)
        elif cut.held:
            self._send_text(report.turn_id, cut.held)

    async def _post_long_answer(self, cut: SpokenCut, report: TurnReport) -> None:
        """The whole answer to the room chat, then the notice spoken; if the chat fails, the rest is spoken."""
        long = self._router.long_answers
        assert long is not None and long.post is not None
        try:
            await asyncio.wait_for(long.post(cut.full.strip()), timeout=CHAT_POST_TIMEOUT_S)
        except Exception as err:  # a timeout included
            log.warning("posting a long answer to the room chat failed (%r): speaking all of it", err,
                        extra={"session_id": self._router.session_id, "turn_id": report.turn_id})
            self._send_text(report.turn_id, cut.held)
            return
        notice = " " + long.policy.notice
        self._send_text(report.turn_id, notice)
        long.full_answers.remember(cut.spoken + notice, cut.full)
        report.chat_only_chars = len(cut.held.strip())
        metrics.LONG_ANSWERS.inc()

    def _send_tool_call(self, report: TurnReport, call: router_pb2.ToolCall) -> None:
        call_id = call.id or f"call_{uuid.uuid4().hex[:12]}"
        report.tool_calls.append(call.name)
        self._event_ch.send_nowait(llm.ChatChunk(id=report.turn_id, delta=llm.ChoiceDelta(
            role="assistant",
            tool_calls=[llm.FunctionToolCall(name=call.name, arguments=call.arguments_json or "{}", call_id=call_id)],
        )))

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
            enum_label(router_pb2.ContextSource, c.source, "CONTEXT_SOURCE_"):
            enum_label(router_pb2.ContextState, c.state, "CONTEXT_STATE_")
            for c in done.context
        }
        usage = done.usage
        self._event_ch.send_nowait(llm.ChatChunk(id=turn_id, usage=llm.CompletionUsage(
            completion_tokens=usage.output_tokens, prompt_tokens=usage.input_tokens,
            total_tokens=usage.input_tokens + usage.output_tokens,
        )))
