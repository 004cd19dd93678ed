"""Local emulator of the Gemini Developer API (generateContent, streamGenerateContent, countTokens).

Speaks the real wire format, so tests drive the official `google-genai` SDK pointed at it::

    async with GeminiEmulator() as emu:
        client = genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=emu.base_url))
        resp = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")

Routes (any API version segment, e.g. `/v1beta/...` or `/v1/...`):
- `POST /{version}/models/{model}:generateContent` -> one `GenerateContentResponse` JSON;
- `POST /{version}/models/{model}:streamGenerateContent?alt=sse` -> Server-Sent Events, one
  `data: {GenerateContentResponse}` per chunk, `usageMetadata` on every chunk, `finishReason` on the last;
- `POST /{version}/models/{model}:countTokens` -> `{"totalTokens": n}`.

Request bodies are accepted in camelCase (what the SDK sends) and snake_case; image parts
(`inlineData` / `inline_data` with base64 `data`) are decoded and recorded, and counted as 258 prompt tokens
each (Gemini's price for an image up to 384 px a side), reported under `promptTokensDetails` modality IMAGE.
Text is counted as ceil(chars / 4) tokens.

Scripting: `script(GeminiReply(...), ...)` queues replies consumed one per request in order; when the queue
is empty the default responder answers (deterministic text derived from the prompt, and for images a
description naming the image's type, size and a digest, so different frames give different answers).
`GeminiReply` can inject latency (before headers, between chunks), HTTP errors with Google's error JSON
(429 RESOURCE_EXHAUSTED with a RetryInfo detail, 500 INTERNAL, 503 UNAVAILABLE, ...), a dropped connection
mid-stream, an unparseable chunk (`malformed_after_chunks`), thinking tokens and a usage override (which
may carry `cachedContentTokenCount`). Every request is recorded in `.requests`.

Function calling: `tools[].functionDeclarations` are recorded; a reply with `function_calls` answers with
`functionCall` parts (`{"name", "args"}`, in one chunk after the text, as the API streams them), and the
`functionCall` / `functionResponse` parts of the request's contents are recorded. A `functionResponse`
whose name matches no `functionCall` of the contents before it is refused with 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from frugal.devkit.emulators._server import HttpEmulator
from frugal.devkit.emulators.prompt_cache import Block, PromptCacheSim

IMAGE_TOKENS = 258

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def count_text_tokens(text: str) -> int:
    """The emulator's tokenizer: ceil(chars / 4), at least 1 for non-empty text."""
    return math.ceil(len(text) / 4) if text else 0


@dataclass(frozen=True)
class InlineImage:
    mime_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class GeminiRequest:
    """A request the emulator received, parsed."""

    method: str
    path: str
    model: str
    action: str  # generateContent | streamGenerateContent | countTokens
    stream: bool
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    # Texts of the `contents` parts, in order, and the role of each content.
    texts: tuple[str, ...]
    roles: tuple[str, ...]
    images: tuple[InlineImage, ...]
    system_instruction: str
    generation_config: dict[str, Any]
    # Function declarations of the request's tools; functionCall / functionResponse parts of its contents.
    function_declarations: tuple[dict[str, Any], ...] = ()
    function_calls: tuple[dict[str, Any], ...] = ()
    function_responses: tuple[dict[str, Any], ...] = ()

    @property
    def api_key(self) -> str | None:
        return self.headers.get("x-goog-api-key") or self.query.get("key")

    @property
    def prompt_text(self) -> str:
        return "\n".join(self.texts)

    @property
    def last_user_text(self) -> str:
        for role, text in zip(reversed(self.roles), reversed(self.texts), strict=True):
            if role in ("user", "") and text:
                return text
        return self.texts[-1] if self.texts else ""


@dataclass(frozen=True)
class GeminiReply:
    """One scripted reply. Every field is optional; unset ones take the emulator's defaults."""

    text: str | None = None
    # Explicit stream chunks (their concatenation is the reply); default: `text` split in chunk_chars pieces.
    chunks: tuple[str, ...] | None = None
    # HTTP error injection: a status >= 400 answers with Google's error JSON instead of a reply.
    status: int = 200
    error_message: str | None = None
    retry_after_s: float | None = None
    # Seconds before the response starts (headers), and between stream chunks.
    latency_s: float | None = None
    chunk_delay_s: float | None = None
    # Drop the connection after this many stream chunks (simulates a broken stream).
    drop_after_chunks: int | None = None
    finish_reason: str = "STOP"
    thoughts_tokens: int = 0
    # Replaces the computed usageMetadata (camelCase keys, as on the wire).
    usage: dict[str, int] | None = None
    # Function calls to make after the text: (name, args object). Text defaults to "" when set.
    function_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    # Send a chunk that is not JSON after this many good chunks, then end the stream.
    malformed_after_chunks: int | None = None


Responder = Callable[[GeminiRequest], str]


def default_responder(req: GeminiRequest) -> str:
    """Deterministic reply: says it is the emulator, echoes the question, describes any image."""
    parts = [f"Emulated {req.model} answer."]
    if req.images:
        for i, img in enumerate(req.images, 1):
            parts.append(
                f"Image {i}: a {img.mime_type} image of {len(img.data)} bytes (digest {img.sha256[:12]})."
            )
    question = req.last_user_text.strip().replace("\n", " ")
    if question:
        parts.append(f"You asked: {question[:200]}")
    return " ".join(parts)


def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
    return d.get(camel, d.get(snake))


def _parse_content_parts(
    content: dict[str, Any], calls: list[dict[str, Any]] | None = None,
    responses: list[dict[str, Any]] | None = None,
) -> tuple[list[str], list[InlineImage]]:
    texts: list[str] = []
    images: list[InlineImage] = []
    for part in content.get("parts") or []:
        if not isinstance(part, dict):
            raise ValueError("each part must be an object")
        if "text" in part:
            texts.append(str(part["text"]))
        call = _get(part, "functionCall", "function_call")
        if call is not None:
            if not isinstance(call, dict) or not call.get("name"):
                raise ValueError("functionCall.name is required")
            if calls is not None:
                calls.append(call)
        response = _get(part, "functionResponse", "function_response")
        if response is not None:
            if not isinstance(response, dict) or not response.get("name"):
                raise ValueError("functionResponse.name is required")
            if calls is not None and not any(c.get("name") == response["name"] for c in calls):
                raise ValueError(f"functionResponse {response['name']!r} answers no functionCall of the contents")
            if responses is not None:
                responses.append(response)
        inline = _get(part, "inlineData", "inline_data")
        if inline is not None:
            mime = str(_get(inline, "mimeType", "mime_type") or "")
            if not mime:
                raise ValueError("inlineData.mimeType is required")
            try:
                # The API takes standard or URL-safe base64 (google-genai sends URL-safe, '-' and '_').
                raw = str(inline.get("data", "")).replace("-", "+").replace("_", "/")
                data = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
            except (binascii.Error, ValueError) as err:
                raise ValueError(f"inlineData.data is not base64: {err}") from None
            images.append(InlineImage(mime, data))
    return texts, images


class GeminiEmulator(HttpEmulator[GeminiReply, GeminiRequest]):
    """aiohttp server on 127.0.0.1 (port 0 by default). Use as an async context manager or start()/aclose()."""

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        chunk_chars: int = 12,
        require_api_key: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.responder = responder or default_responder
        self.latency_s = latency_s
        self.chunk_delay_s = chunk_delay_s
        self.chunk_chars = max(1, chunk_chars)
        self.require_api_key = require_api_key
        # Implicit context caching (Gemini 2.5): a shared prefix of 1,024+ tokens is read from the cache.
        self.prompt_cache = PromptCacheSim(ttl_s=180.0)
        self._cached_tokens: dict[int, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------------
    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/models/{target}", self._handle)

    @property
    def base_url(self) -> str:
        return self.origin

    # -- scripting ---------------------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1, message: str | None = None) -> None:
        self.script(*[GeminiReply(status=status, error_message=message) for _ in range(times)])

    # -- wire format -------------------------------------------------------------------------------
    @staticmethod
    def error_body(status: int, message: str, retry_after_s: float | None = None) -> dict[str, Any]:
        err: dict[str, Any] = {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}
        if status == 429:
            err["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{int(retry_after_s if retry_after_s is not None else 10)}s",
                }
            ]
        return {"error": err}

    def _error(self, status: int, message: str, retry_after_s: float | None = None) -> web.Response:
        headers = {}
        if retry_after_s is not None:
            headers["Retry-After"] = str(math.ceil(retry_after_s))
        return web.json_response(self.error_body(status, message, retry_after_s), status=status, headers=headers)

    def _usage(self, req: GeminiRequest, output_text: str, reply: GeminiReply, final: bool) -> dict[str, Any]:
        if reply.usage is not None and final:
            return dict(reply.usage)
        text_tokens = sum(count_text_tokens(t) for t in req.texts) + count_text_tokens(req.system_instruction)
        image_tokens = IMAGE_TOKENS * len(req.images)
        prompt = text_tokens + image_tokens
        details = [{"modality": "TEXT", "tokenCount": text_tokens}]
        if req.images:
            details.append({"modality": "IMAGE", "tokenCount": image_tokens})
        usage: dict[str, Any] = {"promptTokenCount": prompt, "promptTokensDetails": details}
        out = count_text_tokens(output_text)
        total = prompt
        if final or out:
            usage["candidatesTokenCount"] = out
            total += out
        if reply.thoughts_tokens and final:
            usage["thoughtsTokenCount"] = reply.thoughts_tokens
            total += reply.thoughts_tokens
        usage["totalTokenCount"] = total
        cached = self._cached_tokens.get(id(req), 0)
        if cached:
            usage["cachedContentTokenCount"] = cached
        return usage

    @staticmethod
    def _response(
        req: GeminiRequest, text: str, usage: dict[str, Any], response_id: str, finish: str | None,
        calls: tuple[tuple[str, dict[str, Any]], ...] = (),
    ) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": text}] if text or not calls else []
        parts.extend({"functionCall": {"name": name, "args": args}} for name, args in calls)
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": req.model,
            "responseId": response_id,
        }

    def _parse(self, request: web.Request, body: dict[str, Any]) -> GeminiRequest:
        target = request.match_info["target"]
        model, _, action = target.partition(":")
        contents = body.get("contents") or []
        if not isinstance(contents, list):
            raise ValueError("contents must be a list")
        texts: list[str] = []
        roles: list[str] = []
        images: list[InlineImage] = []
        calls: list[dict[str, Any]] = []
        responses: list[dict[str, Any]] = []
        for content in contents:
            if not isinstance(content, dict):
                raise ValueError("each content must be an object")
            t, im = _parse_content_parts(content, calls, responses)
            texts.extend(t)
            roles.extend([str(content.get("role", ""))] * len(t))
            images.extend(im)
        system = _get(body, "systemInstruction", "system_instruction") or {}
        system_texts, _ = _parse_content_parts(system) if isinstance(system, dict) else ([], [])
        gen_config = _get(body, "generationConfig", "generation_config") or {}
        declarations: list[dict[str, Any]] = []
        for tool in body.get("tools") or []:
            for decl in _get(tool, "functionDeclarations", "function_declarations") or []:
                if not isinstance(decl, dict) or not decl.get("name"):
                    raise ValueError("functionDeclarations[].name is required")
                declarations.append(decl)
        return GeminiRequest(
            method=request.method,
            path=request.path,
            model=model,
            action=action,
            stream=action == "streamGenerateContent",
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            texts=tuple(texts),
            roles=tuple(roles),
            images=tuple(images),
            system_instruction="\n".join(system_texts),
            generation_config=dict(gen_config),
            function_declarations=tuple(declarations),
            function_calls=tuple(calls),
            function_responses=tuple(responses),
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = request.match_info["target"]
        model, sep, action = target.partition(":")
        if not sep or action not in ("generateContent", "streamGenerateContent", "countTokens") or not model:
            return self._error(404, f"unknown method {target!r}")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
            req = self._parse(request, body)
        except (ValueError, json.JSONDecodeError) as err:
            return self._error(400, f"Invalid JSON payload received. {err}")
        self.requests.append(req)
        if self.require_api_key and not req.api_key:
            return self._error(401, "Method doesn't allow unregistered callers. Please use an API key.")
        if action == "countTokens":
            return web.json_response({"totalTokens": self._usage(req, "", GeminiReply(), False)["promptTokenCount"]})
        if not req.texts and not req.images and not req.function_responses:
            return self._error(400, "* GenerateContentRequest.contents: contents is not specified")
        reply = self._next_reply(GeminiReply())
        latency = self.latency_s if reply.latency_s is None else reply.latency_s
        if latency > 0:
            await asyncio.sleep(latency)
        if reply.status >= 400:
            message = reply.error_message or {
                429: "Resource has been exhausted (e.g. check quota).",
                500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                503: "The model is overloaded. Please try again later.",
            }.get(reply.status, f"emulated error {reply.status}")
            return self._error(reply.status, message, reply.retry_after_s)
        text = reply.text if reply.text is not None else (
            "".join(reply.chunks) if reply.chunks is not None else "" if reply.function_calls else self.responder(req)
        )
        # Honour maxOutputTokens (the emulator's tokenizer: 4 characters a token): cut, finishReason MAX_TOKENS.
        cap = _get(req.generation_config, "maxOutputTokens", "max_output_tokens")
        if isinstance(cap, int) and cap > 0 and count_text_tokens(text) > cap and reply.chunks is None:
            text = text[: cap * 4]
            reply = dataclasses.replace(reply, finish_reason="MAX_TOKENS")
        response_id = uuid.uuid4().hex[:20]
        blocks = [Block(f"system:{req.system_instruction}", count_text_tokens(req.system_instruction))] + [
            Block(f"{role}:{t}", count_text_tokens(t)) for role, t in zip(req.roles, req.texts, strict=True)]
        self._cached_tokens[id(req)] = self.prompt_cache.implicit(req.model, blocks).read
        if not req.stream:
            usage = self._usage(req, text, reply, True)
            return web.json_response(self._response(req, text, usage, response_id, reply.finish_reason,
                                                    reply.function_calls))
        try:
            return await self._stream(request, req, reply, text, response_id)
        except ConnectionResetError:
            # The client gave up (timeout, cancel) while we were answering: nothing left to send.
            raise web.HTTPRequestTimeout() from None

    async def _stream(
        self, request: web.Request, req: GeminiRequest, reply: GeminiReply, text: str, response_id: str
    ) -> web.StreamResponse:
        if request.query.get("alt") != "sse":
            # Without alt=sse the real API streams a JSON array; the SDK always asks for SSE.
            return self._error(400, "this emulator streams only with alt=sse")
        chunks = list(reply.chunks) if reply.chunks is not None else [
            text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)
        ]
        if not chunks and not reply.function_calls:
            chunks = [""]
        delay = self.chunk_delay_s if reply.chunk_delay_s is None else reply.chunk_delay_s
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        sent = ""
        for i, chunk in enumerate(chunks):
            if reply.drop_after_chunks is not None and i >= reply.drop_after_chunks:
                transport = request.transport
                if transport is not None:
                    transport.abort()
                return resp
            if reply.malformed_after_chunks is not None and i >= reply.malformed_after_chunks:
                await resp.write(b'data: {"candidates": [{"content": {"parts": [{"text": "cut\r\n\r\n')
                await resp.write_eof()
                return resp
            if i > 0 and delay > 0:
                await asyncio.sleep(delay)
            sent += chunk
            final = i == len(chunks) - 1 and not reply.function_calls
            usage = self._usage(req, sent, reply, final)
            payload = self._response(req, chunk, usage, response_id, reply.finish_reason if final else None)
            await resp.write(f"data: {json.dumps(payload)}\r\n\r\n".encode())
        if reply.function_calls:
            if chunks and delay > 0:
                await asyncio.sleep(delay)
            sent += json.dumps([list(c) for c in reply.function_calls])
            usage = self._usage(req, sent, reply, True)
            payload = self._response(req, "", usage, response_id, reply.finish_reason, reply.function_calls)
            await resp.write(f"data: {json.dumps(payload)}\r\n\r\n".encode())
        await resp.write_eof()
        return resp
