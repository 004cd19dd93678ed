"""Respond over real gRPC: streaming from the provider SDKs (against local HTTP emulators), usage, cost events,
fallbacks, deadlines, the offline provider, and rag/vision context (test doubles behind real sockets; see
conftest.py) being up, down or slow."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from frugal.api.common.v1 import common_pb2
from frugal.api.rag.v1 import rag_pb2
from frugal.api.router.v1 import router_pb2
from frugal.api.vision.v1 import vision_pb2
from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent, make_event_id
from frugal.common.pricing import PriceCatalog, TierName
from frugal.common.usage import UsageAmounts
from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicReply
from frugal.devkit.emulators.gemini import GeminiEmulator, GeminiReply
from frugal.devkit.routing.probes import PREMIUM_TURN
from frugal.router.prompt import UNTRUSTED_RULE
from frugal.router.speech_style import SpeechStyleSettings

TIER_NAMES: dict[int, TierName] = {
    common_pb2.TIER_LITE: "lite", common_pb2.TIER_STANDARD: "standard", common_pb2.TIER_PREMIUM: "premium"}

MD = (("x-tenant-id", "acme"), ("x-session-id", "s1"))
EASY = "Hi there!"  # routed to lite with the default mix
HARD = PREMIUM_TURN  # premium


@dataclass
class Answer:
    started: router_pb2.RespondStarted | None = None
    deltas: list[str] = field(default_factory=list)
    completed: router_pb2.RespondCompleted | None = None
    providers: list[common_pb2.ProviderInfo] = field(default_factory=list)
    order: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.deltas)


async def respond(router: Any, text: str, *, deadline_s: float | None = 10.0, metadata: Any = MD,
                  **kwargs: Any) -> Answer:
    ans = Answer()
    # These tests exercise one provider path per turn: hybrid-v2 routes without the cascade (learned-v1, the
    # default, sends unsure turns through it; test_router_cascade.py covers that).
    kwargs.setdefault("scorer", "hybrid-v2")
    call = router.stub.Respond(router_pb2.RespondRequest(turn=router_pb2.TurnInput(text=text), **kwargs),
                               metadata=metadata, timeout=deadline_s)
    async for msg in call:
        kind = msg.WhichOneof("payload")
        ans.order.append(kind)
        ans.providers.append(msg.provider)
        if kind == "started":
            ans.started = msg.started
        elif kind == "delta":
            ans.deltas.append(msg.delta.text)
        else:
            ans.completed = msg.completed
    return ans


async def cost_events(redis: aioredis.Redis) -> list[CostEvent]:
    entries = await redis.xrange(COST_EVENTS_STREAM)
    return [CostEvent.from_stream_fields(dict(fields or {})) for _, fields in entries or []]


def keys(gemini: GeminiEmulator | None = None, claude: AnthropicEmulator | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(extra)
    if gemini is not None:
        out.update(gemini_api_key="test-gemini-key", gemini_base_url=gemini.base_url)
    if claude is not None:
        out.update(anthropic_api_key="test-claude-key", anthropic_base_url=claude.base_url)
    return out


def context_state(ans: Answer, source: int) -> int:
    assert ans.completed is not None
    return next(c.state for c in ans.completed.context if c.source == source)


async def test_gemini_answer_streams_with_provider_usage_and_one_cost_event(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    gemini_emu.script(GeminiReply(chunks=("It is ", "sunny ", "today."),
                                  usage={"promptTokenCount": 1234, "candidatesTokenCount": 56,
                                         "totalTokenCount": 1290}))
    ans = await respond(router, EASY, turn_id="turn-1", skip_rag=True, skip_vision=True)
    assert ans.order[0] == "started" and ans.order[-1] == "completed"
    assert ans.deltas == ["It is ", "sunny ", "today."]
    assert all(p.provider == "google" and p.model == "gemini-2.5-flash-lite" and not p.offline
               for p in ans.providers[1:])
    c = ans.completed
    assert c is not None
    assert c.tier == common_pb2.TIER_LITE and c.provider.model == "gemini-2.5-flash-lite"
    assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.estimated) == (1234, 56, False)
    assert c.cost_usd == pytest.approx(1234 * 0.10 / 1e6 + 56 * 0.40 / 1e6)
    assert c.baseline_cost_usd == pytest.approx(1234 * 3.0 / 1e6 + 56 * 15.0 / 1e6)
    assert c.first_token_latency_ms > 0 and c.total_latency_ms >= c.first_token_latency_ms
    assert list(c.fallbacks) == []
    # The SDK request: the system prompt, the user's turn, thinking off, the output cap.
    req = gemini_emu.requests[-1]
    assert req.model == "gemini-2.5-flash-lite" and req.stream and req.texts[-1] == EASY
    assert "voice assistant" in req.system_instruction
    assert req.generation_config["maxOutputTokens"] <= 512  # capped for speech (frugal.router.speech_style)
    # One cost event, its id drawn for this attempt (turn id, attempt number and a nonce kept in the event).
    events = await cost_events(redis_client)
    assert len(events) == 1
    ev = events[0]
    assert ev.event_id == c.cost_event_ids[0] == make_event_id(
        "router", "acme", "llm", "turn-1", "0", ev.attributes["attempt_nonce"])
    assert ev.attributes["turn_id"] == "turn-1" and ev.attributes["attempt"] == "0"
    assert (ev.tenant_id, ev.session_id, ev.kind.value, ev.provider, ev.model, ev.tier) == (
        "acme", "s1", "llm", "google", "gemini-2.5-flash-lite", "lite")
    assert ev.usage.input_tokens == 1234 and ev.usage.output_tokens == 56 and not ev.offline
    assert ev.cost_usd == pytest.approx(c.cost_usd)


async def test_reused_turn_id_never_hides_a_call(
    start_router: Any, gemini_emu: GeminiEmulator, redis_client: aioredis.Redis
) -> None:
    """Two Respond calls with the same turn_id make two provider calls: two events, two ids, both billed."""
    router = await start_router(**keys(gemini_emu))
    gemini_emu.script(GeminiReply(text="One.", usage={"promptTokenCount": 100, "candidatesTokenCount": 5}),
                      GeminiReply(text="Two.", usage={"promptTokenCount": 100, "candidatesTokenCount": 5}))
    first = await respond(router, EASY, turn_id="same-turn", skip_rag=True, skip_vision=True)
    second = await respond(router, EASY, turn_id="same-turn", skip_rag=True, skip_vision=True)
    assert first.completed is not None and second.completed is not None
    ids = [*first.completed.cost_event_ids, *second.completed.cost_event_ids]
    assert len(ids) == 2 and ids[0] != ids[1]
    events = await cost_events(redis_client)
    assert sorted(e.event_id for e in events) == sorted(ids)


async def test_claude_answers_premium_turns_with_usage_from_the_stream(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    claude_emu.script(AnthropicReply(chunks=("Strings ", "repeat ", "with *."), usage={"input_tokens": 300,
                                                                                      "output_tokens": 9}))
    ans = await respond(router, HARD, skip_rag=True, skip_vision=True, max_output_tokens=64)
    c = ans.completed
    assert c is not None and c.provider.model == "claude-sonnet-4-6" and c.provider.provider == "anthropic"
    assert ans.text == "Strings repeat with *."
    assert (c.usage.input_tokens, c.usage.output_tokens) == (300, 9)
    assert c.cost_usd == pytest.approx(300 * 3.0 / 1e6 + 9 * 15.0 / 1e6)
    req = claude_emu.requests[-1]
    # the caller's 64, or the spoken-answer cap when it is lower (frugal.router.speech_style)
    assert req.max_tokens == min(64, SpeechStyleSettings().cap_premium)
    assert req.messages[-1] == ("user", HARD) and "voice assistant" in req.system


async def test_provider_error_falls_back_along_the_chain(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    claude_emu.fail_next(529)
    gemini_emu.script(GeminiReply(text="Fallback answer."))
    ans = await respond(router, HARD, turn_id="t-fb", skip_rag=True, skip_vision=True)
    c = ans.completed
    assert c is not None
    assert c.provider.model == "gemini-2.5-flash" and c.tier == common_pb2.TIER_STANDARD
    assert ans.text == "Fallback answer."
    assert len(c.fallbacks) == 1
    fb = c.fallbacks[0]
    assert (fb.from_model, fb.to_model) == ("claude-sonnet-4-6", "gemini-2.5-flash")
    assert "unavailable" in fb.reason and "529" in fb.reason
    # The decision still says what was routed; the completion says who answered.
    assert c.decision.tier == common_pb2.TIER_PREMIUM
    events = await cost_events(redis_client)
    assert [e.event_id for e in events] == list(c.cost_event_ids) and len(set(c.cost_event_ids)) == 2
    assert [(e.attributes["turn_id"], e.attributes["attempt"]) for e in events] == [("t-fb", "0"), ("t-fb", "1")]
    failed, ok = events
    assert failed.model == "claude-sonnet-4-6" and failed.attributes["outcome"] == "unavailable"
    assert failed.usage.input_tokens == 0 and failed.cost_usd == 0
    assert ok.model == "gemini-2.5-flash" and ok.attributes["outcome"] == "ok" and ok.usage.output_tokens > 0


async def test_slow_first_token_times_out_and_falls_back(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu, provider_first_token_timeout_s=0.3))
    claude_emu.script(AnthropicReply(latency_s=1.5))
    ans = await respond(router, HARD, skip_rag=True, skip_vision=True)
    c = ans.completed
    assert c is not None and c.provider.model == "gemini-2.5-flash"
    assert c.fallbacks[0].reason.startswith("timeout")


async def test_caller_deadline_is_respected_end_to_end(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    claude_emu.script(AnthropicReply(latency_s=2.0))
    gemini_emu.script(GeminiReply(latency_s=2.0), GeminiReply(latency_s=2.0))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, HARD, deadline_s=0.8, skip_rag=True, skip_vision=True)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Each attempt got a share of the deadline, never more than what was left: one call per model at most.
    assert len(claude_emu.requests) == 1 and len(gemini_emu.requests) <= 2


async def test_failure_mid_answer_is_not_papered_over_and_is_billed(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    claude_emu.script(AnthropicReply(chunks=("First part. ", "Second part. ", "Third."), error_after_chunks=2))
    got: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for msg in router.stub.Respond(router_pb2.RespondRequest(
                turn=router_pb2.TurnInput(text=HARD), skip_rag=True, skip_vision=True, turn_id="t-mid",
                scorer="hybrid-v2"),
                metadata=MD, timeout=10):
            if msg.WhichOneof("payload") == "delta":
                got.append(msg.delta.text)
    assert got == ["First part. ", "Second part. "]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "after streaming 25 characters" in (
        info.value.details() or "")
    assert gemini_emu.requests == []  # no fallback once part of the answer went out
    (event,) = await cost_events(redis_client)
    assert event.attributes["turn_id"] == "t-mid"
    assert event.attributes["outcome"] == "interrupted" and event.usage.estimated and event.usage.output_tokens == 7
    # The prompt reached the provider: an interrupted call is never billed 0 input tokens.
    assert event.usage.input_tokens > 0 and event.cost_usd > 0


async def test_every_provider_failing_is_unavailable_with_the_reasons(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    claude_emu.fail_next(500)
    gemini_emu.fail_next(503, times=2)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, HARD, skip_rag=True, skip_vision=True)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    details = info.value.details() or ""
    assert "claude-sonnet-4-6" in details and "gemini-2.5-flash" in details and "gemini-2.5-flash-lite" in details


async def test_offline_provider_is_labelled_everywhere_and_answers_from_context(
    start_router: Any, deps: Any, redis_client: aioredis.Redis
) -> None:
    deps.rag.chunks = [rag_pb2.RetrievedChunk(
        chunk_id="c1", document_id="policy.md", title="Refund policy",
        content="Annual plans can be refunded within 30 days of purchase. Monthly plans are not refundable. "
                "Contact billing to start a refund.")]
    deps.vision.analyses = [vision_pb2.FrameAnalysis(description="A pricing page comparing three plans.")]
    router = await start_router(rag_addr=deps.rag_addr, vision_addr=deps.vision_addr)
    ans = await respond(router, "Can I get a refund on an annual plan?", turn_id="t-off")
    assert all(p.offline and p.provider == "offline" for p in ans.providers)
    assert ans.text.startswith("Offline mode: no language model is connected")
    assert "Annual plans can be refunded within 30 days of purchase." in ans.text
    assert "Refund policy" in ans.text and "A pricing page comparing three plans." in ans.text
    c = ans.completed
    assert c is not None and c.usage.estimated and c.provider.model == "offline-llm"
    # A labelled list-price estimate: the routed tier's prices on the estimated tokens, the baseline's on the same.
    catalog = PriceCatalog.load()
    routed = catalog.tier_model(TIER_NAMES[c.tier])
    estimate = UsageAmounts(input_tokens=c.usage.input_tokens, output_tokens=c.usage.output_tokens)
    assert c.usage.output_tokens > 0
    assert c.cost_usd == pytest.approx(catalog.cost(routed, estimate))
    assert c.baseline_cost_usd == pytest.approx(catalog.llm_baseline_cost(estimate))
    assert context_state(ans, router_pb2.CONTEXT_SOURCE_RAG) == router_pb2.CONTEXT_STATE_USED
    assert context_state(ans, router_pb2.CONTEXT_SOURCE_VISION) == router_pb2.CONTEXT_STATE_USED
    (event,) = await cost_events(redis_client)
    assert event.offline and event.provider == "offline" and event.usage.estimated
    assert event.cost_usd == pytest.approx(c.cost_usd) and event.attributes["priced_as"] == routed
    # Tenant and session travelled to the dependencies.
    (rag_req, rag_md) = deps.rag.calls[-1]
    assert rag_req.query == "Can I get a refund on an annual plan?" and rag_md["x-tenant-id"] == "acme"
    assert deps.vision.calls[-1][1]["x-session-id"] == "s1"


async def test_dead_rag_and_vision_do_not_fail_the_turn(start_router: Any) -> None:
    router = await start_router()  # rag and vision addresses where nothing listens
    ans = await respond(router, "Hello there")
    assert ans.completed is not None and ans.text
    assert context_state(ans, router_pb2.CONTEXT_SOURCE_RAG) == router_pb2.CONTEXT_STATE_UNAVAILABLE
    assert context_state(ans, router_pb2.CONTEXT_SOURCE_VISION) == router_pb2.CONTEXT_STATE_UNAVAILABLE
    assert ans.started is not None and len(ans.started.context) == 2


async def test_slow_rag_times_out_while_vision_is_used(start_router: Any, deps: Any) -> None:
    deps.rag.delay_s = 3.0
    deps.rag.chunks = [rag_pb2.RetrievedChunk(content="never seen")]
    deps.vision.analyses = [vision_pb2.FrameAnalysis(description="A terminal with a stack trace.")]
    router = await start_router(rag_addr=deps.rag_addr, vision_addr=deps.vision_addr, rag_timeout_s=0.2)
    ans = await respond(router, "What does this error mean?")
    assert context_state(ans, router_pb2.CONTEXT_SOURCE_RAG) == router_pb2.CONTEXT_STATE_TIMEOUT
    assert context_state(ans, router_pb2.CONTEXT_SOURCE_VISION) == router_pb2.CONTEXT_STATE_USED
    assert "never seen" not in ans.text and "stack trace" in ans.text


async def test_context_reaches_the_model_prompt_and_skips_are_reported(
    start_router: Any, deps: Any, gemini_emu: GeminiEmulator
) -> None:
    deps.rag.chunks = [rag_pb2.RetrievedChunk(title="Runbook", content="Restart the ingest worker with make restart.")]
    router = await start_router(**keys(gemini_emu, rag_addr=deps.rag_addr, vision_addr=deps.vision_addr))
    ans = await respond(router, EASY, skip_vision=True)
    system = gemini_emu.requests[-1].system_instruction
    # The turn's context rides with the user turn, after the cacheable prefix (frugal.router.cache_aware.layout),
    # still an escaped untrusted block; the rule that says so stays in the system prompt.
    block = '<passage index="1" title="Runbook">\nRestart the ingest worker with make restart.\n</passage>'
    assert block in gemini_emu.requests[-1].texts[-1]
    assert "Runbook" not in system and UNTRUSTED_RULE in system
    assert context_state(ans, router_pb2.CONTEXT_SOURCE_VISION) == router_pb2.CONTEXT_STATE_SKIPPED
    assert deps.vision.calls == []
    assert ans.started is not None and ans.started.decision.features.rag_context_chars > 0


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"max_output_tokens": -1}, "max_output_tokens"),
    ({"turn_id": "bad id with spaces"}, "turn_id"),
    ({"scorer": "nope"}, "unknown scorer"),
])
async def test_respond_rejects_bad_input(start_router: Any, kwargs: dict[str, Any], needle: str) -> None:
    router = await start_router()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, "hello", **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (info.value.details() or "")


async def test_caller_cancelling_mid_answer_still_bills_the_partial_call(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**keys(gemini_emu, claude_emu))
    claude_emu.script(AnthropicReply(chunks=("One. ", "Two. ", "Three. ", "Four."), chunk_delay_s=0.5))
    call = router.stub.Respond(router_pb2.RespondRequest(
        turn=router_pb2.TurnInput(text=HARD), skip_rag=True, skip_vision=True, turn_id="t-cancel",
        scorer="hybrid-v2"),
        metadata=MD, timeout=10)
    async for msg in call:
        if msg.WhichOneof("payload") == "delta":
            break
    call.cancel()
    events: list[CostEvent] = []
    for _ in range(100):  # wait for the server side to notice the cancellation (not a timing assertion)
        events = await cost_events(redis_client)
        if events:
            break
        await asyncio.sleep(0.05)
    (event,) = events
    assert event.attributes["turn_id"] == "t-cancel"
    assert event.attributes["outcome"] == "cancelled" and event.usage.estimated and event.usage.output_tokens >= 2
    assert event.usage.input_tokens > 0 and event.cost_usd > 0
