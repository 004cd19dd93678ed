"""Fixtures of the router's tests: a router on a loopback port, provider emulators, rag/vision test doubles.

The rag and vision "services" here are TEST DOUBLES of those dependencies' gRPC APIs (RagService.Retrieve,
VisionService.GetContext), served by a real grpc.aio server on a loopback socket: they let the router's
unit-level tests control what the dependencies answer and how slowly. The whole mesh with the real rag and
vision-dedup services is exercised by the end-to-end tests (tests/e2e).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import grpc
import pytest
import pytest_asyncio

from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.api.router.v1 import router_pb2_grpc
from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.common.grpc_server import GrpcApp
from frugal.devkit.devstack import free_port
from frugal.devkit.emulators.anthropic import AnthropicEmulator
from frugal.devkit.emulators.gemini import GeminiEmulator
from frugal.router.config import Settings
from frugal.router.server import build_app


def dead_address() -> str:
    """A loopback address where nothing listens (connection refused)."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def dead_addr() -> str:
    return dead_address()


@dataclass
class FakeRag(rag_pb2_grpc.RagServiceServicer):
    """Test double of RagService.Retrieve: fixed chunks, optional delay, records calls and metadata."""

    chunks: list[rag_pb2.RetrievedChunk] = field(default_factory=list)
    delay_s: float = 0.0
    calls: list[tuple[rag_pb2.RetrieveRequest, dict[str, str]]] = field(default_factory=list)
    # Awaited before answering (e.g. a barrier with the vision double); None: answer at once.
    gate: Callable[[], Awaitable[None]] | None = None

    async def Retrieve(self, request: rag_pb2.RetrieveRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.calls.append((request, {k: str(v) for k, v in context.invocation_metadata() or ()}))
        if self.gate is not None:
            await self.gate()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return rag_pb2.RetrieveResponse(chunks=self.chunks[: request.top_k or 5])

    async def IngestDocument(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "test double")

    async def ChangeEmbeddingModel(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "test double")

    async def DeleteDocument(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "test double")

    async def ListDocuments(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "test double")


@dataclass
class FakeVision(vision_pb2_grpc.VisionServiceServicer):
    """Test double of VisionService.GetContext."""

    analyses: list[vision_pb2.FrameAnalysis] = field(default_factory=list)
    delay_s: float = 0.0
    calls: list[tuple[vision_pb2.GetContextRequest, dict[str, str]]] = field(default_factory=list)
    gate: Callable[[], Awaitable[None]] | None = None
    # False: answers with every analysis whatever the request's limit (a peer that ignores it).
    honour_limit: bool = True

    async def GetContext(
        self, request: vision_pb2.GetContextRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        self.calls.append((request, {k: str(v) for k, v in context.invocation_metadata() or ()}))
        if self.gate is not None:
            await self.gate()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return vision_pb2.GetContextResponse(
            analyses=self.analyses[: request.limit or 5] if self.honour_limit else self.analyses)

    def StreamFrames(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        raise NotImplementedError("test double")


@dataclass
class Deps:
    rag: FakeRag
    vision: FakeVision
    rag_addr: str
    vision_addr: str


@pytest_asyncio.fixture
async def deps() -> AsyncIterator[Deps]:
    rag, vision = FakeRag(), FakeVision()
    rag_server = grpc.aio.server()
    rag_pb2_grpc.add_RagServiceServicer_to_server(rag, rag_server)
    rag_port = rag_server.add_insecure_port("127.0.0.1:0")
    vision_server = grpc.aio.server()
    vision_pb2_grpc.add_VisionServiceServicer_to_server(vision, vision_server)
    vision_port = vision_server.add_insecure_port("127.0.0.1:0")
    await rag_server.start()
    await vision_server.start()
    try:
        yield Deps(rag, vision, f"127.0.0.1:{rag_port}", f"127.0.0.1:{vision_port}")
    finally:
        await rag_server.stop(0)
        await vision_server.stop(0)


@pytest_asyncio.fixture
async def gemini_emu() -> AsyncIterator[GeminiEmulator]:
    async with GeminiEmulator(chunk_chars=8) as emu:
        yield emu


@pytest_asyncio.fixture
async def claude_emu() -> AsyncIterator[AnthropicEmulator]:
    async with AnthropicEmulator(chunk_chars=8) as emu:
        yield emu


class _LocalServer:
    """A TCP server on 127.0.0.1:<free port> standing where a Redis should be."""

    def __init__(self) -> None:
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class HungRedis(_LocalServer):
    """A TCP server that accepts connections, reads what it is sent and never answers: a hung Redis."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass


class HangingRedisProxy(_LocalServer):
    """Forwards to a real Redis until `hang()`; from then on it swallows every request and answers nothing
    (a Redis that died under the router's open connections)."""

    def __init__(self, target_url: str) -> None:
        super().__init__()
        host, port = target_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self._target = (host, int(port))
        self.hung = False
        self._pumps: set[asyncio.Task[None]] = set()

    def hang(self) -> None:
        self.hung = True

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.hung:
                writer.write(data)
                await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_w]
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def __aexit__(self, *exc: object) -> None:
        for t in list(self._pumps):
            t.cancel()
        await super().__aexit__(*exc)


@pytest_asyncio.fixture
async def hung_redis() -> AsyncIterator[HungRedis]:
    async with HungRedis() as hung:
        yield hung


@pytest_asyncio.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[HangingRedisProxy]:
    """The test Redis behind a proxy that `hang()` silences."""
    async with HangingRedisProxy(redis_url) as proxy:
        yield proxy


@dataclass
class RunningRouter:
    app: GrpcApp
    channel: grpc.aio.Channel
    stub: router_pb2_grpc.RouterServiceStub
    settings: Settings


RouterFactory = Callable[..., Awaitable[RunningRouter]]


@pytest_asyncio.fixture
async def start_router(redis_url: str, redis_client: Any) -> AsyncIterator[RouterFactory]:
    """`await start_router(**settings)` -> a started router on 127.0.0.1:<free port>. Defaults: no provider
    keys (offline), rag/vision at dead addresses, metrics off; everything is stopped after the test.
    Redis is flushed first (redis_client), so no breaker state or rate-limit window leaks between tests."""
    started: list[RunningRouter] = []

    async def factory(**overrides: Any) -> RunningRouter:
        values: dict[str, Any] = {
            "grpc_host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0, "redis_url": redis_url,
            "rag_addr": dead_address(), "vision_addr": dead_address(), "gemini_api_key": "",
            "anthropic_api_key": "", "log_format": "text", "shutdown_grace_seconds": 1.0,
        }
        values.update(overrides)
        settings = Settings(**values)
        app = await build_app(settings)
        port = await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        running = RunningRouter(app, channel, router_pb2_grpc.RouterServiceStub(channel), settings)
        started.append(running)
        return running

    try:
        yield factory
    finally:
        for r in started:
            await r.channel.close()
            await r.app.stop(0.5)

