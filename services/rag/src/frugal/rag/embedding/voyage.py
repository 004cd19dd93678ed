"""Voyage embeddings through the official `voyageai` SDK (AsyncClient; base URL configurable)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from frugal.rag.embedding.base import EmbeddingBatch, EmbeddingError, InputType, l2_normalise

PROVIDER = "voyage"
# Dimensions each model returns when output_dimension is not given.
DEFAULT_DIMENSIONS = {"voyage-3.5-lite": 1024, "voyage-3.5": 1024, "voyage-3-large": 1024, "voyage-code-3": 1024}


def model_key(model: str, dims: int) -> str:
    """What is stored per chunk: vectors are only comparable within one model and dimension."""
    return model if DEFAULT_DIMENSIONS.get(model) == dims else f"{model}@{dims}"


class VoyageEmbedder:
    provider = PROVIDER
    offline = False

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        dimensions: int,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 0,
        max_batch: int = 128,
    ) -> None:
        from voyageai.client_async import AsyncClient

        self._client: Any = AsyncClient(
            api_key=api_key, max_retries=max_retries, timeout=timeout_s, base_url=base_url
        )
        self._api_model = model
        self.model = model_key(model, dimensions)
        self.dimensions = dimensions
        self.max_batch = max_batch
        self._timeout_s = timeout_s

    async def embed(self, texts: list[str], input_type: InputType, *, budget_s: float | None = None) -> EmbeddingBatch:
        import voyageai.error as verr

        limit = self._timeout_s if budget_s is None else max(0.05, min(budget_s, self._timeout_s))
        try:
            result = await asyncio.wait_for(
                self._client.embed(
                    texts, model=self._api_model, input_type=input_type, truncation=True,
                    output_dimension=self.dimensions,
                ),
                timeout=limit,
            )
        except (TimeoutError, verr.Timeout):  # ours or the SDK's own: either way sent and not answered
            raise EmbeddingError(f"Voyage embeddings timed out after {limit:.2f}s", timeout=True) from None
        except (verr.AuthenticationError, verr.InvalidRequestError, verr.MalformedRequestError) as err:
            raise EmbeddingError(f"Voyage rejected the request: {err}", retryable=False) from None
        except verr.VoyageError as err:
            raise EmbeddingError(f"Voyage embeddings failed: {type(err).__name__}: {err}") from None
        tokens = int(result.total_tokens)
        try:
            vectors = np.asarray(result.embeddings, dtype=np.float32)
        except ValueError:  # ragged rows
            vectors = np.zeros((0,), dtype=np.float32)
        if vectors.shape != (len(texts), self.dimensions):
            raise EmbeddingError(
                f"Voyage returned vectors of shape {vectors.shape}, expected ({len(texts)}, {self.dimensions})",
                billed_tokens=tokens,
            )
        if not np.all(np.isfinite(vectors)):
            raise EmbeddingError("Voyage returned non-finite values", billed_tokens=tokens)
        return EmbeddingBatch(vectors=l2_normalise(vectors), tokens=tokens, calls=1, estimated=False)

    async def aclose(self) -> None:
        return None
