"""What the provider reported is what is billed: usage reported before an interruption, a cancel or a
timeout; thinking tokens; cached input tokens; an unparseable Gemini chunk is a provider failure that
falls back and is billed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from frugal.api.router.v1 import router_pb2
from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent
from frugal.devkit.cost_spool import spooled_events
from frugal.devkit.devstack import free_port
from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicReply
from frugal.devkit.emulators.gemini import GeminiEmulator, GeminiReply
from frugal.devkit.routing.probes import PREMIUM_TURN

MD = (("x-tenant-id", "acme"), ("x-session-id", "s1"))
EASY = "Hi there!"
# Premium under learned-v1 without the cascade (these tests are about the premium call itself).
HARD = PREMIUM_TURN


def both(gemini: GeminiEmulator, claude: AnthropicEmulator, **extra: Any) -> dict[str, Any]:
    return {"gemini_api_key": "g", "gemini_base_url": gemini.base_url, "anthropic_api_key": "a",
            "anthropic_base_url": claude.base_url, **extra}


async def events(redis: aioredis.Redis) -> list[CostEvent]:
    return [CostEvent.from_stream_fields(dict(f or {})) for _, f in await redis.xrange(COST_EVENTS_STREAM) or []]


async def completed(router: Any, text: str, **kwargs: Any) -> router_pb2.RespondCompleted:
    out = None
    async for msg in router.stub.Respond(router_pb2.RespondRequest(
            turn=router_pb2.TurnInput(text=text), skip_rag=True, skip_vision=True, **kwargs), metadata=MD, timeout=10):
        if msg.WhichOneof("payload") == "completed":
            out = msg.completed
    assert out is not None
    result: router_pb2.RespondCompleted = out
    return result


async def test_gemini_thinking_tokens_are_billed_as_output(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**both(gemini_emu, claude_emu))
    gemini_emu.script(GeminiReply(text="Sunny.", usage={"promptTokenCount": 100, "candidatesTokenCount": 10,
                                                        "thoughtsTokenCount": 40, "totalTokenCount": 150}))
    c = await completed(router, EASY)
    assert c.usage.output_tokens == 50 and c.cost_usd == pytest.approx(100 * 0.10 / 1e6 + 50 * 0.40 / 1e6)
    (ev,) = await events(redis_client)
    assert ev.usage.output_tokens == 50


async def test_cached_input_tokens_are_read_from_both_providers(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**both(gemini_emu, claude_emu))
    claude_emu.script(AnthropicReply(text="ok", usage={"input_tokens": 100, "cache_read_input_tokens": 900,
                                                       "output_tokens": 5}))
    c = await completed(router, HARD)
    # Anthropic counts cache reads outside input_tokens: the total input is 1000, of which 900 cached.
    assert (c.usage.input_tokens, c.usage.cached_input_tokens, c.usage.output_tokens) == (1000, 900, 5)
    gemini_emu.script(GeminiReply(text="ok", usage={"promptTokenCount": 1000, "cachedContentTokenCount": 600,
                                                    "candidatesTokenCount": 3, "totalTokenCount": 1003}))
    c = await completed(router, EASY)
    assert (c.usage.input_tokens, c.usage.cached_input_tokens) == (1000, 600)
    claude_ev, gemini_ev = await events(redis_client)
    assert claude_ev.usage.cached_input_tokens == 900 and gemini_ev.usage.cached_input_tokens == 600


async def test_an_interrupted_claude_call_bills_the_input_it_reported(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**both(gemini_emu, claude_emu))
    claude_emu.script(AnthropicReply(chunks=("First part. ", "Second part. ", "Third."), error_after_chunks=2,
                                     usage={"input_tokens": 4321, "output_tokens": 9}))
    with pytest.raises(grpc.aio.AioRpcError):
        await completed(router, HARD)
    (ev,) = await events(redis_client)
    assert ev.attributes["outcome"] == "interrupted"
    assert ev.usage.input_tokens == 4321 and ev.usage.output_tokens == 7 and ev.usage.estimated
    assert ev.cost_usd == pytest.approx(4321 * 3.0 / 1e6 + 7 * 15.0 / 1e6)


async def test_a_cancelled_call_bills_the_input_the_provider_reported(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**both(gemini_emu, claude_emu))
    claude_emu.script(AnthropicReply(chunks=("One. ", "Two. ", "Three. "), chunk_delay_s=0.5,
                                     usage={"input_tokens": 777, "output_tokens": 6}))
    call = router.stub.Respond(router_pb2.RespondRequest(turn=router_pb2.TurnInput(text=HARD), skip_rag=True,
                                                         skip_vision=True, turn_id="t-c"), metadata=MD, timeout=10)
    async for msg in call:
        if msg.WhichOneof("payload") == "delta":
            break
    call.cancel()
    got: list[CostEvent] = []
    for _ in range(100):  # wait for the server to notice (not a timing assertion)
        got = await events(redis_client)
        if got:
            break
        await asyncio.sleep(0.05)
    (ev,) = got
    assert ev.attributes["outcome"] == "cancelled" and ev.usage.input_tokens == 777


async def test_a_broken_gemini_stream_bills_what_gemini_reported(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    """Gemini reports usage on every chunk: a stream cut after its first chunk is billed with it."""
    router = await start_router(**both(gemini_emu, claude_emu))
    gemini_emu.script(GeminiReply(chunks=("Part one. ", "part two."), drop_after_chunks=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await completed(router, EASY, turn_id="t-drop")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    (ev,) = await events(redis_client)
    assert ev.attributes["outcome"] == "interrupted" and ev.usage.input_tokens > 0 and ev.cost_usd > 0


async def test_an_unparseable_gemini_chunk_falls_back_and_is_billed(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**both(gemini_emu, claude_emu))
    gemini_emu.script(GeminiReply(text="never", malformed_after_chunks=0), GeminiReply(text="Second try."))
    c = await completed(router, EASY, turn_id="t-bad")
    assert c.provider.model == "gemini-2.5-flash" and "unavailable" in c.fallbacks[0].reason
    bad, ok = await events(redis_client)
    assert bad.attributes["outcome"] == "unavailable" and bad.model == "gemini-2.5-flash-lite"
    assert ok.attributes["outcome"] == "ok"
    # After a good chunk (with its usage) the broken one cuts the answer: not UNKNOWN, and billed.
    gemini_emu.script(GeminiReply(chunks=("Good chunk. ", "lost"), malformed_after_chunks=1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await completed(router, EASY, turn_id="t-bad2")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    last = (await events(redis_client))[-1]
    assert last.attributes["outcome"] == "interrupted" and last.usage.input_tokens > 0


async def test_a_router_that_cannot_record_costs_durably_refuses_paid_turns_before_any_provider_call(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, tmp_path: Path
) -> None:
    # The cost-event Redis is down, so every event goes to the spool; at 4 KiB the spool is full and a new paid
    # turn must be refused before it reaches a provider. (Billing's tenant state lives on that Redis too:
    # TENANT_STATE_UNREACHABLE=allow keeps that refusal, tested elsewhere, out of the way.)
    spool = tmp_path / "spool"
    router = await start_router(**both(gemini_emu, claude_emu, cost_events_redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                       cost_spool_dir=str(spool), cost_spool_max_bytes=4096,
                                       tenant_state_unreachable="allow"))
    answered = 0
    for _ in range(60):  # one event is ~1 KB: 60 answered turns would mean the limit is not enforced
        sent = len(gemini_emu.requests) + len(claude_emu.requests)
        try:
            await completed(router, EASY)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            assert "spool full" in (err.details() or "")
            assert len(gemini_emu.requests) + len(claude_emu.requests) == sent  # nothing was sent to a provider
            break
        answered += 1
    else:
        pytest.fail("a router with a full cost-event spool kept making paid calls")
    assert answered >= 1
    # Every call that was made reaches the disk, one event per provider request, none lost. The router bounds
    # how long a turn waits for its event's fsync (frugal.router.bounded), so the last ones may land just after.
    calls = len(gemini_emu.requests) + len(claude_emu.requests)
    assert calls == answered
    spooled = await spooled_events(spool, at_least=calls)
    assert len(spooled) == calls
    assert {e.tenant_id for e in spooled} == {"acme"}
