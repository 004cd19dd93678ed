"""One error-to-status mapping: what a handler raises is what the caller sees, over a real gRPC socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import redis.exceptions

from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common import errors
from frugal.common.grpc_server import GrpcApp, service_full_name
from frugal.common.settings import ServiceSettings

ROUTER = service_full_name(router_pb2.DESCRIPTOR, "RouterService")
MD = (("x-tenant-id", "org_abc"), ("x-session-id", "sess-1"))

RAISED: dict[str, BaseException] = {
    "invalid": errors.InvalidArgument("turn.text is empty"),
    "missing": errors.NotFound("no such document"),
    "limit": errors.ResourceExhausted("40 requests per minute"),
    "statement": asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    "redis": redis.exceptions.ConnectionError("Connection refused"),
    "timeout": TimeoutError(),
    "bug": KeyError("secret-internal-detail"),
}


class Raising(router_pb2_grpc.RouterServiceServicer):
    async def Route(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> router_pb2.RouteResponse:
        raise RAISED[request.turn.text]

    async def Respond(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        yield router_pb2.RespondResponse(delta=router_pb2.TextDelta(text="partial"))
        raise RAISED[request.turn.text]


@pytest.fixture
async def app() -> AsyncIterator[GrpcApp]:
    app = GrpcApp(ServiceSettings(service_name="t", grpc_host="127.0.0.1", grpc_port=0, metrics_port=0,
                                  shutdown_grace_seconds=1, shutdown_delay_seconds=0), services=[ROUTER])
    router_pb2_grpc.add_RouterServiceServicer_to_server(Raising(), app.server)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.mark.parametrize(("what", "code", "detail"), [
    ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "turn.text is empty"),
    ("missing", grpc.StatusCode.NOT_FOUND, "no such document"),
    ("limit", grpc.StatusCode.RESOURCE_EXHAUSTED, "40 requests per minute"),
    ("statement", grpc.StatusCode.DEADLINE_EXCEEDED, "database statement timed out"),
    ("redis", grpc.StatusCode.UNAVAILABLE, "redis unavailable"),
    ("timeout", grpc.StatusCode.DEADLINE_EXCEEDED, "timed out"),
    ("bug", grpc.StatusCode.INTERNAL, "internal error: KeyError"),
])
async def test_raised_errors_reach_the_caller_as_their_status(
    app: GrpcApp, what: str, code: grpc.StatusCode, detail: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Route(router_pb2.RouteRequest(turn=router_pb2.TurnInput(text=what)), metadata=MD, timeout=5)
        assert unary.value.code() == code
        assert detail in (unary.value.details() or "")
        # A stream that already sent messages ends with the same status.
        got: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for msg in stub.Respond(router_pb2.RespondRequest(turn=router_pb2.TurnInput(text=what)),
                                          metadata=MD, timeout=5):
                got.append(msg.delta.text)
        assert got == ["partial"]
        assert streamed.value.code() == code


async def test_unexpected_errors_leak_no_detail(app: GrpcApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await router_pb2_grpc.RouterServiceStub(ch).Route(
                router_pb2.RouteRequest(turn=router_pb2.TurnInput(text="bug")), metadata=MD, timeout=5)
    assert "secret-internal-detail" not in (err.value.details() or "")
