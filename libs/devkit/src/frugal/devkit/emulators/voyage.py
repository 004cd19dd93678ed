"""Local emulator of the Voyage AI embeddings API (`POST /v1/embeddings`).

Speaks the real wire format, so tests drive the official `voyageai` SDK pointed at it::

    async with VoyageEmulator() as emu:
        client = voyageai.AsyncClient(api_key="test-key", base_url=emu.base_url)
        result = await client.embed(["hello"], model="voyage-3.5-lite", input_type="document")

- Request: JSON `{input: str | [str], model, input_type: null|"query"|"document", truncation,
  output_dimension, output_dtype, encoding_format: null|"base64"}` with `Authorization: Bearer <key>`.
  (The SDK always asks for base64: little-endian float32 vectors, base64-encoded.)
- Reply: `{object: "list", data: [{object: "embedding", embedding, index}], model, usage: {total_tokens}}`.
- Errors: `{"detail": "..."}` with 400 (bad request), 401 (bad key), 422, 429, 500, 502/503.

Vectors are deterministic and crudely semantic: hashed, sign-randomised bag of lower-cased words (with a
plural "s" stripped) plus word bigrams, L2-normalised, so texts that share words are close. Tokens are
counted as words and punctuation marks. Scripting, latency injection and a record of requests work like
the other emulators of this package.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from frugal.devkit.emulators._server import HttpEmulator

DEFAULT_DIMENSIONS = {"voyage-3.5-lite": 1024, "voyage-3.5": 1024, "voyage-3-large": 1024, "voyage-code-3": 1024}
FLEXIBLE_DIMENSIONS = (256, 512, 1024, 2048)
MAX_BATCH = 1000
CONTEXT_TOKENS = 32_000
_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"[a-z0-9]+")


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def _bucket(feature: str, dims: int) -> tuple[int, float]:
    h = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(h, "little")
    return value % dims, 1.0 if (value >> 63) & 1 else -1.0


def emulated_embedding(text: str, dims: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Hashed bag of words and bigrams; similar wording -> similar vectors. Never all-zero."""
    words = [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in _WORD.findall(text.lower())]
    vec = np.zeros(dims, dtype=np.float64)
    feats = collections.Counter(words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)])
    for feat, n in feats.items():
        idx, sign = _bucket(feat, dims)
        vec[idx] += sign * (1.0 + math.log(n)) * (0.5 if " " in feat else 1.0)
    if not np.any(vec):
        idx, sign = _bucket("\x00empty", dims)
        vec[idx] = sign
    vec /= np.linalg.norm(vec)
    return vec.astype(np.float32)


@dataclass(frozen=True)
class VoyageRequest:
    """A request the emulator received, parsed."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    inputs: tuple[str, ...]
    model: str
    input_type: str | None
    output_dimension: int | None
    encoding_format: str | None

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


@dataclass(frozen=True)
class VoyageReply:
    """One scripted reply; unset fields take the emulator's defaults."""

    status: int = 200
    detail: str | None = None
    latency_s: float | None = None
    total_tokens: int | None = None
    # Replaces the computed vectors (one per input), e.g. to inject a wrong shape.
    embeddings: list[list[float]] | None = None


Embedder = Callable[[str, int, str | None], "np.ndarray[Any, np.dtype[np.float32]]"]


class VoyageEmulator(HttpEmulator[VoyageReply, VoyageRequest]):
    """aiohttp server on 127.0.0.1 (port 0 by default). Async context manager, or start()/aclose()."""

    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] | None = None,
        latency_s: float = 0.0,
        embedder: Embedder | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        # None: any non-empty key is accepted.
        self.api_keys = api_keys
        self.latency_s = latency_s
        self.embedder = embedder or (lambda text, dims, _input_type: emulated_embedding(text, dims))

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/embeddings", self._handle)

    @property
    def base_url(self) -> str:
        """What the SDK takes as `base_url` (it appends `/embeddings`)."""
        return f"{self.origin}/v1"

    def fail_next(self, status: int, times: int = 1, detail: str | None = None) -> None:
        self.script(*[VoyageReply(status=status, detail=detail) for _ in range(times)])

    @property
    def texts_embedded(self) -> int:
        return sum(len(r.inputs) for r in self.requests)

    # -- wire format -------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, detail: str) -> web.Response:
        return web.json_response({"detail": detail}, status=status,
                                 headers={"X-Request-Id": uuid.uuid4().hex})

    @staticmethod
    def _parse(request: web.Request, body: dict[str, Any]) -> VoyageRequest:
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise ValueError("input: must be a string or a non-empty list of strings")
        if len(inputs) > MAX_BATCH:
            raise ValueError(f"The batch size limit is {MAX_BATCH}. Your batch size is {len(inputs)}.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("model: field required")
        if model not in DEFAULT_DIMENSIONS:
            raise ValueError(f"Model {model} is not supported. Supported models are {sorted(DEFAULT_DIMENSIONS)}.")
        input_type = body.get("input_type")
        if input_type not in (None, "query", "document"):
            raise ValueError("input_type: must be null, 'query' or 'document'")
        dim = body.get("output_dimension")
        if dim is not None and dim not in FLEXIBLE_DIMENSIONS:
            raise ValueError(f"output_dimension: must be one of {FLEXIBLE_DIMENSIONS}")
        if body.get("output_dtype") not in (None, "float"):
            raise ValueError("output_dtype: the emulator supports 'float' only")
        enc = body.get("encoding_format")
        if enc not in (None, "base64"):
            raise ValueError("encoding_format: must be null or 'base64'")
        return VoyageRequest(
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            inputs=tuple(inputs),
            model=model,
            input_type=input_type,
            output_dimension=dim,
            encoding_format=enc,
        )

    def _key_ok(self, key: str | None) -> bool:
        if not key:
            return False
        return self.api_keys is None or key in self.api_keys

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
            req = self._parse(request, body)
        except (ValueError, json.JSONDecodeError) as err:
            return self._error(400, str(err))
        self.requests.append(req)
        if not self._key_ok(req.api_key):
            return self._error(401, "Provided API key is invalid.")
        reply = self._next_reply(VoyageReply())
        latency = self.latency_s if reply.latency_s is None else reply.latency_s
        if latency > 0:
            await asyncio.sleep(latency)
        if reply.status >= 400:
            detail = reply.detail or {
                429: "You have exceeded the rate limit. Please slow down.",
                500: "Internal server error",
                502: "Bad gateway",
                503: "Service unavailable",
            }.get(reply.status, f"emulated error {reply.status}")
            return self._error(reply.status, detail)
        tokens = [count_tokens(t) for t in req.inputs]
        if body.get("truncation") is False and max(tokens) > CONTEXT_TOKENS:
            return self._error(400, f"Input of {max(tokens)} tokens exceeds the context length {CONTEXT_TOKENS}")
        dims = req.output_dimension or DEFAULT_DIMENSIONS[req.model]
        vectors = (
            [np.asarray(v, dtype=np.float32) for v in reply.embeddings]
            if reply.embeddings is not None
            else [self.embedder(t, dims, req.input_type) for t in req.inputs]
        )
        data = []
        for i, vec in enumerate(vectors):
            emb: Any = (
                base64.b64encode(vec.astype("<f4").tobytes()).decode()
                if req.encoding_format == "base64"
                else [float(x) for x in vec]
            )
            data.append({"object": "embedding", "embedding": emb, "index": i})
        total = reply.total_tokens if reply.total_tokens is not None else sum(min(t, CONTEXT_TOKENS) for t in tokens)
        return web.json_response(
            {"object": "list", "data": data, "model": req.model, "usage": {"total_tokens": total}},
            headers={"X-Request-Id": uuid.uuid4().hex},
        )
