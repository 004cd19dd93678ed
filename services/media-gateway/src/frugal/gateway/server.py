"""The gateway's own gRPC endpoint: health and reflection only (it is a client of the other services)."""

from __future__ import annotations

from frugal.common.grpc_server import GrpcApp
from frugal.gateway.config import Settings


async def build_app(settings: Settings) -> GrpcApp:
    return GrpcApp(settings, services=[])
