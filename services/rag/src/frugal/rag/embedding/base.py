"""The embedder interface shared by the local encoder and the Voyage client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from frugal.api.common.v1 import common_pb2

InputType = Literal["document", "query"]
Vectors = npt.NDArray[np.float32]
Vector = npt.NDArray[np.float32]


class EmbeddingError(RuntimeError):
    """The embedding provider failed (network, quota, bad reply). `retryable` maps to UNAVAILABLE.

    `billed_tokens`: the tokens a reply the provider did send (and charge for) reported, when that reply could
    not be used (wrong shape, non-finite values); None when no reply came. Of those, an error status is not
    billed; a timeout (`timeout`) may be, and the engine bills its estimate."""

    def __init__(self, message: str, *, retryable: bool = True, timeout: bool = False,
                 billed_tokens: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.timeout = timeout
        self.billed_tokens = billed_tokens


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    """Vectors (rows L2-normalised, float32) and what the call consumed.

    `tokens` is the provider-reported usage for paid providers; for the local encoder it is our own
    tokenizer's count (`estimated` is then True: nobody billed it).
    """

    vectors: Vectors
    tokens: int
    calls: int
    estimated: bool


class Embedder(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    @property
    def offline(self) -> bool: ...

    @property
    def max_batch(self) -> int: ...

    async def embed(self, texts: list[str], input_type: InputType, *, budget_s: float | None = None) -> EmbeddingBatch:
        """Embeds up to `max_batch` texts in one provider call."""
        ...

    async def aclose(self) -> None: ...


def provider_info(embedder: Embedder) -> common_pb2.ProviderInfo:
    return common_pb2.ProviderInfo(provider=embedder.provider, model=embedder.model, offline=embedder.offline)


def l2_normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out
