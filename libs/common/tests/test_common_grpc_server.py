"""GrpcApp over real loopback sockets: health, reflection, tenancy interceptor, deadlines, graceful drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common.grpc_client import create_channel, outgoing_metadata, remaining_timeout
from frugal.common.grpc_server import GrpcApp, abort_unimplemented, service_full_name
from frugal.common.settings import ServiceSettings
from frugal.common.tenancy import current_identity

ROUTER = service_full_name(router_pb2.DESCRIPTOR, "RouterService")
MD = (("x-tenant-id", "org_abc"), ("x-session-id", "sess-1"))


class EchoRouter(router_pb2_grpc.RouterServiceServicer):
    """Route echoes the identity the interceptor saw; Respond streams slowly (for drain tests)."""

    def __init__(self, downstream: str | None = None) -> None:
        self.downstream = downstream
        self.finished_streams = 0

    async def Route(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> router_pb2.RouteResponse:
        if request.turn.text == "unimplemented":
            await abort_unimplemented(context, "Route(unimplemented)")
        if request.turn.text == "forward" and self.downstream:
            # Propagate identity and deadline to a downstream call.
            async with create_channel(self.downstream) as ch:
                stub = router_pb2_grpc.RouterServiceStub(ch)
                return await stub.Route(
                    router_pb2.RouteRequest(turn=router_pb2.TurnInput(text="echo")),
                    metadata=outgoing_metadata(), timeout=remaining_timeout(context, 30.0),
                )
        ident = current_identity()
        assert ident is not None
        left = context.time_remaining()
        return router_pb2.RouteResponse(decision=router_pb2.Decision(
            model=f"{ident.tenant_id}|{ident.session_id}", scorer=f"{left if left is None else round(left)}"))

    async def Respond(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        for i in range(5):
            await asyncio.sleep(0.2)
            yield router_pb2.RespondResponse(delta=router_pb2.TextDelta(text=str(i)))
        self.finished_streams += 1


async def _start(servicer: EchoRouter) -> GrpcApp:
    app = GrpcApp(ServiceSettings(service_name="t", grpc_host="127.0.0.1", grpc_port=0, metrics_port=0,
                                  shutdown_grace_seconds=5, shutdown_delay_seconds=0.3),
                 services=[ROUTER])
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, app.server)
    await app.start()
    return app


async def test_health_reflection_and_tenancy() -> None:
    app = await _start(EchoRouter())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for name in ("", ROUTER):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING

            refl = reflection_pb2_grpc.ServerReflectionStub(ch)

            async def reqs() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            names = set()
            async for r in refl.ServerReflectionInfo(reqs()):
                names |= {s.name for s in r.list_services_response.service}
            assert {ROUTER, "grpc.health.v1.Health"} <= names

            stub = router_pb2_grpc.RouterServiceStub(ch)
            req = router_pb2.RouteRequest(turn=router_pb2.TurnInput(text="hi"))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Route(req)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Route(req, metadata=(("x-session-id", "s"),))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "x-tenant-id" in (e.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Route(req, metadata=(("x-tenant-id", "Org A"), ("x-session-id", "s")))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # Streaming RPCs are guarded too.
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in stub.Respond(router_pb2.RespondRequest()):
                    pass
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

            before = {c: _handled("Route", c) for c in ("OK", "UNIMPLEMENTED", "UNAUTHENTICATED")}
            ok = await stub.Route(req, metadata=MD, timeout=20)
            assert ok.decision.model == "org_abc|sess-1"
            assert 15 <= int(ok.decision.scorer) <= 20

            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Route(router_pb2.RouteRequest(turn=router_pb2.TurnInput(text="unimplemented")), metadata=MD)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
            # Counted per method and status code (the interceptor's cached metric children).
            await stub.Route(req, metadata=MD, timeout=20)
            assert _handled("Route", "OK") == before["OK"] + 2
            assert _handled("Route", "UNIMPLEMENTED") == before["UNIMPLEMENTED"] + 1
            assert _handled("Route", "UNAUTHENTICATED") == before["UNAUTHENTICATED"]
            for method in ("Route", "Respond"):
                assert REGISTRY.get_sample_value("grpc_server_in_flight",
                                                 {"grpc_service": ROUTER, "grpc_method": method}) == 0
    finally:
        await app.stop(1)


def _handled(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("grpc_server_handled_total", {
        "grpc_service": ROUTER, "grpc_method": method, "grpc_type": "unary", "grpc_code": code}) or 0.0


async def test_identity_and_deadline_propagate_downstream() -> None:
    downstream = await _start(EchoRouter())
    upstream = await _start(EchoRouter(downstream=f"127.0.0.1:{downstream.port}"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{upstream.port}") as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            resp = await stub.Route(router_pb2.RouteRequest(turn=router_pb2.TurnInput(text="forward")),
                                    metadata=MD, timeout=7)
            assert resp.decision.model == "org_abc|sess-1"
            assert int(resp.decision.scorer) <= 7  # the caller's 7 s, not the 30 s default
    finally:
        await upstream.stop(1)
        await downstream.stop(1)


async def test_graceful_shutdown_drains_in_flight_streams() -> None:
    servicer = EchoRouter()
    app = await _start(servicer)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        call = stub.Respond(router_pb2.RespondRequest(), metadata=MD)
        first = await call.read()
        assert isinstance(first, router_pb2.RespondResponse) and first.delta.text == "0"
        stopping = asyncio.create_task(app.stop(grace=5))
        await asyncio.sleep(0.05)
        status = await health.Check(health_pb2.HealthCheckRequest(service=ROUTER))
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        rest = []
        while isinstance(msg := await call.read(), router_pb2.RespondResponse):
            rest.append(msg.delta.text)
        assert rest == ["1", "2", "3", "4"]
        await stopping
    assert servicer.finished_streams == 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await router_pb2_grpc.RouterServiceStub(ch).Route(router_pb2.RouteRequest(), metadata=MD, timeout=2)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_grace_expiry_cancels_streams() -> None:
    servicer = EchoRouter()
    app = await _start(servicer)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        call = router_pb2_grpc.RouterServiceStub(ch).Respond(router_pb2.RespondRequest(), metadata=MD)
        await call.read()
        await app.stop(grace=0.1)
        with pytest.raises(grpc.aio.AioRpcError):
            while await call.read() is not grpc.aio.EOF:
                pass
    assert servicer.finished_streams == 0


async def test_grpccall_cli_lists_and_calls_with_json() -> None:
    import sys

    app = await _start(EchoRouter())
    target = f"127.0.0.1:{app.port}"

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "frugal.common.grpccall", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    try:
        rc, out, _ = await cli(target, "list")
        assert rc == 0 and ROUTER in out.split()
        rc, out, _ = await cli("-H", "x-tenant-id: org_abc", "-H", "x-session-id: s9",
                               "-d", '{"turn": {"text": "hi"}}', target, f"{ROUTER}/Route")
        assert rc == 0 and '"model": "org_abc|s9"' in out
        rc, _, err = await cli("-d", "{}", target, f"{ROUTER}/Route")
        assert rc == 1 and "UNAUTHENTICATED" in err
    finally:
        await app.stop(1)


async def test_wait_serving_returns_times_out_and_notices_a_dead_server() -> None:
    from frugal.common.healthcheck import wait_serving
    from frugal.devkit.devstack import free_port

    app = await _start(EchoRouter())
    try:
        await asyncio.to_thread(wait_serving, f"127.0.0.1:{app.port}", 10)
    finally:
        await app.stop(1)
    nothing = f"127.0.0.1:{free_port()}"
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(wait_serving, nothing, 0.3, interval_s=0.05)
    with pytest.raises(RuntimeError, match="exited"):
        await asyncio.to_thread(wait_serving, nothing, 30, alive=lambda: False)
