"""Whole-session accounting: list prices for every kind (offline rows included, labelled), cached-token
prices, and the naive baseline of the same session."""

from __future__ import annotations

import pytest

from frugal.common.cost_events import CostEvent, CostKind
from frugal.common.history_window import history_window
from frugal.common.pricing import PriceCatalog, default_catalog
from frugal.common.session_cost import CostRow, NaiveRule, format_report, list_price, llm_cost, session_cost
from frugal.common.usage import UsageAmounts


@pytest.fixture
def catalog() -> PriceCatalog:
    return default_catalog()


def test_offline_rows_are_priced_as_the_model_they_stand_in_for_and_labelled(catalog: PriceCatalog) -> None:
    ev = CostEvent(event_id="e-0000001", tenant_id="org_a", service="media-gateway", kind=CostKind.TTS,
                   provider="offline", model="offline-tts", usage=UsageAmounts(characters=400, estimated=True),
                   cost_usd=0.0, offline=True, attributes={"list_price_model": "eleven_flash_v2_5"})
    row = CostRow.from_event(ev)
    assert list_price(row, catalog) == pytest.approx(400 * 0.00005)
    cost = session_cost([row], catalog, session_seconds=60)
    assert cost.kinds["tts"].estimated and cost.estimated
    assert "estimated" in format_report(cost)


def test_cached_tokens_are_priced_at_the_cached_price(catalog: PriceCatalog) -> None:
    usage = UsageAmounts(input_tokens=10_000, output_tokens=100)
    price = catalog.price("claude-sonnet-4-6")
    plain = llm_cost(price, usage)
    cached = llm_cost(price, usage, cache_read=8_000)
    assert plain == pytest.approx(10_000 * 3 / 1e6 + 100 * 15 / 1e6)
    assert cached == pytest.approx(2_000 * 3 / 1e6 + 8_000 * 0.3 / 1e6 + 100 * 15 / 1e6)
    written = llm_cost(price, usage, cache_write=10_000)
    assert written == pytest.approx(10_000 * 3.75 / 1e6 + 100 * 15 / 1e6)
    gemini = catalog.price("gemini-2.5-flash")
    assert llm_cost(gemini, usage, cache_read=10_000) == pytest.approx(10_000 * 0.03 / 1e6 + 100 * 2.5 / 1e6)


def test_naive_baseline_streams_the_whole_session_and_synthesises_every_answer(catalog: PriceCatalog) -> None:
    rows = [
        CostRow(kind="stt", model="nova-3", usage=UsageAmounts(audio_seconds=60.0),
                attributes={"stream_seconds": "600"}),
        CostRow(kind="tts", model="eleven_flash_v2_5", usage=UsageAmounts(characters=150),
                attributes={"utterance": "answer"}),
        CostRow(kind="tts", model="eleven_flash_v2_5", usage=UsageAmounts(characters=0),
                attributes={"tts_cache": "hit", "served_characters": "90", "utterance": "fixed"}),
        CostRow(kind="llm", model="gemini-2.5-flash-lite", tier="lite",
                usage=UsageAmounts(input_tokens=4000, output_tokens=40),
                attributes={"cache_read_tokens": "3000"}),
        CostRow(kind="vision", model="gemini-2.5-flash-lite", usage=UsageAmounts(input_tokens=300, output_tokens=50),
                covered_seconds=30.0),
    ]
    cost = session_cost(rows, catalog)
    stt = catalog.price("nova-3").per_audio_second
    assert cost.session_seconds == 600
    assert cost.kinds["stt"].cost_usd == pytest.approx(60 * stt)
    assert cost.kinds["stt"].naive_usd == pytest.approx(600 * stt)
    # every answer at least the naive answer length; a cache hit is synthesised again
    assert cost.kinds["tts"].naive_usd == pytest.approx((400 + 90) * 0.00005)
    assert cost.kinds["tts"].cost_usd == pytest.approx(150 * 0.00005)
    # all premium, no cache, at least the naive answer's output tokens
    assert cost.kinds["llm"].naive_usd == pytest.approx(4000 * 3 / 1e6 + 100 * 15 / 1e6)
    lite = catalog.price("gemini-2.5-flash-lite")
    assert cost.kinds["llm"].cost_usd == pytest.approx(1000 * 0.1 / 1e6 + 3000 * 0.01 / 1e6 + 40 * 0.4 / 1e6)
    assert lite.cached_input_per_mtok == 0.01
    vision_call = lite.cost(UsageAmounts(input_tokens=300, output_tokens=50))
    assert cost.kinds["vision"].naive_usd == pytest.approx(30 * vision_call)
    assert cost.savings == pytest.approx(1 - cost.cost_usd / cost.naive_usd)
    assert cost.cost_per_minute == pytest.approx(cost.cost_usd / 10)
    # the screen-share length, when known, sets the naive vision calls
    cost2 = session_cost(rows, catalog, screen_share_seconds=120.0)
    assert cost2.kinds["vision"].naive_usd == pytest.approx(120 * vision_call)


def test_an_answers_sentences_are_one_answer_for_the_naive_rule(catalog: PriceCatalog) -> None:
    """The gateway synthesises an answer sentence by sentence: its rows share an `answer_id`, and the naive
    answer length applies to the answer, not to each sentence. A long answer's rest that went to the room chat
    (`chat_only_characters`) is spoken by the naive agent."""

    def tts(chars: int, answer: str | None, session: str = "s1", **extra: str) -> CostRow:
        attrs = {"utterance": "answer", "answer_id": answer} if answer else {"utterance": "fixed"}
        return CostRow(kind="tts", model="eleven_flash_v2_5", usage=UsageAmounts(characters=chars),
                       attributes=attrs | extra, session_id=session)

    rows = [
        tts(60, None),  # the greeting: as it was
        tts(100, "a1"), tts(100, "a1"), tts(0, "a1", tts_cache="hit", served_characters="50"),  # 250 -> 400
        tts(300, "a2"), tts(280, "a2"),  # 580: longer than the naive answer
        tts(120, "a3"), tts(0, "a3", chat_only_characters="500"),  # spoken short, the rest in the chat: 620
        tts(100, "a1", session="s2"),  # another session's answer with the same id is another answer: 400
    ]
    cost = session_cost(rows, catalog)
    assert cost.kinds["tts"].naive_usd == pytest.approx((60 + 400 + 580 + 620 + 400) * 0.00005)
    assert cost.kinds["tts"].cost_usd == pytest.approx((60 + 200 + 580 + 120 + 100) * 0.00005)
    assert cost.kinds["tts"].units["cache_hit_characters"] == 50


def test_naive_rule_is_validated() -> None:
    with pytest.raises(ValueError):
        NaiveRule(answer_characters=-1)


def test_stable_history_window_keeps_the_prefix_for_several_turns() -> None:
    msgs = list(range(30))
    starts = {history_window(msgs[:n], 12, stable=True)[0] for n in range(13, 19)}
    assert len(starts) <= 2  # the first message changes at most once over six messages
    assert all(len(history_window(msgs[:n], 12)) <= 12 for n in range(30))
    sliding = {history_window(msgs[:n], 12, stable=False)[0] for n in range(13, 19)}
    assert len(sliding) == 6


def test_usage_report_lines_from_the_proto(catalog: PriceCatalog) -> None:
    from frugal.billing.session_report import to_proto
    from frugal.common.session_cost import format_usage_session_cost

    rows = [CostRow(kind="tts", model="offline-tts", offline=True, usage=UsageAmounts(characters=200, estimated=True),
                    attributes={"list_price_model": "eleven_flash_v2_5"}, session_id="s")]
    lines = format_usage_session_cost(to_proto(session_cost(rows, catalog, session_seconds=120), 1))
    assert any(line.strip().startswith("tts*") for line in lines) and "estimated" in lines[-1]
    assert "$0.0050/min" in "\n".join(lines)  # 200 chars x $0.00005 over 2 minutes
