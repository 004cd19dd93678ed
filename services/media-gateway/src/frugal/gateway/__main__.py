"""python -m frugal.gateway"""

from __future__ import annotations

import asyncio
import logging

from frugal.common.logging import configure_logging
from frugal.common.settings import load_settings
from frugal.gateway.config import Settings
from frugal.gateway.server import build_app

log = logging.getLogger("frugal.gateway")


def main() -> None:
    settings = load_settings(Settings)
    configure_logging(settings.service_name, settings.log_level, settings.log_format)

    async def run() -> None:
        app = await build_app(settings)
        if not settings.livekit_url:
            log.warning("LIVEKIT_URL is not set: the LiveKit worker is not started (health and metrics only)")
        await app.run_until_signal()

    asyncio.run(run())


if __name__ == "__main__":
    main()
