"""Rerank through Cohere's official SDK (`cohere.AsyncClientV2.rerank`, base URL configurable).

With no COHERE_API_KEY there is no reranker: Retrieve keeps the fused order and says so in
`rerank_note` (no pretend "local rerank").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

PROVIDER = "cohere"


class RerankError(RuntimeError):
    """`billed`: the usage of a reply Cohere did send (and charge for) that could not be used; None when no
    reply came. Of those, an error status is not billed; a timeout (`timeout`) may be, and the engine bills
    its estimate."""

    def __init__(self, message: str, *, timeout: bool = False, billed: RerankUsage | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.billed = billed


@dataclass(frozen=True, slots=True)
class RerankUsage:
    search_units: int
    estimated: bool


@dataclass(frozen=True, slots=True)
class RerankResult:
    order: list[tuple[int, float]]  # (index into the documents sent, relevance score), best first
    search_units: int
    estimated: bool


class Reranker(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def model(self) -> str: ...

    async def rerank(self, query: str, documents: list[str], top_n: int, *, budget_s: float | None) -> RerankResult:
        ...

    async def aclose(self) -> None: ...


class CohereReranker:
    provider = PROVIDER

    def __init__(
        self, *, api_key: str, model: str, base_url: str | None = None, timeout_s: float = 5.0, max_retries: int = 0
    ) -> None:
        import cohere
        import httpx

        self._http = httpx.AsyncClient(timeout=timeout_s)
        kwargs: dict[str, Any] = {"api_key": api_key, "timeout": timeout_s, "max_retries": max_retries,
                                  "httpx_client": self._http}
        if base_url:
            kwargs["base_url"] = base_url
        self._client: Any = cohere.AsyncClientV2(**kwargs)
        self._max_retries = max_retries
        self.model = model
        self._timeout_s = timeout_s

    async def rerank(self, query: str, documents: list[str], top_n: int, *, budget_s: float | None) -> RerankResult:
        import cohere
        import httpx

        limit = self._timeout_s if budget_s is None else max(0.05, min(budget_s, self._timeout_s))
        try:
            resp = await self._client.rerank(
                model=self.model, query=query, documents=documents, top_n=min(top_n, len(documents)),
                request_options={"timeout": limit, "max_retries": self._max_retries},
            )
        except httpx.TimeoutException:
            raise RerankError(f"Cohere rerank timed out after {limit:.2f}s", timeout=True) from None
        except cohere.core.api_error.ApiError as err:
            raise RerankError(f"Cohere rerank failed: HTTP {err.status_code}: {err.body}") from None
        except httpx.HTTPError as err:
            raise RerankError(f"Cohere rerank failed: {type(err).__name__}: {err}") from None
        units = None
        meta = getattr(resp, "meta", None)
        billed = getattr(meta, "billed_units", None) if meta is not None else None
        if billed is not None and billed.search_units is not None:
            units = int(billed.search_units)
        usage = RerankUsage(search_units=units if units is not None else 1, estimated=units is None)
        order: list[tuple[int, float]] = []
        for item in resp.results:
            idx = int(item.index)
            if not 0 <= idx < len(documents):
                raise RerankError(f"Cohere returned an index out of range: {idx} (of {len(documents)} documents)",
                                  billed=usage)
            order.append((idx, float(item.relevance_score)))
        order.sort(key=lambda x: -x[1])
        return RerankResult(order=order, search_units=usage.search_units, estimated=usage.estimated)

    async def aclose(self) -> None:
        await self._http.aclose()
