"""Router resilience over real gRPC with the provider emulators: tiers served across providers, several
deployments load-balanced, per-deployment cooldown and a circuit breaker shared in Redis, a 429 honouring
retry-after, a Redis that hangs, and oversized history trimmed to the window."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2
from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicReply
from frugal.devkit.emulators.gemini import GeminiEmulator, GeminiReply
from frugal.devkit.routing.probes import PREMIUM_TURN
from frugal.router.config import Settings
from frugal.router.deployments import parse_deployments

MD = (("x-tenant-id", "acme"), ("x-session-id", "s1"))
EASY = "Hi there!"  # lite
# Premium under learned-v1 without the cascade (these tests are about the premium call itself).
HARD = PREMIUM_TURN
MODERATE = "Can you explain how the retry policy interacts with the queue's visibility timeout?"


@dataclass
class Answer:
    started: router_pb2.RespondStarted | None = None
    deltas: list[str] = field(default_factory=list)
    completed: router_pb2.RespondCompleted | None = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


async def respond(router: Any, text: str, *, deadline_s: float | None = 10.0, history: Any = (),
                  **kwargs: Any) -> Answer:
    ans = Answer()
    req = router_pb2.RespondRequest(turn=router_pb2.TurnInput(text=text, history=list(history)), skip_rag=True,
                                    skip_vision=True, **kwargs)
    async for msg in router.stub.Respond(req, metadata=MD, timeout=deadline_s):
        kind = msg.WhichOneof("payload")
        if kind == "started":
            ans.started = msg.started
        elif kind == "delta":
            ans.deltas.append(msg.delta.text)
        elif kind == "completed":
            ans.completed = msg.completed
    return ans


def gemini_keys(emu: GeminiEmulator) -> dict[str, Any]:
    return {"gemini_api_key": "test-gemini-key", "gemini_base_url": emu.base_url}


def claude_keys(emu: AnthropicEmulator) -> dict[str, Any]:
    return {"anthropic_api_key": "test-claude-key", "anthropic_base_url": emu.base_url}


# ------------------------------------------------------------------------------------ availability
async def test_a_gemini_only_deployment_answers_every_tier(start_router: Any, gemini_emu: GeminiEmulator) -> None:
    router = await start_router(**gemini_keys(gemini_emu))
    route = (await router.stub.Route(router_pb2.RouteRequest(turn=router_pb2.TurnInput(text=HARD)),
                                     metadata=MD)).decision
    assert route.tier == common_pb2.TIER_STANDARD and route.model == "gemini-2.5-flash" and route.provider == "google"
    assert "no anthropic deployment for premium (claude-sonnet-4-6): served by standard" in route.override_reason
    for text, model in ((HARD, "gemini-2.5-flash"), (EASY, "gemini-2.5-flash-lite")):
        ans = await respond(router, text)
        c = ans.completed
        assert c is not None and not c.provider.offline and c.provider.model == model
        assert not ans.text.startswith("Offline mode")
    assert [r.model for r in gemini_emu.requests] == ["gemini-2.5-flash", "gemini-2.5-flash-lite"]


async def test_a_claude_only_deployment_answers_lite_turns_with_claude(
    start_router: Any, claude_emu: AnthropicEmulator
) -> None:
    router = await start_router(**claude_keys(claude_emu))
    ans = await respond(router, EASY)
    c = ans.completed
    assert c is not None and c.provider.model == "claude-sonnet-4-6" and not c.provider.offline
    assert c.decision.tier == common_pb2.TIER_PREMIUM and "served by premium" in c.decision.override_reason


async def test_the_default_fallback_chain_crosses_providers(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    """A Google outage: a lite turn goes lite -> standard -> premium (Claude) and is answered."""
    router = await start_router(**gemini_keys(gemini_emu), **claude_keys(claude_emu))
    gemini_emu.fail_next(503, times=2)
    claude_emu.script(AnthropicReply(text="Claude answers."))
    ans = await respond(router, EASY)
    c = ans.completed
    assert c is not None and c.provider.model == "claude-sonnet-4-6" and ans.text == "Claude answers."
    assert [(f.from_model, f.to_model) for f in c.fallbacks] == [
        ("gemini-2.5-flash-lite", "gemini-2.5-flash"), ("gemini-2.5-flash", "claude-sonnet-4-6")]
    # And the other way: an Anthropic outage on a premium turn ends on Gemini.
    claude_emu.fail_next(529)
    ans = await respond(router, HARD)
    assert ans.completed is not None and ans.completed.provider.provider == "google"


# ------------------------------------------------------------------------------------ deployments
async def test_several_deployments_per_model_are_load_balanced_and_fail_over(
    start_router: Any, gemini_emu: GeminiEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with GeminiEmulator(chunk_chars=8) as second:
        monkeypatch.setenv("GEMINI_KEY_A", "key-a")
        monkeypatch.setenv("GEMINI_KEY_B", "key-b")
        deployments = (f'[{{"name": "gem-a", "provider": "google", "api_key_env": "GEMINI_KEY_A", '
                       f'"base_url": "{gemini_emu.base_url}", "region": "eu"}}, '
                       f'{{"name": "gem-b", "provider": "google", "api_key_env": "GEMINI_KEY_B", '
                       f'"base_url": "{second.base_url}", "region": "us"}}]')
        router = await start_router(llm_deployments=deployments)
        for _ in range(4):
            assert (await respond(router, EASY)).completed is not None
        assert len(gemini_emu.requests) == 2 and len(second.requests) == 2
        assert {r.api_key for r in gemini_emu.requests} == {"key-a"} and {r.api_key for r in second.requests} == {
            "key-b"}
        # One deployment failing: the same model on the other deployment answers (round robin: gem-a is first).
        gemini_emu.fail_next(503)
        ans = await respond(router, EASY)
        c = ans.completed
        assert c is not None and c.provider.model == "gemini-2.5-flash-lite"
        assert len(c.fallbacks) == 1 and c.fallbacks[0].to_model == "gemini-2.5-flash-lite"
        assert "@ gem-" in c.fallbacks[0].reason


def test_deployment_config_is_validated_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K1", "secret")
    ok = parse_deployments('[{"name": "a", "provider": "google", "api_key_env": "K1", "weight": 3}]')
    assert ok[0].api_key == "secret" and ok[0].weight == 3 and "secret" not in repr(ok[0])
    bad = {
        '[{"name": "a", "provider": "google", "api_key_env": "MISSING_KEY_VAR"}]': "MISSING_KEY_VAR",
        '[{"name": "a", "provider": "openai", "api_key_env": "K1"}]': "provider",
        '[{"name": "a", "provider": "google", "api_key_env": "K1", "colour": 1}]': "colour",
        '[{"name": "a", "provider": "google", "api_key": "inline"}]': "api_key_env",
        '[{"name": "a", "provider": "google", "api_key_env": "K1"}, '
        '{"name": "a", "provider": "anthropic", "api_key_env": "K1"}]': "duplicate",
        "{not json": "not JSON",
    }
    for raw, needle in bad.items():
        with pytest.raises(ValueError, match=needle):
            parse_deployments(raw)
        with pytest.raises(ValueError, match=needle):
            Settings(llm_deployments=raw)


# ------------------------------------------------------------------------------------ health
def _gauge(name: str, deployment: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"deployment": deployment})


async def test_a_hanging_provider_cools_down_is_skipped_and_is_retried_after_the_cooldown(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    router = await start_router(**gemini_keys(gemini_emu), **claude_keys(claude_emu),
                                provider_first_token_timeout_s=0.3, breaker_failure_threshold=2,
                                breaker_cooldown_s=1.5)
    claude_emu.script(AnthropicReply(latency_s=3), AnthropicReply(latency_s=3))
    for _ in range(2):
        c = (await respond(router, HARD)).completed
        assert c is not None and c.provider.provider == "google" and c.fallbacks[0].reason.startswith("timeout")
    assert len(claude_emu.requests) == 2
    assert _gauge("router_deployment_open", "anthropic-default") == 1
    # Open: the next turn does not call Claude at all and says why.
    c = (await respond(router, HARD)).completed
    assert c is not None and c.provider.provider == "google"
    assert len(claude_emu.requests) == 2
    assert c.fallbacks[0].reason.startswith("skipped anthropic-default: cooling down")
    # After the cooldown, Claude is tried again (and answers: the script is used up).
    await asyncio.sleep(1.6)
    c = (await respond(router, HARD)).completed
    assert c is not None and c.provider.model == "claude-sonnet-4-6" and list(c.fallbacks) == []
    assert len(claude_emu.requests) == 3
    assert _gauge("router_deployment_open", "anthropic-default") == 0


async def test_the_breaker_is_shared_by_replicas_through_redis(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    settings = {**gemini_keys(gemini_emu), **claude_keys(claude_emu), "breaker_failure_threshold": 2}
    a = await start_router(**settings)
    b = await start_router(**settings)
    claude_emu.fail_next(500, times=2)
    await respond(a, HARD)
    await respond(b, HARD)  # the second failure, counted across replicas: open for both
    assert await redis_client.exists("frugal:breaker:anthropic-default")
    fresh = await start_router(**settings)  # knows nothing locally
    c = (await respond(fresh, HARD)).completed
    assert c is not None and c.provider.provider == "google" and c.fallbacks[0].reason.startswith("skipped")
    assert len(claude_emu.requests) == 2


async def test_a_429_cools_the_deployment_down_for_its_retry_after(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator, redis_client: aioredis.Redis
) -> None:
    router = await start_router(**gemini_keys(gemini_emu), **claude_keys(claude_emu))
    claude_emu.script(AnthropicReply(status=429, retry_after_s=40))
    c = (await respond(router, HARD)).completed
    assert c is not None and c.provider.provider == "google" and "rate_limited (HTTP 429)" in c.fallbacks[0].reason
    ttl_ms = await redis_client.pttl("frugal:breaker:anthropic-default")
    assert 30_000 < ttl_ms <= 40_000  # retry-after, not the default cooldown (10 s) nor the breaker's (30 s)
    c = (await respond(router, HARD)).completed
    assert c is not None and len(claude_emu.requests) == 1
    more = float(c.fallbacks[0].reason.split("cooling down for ")[1].split("s")[0])
    assert 30 < more <= 40


async def test_every_deployment_cooling_down_is_unavailable_at_once_with_retry_after(
    start_router: Any, gemini_emu: GeminiEmulator
) -> None:
    router = await start_router(**gemini_keys(gemini_emu))
    gemini_emu.script(GeminiReply(status=429, retry_after_s=20), GeminiReply(status=429, retry_after_s=20))
    with pytest.raises(grpc.aio.AioRpcError):
        await respond(router, MODERATE)
    seen = len(gemini_emu.requests)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, EASY)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "cooling down" in (info.value.details() or "")
    assert 10 <= int(dict(info.value.trailing_metadata() or ())["retry-after"]) <= 20
    assert len(gemini_emu.requests) == seen


async def test_the_router_service_is_not_serving_while_every_deployment_cools_down(
    start_router: Any, gemini_emu: GeminiEmulator
) -> None:
    """What the gateway's recovery check asks (frugal.router.serving): the service's own status says whether a
    turn could be tried; the server's overall status (the probes') stays SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from frugal.router.server import SERVICE_NAME

    router = await start_router(**gemini_keys(gemini_emu))
    health = health_pb2_grpc.HealthStub(router.channel)

    async def status(service: str) -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
        return int(reply.status)

    async def until_status(want: int, within_s: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + within_s
        while await status(SERVICE_NAME) != want:
            assert loop.time() < end, f"{SERVICE_NAME} never became status {want}"
            await asyncio.sleep(0.05)

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert await status(SERVICE_NAME) == serving
    c = (await respond(router, EASY)).completed
    assert c is not None
    gemini_emu.script(GeminiReply(status=429, retry_after_s=3), GeminiReply(status=429, retry_after_s=3))
    with pytest.raises(grpc.aio.AioRpcError):
        await respond(router, MODERATE)
    await until_status(not_serving, 2.0)
    assert await status("") == serving
    with pytest.raises(grpc.aio.AioRpcError) as info:  # what NOT_SERVING stands for
        await respond(router, EASY)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await until_status(serving, 5.0)  # the retry-after ran out: a deployment may be tried again
    c = (await respond(router, EASY)).completed
    assert c is not None and c.provider.provider == "google"


async def test_an_offline_router_stays_serving(start_router: Any) -> None:
    """No keys, no deployments: every turn gets the labelled offline answer, so nothing is cooling down."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from frugal.router.server import SERVICE_NAME

    router = await start_router()
    await asyncio.sleep(1.2)  # a few status updates (one per 0.5 s)
    reply = await health_pb2_grpc.HealthStub(router.channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2.0)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert (await respond(router, EASY)).completed is not None


# ------------------------------------------------------------------------------------ deadlines
async def test_a_hung_first_deployment_leaves_time_for_the_next_within_the_callers_deadline(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    """First-token timeout 10 s, deadline 3 s: the hung Claude gets a share of the deadline, Gemini answers."""
    router = await start_router(**gemini_keys(gemini_emu), **claude_keys(claude_emu))
    claude_emu.script(AnthropicReply(latency_s=4))
    ans = await respond(router, HARD, deadline_s=3.0)
    c = ans.completed
    assert c is not None and c.provider.provider == "google" and c.fallbacks[0].reason.startswith("timeout")


async def test_a_redis_that_never_answers_does_not_hold_the_turn_past_its_deadline(
    start_router: Any, hung_redis: Any, gemini_emu: GeminiEmulator
) -> None:
    router = await start_router(redis_url=hung_redis.url, tenant_state_unreachable="allow", **gemini_keys(gemini_emu))
    ans = await respond(router, EASY, deadline_s=3.0)
    c = ans.completed
    assert c is not None and ans.text and hung_redis.connections > 0
    said = " | ".join(c.degraded)
    assert "tenant state unavailable" in said and "rate limiter unavailable" in said
    assert "circuit-breaker store unavailable" in said
    assert REGISTRY.get_sample_value("router_fail_open_total", {"dependency": "rate_limiter"})
    decision = await router.stub.Route(router_pb2.RouteRequest(turn=router_pb2.TurnInput(text=EASY)),
                                       metadata=MD, timeout=2.0)
    assert decision.decision.model == "gemini-2.5-flash-lite"


async def test_a_tenant_never_read_is_refused_paid_calls_when_redis_does_not_answer(
    start_router: Any, hung_redis: Any, gemini_emu: GeminiEmulator
) -> None:
    """Default TENANT_STATE_UNREACHABLE=refuse: the tenant's cap is unknown, so no paid call (UNAVAILABLE,
    retryable, within the caller's deadline), and the provider is never called."""
    router = await start_router(redis_url=hung_redis.url, **gemini_keys(gemini_emu))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, EASY, deadline_s=3.0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot be read" in (info.value.details() or "")
    assert gemini_emu.requests == []


# ------------------------------------------------------------------------------------ turn size
def _big_history(messages: int, chars_each: int) -> list[router_pb2.ChatMessage]:
    out = []
    for i in range(messages):
        role = router_pb2.ROLE_USER if i % 2 == 0 else router_pb2.ROLE_ASSISTANT
        out.append(router_pb2.ChatMessage(role=role, content=f"[m{i}] " + "x" * chars_each))
    return out


async def test_a_two_million_token_history_is_trimmed_to_the_window(
    start_router: Any, gemini_emu: GeminiEmulator, claude_emu: AnthropicEmulator
) -> None:
    history = _big_history(100, 80_000)  # 100 x 20k tokens = 2 M tokens
    router = await start_router(**gemini_keys(gemini_emu), **claude_keys(claude_emu),
                                max_turn_input_tokens=2_000_000, default_tokens_per_minute=10_000_000)
    ans = await respond(router, HARD, history=history)
    c = ans.completed
    assert c is not None and c.provider.model == "claude-sonnet-4-6"
    req = claude_emu.requests[-1]
    assert req.input_tokens <= 200_000 - 512  # Claude's window minus the output allowance
    assert req.messages[-1] == ("user", HARD) and "[m99] " in req.messages[-2][1]  # newest kept
    assert not any("[m0] " in t for _, t in req.messages)  # oldest dropped
    assert any(d.startswith("history trimmed:") and "context window of claude-sonnet-4-6" in d for d in c.degraded)
    # The per-turn cap (default 100k tokens) applies to Gemini's 1M window too.
    router2 = await start_router(**gemini_keys(gemini_emu), default_tokens_per_minute=10_000_000)
    c2 = (await respond(router2, EASY, history=history)).completed
    assert c2 is not None and any("per-turn cap" in d for d in c2.degraded)
    assert sum(len(t) for t in gemini_emu.requests[-1].texts) <= 100_000 * 4


async def test_the_history_cap_is_the_shared_constant(start_router: Any) -> None:
    from frugal.common.limits import MAX_HISTORY_MESSAGES

    router = await start_router()
    ok = _big_history(MAX_HISTORY_MESSAGES, 10)
    assert (await respond(router, "hello", history=ok)).completed is not None
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await respond(router, "hello", history=_big_history(MAX_HISTORY_MESSAGES + 1, 10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {MAX_HISTORY_MESSAGES}" in (info.value.details() or "")
