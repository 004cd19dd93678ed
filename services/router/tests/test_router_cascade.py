"""The cascade inside Respond, over real gRPC, with the real google-genai / anthropic SDKs against the local
emulators: learned-v1's unsure turns get lite and standard answers first (held, both billed as their own
attempts), then the standard answer is kept or premium answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2
from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent
from frugal.common.pricing import default_catalog
from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicReply
from frugal.devkit.emulators.gemini import GeminiEmulator, GeminiReply, GeminiRequest
from frugal.devkit.routing.conversational import load_turns
from frugal.devkit.routing.probes import few_shot_prompts
from frugal.router.cascade import AnswerScorer
from frugal.router.decision import Decider, Decision, TurnText
from frugal.router.learned import load_learned_payload
from frugal.router.scoring import TierMix, load_scorers

MD = (("x-tenant-id", "acme"), ("x-session-id", "s1"))
# (lite answer, standard answer): two cheap models giving the same one-letter choice, and a standard answer that
# does not answer the multiple-choice question asked.
AGREE = ("B", "B")
DISAGREE = ("B", "Yes, you can.")


@pytest.fixture(scope="module")
def band() -> tuple[str, Decision]:
    """A turn that learned-v1 sends through the cascade (the router loads the same artifact): a bundled voice turn
    if one falls in a cascade band, else an ARC-style multiple-choice prompt (the cascade band is fitted where the
    training rows carry the cheap models' answers, i.e. RouterBench-like traffic)."""
    d = Decider(load_scorers(), default_catalog(), TierMix(0.6, 0.25, 0.15), provider_of=lambda t: ("offline", True))
    for text in [t.text for t in load_turns()] + few_shot_prompts():
        decision = d.decide(TurnText(text))
        # ...and one where the two scripted answer pairs take different branches (kept / escalated).
        if decision.cascade and expected_keep(text, decision, AGREE) and not expected_keep(text, decision, DISAGREE):
            return text, decision
    raise AssertionError("no turn falls in a cascade band of this artifact with both branches reachable: the "
                         "cascade tests would test nothing")


def expected_keep(text: str, decision: Decision, answers: tuple[str, str]) -> bool:
    scorer = AnswerScorer(load_learned_payload())
    assert decision.p_lite is not None and decision.p_standard is not None
    return scorer.verdict(text, answers[0], answers[1], decision.p_lite, decision.p_standard,
                          decision.answer_keep).keep


async def gemini_answering(answers: tuple[str, str]) -> GeminiEmulator:
    def responder(req: GeminiRequest) -> str:
        return answers[0] if req.model.endswith("flash-lite") else answers[1]

    emu = GeminiEmulator(responder=responder)
    await emu.start()
    return emu


@pytest.fixture
async def emulators() -> AsyncIterator[dict[str, Any]]:
    made: list[Any] = []

    async def make(answers: tuple[str, str]) -> tuple[GeminiEmulator, AnthropicEmulator]:
        g = await gemini_answering(answers)
        c = AnthropicEmulator()
        await c.start()
        made.extend([g, c])
        return g, c

    async def make_split(answers: tuple[str, str]) -> tuple[GeminiEmulator, GeminiEmulator, AnthropicEmulator]:
        """Lite and standard on emulators of their own (for split_router), and Claude."""
        lite, (standard, claude) = await gemini_answering(answers), await make(answers)
        made.append(lite)
        return lite, standard, claude

    yield {"make": make, "make_split": make_split}
    for e in made:
        await e.aclose()


async def run(router: Any, text: str, turn_id: str) -> tuple[list[str], router_pb2.RespondCompleted]:
    deltas: list[str] = []
    completed = None
    call = router.stub.Respond(router_pb2.RespondRequest(turn=router_pb2.TurnInput(text=text), turn_id=turn_id,
                                                         skip_rag=True, skip_vision=True), metadata=MD, timeout=20)
    async for msg in call:
        kind = msg.WhichOneof("payload")
        if kind == "delta":
            deltas.append(msg.delta.text)
        elif kind == "completed":
            completed = msg.completed
    assert completed is not None
    return deltas, completed


async def events(redis: aioredis.Redis) -> list[CostEvent]:
    entries = await redis.xrange(COST_EVENTS_STREAM)
    return [CostEvent.from_stream_fields(dict(fields or {})) for _, fields in entries or []]


@pytest.mark.parametrize("answers", [AGREE, DISAGREE], ids=["agree", "disagree"])
async def test_cascade_holds_scores_and_bills_each_attempt(
    start_router: Any, emulators: dict[str, Any], redis_client: aioredis.Redis, band: tuple[str, Decision],
    answers: tuple[str, str],
) -> None:
    text, decision = band
    gemini, claude = await emulators["make"](answers)
    claude.script(AnthropicReply(chunks=("Premium ", "answer."), usage={"input_tokens": 200, "output_tokens": 4}))
    router = await start_router(gemini_api_key="k", gemini_base_url=gemini.base_url, anthropic_api_key="k",
                                anthropic_base_url=claude.base_url)
    deltas, c = await run(router, text, "t-casc")
    keep = expected_keep(text, decision, answers)
    evs = await events(redis_client)
    # Each attempt has its own event id (a nonce per attempt, frugal.common.cost_recorder); the attempt says which.
    by_attempt = {e.attributes["attempt"]: e for e in evs}
    lite_id, std_id = by_attempt["cascade-lite"].event_id, by_attempt["cascade-standard"].event_id
    # Both cheap answers were asked for (concurrently) and each is billed as its own attempt.
    assert sorted(r.model for r in gemini.requests) == ["gemini-2.5-flash", "gemini-2.5-flash-lite"]
    assert {e.event_id for e in evs[:2]} == {lite_id, std_id}
    assert len({e.event_id for e in evs}) == len(evs) == len(c.cost_event_ids)
    assert c.cost_usd == pytest.approx(sum(e.cost_usd for e in evs)) and all(e.cost_usd > 0 for e in evs)
    by_id = {e.event_id: e for e in evs}
    assert by_id[lite_id].tier == "lite" and by_id[std_id].tier == "standard"
    if keep:
        # The held standard answer is sent as it was; nothing else is called.
        assert "".join(deltas) == answers[1] and len(evs) == 2 and claude.requests == []
        assert c.tier == common_pb2.TIER_STANDARD and c.provider.model == "gemini-2.5-flash"
        assert by_id[std_id].attributes["outcome"] == "cascade_kept"
    else:
        # Escalated: premium answers; the cheap answers never reach the caller.
        assert "".join(deltas) == "Premium answer." and len(evs) == 3 and len(claude.requests) == 1
        assert c.tier == common_pb2.TIER_PREMIUM and c.provider.model == "claude-sonnet-4-6"
        assert evs[2].attributes["attempt"] == "0" and evs[2].event_id not in (lite_id, std_id)
        assert {by_id[lite_id].attributes["outcome"], by_id[std_id].attributes["outcome"]} == {"cascade_escalated"}


def test_the_two_scripted_cases_take_different_branches(band: tuple[str, Decision]) -> None:
    text, decision = band
    assert expected_keep(text, decision, AGREE) and not expected_keep(text, decision, DISAGREE)


async def test_caller_leaving_during_the_hold_still_bills_both_cheap_attempts(
    start_router: Any, redis_client: aioredis.Redis, band: tuple[str, Decision],
) -> None:
    text, _ = band
    # Slow cheap answers: the caller gives up while the router holds them.
    gemini = GeminiEmulator(responder=lambda req: "A slow cheap answer that is still streaming.", chunk_delay_s=0.3,
                            chunk_chars=4)
    await gemini.start()
    claude = AnthropicEmulator()
    await claude.start()
    try:
        router = await start_router(gemini_api_key="k", gemini_base_url=gemini.base_url, anthropic_api_key="k",
                                    anthropic_base_url=claude.base_url)
        call = router.stub.Respond(router_pb2.RespondRequest(
            turn=router_pb2.TurnInput(text=text), turn_id="t-gone", skip_rag=True, skip_vision=True),
            metadata=MD, timeout=20)
        async for msg in call:
            assert msg.WhichOneof("payload") == "started"
            break
        for _ in range(200):
            if len(gemini.requests) >= 2:
                break
            await asyncio.sleep(0.05)
        # Into the stream (its first chunks and usage reports have come) but far from its end (11 chunks 0.3 s
        # apart): the cut lands mid-answer.
        await asyncio.sleep(0.5)
        call.cancel()
        wanted = ["cascade-lite", "cascade-standard"]
        for _ in range(100):
            got = sorted(e.attributes.get("attempt", "") for e in await events(redis_client))
            if got == wanted:
                break
            await asyncio.sleep(0.1)
        evs = await events(redis_client)
        assert sorted(e.attributes["attempt"] for e in evs) == wanted, \
            "each cheap attempt is billed once, even when the caller left"
        assert len({e.event_id for e in evs}) == 2
        # Billed on what Gemini reported with each chunk before the cut, not on our estimate.
        assert all(e.usage.input_tokens > 0 and not e.usage.estimated for e in evs), [e.usage for e in evs]
        assert claude.requests == []
    finally:
        await gemini.aclose()
        await claude.aclose()


async def test_no_cascade_when_the_request_has_tools(
    start_router: Any, emulators: dict[str, Any], redis_client: aioredis.Redis, band: tuple[str, Decision],
) -> None:
    """A tool call cannot be held and scored: with tools, an unsure turn goes straight to its routed tier."""
    text, decision = band
    gemini, claude = await emulators["make"](AGREE)
    router = await start_router(gemini_api_key="k", gemini_base_url=gemini.base_url, anthropic_api_key="k",
                                anthropic_base_url=claude.base_url)
    tool = router_pb2.ToolDefinition(name="lookup_order", description="Looks up an order.",
                                     parameters_json='{"type": "object", "properties": {"id": {"type": "string"}}}')
    completed = None
    call = router.stub.Respond(router_pb2.RespondRequest(
        turn=router_pb2.TurnInput(text=text), turn_id="t-tools", tools=[tool], skip_rag=True, skip_vision=True),
        metadata=MD, timeout=20)
    async for msg in call:
        if msg.WhichOneof("payload") == "completed":
            completed = msg.completed
    # The routed tier (standard or premium by the point's rule), answered once.
    routed = {"standard": common_pb2.TIER_STANDARD, "premium": common_pb2.TIER_PREMIUM}[decision.tier]
    assert completed is not None and completed.decision.tier == routed
    evs = await events(redis_client)
    assert [e.attributes["attempt"] for e in evs] == ["0"]  # one ordinary attempt: no cascade with tools
    if decision.tier == "standard":
        assert [r.model for r in gemini.requests] == ["gemini-2.5-flash"] and claude.requests == []
    else:
        assert gemini.requests == [] and [r.model for r in claude.requests] == ["claude-sonnet-4-6"]


async def split_router(start_router: Any, monkeypatch: pytest.MonkeyPatch, lite: GeminiEmulator,
                       standard: GeminiEmulator, claude: AnthropicEmulator, **settings: Any) -> Any:
    """A router whose lite and standard models are separate deployments (one emulator each), Claude premium."""
    for env in ("KEY_LITE", "KEY_STD", "KEY_CLAUDE"):
        monkeypatch.setenv(env, "k")
    return await start_router(llm_deployments=(
        f'[{{"name": "lite", "provider": "google", "api_key_env": "KEY_LITE", "base_url": "{lite.base_url}", '
        f'"models": ["gemini-2.5-flash-lite"]}}, '
        f'{{"name": "std", "provider": "google", "api_key_env": "KEY_STD", "base_url": "{standard.base_url}", '
        f'"models": ["gemini-2.5-flash"]}}, '
        f'{{"name": "claude", "provider": "anthropic", "api_key_env": "KEY_CLAUDE", '
        f'"base_url": "{claude.base_url}"}}]'), **settings)


@pytest.mark.parametrize("failing", ["lite", "standard"])
async def test_a_cheap_attempt_that_fails_escalates_even_when_the_answers_would_be_kept(
    start_router: Any, emulators: dict[str, Any], redis_client: aioredis.Redis, band: tuple[str, Decision],
    failing: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pair that would be kept (AGREE), but one cheap tier answers 500: nothing was scored, so the turn
    escalates to premium; both cheap attempts are billed as their own events (the failed one for what it
    reported, which here is nothing but the request). Lite and standard are separate deployments, so the
    failure hits exactly one of the two concurrent calls."""
    text, decision = band
    assert expected_keep(text, decision, AGREE)
    lite, standard, claude = await emulators["make_split"](AGREE)
    (lite if failing == "lite" else standard).fail_next(500)
    claude.script(AnthropicReply(chunks=("Premium ", "answer."), usage={"input_tokens": 200, "output_tokens": 4}))
    router = await split_router(start_router, monkeypatch, lite, standard, claude)
    deltas, c = await run(router, text, f"t-fail-{failing}")
    assert [r.model for r in lite.requests] == ["gemini-2.5-flash-lite"]
    assert [r.model for r in standard.requests] == ["gemini-2.5-flash"]
    assert "".join(deltas) == "Premium answer." and len(claude.requests) == 1
    assert c.tier == common_pb2.TIER_PREMIUM and c.provider.model == "claude-sonnet-4-6"
    evs = await events(redis_client)
    assert sorted(e.attributes["attempt"] for e in evs) == ["0", "cascade-lite", "cascade-standard"]
    assert len({e.event_id for e in evs}) == 3 == len(c.cost_event_ids)
    cheap = {e.attributes["attempt"]: e for e in evs if e.attributes["attempt"] != "0"}
    assert {e.attributes["outcome"] for e in cheap.values()} == {"cascade_escalated"}
    failed = cheap[f"cascade-{failing}"]
    # A 500 is refused before the model ran: the request is recorded and costs nothing.
    assert failed.usage.output_tokens == failed.usage.input_tokens == 0 and failed.usage.requests == 1
    assert failed.cost_usd == 0


async def test_a_cheap_attempt_that_times_out_unanswered_is_billed_for_the_prompt_it_sent(
    start_router: Any, emulators: dict[str, Any], redis_client: aioredis.Redis, band: tuple[str, Decision],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lite does not answer within the hold (no byte, no usage report): the request reached the provider, which
    may bill the prompt, so the attempt is billed on our estimate of it, as Respond bills its own attempts."""
    text, _ = band
    lite, standard, claude = await emulators["make_split"](AGREE)
    lite.script(GeminiReply(latency_s=3.0))
    router = await split_router(start_router, monkeypatch, lite, standard, claude, provider_timeout_s=0.5)
    deltas, c = await run(router, text, "t-slow-lite")
    assert c.tier == common_pb2.TIER_PREMIUM and "".join(deltas)
    evs = {e.attributes["attempt"]: e for e in await events(redis_client)}
    slow = evs["cascade-lite"]
    assert slow.attributes["outcome"] == "cascade_escalated" and slow.usage.estimated
    assert slow.usage.input_tokens >= len(text) // 4 and slow.usage.output_tokens == 0
    assert slow.cost_usd > 0
