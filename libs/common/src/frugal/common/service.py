"""Process entry point shared by every service: settings, logging, build the app, serve until signal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from frugal.common.grpc_server import GrpcApp
from frugal.common.logging import configure_logging
from frugal.common.settings import ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)


def run_service(settings_cls: type[S], build: Callable[[S], Awaitable[GrpcApp]]) -> None:
    """Loads settings (a bad value stops here with one line), then serves until SIGTERM/SIGINT."""
    settings = load_settings(settings_cls)
    configure_logging(settings.service_name, settings.log_level, settings.log_format)

    async def main() -> None:
        app = await build(settings)
        await app.run_until_signal()

    asyncio.run(main())
