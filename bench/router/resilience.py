"""Router resilience figures: what a hung provider costs per turn with and without the cooldown, what a
hung Redis costs a turn, and how a 2 M-token history is cut to the window.

    uv run python bench/router/resilience.py [--quick]

Runs the router in this process (real gRPC on loopback), the provider emulators and an embedded Redis on free
ports in a temporary directory. Prints figures; asserts nothing (the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from pydantic import SecretStr

from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.devkit.devstack import EmbeddedRedis, free_port
from frugal.devkit.emulators.anthropic import AnthropicEmulator, AnthropicReply
from frugal.devkit.emulators.gemini import GeminiEmulator
from frugal.devkit.routing.probes import PREMIUM_TURN
from frugal.router.config import Settings
from frugal.router.server import build_app

MD = (("x-tenant-id", "bench"), ("x-session-id", "bench-1"))
# Premium under learned-v1 without the cascade (the figures are about the premium call itself).
HARD = PREMIUM_TURN


async def start(redis_url: str, gemini: GeminiEmulator, claude: AnthropicEmulator, **extra: Any) -> Any:
    settings = Settings(grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, redis_url=redis_url,
                        rag_addr=f"127.0.0.1:{free_port()}", vision_addr=f"127.0.0.1:{free_port()}",
                        gemini_api_key=SecretStr("g"), gemini_base_url=gemini.base_url,
                        anthropic_api_key=SecretStr("a"),
                        anthropic_base_url=claude.base_url, log_level="ERROR", shutdown_grace_seconds=0.5,
                        **extra)
    app = await build_app(settings)
    port = await app.start()
    return app, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def turn(channel: grpc.aio.Channel, text: str, *, deadline_s: float = 30.0,
               history: Any = ()) -> tuple[float, router_pb2.RespondCompleted | None, str]:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    t0 = time.perf_counter()
    done = None
    try:
        async for msg in stub.Respond(router_pb2.RespondRequest(
                turn=router_pb2.TurnInput(text=text, history=list(history)), skip_rag=True, skip_vision=True),
                metadata=MD, timeout=deadline_s):
            if msg.WhichOneof("payload") == "completed":
                done = msg.completed
    except grpc.aio.AioRpcError as err:
        return (time.perf_counter() - t0) * 1000, None, err.code().name
    return (time.perf_counter() - t0) * 1000, done, "OK"


async def hung_provider(redis_url: str, turns: int, first_token_s: float, hang_s: float) -> None:
    for label, threshold in (("no cooldown (baseline: threshold 100)", 100), ("cooldown after 3 failures", 3)):
        async with GeminiEmulator() as gemini, AnthropicEmulator() as claude:
            claude.script(*[AnthropicReply(latency_s=hang_s) for _ in range(turns)])
            app, channel = await start(redis_url, gemini, claude, provider_first_token_timeout_s=first_token_s,
                                       breaker_failure_threshold=threshold, breaker_cooldown_s=60)
            lat = []
            for _ in range(turns):
                ms, done, code = await turn(channel, HARD)
                lat.append(ms)
            await channel.close()
            await app.stop(0.5)
            r = aioredis.Redis.from_url(redis_url)
            await r.flushdb()
            await r.aclose()
        print(f"  hung Claude, first-token timeout {first_token_s:.1f}s, {label}: per-turn ms "
              + " ".join(f"{x:.0f}" for x in lat) + f"  (Claude called {len(claude.requests)}x)")


class HungRedis:
    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass


async def hung_redis(deadline_s: float) -> None:
    hung = HungRedis()
    server = await asyncio.start_server(hung.handle, "127.0.0.1", 0)
    url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    async with GeminiEmulator() as gemini, AnthropicEmulator() as claude:
        # refuse (default): a tenant this router never read has an unknown cap, so no paid call; allow: fail open.
        for mode in ("refuse", "allow"):
            app, channel = await start(url, gemini, claude, tenant_state_unreachable=mode)
            for _ in range(2):
                ms, done, code = await turn(channel, "What's the weather like today?", deadline_s=deadline_s)
                notes = len(done.degraded) if done is not None else 0
                print(f"  Redis accepts and never answers, deadline {deadline_s:.0f}s, TENANT_STATE_UNREACHABLE="
                      f"{mode}: Respond {code} in {ms:.0f} ms, {notes} fail-open notes in the result "
                      f"(seed: Route answered after 46.5 s)")
            await channel.close()
            await app.stop(0.5)
    server.close()


async def big_history(redis_url: str, messages: int, chars: int) -> None:
    history = [router_pb2.ChatMessage(role=router_pb2.ROLE_USER if i % 2 == 0 else router_pb2.ROLE_ASSISTANT,
                                      content="x" * chars) for i in range(messages)]
    async with GeminiEmulator() as gemini, AnthropicEmulator() as claude:
        app, channel = await start(redis_url, gemini, claude, max_turn_input_tokens=2_000_000,
                                   default_tokens_per_minute=100_000_000)
        ms, done, code = await turn(channel, HARD, history=history)
        sent = claude.requests[-1].input_tokens if claude.requests else 0
        print(f"  history of {messages * chars // 4:,} tokens: {code} in {ms:.0f} ms; Claude received {sent:,} input "
              f"tokens (window 200,000); {' / '.join(done.degraded) if done else ''}")
        await channel.close()
        await app.stop(0.5)


async def main(quick: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="frugal-router-resilience-"))
    redis = EmbeddedRedis(root / "redis", free_port())
    redis.start()
    try:
        print("hung provider:")
        await hung_provider(redis.url, 6 if quick else 10, 1.0 if quick else 3.0, 2.0 if quick else 5.0)
        print("hung Redis:")
        await hung_redis(3.0)
        print("oversized history:")
        await big_history(redis.url, 100, 80_000 if not quick else 20_000)
    finally:
        redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
