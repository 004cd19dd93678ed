"""Fixtures: real mesh services started in-process on free ports (real Postgres and Redis underneath)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.api.common.v1 import common_pb2
from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common.grpc_server import GrpcApp
from frugal.devkit.pytest_plugin import with_user
from frugal.gateway.config import Settings
from frugal.gateway.router_fallback import ROUTER_SERVICE

TENANT = "org_lumen"
ROOM = "tenant_org_lumen_onboarding-call"


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(redis_url: str) -> SettingsFactory:
    def make(**overrides: object) -> Settings:
        base: dict[str, object] = {"grpc_port": 0, "metrics_port": 0, "log_format": "text", "redis_url": redis_url,
                                   "router_timeout_s": 20.0, "billing_timeout_s": 5.0,
                                   "vision_reconnect_min_s": 0.05, "vision_reconnect_max_s": 0.2}
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    return make


@pytest.fixture
def dead_addr() -> str:
    """An address nothing listens on (a port just released)."""
    from frugal.devkit.devstack import free_port

    return f"127.0.0.1:{free_port()}"


@pytest_asyncio.fixture
async def billing_addr(new_database: Callable[[], Awaitable[str]], redis_url: str) -> AsyncIterator[str]:
    """The real billing service (migrations applied, ledger consumer running) on a fresh database."""
    from frugal.billing.config import Settings as BillingSettings
    from frugal.billing.server import build_app

    dsn = await new_database()
    settings = BillingSettings(
        grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, redis_url=redis_url,
        database_url=with_user(dsn, "frugal_billing"), migration_database_url=dsn,
        ledger_block_ms=100, ledger_maintenance_seconds=0.5,
    )
    app = await build_app(settings)
    port = await app.start()
    yield f"127.0.0.1:{port}"
    await app.stop(0.5)


@pytest.fixture
def register_tenant() -> Callable[..., Awaitable[None]]:
    return _register


async def _register(billing: str, tenant_id: str = TENANT, display_name: str = "Lumen Desk") -> None:
    async with grpc.aio.insecure_channel(billing) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        await stub.UpsertTenant(
            billing_pb2.UpsertTenantRequest(policy=billing_pb2.TenantPolicy(
                tenant_id=tenant_id, display_name=display_name, plan="business", knowledge_base_enabled=True,
                monthly_budget_usd=-1,  # no cap (0 would suspend the tenant)
            )),
            metadata=(("x-tenant-id", tenant_id), ("x-session-id", "test-setup")), timeout=10,
        )


@pytest.fixture
def demo_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "demo"


@pytest.fixture(autouse=True)
def _no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use the offline speech stand-ins unless they set a key themselves."""
    for key in ("DEEPGRAM_API_KEY", "ELEVENLABS_API_KEY", "ELEVEN_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    os.environ.setdefault("LOG_FORMAT", "text")


@pytest_asyncio.fixture
async def router_factory(redis_url: str, dead_addr: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Starts the real router in-process (offline providers: no API keys) and returns its address."""
    from frugal.router.config import Settings as RouterSettings
    from frugal.router.server import build_app

    apps: list[GrpcApp] = []

    async def start(*, vision_addr: str = dead_addr, rag_addr: str = dead_addr) -> str:
        settings = RouterSettings(grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, redis_url=redis_url,
                                  vision_addr=vision_addr, rag_addr=rag_addr, gemini_api_key=None,
                                  anthropic_api_key=None)
        app = await build_app(settings)
        port = await app.start()
        apps.append(app)
        return f"127.0.0.1:{port}"

    yield start
    for app in apps:
        await app.stop(0.5)


@pytest_asyncio.fixture
async def mesh(billing_addr: str, router_factory: Callable[..., Awaitable[str]],
               register_tenant: Callable[..., Awaitable[None]]) -> dict[str, str]:
    """Real billing (tenant registered) and router; vision and rag are down unless a test starts them."""
    await register_tenant(billing_addr)
    return {"billing": billing_addr, "router": await router_factory()}


@pytest_asyncio.fixture
async def rag_addr(new_database: Callable[[], Awaitable[str]], redis_url: str) -> AsyncIterator[str]:
    """The real rag service (migrations applied, local embedder) on a fresh database."""
    from frugal.rag.config import Settings as RagSettings
    from frugal.rag.server import build_app

    dsn = await new_database()
    settings = RagSettings(grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, redis_url=redis_url,
                           database_url=with_user(dsn, "frugal_rag"), migration_database_url=dsn)
    app = await build_app(settings)
    port = await app.start()
    yield f"127.0.0.1:{port}"
    await app.stop(0.5)


class ScriptedRouter(router_pb2_grpc.RouterServiceServicer):
    """TEST DOUBLE of the router's provider side, for gateway unit tests only: each Respond plays the next
    script (a list of RespondResponse messages; a float pauses that long; an exception aborts with its code),
    and records the request and whether the caller cancelled it. The real router's tool support lives in the
    router service and is tested there."""

    def __init__(self) -> None:
        self.scripts: list[list[object]] = []
        self.requests: list[router_pb2.RespondRequest] = []
        self.cancelled: list[bool] = []
        self.started = asyncio.Event()
        # When set, a Respond with no script left is refused with this status.
        self.refuse: grpc.StatusCode | None = None
        self.health = health.aio.HealthServicer()

    async def Route(self, request: router_pb2.RouteRequest,  # noqa: N802 - gRPC method name
                    context: grpc.aio.ServicerContext[Any, Any]) -> router_pb2.RouteResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    def script(self, *items: object) -> None:
        self.scripts.append(list(items))

    async def Respond(self, request: router_pb2.RespondRequest,  # noqa: N802 - gRPC method name
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[router_pb2.RespondResponse]:
        self.requests.append(request)
        index = len(self.cancelled)
        self.cancelled.append(False)
        self.started.set()
        default: list[object] = [self.refuse] if self.refuse is not None else [text_chunk("ok"), completed()]
        items = self.scripts.pop(0) if self.scripts else default
        try:
            for item in items:
                if isinstance(item, float):
                    await asyncio.sleep(item)
                elif isinstance(item, grpc.StatusCode):
                    await context.abort(item, "scripted failure")
                else:
                    assert isinstance(item, router_pb2.RespondResponse)
                    yield item
        except asyncio.CancelledError:
            self.cancelled[index] = True
            raise


def text_chunk(text: str) -> router_pb2.RespondResponse:
    return router_pb2.RespondResponse(delta=router_pb2.TextDelta(text=text))


def tool_call_chunk(call_id: str, name: str, arguments: dict[str, object]) -> router_pb2.RespondResponse:
    return router_pb2.RespondResponse(tool_call=router_pb2.ToolCall(id=call_id, name=name,
                                                                    arguments_json=json.dumps(arguments)))


def completed(**kwargs: Any) -> router_pb2.RespondResponse:
    return router_pb2.RespondResponse(completed=router_pb2.RespondCompleted(
        tier=common_pb2.TIER_LITE, usage=common_pb2.Usage(input_tokens=10, output_tokens=5), **kwargs))


@pytest_asyncio.fixture
async def scripted_routers() -> AsyncIterator[Callable[[], Awaitable[tuple[ScriptedRouter, str]]]]:
    """Starts ScriptedRouters, each with gRPC health (its RouterService SERVING; tests may change it through
    `servicer.health`)."""
    servers: list[grpc.aio.Server] = []

    async def start() -> tuple[ScriptedRouter, str]:
        servicer = ScriptedRouter()
        server = grpc.aio.server()
        router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(servicer.health, server)
        await servicer.health.set(ROUTER_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0.2)


@pytest_asyncio.fixture
async def scripted_router(
    scripted_routers: Callable[[], Awaitable[tuple[ScriptedRouter, str]]],
) -> tuple[ScriptedRouter, str]:
    return await scripted_routers()


@pytest.fixture
def chunks() -> Any:
    """Builders of router stream messages, for ScriptedRouter scripts."""
    import types

    return types.SimpleNamespace(text=text_chunk, tool_call=tool_call_chunk, completed=completed)
