"""Long answers spoken in short and posted whole to the room chat (frugal.gateway.long_answers).

The session tests run livekit-agents' own AgentSession with the TTS behind the cost meter; the router is
`ScriptedRouter` (conftest) because the test needs an answer of a given length cut into given chunks, which the
router's offline provider does not produce."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from livekit.agents import RunResult, vad

from frugal.common.cost_events import CostEvent, CostKind
from frugal.common.pricing import default_catalog
from frugal.common.session_cost import CostRow, session_cost
from frugal.gateway.agent import SessionParts, build_session, load_vad
from frugal.gateway.clients import MeshClients
from frugal.gateway.config import Settings
from frugal.gateway.long_answers import DEFAULT_NOTICE, FullAnswers, LongAnswerPolicy, SpokenCut, normalise
from frugal.gateway.replay.runner import SimulatedAudioOutput

ROOM = "tenant_org_lumen_onboarding-call"

LONG = ("Here is the full comparison, step by step. Forty agents on Team cost 40 times 19 dollars times 12 months, "
        "which is 9,120 dollars a year. On Business with annual billing they cost 40 times 49 times 12, which is "
        "23,520 dollars a year, so the difference is 14,400 dollars. What you get for that is SSO, SCIM "
        "provisioning, audit logs kept for a year, and the uptime commitment. So if the audit is a must, the "
        "difference is mostly the price of passing it.")


def pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def run_cut(text: str, budget: int, size: int) -> SpokenCut:
    cut = SpokenCut(budget)
    spoken = "".join(cut.push(p) for p in pieces(text, size))
    assert spoken == cut.spoken
    return cut


@pytest.mark.parametrize("size", [1, 7, 40, 1000])
def test_speech_stops_at_the_first_sentence_end_past_the_budget(size: int) -> None:
    cut = run_cut(LONG, 120, size)
    first_end_past = LONG.index("a year.") + len("a year.")
    assert cut.spoken == LONG[:first_end_past]  # whatever the chunking
    assert cut.cut and cut.full == LONG  # nothing lost: the rest is held for the chat


def test_an_answer_within_the_budget_is_spoken_whole() -> None:
    short = "Business costs 49 dollars a seat. SSO comes with it."
    cut = run_cut(short, 280, 5)
    assert cut.spoken == short and not cut.cut
    # The sentence that crosses the budget is finished, and nothing follows: no cut either.
    cut = run_cut(short, 20, 5)
    assert cut.spoken == "Business costs 49 dollars a seat." and cut.cut
    cut = run_cut("One long sentence without an end that goes on", 10, 3)
    assert cut.spoken == "One long sentence without an end that goes on" and not cut.cut


def test_trailing_space_after_the_cut_is_not_a_cut() -> None:
    cut = run_cut("First sentence here. \n ", 5, 4)
    assert cut.spoken == "First sentence here." and not cut.cut


def test_a_short_rest_is_spoken_rather_than_replaced_by_the_notice() -> None:
    policy = LongAnswerPolicy(20)
    text = "Business costs 49 dollars a seat. Yes, SSO too."
    cut = SpokenCut(policy.spoken_chars, policy.min_chat_chars)
    cut.push(text)
    assert not cut.cut and cut.full == text  # the rest (14 chars) is shorter than the notice it would need
    cut = SpokenCut(policy.spoken_chars, policy.min_chat_chars)
    cut.push(LONG)
    assert cut.cut


def test_policy_fails_fast() -> None:
    with pytest.raises(ValueError, match="spoken_chars"):
        LongAnswerPolicy(-1)
    with pytest.raises(ValueError, match="notice"):
        LongAnswerPolicy(100, notice=" ")
    assert not LongAnswerPolicy(0, notice="").enabled


def test_full_answers_match_respaced_text_and_stay_bounded() -> None:
    full = FullAnswers(capacity=2)
    full.remember("Spoken  part.\nThe full answer is in the chat.", "Spoken part. And the rest.")
    assert full.expand(" Spoken part. The full answer is in the chat. ") == "Spoken part. And the rest."
    assert full.expand("something else") == "something else"
    full.remember("b", "B")
    full.remember("c", "C")
    assert len(full) == 2
    assert full.expand("Spoken part. The full answer is in the chat.") == "Spoken part. The full answer is in the chat."


# ---- in a session ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vad_model() -> vad.VAD:
    return load_vad()


async def open_session(settings: Settings, vad_model: vad.VAD, session_id: str) -> tuple[MeshClients, SessionParts]:
    clients = MeshClients(settings)
    tenant = await clients.resolve_tenant(ROOM, session_id)
    parts = build_session(settings, clients, tenant, session_id, vad_model=vad_model, producer=None,
                          catalog=default_catalog(), user_away_timeout=None)
    return clients, parts


def said(event: CostEvent) -> int:
    """Characters a TTS event spoke: synthesised, or served from the audio cache (earlier tests fill it)."""
    return event.usage.characters + int(event.attributes.get("served_characters", 0))


def tts_characters(parts: SessionParts) -> int:
    return sum(said(e) for e in parts.meter.events if e.kind is CostKind.TTS)


def assistant_texts(parts: SessionParts) -> list[str]:
    return [item.text_content or "" for item in parts.session.history.items
            if item.type == "message" and item.role == "assistant"]


async def ask_twice(parts: SessionParts, first: str, second: str) -> None:
    speaker = SimulatedAudioOutput(speed=50.0)
    parts.session.output.audio = speaker  # speech goes through the TTS and its meter
    try:
        async with parts.session as session:
            await session.start(parts.agent)
            result: RunResult[None] = await session.run(user_input=first)
            result.expect.next_event().is_message(role="assistant")
            await session.wait_for_idle()
            await session.run(user_input=second)
            await session.wait_for_idle()
    finally:
        await parts.aclose()
        await speaker.aclose()


async def test_a_long_answer_is_spoken_short_posted_whole_and_kept_whole_in_the_history(
    mesh: dict[str, str], scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, chunks: Any,
) -> None:
    router, addr = scripted_router
    router.script(*[chunks.text(p) for p in pieces(LONG, 23)], chunks.completed())
    router.script(chunks.text("The third sentence."), chunks.completed())
    settings = make_settings(billing_addr=mesh["billing"], router_addr=addr, welcome_message="",
                             long_answer_spoken_chars=120)
    clients, parts = await open_session(settings, vad_model, "s-long-1")
    posted: list[str] = []

    async def post(text: str) -> None:
        posted.append(text)

    parts.long_answers.post = post
    try:
        await ask_twice(parts, "Compare Team and Business step by step, in detail.", "What was the third point?")
    finally:
        await clients.aclose()
    spoken = LONG[:LONG.index("a year.") + len("a year.")]
    assert posted == [LONG]
    assert normalise(assistant_texts(parts)[0]) == normalise(f"{spoken} {DEFAULT_NOTICE}")
    # What was billed is what was spoken (the notice included), far less than the whole answer.
    assert tts_characters(parts) <= len(spoken) + len(DEFAULT_NOTICE) + len("The third sentence.") + 4
    assert parts.llm.reports[0].chat_only_chars == len(LONG) - len(spoken) - 1
    # The next turn's history carries every word the user was given, not the spoken part.
    history = [m.content for m in router.requests[1].turn.history]
    assert LONG in history and not any(DEFAULT_NOTICE in h for h in history)


async def test_tts_rows_say_which_answer_they_speak_so_the_naive_baseline_sizes_answers_not_sentences(
    mesh: dict[str, str], scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, chunks: Any,
) -> None:
    """GetUsage and the demo report price the naive agent from these rows (frugal.common.session_cost): the
    greeting is a fixed phrase, each answer's sentences carry the answer's id, and a long answer's unspoken rest
    is on a zero-cost row of the same answer."""
    router, addr = scripted_router
    router.script(*[chunks.text(p) for p in pieces(LONG, 23)], chunks.completed())
    router.script(chunks.text("Sure. It is on every plan."), chunks.completed())
    settings = make_settings(billing_addr=mesh["billing"], router_addr=addr, long_answer_spoken_chars=120,
                             welcome_message="Hello! How can I help?")
    clients, parts = await open_session(settings, vad_model, "s-long-naive")

    async def post(text: str) -> None:
        pass

    parts.long_answers.post = post
    try:
        await ask_twice(parts, "Compare Team and Business step by step, in detail.", "Is SSO on every plan?")
    finally:
        await clients.aclose()
    rows = [e for e in parts.meter.events if e.kind is CostKind.TTS]
    fixed = [e for e in rows if e.attributes.get("utterance") == "fixed"]
    assert sum(map(said, fixed)) == len("Hello! How can I help?")
    answers: dict[str, list[Any]] = {}
    for e in rows:
        if e.attributes.get("utterance") == "answer":
            answers.setdefault(e.attributes["answer_id"], []).append(e)
    assert len(fixed) + sum(len(v) for v in answers.values()) == len(rows)  # every row says what it spoke
    first, second = answers.values()  # in the order spoken
    assert len([e for e in first if said(e)]) >= 2  # sentence by sentence, one answer
    chat_only = [e for e in first if e.attributes.get("saved_by") == "long_to_chat"]
    assert [int(e.attributes["chat_only_characters"]) for e in chat_only] == [parts.llm.reports[0].chat_only_chars]
    assert sum(map(said, second)) == len("Sure. It is on every plan.")
    cost = session_cost([CostRow.from_event(e) for e in rows], default_catalog())
    per_char = default_catalog().price("eleven_flash_v2_5").per_character
    spoken_first = sum(map(said, first))
    naive_chars = len("Hello! How can I help?") + max(spoken_first + parts.llm.reports[0].chat_only_chars, 400) + 400
    assert cost.kinds["tts"].naive_usd == pytest.approx(naive_chars * per_char)


async def test_when_the_chat_fails_the_whole_answer_is_spoken(
    mesh: dict[str, str], scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, chunks: Any,
) -> None:
    router, addr = scripted_router
    router.script(*[chunks.text(p) for p in pieces(LONG, 50)], chunks.completed())
    router.script(chunks.text("Sure."), chunks.completed())
    settings = make_settings(billing_addr=mesh["billing"], router_addr=addr, welcome_message="",
                             long_answer_spoken_chars=120)
    clients, parts = await open_session(settings, vad_model, "s-long-2")

    async def post(text: str) -> None:
        await asyncio.sleep(0)
        raise ConnectionError("room closed")

    parts.long_answers.post = post
    try:
        await ask_twice(parts, "Compare Team and Business step by step, in detail.", "Thanks, and one more?")
    finally:
        await clients.aclose()
    assert normalise(assistant_texts(parts)[0]) == normalise(LONG)  # nothing lost
    assert tts_characters(parts) >= len(LONG) - 10
    assert parts.llm.reports[0].chat_only_chars == 0


async def test_without_a_room_chat_or_switched_off_every_word_is_spoken(
    mesh: dict[str, str], scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, chunks: Any,
) -> None:
    router, addr = scripted_router
    for _ in range(2):
        router.script(*[chunks.text(p) for p in pieces(LONG, 50)], chunks.completed())
        router.script(chunks.text("Sure."), chunks.completed())
    for spoken_chars, with_chat in ((120, False), (0, True)):
        settings = make_settings(billing_addr=mesh["billing"], router_addr=addr, welcome_message="",
                                 long_answer_spoken_chars=spoken_chars)
        clients, parts = await open_session(settings, vad_model, f"s-long-off-{spoken_chars}")
        posted: list[str] = []

        async def post(text: str, posted: list[str] = posted) -> None:
            posted.append(text)

        if with_chat:
            parts.long_answers.post = post
        try:
            await ask_twice(parts, "Compare Team and Business step by step, in detail.", "Thanks, and one more?")
        finally:
            await clients.aclose()
        assert normalise(assistant_texts(parts)[0]) == normalise(LONG) and posted == []


async def test_a_short_rest_after_the_budget_is_spoken_not_posted(
    mesh: dict[str, str], scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, chunks: Any,
) -> None:
    router, addr = scripted_router
    text = "Business costs 49 dollars a seat. Yes, SSO too."
    router.script(*[chunks.text(p) for p in pieces(text, 6)], chunks.completed())
    router.script(chunks.text("Sure."), chunks.completed())
    settings = make_settings(billing_addr=mesh["billing"], router_addr=addr, welcome_message="",
                             long_answer_spoken_chars=20)
    clients, parts = await open_session(settings, vad_model, "s-long-short")
    posted: list[str] = []

    async def post(text: str) -> None:
        posted.append(text)

    parts.long_answers.post = post
    try:
        await ask_twice(parts, "How much is Business, and SSO?", "Thanks, and one more?")
    finally:
        await clients.aclose()
    assert normalise(assistant_texts(parts)[0]) == text and posted == []
