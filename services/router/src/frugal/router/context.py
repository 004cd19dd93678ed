"""Context for a turn from rag (`Retrieve`) and vision-dedup (`GetContext`), with deadlines.

A dependency that is down, slow or failing never fails the turn: the result says what happened
(`ContextStatus`: USED, EMPTY, SKIPPED, UNAVAILABLE, TIMEOUT) and the answer goes on without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.api.router.v1 import router_pb2
from frugal.api.vision.v1 import vision_pb2, vision_pb2_grpc
from frugal.common.grpc_client import ChannelConfig, create_channel, outgoing_metadata
from frugal.router.metrics import CONTEXT_SECONDS
from frugal.router.providers.base import Passage

log = logging.getLogger(__name__)

RAG = router_pb2.CONTEXT_SOURCE_RAG
VISION = router_pb2.CONTEXT_SOURCE_VISION
_STATE_NAMES: dict[int, str] = {
    router_pb2.CONTEXT_STATE_USED: "used",
    router_pb2.CONTEXT_STATE_EMPTY: "empty",
    router_pb2.CONTEXT_STATE_SKIPPED: "skipped",
    router_pb2.CONTEXT_STATE_UNAVAILABLE: "unavailable",
    router_pb2.CONTEXT_STATE_TIMEOUT: "timeout",
}


@dataclass
class ContextResult:
    source: int
    state: int
    detail: str = ""
    passages: list[Passage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Age of each screen note in seconds at fetch time (None when the analysis has no timestamp).
    ages_s: list[float | None] = field(default_factory=list)

    @property
    def chars(self) -> int:
        return sum(len(p.content) + len(p.title) for p in self.passages) + sum(len(n) for n in self.notes)

    @property
    def items(self) -> int:
        return len(self.passages) + len(self.notes)

    def to_proto(self) -> router_pb2.ContextStatus:
        return router_pb2.ContextStatus(
            source=self.source,  # type: ignore[arg-type]
            state=self.state,  # type: ignore[arg-type]
            items=self.items,
            chars=self.chars,
            detail=self.detail,
        )


def skipped(source: int, why: str) -> ContextResult:
    return ContextResult(source, router_pb2.CONTEXT_STATE_SKIPPED, why)


def _failure(source: int, name: str, err: BaseException, timeout_s: float) -> ContextResult:
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return ContextResult(source, router_pb2.CONTEXT_STATE_TIMEOUT, f"{name} did not answer within {timeout_s:.2f}s")
    if isinstance(err, grpc.aio.AioRpcError):
        code = err.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ContextResult(source, router_pb2.CONTEXT_STATE_TIMEOUT,
                                 f"{name} did not answer within {timeout_s:.2f}s")
        return ContextResult(source, router_pb2.CONTEXT_STATE_UNAVAILABLE,
                             f"{name} {code.name}: {(err.details() or '')[:200]}")
    return ContextResult(source, router_pb2.CONTEXT_STATE_UNAVAILABLE, f"{name} error: {type(err).__name__}: {err}")


class ContextClients:
    """gRPC clients of rag and vision-dedup. Channels are created once and closed with aclose()."""

    def __init__(self, rag_addr: str, vision_addr: str, *, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        cfg = ChannelConfig(max_message_bytes=max_message_bytes)
        self._rag_channel = create_channel(rag_addr, cfg)
        self._vision_channel = create_channel(vision_addr, cfg)
        self._rag = rag_pb2_grpc.RagServiceStub(self._rag_channel)
        self._vision = vision_pb2_grpc.VisionServiceStub(self._vision_channel)

    async def rag(self, query: str, *, top_k: int, timeout_s: float, max_chars: int,
                  rerank: bool = False) -> ContextResult:
        started = time.perf_counter()
        try:
            resp: rag_pb2.RetrieveResponse = await self._rag.Retrieve(
                rag_pb2.RetrieveRequest(query=query, top_k=top_k, mode=rag_pb2.RETRIEVAL_MODE_HYBRID, rerank=rerank),
                timeout=timeout_s,
                metadata=outgoing_metadata(),
            )
        except (grpc.aio.AioRpcError, TimeoutError) as err:
            result = _failure(RAG, "rag", err, timeout_s)
            log.warning("rag context unavailable: %s", result.detail)
        else:
            passages: list[Passage] = []
            used = 0
            for chunk in resp.chunks:
                content = chunk.content.strip()
                if not content:
                    continue
                room = max_chars - used
                if room <= 0:
                    break
                content = content[:room]
                used += len(content)
                passages.append(Passage(title=chunk.title, content=content, document_id=chunk.document_id))
            if passages:
                result = ContextResult(RAG, router_pb2.CONTEXT_STATE_USED, f"{len(passages)} passages", passages)
            else:
                result = ContextResult(RAG, router_pb2.CONTEXT_STATE_EMPTY, "no passage matched")
        CONTEXT_SECONDS.labels(source="rag", state=_STATE_NAMES[result.state]).observe(time.perf_counter() - started)
        return result

    async def vision(self, *, limit: int, timeout_s: float) -> ContextResult:
        started = time.perf_counter()
        try:
            resp: vision_pb2.GetContextResponse = await self._vision.GetContext(
                vision_pb2.GetContextRequest(limit=limit), timeout=timeout_s, metadata=outgoing_metadata()
            )
        except (grpc.aio.AioRpcError, TimeoutError) as err:
            result = _failure(VISION, "vision-dedup", err, timeout_s)
            log.warning("vision context unavailable: %s", result.detail)
        else:
            now_ms = time.time() * 1000
            notes: list[str] = []
            ages: list[float | None] = []
            for a in resp.analyses[:limit]:
                desc = " ".join(a.description.split())
                if not desc:
                    continue
                notes.append(desc)
                ages.append(max(0.0, (now_ms - a.completed_at_ms) / 1000) if a.completed_at_ms else None)
            if notes:
                result = ContextResult(VISION, router_pb2.CONTEXT_STATE_USED, f"{len(notes)} screen analyses",
                                       notes=notes, ages_s=ages)
            else:
                result = ContextResult(VISION, router_pb2.CONTEXT_STATE_EMPTY, "no screen analysis for this session")
        CONTEXT_SECONDS.labels(source="vision", state=_STATE_NAMES[result.state]).observe(
            time.perf_counter() - started
        )
        return result

    async def aclose(self) -> None:
        await self._rag_channel.close()
        await self._vision_channel.close()
