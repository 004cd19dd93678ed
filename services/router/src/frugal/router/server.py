"""gRPC wiring of the router service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from frugal.api.router.v1 import router_pb2, router_pb2_grpc
from frugal.common.grpc_server import GrpcApp, abort_unimplemented, service_full_name
from frugal.router.config import Settings

SERVICE_NAME = service_full_name(router_pb2.DESCRIPTOR, "RouterService")


class RouterServiceServicer(router_pb2_grpc.RouterServiceServicer):

    async def Route(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "RouterService.Route")

    async def Respond(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort_unimplemented(context, "RouterService.Respond")
        yield None


async def build_app(settings: Settings) -> GrpcApp:
    app = GrpcApp(settings, services=[SERVICE_NAME])
    router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServiceServicer(), app.server)  # type: ignore[no-untyped-call]
    return app
