"""The part every provider emulator shares: an aiohttp server on loopback, a queue of scripted replies,
and a record of the requests received. Subclasses add their routes and wire format."""

from __future__ import annotations

import collections
from typing import Any, Generic, Self, TypeVar

from aiohttp import web

R = TypeVar("R")  # the emulator's scripted-reply type
Q = TypeVar("Q")  # the emulator's recorded-request type


class HttpEmulator(Generic[R, Q]):
    """aiohttp server on 127.0.0.1 (port 0 by default). Async context manager, or start()/aclose()."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[Q] = []
        self._script: collections.deque[R] = collections.deque()
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server: Any = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        return self

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def origin(self) -> str:
        return f"http://{self._host}:{self.port}"

    def script(self, *replies: R) -> None:
        """Queues replies; each request consumes the next one, then the emulator's default behaviour."""
        self._script.extend(replies)

    def _next_reply(self, default: R) -> R:
        return self._script.popleft() if self._script else default

    def clear(self) -> None:
        self._script.clear()
        self.requests.clear()

    @property
    def scripted_left(self) -> int:
        return len(self._script)
