"""All five services as real processes (`python -m frugal.<svc>`) on one real Postgres and Redis:
health SERVING, reflection lists each API, tenant metadata enforced, SIGTERM stops each cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.devkit.localmesh import LocalMesh

EXPECTED = {
    "router": "frugal.api.router.v1.RouterService",
    "vision-dedup": "frugal.api.vision.v1.VisionService",
    "rag": "frugal.api.rag.v1.RagService",
    "billing": "frugal.api.billing.v1.BillingService",
    "media-gateway": None,
}


async def _services(port: int) -> set[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def reqs() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names: set[str] = set()
        async for r in stub.ServerReflectionInfo(reqs()):
            names |= {s.name for s in r.list_services_response.service}
        return names


async def test_every_service_boots_serves_and_stops_cleanly(mesh: LocalMesh) -> None:
    for name, api in EXPECTED.items():
        port = mesh.ports[name]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
        names = await _services(port)
        assert "grpc.health.v1.Health" in names
        if api is not None:
            assert api in names, (name, names)

    calls: list[Callable[[grpc.aio.Channel], Awaitable[object]]] = [
        lambda ch: router_pb2_grpc.RouterServiceStub(ch).Route(router_pb2.RouteRequest(), timeout=5),
        lambda ch: vision_pb2_grpc.VisionServiceStub(ch).GetContext(vision_pb2.GetContextRequest(), timeout=5),
        lambda ch: rag_pb2_grpc.RagServiceStub(ch).ListDocuments(rag_pb2.ListDocumentsRequest(), timeout=5),
        lambda ch: billing_pb2_grpc.BillingServiceStub(ch).GetUsage(billing_pb2.GetUsageRequest(), timeout=5),
    ]
    for name, call in zip(["router", "vision-dedup", "rag", "billing"], calls, strict=True):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.ports[name]}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(ch)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name

    codes = mesh.stop()
    assert codes == {name: 0 for name in EXPECTED}, codes

