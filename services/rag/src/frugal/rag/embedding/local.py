"""The offline embedder: the shared all-MiniLM-L6-v2 encoder (frugal.encoder.minilm) behind rag's Embedder
interface."""

from __future__ import annotations

import asyncio
import threading

from frugal.encoder.minilm import (
    DIMENSIONS,
    MAX_SEQ_LENGTH,
    MODEL_NAME,
    MiniLMEncoder,
    limit_blas_threads,
    load_encoder,
)
from frugal.rag.embedding.base import EmbeddingBatch, InputType, Vectors

PROVIDER = "local"
__all__ = ["DIMENSIONS", "MAX_SEQ_LENGTH", "MODEL_NAME", "PROVIDER", "LocalEmbedder", "MiniLMEncoder", "load_encoder"]


class LocalEmbedder:
    """The offline embedder: runs the NumPy encoder in a worker thread, one batch at a time."""

    provider = PROVIDER
    model = MODEL_NAME
    dimensions = DIMENSIONS
    offline = True

    def __init__(
        self, encoder: MiniLMEncoder | None = None, *, max_batch: int = 32, blas_threads: int | None = 1
    ) -> None:
        self._encoder = encoder or load_encoder()
        self.max_batch = max_batch
        if blas_threads is not None:
            limit_blas_threads(blas_threads)
        # Encodes are CPU-bound: running two at once only makes both slower.
        self._lock = threading.Lock()

    @property
    def encoder(self) -> MiniLMEncoder:
        return self._encoder

    def _encode_sync(self, texts: list[str]) -> tuple[Vectors, int]:
        with self._lock:
            return self._encoder.encode(texts, batch_size=self.max_batch)

    async def embed(self, texts: list[str], input_type: InputType, *, budget_s: float | None = None) -> EmbeddingBatch:
        # all-MiniLM-L6-v2 is symmetric: queries and documents are encoded the same way.
        vectors, tokens = await asyncio.to_thread(self._encode_sync, texts)
        return EmbeddingBatch(vectors=vectors, tokens=tokens, calls=0, estimated=True)

    async def aclose(self) -> None:
        return None
