"""Process entry point shared by every service: settings, logging, build the app, serve until signal.

One start-up failure path: a bad setting stops with one line naming the variable (exit 2, see
`load_settings`); anything that fails while the app is built (an unreachable database, a bad model artifact,
an unknown price-catalog model) stops with one line `<service>: cannot start: <reason>` (exit 1). The
traceback goes to the debug log, not the terminal.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from frugal.common.grpc_server import GrpcApp
from frugal.common.logging import configure_logging
from frugal.common.settings import ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)
log = logging.getLogger("frugal.common.service")

EXIT_STARTUP_FAILED = 1


class StartupError(Exception):
    """The service cannot start; the message says why and, where it can, what to change."""


def startup_failure_line(service: str, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not isinstance(err, StartupError):
        reason = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
    return f"{service}: cannot start: {reason}"


async def build_or_exit(service: str, build: Awaitable[GrpcApp]) -> GrpcApp:
    try:
        return await build
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
        raise
    except BaseException as err:
        log.debug("start-up failed", exc_info=err)
        print(startup_failure_line(service, err), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STARTUP_FAILED) from None


def run_service(settings_cls: type[S], build: Callable[[S], Awaitable[GrpcApp]]) -> None:
    """Loads settings (a bad value stops here with one line), builds the app (a failure stops with one line),
    then serves until SIGTERM/SIGINT."""
    settings = load_settings(settings_cls)
    configure_logging(settings.service_name, settings.log_level, settings.log_format)

    async def main() -> None:
        app = await build_or_exit(settings.service_name, build(settings))
        await app.run_until_signal()

    asyncio.run(main())
