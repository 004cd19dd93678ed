"""gRPC wiring of the rag service."""

from __future__ import annotations

from typing import Any

import grpc

from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.common.grpc_server import GrpcApp, abort_unimplemented, service_full_name
from frugal.rag.config import Settings

SERVICE_NAME = service_full_name(rag_pb2.DESCRIPTOR, "RagService")


class RagServiceServicer(rag_pb2_grpc.RagServiceServicer):

    async def IngestDocument(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "RagService.IngestDocument")

    async def Retrieve(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "RagService.Retrieve")

    async def DeleteDocument(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "RagService.DeleteDocument")

    async def ListDocuments(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "RagService.ListDocuments")


async def build_app(settings: Settings) -> GrpcApp:
    app = GrpcApp(settings, services=[SERVICE_NAME])
    rag_pb2_grpc.add_RagServiceServicer_to_server(RagServiceServicer(), app.server)  # type: ignore[no-untyped-call]
    return app
