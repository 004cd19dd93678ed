"""Answers sized for speech: per-tier instructions and output caps; a cut answer ends on a whole sentence."""

from __future__ import annotations

from typing import Any

import pytest

from frugal.devkit.emulators.gemini import GeminiEmulator
from frugal.router.providers.base import Message, ProviderRequest, StreamDone, TextChunk, ToolCallOut
from frugal.router.providers.gemini import GeminiProvider
from frugal.router.speech_style import (
    SentenceGuard,
    SpeechStyleSettings,
    style_for,
    wants_detail,
    with_instructions,
)

LONG = ("The Business plan costs 49 dollars per seat per month with annual billing. It includes single sign-on "
        "and SCIM. The Team plan is 19 dollars per seat and covers shared inboxes and macros, but not SSO. "
        "Volume discounts start at fifty seats, and I can walk you through them if that helps.")


def test_caps_per_tier_and_detail() -> None:
    cfg = SpeechStyleSettings()
    lite = style_for("lite", "How much is Business?", 512, cfg)
    premium = style_for("premium", "How much is Business?", 512, cfg)
    detail = style_for("lite", "Explain how SSO works, step by step", 512, cfg)
    assert lite is not None and premium is not None and detail is not None
    assert lite.max_output_tokens == cfg.cap_lite and premium.max_output_tokens == cfg.cap_premium
    # One speech length on every tier (the tier is about difficulty, not about how long to talk).
    assert cfg.cap_lite == cfg.cap_standard == cfg.cap_premium < cfg.cap_detail
    assert lite.instructions in premium.instructions
    assert detail.detail and detail.max_output_tokens == cfg.cap_detail
    assert "spoken" in lite.instructions and "sentences" in lite.instructions
    assert style_for("lite", "x", 20, cfg).max_output_tokens == 20  # type: ignore[union-attr]
    assert style_for("lite", "x", 512, SpeechStyleSettings(style_enabled=False)) is None
    assert with_instructions("base", lite).startswith("base\n\n")
    assert wants_detail("Can you walk me through it?") and not wants_detail("What does it cost?")


def test_sentence_guard_streams_freely_far_from_the_cap() -> None:
    g = SentenceGuard(free_chars=50)
    assert g.push("It is ") == "It is " and g.push("sunny today") == "sunny today"
    assert g.push(" and more text after the free part") == ""  # held: it might be cut
    assert g.finish("STOP") == " and more text after the free part"


def test_sentence_guard_drops_the_sentence_the_cap_cut() -> None:
    g = SentenceGuard()
    out = g.push("First sentence. Second one is cut mi")
    assert out == "First sentence."
    assert g.finish("MAX_TOKENS") == ""
    g2 = SentenceGuard()
    assert g2.push("A complete answer without a final stop") == ""
    assert g2.finish("STOP") == "A complete answer without a final stop"


async def _answer(cap: int, guard: bool) -> str:
    async with GeminiEmulator(responder=lambda req: LONG) as emu:
        p = GeminiProvider("k", base_url=emu.base_url)
        g = SentenceGuard.for_cap(cap)
        spoken = ""
        try:
            async for ev in p.stream(ProviderRequest(model="gemini-2.5-flash-lite", system="s",
                                                     messages=[Message("user", "price?")], max_output_tokens=cap)):
                if isinstance(ev, TextChunk):
                    spoken += g.push(ev.text) if guard else ev.text
                elif isinstance(ev, StreamDone) and guard:
                    spoken += g.finish(ev.finish_reason)
        finally:
            await p.aclose()
        return spoken


async def test_speech_cap_shortens_spoken_answers_through_the_sdk() -> None:
    unsized = await _answer(512, guard=False)
    style = style_for("lite", "How much is Business?", 512)
    assert style is not None
    sized = await _answer(style.max_output_tokens, guard=True)
    assert unsized == LONG
    assert 0 < len(sized) <= style.max_output_tokens * 4 < len(LONG)
    assert sized.endswith(".") and LONG.startswith(sized)  # whole sentences only


async def _respond_text(router: Any, text: str) -> str:
    from frugal.api.router.v1 import router_pb2

    call = router.stub.Respond(router_pb2.RespondRequest(turn=router_pb2.TurnInput(text=text), skip_rag=True,
                                                         skip_vision=True),
                               metadata=(("x-tenant-id", "acme"), ("x-session-id", "s-speech")), timeout=10)
    return "".join([m.delta.text async for m in call if m.WhichOneof("payload") == "delta"])


async def test_respond_sizes_spoken_answers_and_the_switch_turns_it_off(
    start_router: Any, gemini_emu: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the router's Respond: the speech cap reaches the provider, the spoken text ends on a sentence."""
    gemini_emu.responder = lambda req: LONG
    router = await start_router(gemini_api_key="k", gemini_base_url=gemini_emu.base_url)
    question = "Hi there!"  # lite
    sized = await _respond_text(router, question)
    cap = gemini_emu.requests[-1].generation_config["maxOutputTokens"]
    assert cap == SpeechStyleSettings().cap_lite
    assert "spoken aloud" in gemini_emu.requests[-1].system_instruction
    assert sized and LONG.startswith(sized) and sized.endswith(".") and len(sized) <= cap * 4
    monkeypatch.setenv("SPEECH_STYLE_ENABLED", "false")
    unsized = await _respond_text(router, question)
    assert unsized == LONG and gemini_emu.requests[-1].generation_config["maxOutputTokens"] == 512


async def test_respond_prices_cached_tokens_in_its_cost_event(
    start_router: Any, gemini_emu: GeminiEmulator, redis_client: Any
) -> None:
    from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent
    from frugal.devkit.emulators.gemini import GeminiReply

    router = await start_router(gemini_api_key="k", gemini_base_url=gemini_emu.base_url)
    gemini_emu.script(GeminiReply(text="Fine.", usage={"promptTokenCount": 10_000, "candidatesTokenCount": 2,
                                                       "cachedContentTokenCount": 8_000, "totalTokenCount": 10_002}))
    await _respond_text(router, "Hi there!")
    entries = await redis_client.xrange(COST_EVENTS_STREAM)
    ev = [CostEvent.from_stream_fields(dict(f)) for _, f in entries][-1]
    assert ev.attributes["cache_read_tokens"] == "8000"
    assert ev.cost_usd == pytest.approx((2_000 * 0.10 + 8_000 * 0.01 + 2 * 0.40) / 1e6)


async def test_speech_sizing_never_holds_or_cuts_a_tool_call() -> None:
    """With tools the cap is the caller's (a tool call's arguments are output tokens), and a tool call in the
    stream passes as it came, after the text held before it."""
    from frugal.common.pricing import default_catalog
    from frugal.router.cache_aware import TurnLevers

    levers = TurnLevers(default_catalog(), "t", "s", "What is my order status?")
    system, msgs, cap = levers.shape("S", [Message("user", "What is my order status?")], "lite", 1000,
                                     has_tools=True)
    assert cap == 1000 and levers.style is not None and levers.style.instructions in system
    _, _, spoken_cap = levers.shape("S", [Message("user", "What is my order status?")], "lite", 1000)
    assert spoken_cap < 1000  # without tools the spoken cap applies
    levers.shape("S", [Message("user", "q")], "lite", 30, has_tools=True)  # small cap: the guard holds text
    call = ToolCallOut("c1", "lookup_order", '{"id": "' + "9" * 400 + '"}')

    async def stream() -> Any:
        yield "Let me check. "
        yield "One moment while I"
        yield call

    class Done:
        done = None

    out = [item async for item in levers.speak(stream(), Done())]
    assert out[-1] is call and "".join(x for x in out if isinstance(x, str)) == "Let me check. One moment while I"
