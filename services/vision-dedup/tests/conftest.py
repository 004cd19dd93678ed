"""vision-dedup test fixtures: real service instances (gRPC over loopback) on the real Redis fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest_asyncio

from frugal.api.vision.v1 import vision_pb2_grpc
from frugal.common.grpc_server import GrpcApp
from frugal.vision.config import Settings
from frugal.vision.server import build_app

StartServer = Callable[..., Awaitable[tuple[GrpcApp, vision_pb2_grpc.VisionServiceStub]]]


def settings(redis_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0, "redis_url": redis_url,
                            "gemini_api_key": None, "shutdown_grace_seconds": 2.0}
    base.update(overrides)
    return Settings(**base)


@pytest_asyncio.fixture
async def start_server(redis_url: str) -> AsyncIterator[StartServer]:
    """Factory: `app, stub = await start_server(**settings_overrides)`; everything is stopped afterwards."""
    apps: list[GrpcApp] = []
    channels: list[grpc.aio.Channel] = []

    async def start(**overrides: Any) -> tuple[GrpcApp, vision_pb2_grpc.VisionServiceStub]:
        app = await build_app(settings(redis_url, **overrides))
        port = await app.start()
        apps.append(app)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return app, vision_pb2_grpc.VisionServiceStub(channel)

    yield start
    for ch in channels:
        await ch.close()
    for app in apps:
        await app.stop(grace=1.0)
