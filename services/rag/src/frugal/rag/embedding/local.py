"""The offline embedder: the shared all-MiniLM-L6-v2 encoder (frugal.encoder.minilm) behind rag's Embedder
interface.

Texts from concurrent requests (chunks of several documents being ingested, queries) go into one queue;
`workers` threads (one per core by default) each take the next batch of up to `max_batch` texts, queries
first, so a large ingest never holds a query behind it for more than one batch, and the chunks of many
small documents are embedded in full batches. The encoder is thread-safe and releases the GIL in its
matrix products, so two workers use two cores.

A batch is padded to its longest text, so a batch of mixed lengths pays for padding (chunks here run
from 12 to 240 word pieces). Document texts are therefore batched by length across requests: the oldest
queued text, plus the queued texts nearest to it in length among the next `window` (chunks of the
several documents in flight), so the oldest is always served (no text waits behind newer ones for
ever) and padding stays small without waiting for more texts to arrive.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from frugal.encoder.minilm import (
    DIMENSIONS,
    MAX_SEQ_LENGTH,
    MODEL_NAME,
    MiniLMEncoder,
    limit_blas_threads,
    load_encoder,
)
from frugal.rag.embedding.base import EmbeddingBatch, EmbeddingError, InputType, Vectors

PROVIDER = "local"
__all__ = ["DIMENSIONS", "MAX_SEQ_LENGTH", "MODEL_NAME", "PROVIDER", "LocalEmbedder", "MiniLMEncoder", "load_encoder"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    texts: list[str]
    future: asyncio.Future[tuple[Vectors, int]]
    vectors: Vectors
    tokens: int = 0
    left: int = 0


@dataclass(slots=True)
class _Queue:
    query: deque[tuple[_Request, int]] = field(default_factory=deque)
    document: deque[tuple[_Request, int]] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.query) + len(self.document)

    def take(self, n: int, window: int = 0) -> list[tuple[_Request, int]]:
        """Up to `n` texts: queries first, in order; then the oldest document text and those nearest to it
        in length among the next `window` document texts (0: in order)."""
        out: list[tuple[_Request, int]] = []
        q = self.query
        while q and len(out) < n:
            req, i = q.popleft()
            if not req.future.done():  # a cancelled caller's texts are dropped
                out.append((req, i))
        d = self.document
        while d and len(out) < n:
            req, i = d.popleft()
            if req.future.done():
                continue
            out.append((req, i))
            if window <= 0:
                continue
            candidates: list[tuple[_Request, int]] = []
            while d and len(candidates) < window:
                item = d.popleft()
                if not item[0].future.done():
                    candidates.append(item)
            target = len(req.texts[i])
            nearest = sorted(range(len(candidates)), key=lambda j: abs(len(candidates[j][0].texts[candidates[j][1]])
                                                                         - target))[: n - len(out)]
            chosen = set(nearest)
            out.extend(candidates[j] for j in sorted(chosen))
            # The others go back to the front, in their order.
            d.extendleft(reversed([c for j, c in enumerate(candidates) if j not in chosen]))
        return out


class LocalEmbedder:
    """The offline embedder: batches texts across requests and encodes on `workers` threads."""

    provider = PROVIDER
    model = MODEL_NAME
    dimensions = DIMENSIONS
    offline = True

    def __init__(
        self, encoder: MiniLMEncoder | None = None, *, max_batch: int = 8, blas_threads: int | None = 1,
        workers: int = 2, length_window: int | None = None, batch_tokens: int = 0,
    ) -> None:
        if blas_threads is not None:
            limit_blas_threads(blas_threads)
        self._encoder = encoder or load_encoder()
        self.max_batch = max_batch
        self.batch_tokens = max(0, batch_tokens)
        self.workers = max(1, workers)
        # Document texts looked at to fill a batch with similar lengths (0: first come, first batched).
        self.length_window = 8 * max_batch if length_window is None else max(0, length_window)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="minilm")
        self._queue = _Queue()
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def encoder(self) -> MiniLMEncoder:
        return self._encoder

    def _start(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
            for n in range(self.workers):
                task = asyncio.get_running_loop().create_task(self._worker(), name=f"minilm-worker-{n}")
                self._tasks.add(task)
                task.add_done_callback(self._worker_done)
        return self._wake

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("local encoder worker died", exc_info=task.exception())

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            batch = self._queue.take(self.max_batch, self.length_window)
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._queue:
                self._wake.set()  # more waiting: let another worker start on it now
            texts = [req.texts[i] for req, i in batch]
            try:
                vectors, counts = await loop.run_in_executor(
                    self._pool,
                    lambda t=texts: self._encoder.encode_counted(  # type: ignore[misc]
                        t, batch_size=self.max_batch, batch_tokens=self.batch_tokens),
                )
            except Exception as err:  # noqa: BLE001 - the callers get it as an embedding failure
                for req, _ in batch:
                    if not req.future.done():
                        req.future.set_exception(EmbeddingError(f"local encoder failed: {err}", retryable=False))
                continue
            for (req, i), vec, count in zip(batch, vectors, counts, strict=True):
                if req.future.done():
                    continue
                req.vectors[i] = vec
                req.tokens += count
                req.left -= 1
                if req.left == 0:
                    req.future.set_result((req.vectors, req.tokens))

    async def embed(self, texts: list[str], input_type: InputType, *, budget_s: float | None = None) -> EmbeddingBatch:
        # all-MiniLM-L6-v2 is symmetric: queries and documents are encoded the same way.
        if self._closed:
            raise EmbeddingError("local encoder is closed")
        if not texts:
            return EmbeddingBatch(np.zeros((0, self.dimensions), np.float32), 0, 0, True)
        wake = self._start()
        fut: asyncio.Future[tuple[Vectors, int]] = asyncio.get_running_loop().create_future()
        req = _Request(texts, fut, np.zeros((len(texts), self.dimensions), np.float32), left=len(texts))
        q = self._queue.query if input_type == "query" else self._queue.document
        q.extend((req, i) for i in range(len(texts)))
        wake.set()
        try:
            if budget_s is None:
                vectors, tokens = await fut
            else:
                vectors, tokens = await asyncio.wait_for(asyncio.shield(fut), timeout=max(budget_s, 0.001))
        except TimeoutError:
            fut.cancel()  # its queued texts are skipped
            raise EmbeddingError(f"local encoder did not finish within {budget_s:.2f}s", timeout=True) from None
        except asyncio.CancelledError:
            fut.cancel()
            raise
        return EmbeddingBatch(vectors=vectors, tokens=tokens, calls=0, estimated=True)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
