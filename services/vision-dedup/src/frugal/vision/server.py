"""gRPC wiring of the vision-dedup service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.common.grpc_server import GrpcApp, abort_unimplemented, service_full_name
from frugal.vision.config import Settings

SERVICE_NAME = service_full_name(vision_pb2.DESCRIPTOR, "VisionService")


class VisionServiceServicer(vision_pb2_grpc.VisionServiceServicer):

    async def StreamFrames(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort_unimplemented(context, "VisionService.StreamFrames")
        yield None

    async def GetContext(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "VisionService.GetContext")


async def build_app(settings: Settings) -> GrpcApp:
    app = GrpcApp(settings, services=[SERVICE_NAME])
    vision_pb2_grpc.add_VisionServiceServicer_to_server(VisionServiceServicer(), app.server)  # type: ignore[no-untyped-call]
    return app
