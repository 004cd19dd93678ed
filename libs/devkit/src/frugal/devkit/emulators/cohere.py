"""Local emulator of Cohere's rerank API (`POST /v2/rerank`, and `/v1/rerank` with the same body).

Speaks the real wire format, so tests drive the official `cohere` SDK pointed at it::

    async with CohereEmulator() as emu:
        co = cohere.AsyncClientV2(api_key="test-key", base_url=emu.base_url)
        resp = await co.rerank(model="rerank-v3.5", query="q", documents=["a", "b"], top_n=1)

- Request: JSON `{model, query, documents: [str], top_n, max_tokens_per_doc}` with
  `Authorization: Bearer <key>`.
- Reply: `{id, results: [{index, relevance_score}], meta: {api_version: {version: "2"},
  billed_units: {search_units}}}`, results best first, `top_n` of them.
- Errors: `{"id": ..., "message": "..."}` with 400, 401 ("invalid api token"), 422, 429, 500, 503.

Relevance is deterministic and crudely semantic: the idf-weighted share of the query's words (lower-cased,
plural "s" stripped) found in the document, squashed to [0, 1]. One search unit per query with up to 100
documents (Cohere's billing unit). Scripting, latency injection and a record of requests work like the
other emulators of this package; `CohereReply(index_offset=...)` sends results whose indices point past the
documents (a malformed reply the client must refuse), `omit_meta` one without billing metadata.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from frugal.devkit.emulators._server import HttpEmulator

MODELS = ("rerank-v3.5", "rerank-english-v3.0", "rerank-multilingual-v3.0", "rerank-v4.0-pro", "rerank-v4.0-fast")
MAX_DOCUMENTS = 1000
DOCS_PER_SEARCH_UNIT = 100
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in _WORD.findall(text.lower())]


def emulated_scores(query: str, documents: list[str]) -> list[float]:
    """idf-weighted query-word coverage of each document, in [0, 1]."""
    q = set(_words(query))
    docs = [set(_words(d)) for d in documents]
    n = len(docs)
    df = collections.Counter(w for d in docs for w in d if w in q)
    idf = {w: math.log(1.0 + (n + 1) / (df[w] + 0.5)) for w in q}
    total = sum(idf.values()) or 1.0
    out = []
    for d in docs:
        cover = sum(idf[w] for w in q if w in d) / total
        out.append(round(1.0 / (1.0 + math.exp(-8.0 * (cover - 0.4))), 6))
    return out


@dataclass(frozen=True)
class CohereRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    model: str
    query: str
    documents: tuple[str, ...]
    top_n: int | None

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


@dataclass(frozen=True)
class CohereReply:
    """One scripted reply; unset fields take the emulator's defaults."""

    status: int = 200
    message: str | None = None
    latency_s: float | None = None
    # Replaces the computed scores (one per document).
    scores: list[float] | None = None
    search_units: int | None = None
    # Leave out `meta` (some deployments do): the client must then estimate usage.
    omit_meta: bool = False
    # Fault injection: added to every result's `index` (a reply that points past the documents sent).
    index_offset: int = 0


Scorer = Callable[[str, list[str]], list[float]]


class CohereEmulator(HttpEmulator[CohereReply, CohereRequest]):
    """aiohttp server on 127.0.0.1 (port 0 by default). Async context manager, or start()/aclose()."""

    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] | None = None,
        latency_s: float = 0.0,
        scorer: Scorer | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_keys = api_keys
        self.latency_s = latency_s
        self.scorer = scorer or emulated_scores

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/rerank", self._handle)
        app.router.add_post("/v1/rerank", self._handle)

    @property
    def base_url(self) -> str:
        """What the SDK takes as `base_url` (it appends `v2/rerank`)."""
        return self.origin

    def fail_next(self, status: int, times: int = 1, message: str | None = None) -> None:
        self.script(*[CohereReply(status=status, message=message) for _ in range(times)])

    # -- wire format -------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"id": str(uuid.uuid4()), "message": message}, status=status)

    @staticmethod
    def _parse(request: web.Request, body: dict[str, Any]) -> CohereRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("invalid request: model is required")
        if model not in MODELS:
            raise ValueError(f"model '{model}' not found, make sure the correct model ID was used")
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ValueError("invalid request: query must be a non-empty string")
        docs = body.get("documents")
        if not isinstance(docs, list) or not docs:
            raise ValueError("invalid request: documents must be a non-empty list")
        if len(docs) > MAX_DOCUMENTS:
            raise ValueError(f"invalid request: too many documents ({len(docs)}), the limit is {MAX_DOCUMENTS}")
        texts: list[str] = []
        for d in docs:
            if isinstance(d, dict) and isinstance(d.get("text"), str):  # v1 also takes {"text": ...}
                texts.append(d["text"])
            elif isinstance(d, str):
                texts.append(d)
            else:
                raise ValueError("invalid request: each document must be a string")
        top_n = body.get("top_n")
        if top_n is not None and (not isinstance(top_n, int) or top_n < 1):
            raise ValueError("invalid request: top_n must be a positive integer")
        return CohereRequest(
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            model=model,
            query=query,
            documents=tuple(texts),
            top_n=top_n,
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("invalid request: body must be a JSON object")
            req = self._parse(request, body)
        except (ValueError, json.JSONDecodeError) as err:
            return self._error(400, str(err))
        self.requests.append(req)
        if not req.api_key or (self.api_keys is not None and req.api_key not in self.api_keys):
            return self._error(401, "invalid api token")
        reply = self._next_reply(CohereReply())
        latency = self.latency_s if reply.latency_s is None else reply.latency_s
        if latency > 0:
            await asyncio.sleep(latency)
        if reply.status >= 400:
            message = reply.message or {
                429: "You are past the per minute request limit, please wait and try again later.",
                500: "internal server error, this has been reported to our developers",
                503: "service unavailable",
            }.get(reply.status, f"emulated error {reply.status}")
            return self._error(reply.status, message)
        docs = list(req.documents)
        scores = reply.scores if reply.scores is not None else self.scorer(req.query, docs)
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
        if req.top_n is not None:
            order = order[: req.top_n]
        payload: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "results": [{"index": i + reply.index_offset, "relevance_score": scores[i]} for i in order],
        }
        if not reply.omit_meta:
            units = reply.search_units if reply.search_units is not None else math.ceil(
                len(docs) / DOCS_PER_SEARCH_UNIT
            )
            payload["meta"] = {"api_version": {"version": "2"}, "billed_units": {"search_units": units}}
        return web.json_response(payload)
