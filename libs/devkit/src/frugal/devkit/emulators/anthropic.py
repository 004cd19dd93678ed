"""Local emulator of the Anthropic Messages API (`POST /v1/messages`, plain and `stream: true`).

Speaks the real wire format, so tests drive the official `anthropic` SDK pointed at it::

    async with AnthropicEmulator() as emu:
        client = anthropic.AsyncAnthropic(api_key="test-key", base_url=emu.base_url, max_retries=0)
        msg = await client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=[...])

- Non-streaming: a `message` object with `content` text blocks, `stop_reason` and
  `usage{input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens}`.
- Streaming (SSE): `message_start` (with input usage), `content_block_start`, `ping`, one
  `content_block_delta` (`text_delta`) per chunk, `content_block_stop`, `message_delta` (stop_reason and the
  output usage), `message_stop`.
- Tool use: `tools` in the request are recorded; a scripted reply with `tool_calls` answers with `tool_use`
  content blocks (streamed as `content_block_start` {type: tool_use} + `input_json_delta` pieces +
  `content_block_stop`) and `stop_reason: "tool_use"`. `tool_use` blocks of assistant messages and
  `tool_result` blocks of user messages are recorded; a `tool_result` whose `tool_use_id` is not a
  `tool_use` of the assistant message just before it is refused with 400, like the API.
- Prompt caching: a scripted usage may carry `cache_read_input_tokens` / `cache_creation_input_tokens`
  (reported in `message_start`, as the API does; `input_tokens` then excludes them).
- Errors: HTTP status with `{"type": "error", "error": {"type": ..., "message": ...}}` (429 rate_limit_error
  with `retry-after`, 500 api_error, 503/529 overloaded_error, ...), or an `event: error` in the middle of a
  stream (`error_after_chunks`), or a dropped connection (`drop_after_chunks`).

Tokens: ceil(chars / 4) for text (system, messages), 1,600 per image block (Anthropic's figure for an image
of about 1.15 megapixels). `max_tokens` is honoured (the reply is cut and `stop_reason` is "max_tokens").
Scripting, latency injection and the request record work like the Gemini emulator's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from frugal.devkit.emulators._server import HttpEmulator
from frugal.devkit.emulators.prompt_cache import Block, PromptCacheSim

IMAGE_TOKENS = 1600

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def count_text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


@dataclass(frozen=True)
class AnthropicImage:
    media_type: str
    data: bytes


@dataclass(frozen=True)
class AnthropicRequest:
    """A request the emulator received, parsed."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int
    system: str
    # (role, text) per text block, in order.
    messages: tuple[tuple[str, str], ...]
    images: tuple[AnthropicImage, ...]
    # Tool definitions, and the tool_use / tool_result blocks of the messages (raw JSON objects), in order.
    tools: tuple[dict[str, Any], ...] = ()
    tool_uses: tuple[dict[str, Any], ...] = ()
    tool_results: tuple[dict[str, Any], ...] = ()

    @property
    def api_key(self) -> str | None:
        """The key sent as `x-api-key`, or as `Authorization: Bearer` (what recent SDKs send)."""
        auth = self.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        return self.headers.get("x-api-key") or bearer

    @property
    def last_user_text(self) -> str:
        for role, text in reversed(self.messages):
            if role == "user":
                return text
        return ""

    @property
    def input_tokens(self) -> int:
        return (
            count_text_tokens(self.system)
            + sum(count_text_tokens(t) for _, t in self.messages)
            + IMAGE_TOKENS * len(self.images)
            + sum(count_text_tokens(json.dumps(b)) for b in (*self.tools, *self.tool_uses, *self.tool_results))
        )


@dataclass(frozen=True)
class AnthropicReply:
    """One scripted reply. Unset fields take the emulator's defaults."""

    text: str | None = None
    chunks: tuple[str, ...] | None = None
    status: int = 200
    error_message: str | None = None
    retry_after_s: float | None = None
    latency_s: float | None = None
    chunk_delay_s: float | None = None
    # Send an `event: error` (overloaded_error unless error_type says otherwise) after this many deltas.
    error_after_chunks: int | None = None
    error_type: str = "overloaded_error"
    # Drop the connection after this many deltas.
    drop_after_chunks: int | None = None
    stop_reason: str = "end_turn"
    # Replaces the computed usage: {"input_tokens": .., "output_tokens": .., "cache_read_input_tokens": ..}.
    usage: dict[str, int] | None = None
    # Tool calls to make after the text: (name, arguments object). Text defaults to "" when set.
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    # Characters of arguments JSON per input_json_delta event.
    json_chunk_chars: int = 7


Responder = Callable[[AnthropicRequest], str]


def default_responder(req: AnthropicRequest) -> str:
    question = req.last_user_text.strip().replace("\n", " ")
    text = f"Emulated {req.model} answer."
    if req.images:
        text += f" I was shown {len(req.images)} image(s)."
    if question:
        text += f" You asked: {question[:200]}"
    return text


def _block_text(content: Any, images: list[AnthropicImage]) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise ValueError("content must be a string or a list of blocks")
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict) or "type" not in block:
            raise ValueError("each content block must be an object with a type")
        if block["type"] == "text":
            texts.append(str(block.get("text", "")))
        elif block["type"] == "tool_result":
            inner = block.get("content", "")
            if isinstance(inner, list):
                texts.extend(f"[tool_result] {t}" for t in _block_text(inner, images))
            else:
                texts.append(f"[tool_result] {inner}")
        elif block["type"] == "image":
            source = block.get("source") or {}
            if source.get("type") != "base64":
                raise ValueError("only base64 image sources are supported by the emulator")
            try:
                data = base64.b64decode(str(source.get("data", "")), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("image source data is not valid base64") from None
            images.append(AnthropicImage(str(source.get("media_type", "")), data))
    return texts


class AnthropicEmulator(HttpEmulator[AnthropicReply, AnthropicRequest]):
    """aiohttp server on 127.0.0.1 (port 0 by default). Async context manager, or start()/aclose()."""

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
        # Prompt caching (cache_control breakpoints): usage splits input into uncached, writes and reads.
        self.prompt_cache = PromptCacheSim(ttl_s=300.0)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._handle)

    @property
    def base_url(self) -> str:
        return self.origin

    def fail_next(self, status: int, times: int = 1, message: str | None = None) -> None:
        self.script(*[AnthropicReply(status=status, error_message=message) for _ in range(times)])

    # -- wire format -------------------------------------------------------------------------------
    @staticmethod
    def error_body(status: int, message: str, error_type: str | None = None) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": error_type or _ERROR_TYPES.get(status, "api_error"), "message": message},
        }

    def _error(self, status: int, message: str, retry_after_s: float | None = None) -> web.Response:
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        if retry_after_s is not None or status == 429:
            headers["retry-after"] = str(math.ceil(retry_after_s if retry_after_s is not None else 1))
        return web.json_response(self.error_body(status, message), status=status, headers=headers)

    @staticmethod
    def _parse(request: web.Request, body: dict[str, Any]) -> AnthropicRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError("max_tokens: Field required (a positive integer)")
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise ValueError("messages: at least one message is required")
        images: list[AnthropicImage] = []
        messages: list[tuple[str, str]] = []
        tool_uses: list[dict[str, Any]] = []
        tool_results: list[dict[str, Any]] = []
        previous_uses: set[str] = set()
        for m in raw_messages:
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise ValueError("messages: each message needs role 'user' or 'assistant'")
            for text in _block_text(m.get("content", ""), images):
                messages.append((str(m["role"]), text))
            raw_content = m.get("content")
            blocks: list[Any] = raw_content if isinstance(raw_content, list) else []
            uses = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"]
            results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
            if m["role"] == "user":
                for r in results:
                    if r.get("tool_use_id") not in previous_uses:
                        raise ValueError(f"messages: unexpected `tool_use_id` found in `tool_result` blocks: "
                                         f"{r.get('tool_use_id')}. Each `tool_result` block must have a "
                                         "corresponding `tool_use` block in the previous message.")
            elif results:
                raise ValueError("messages: tool_result blocks belong in user messages")
            for u in uses:
                if m["role"] != "assistant" or not u.get("id") or not u.get("name") or not isinstance(
                        u.get("input"), dict):
                    raise ValueError("messages: tool_use blocks need id, name and an input object, in an "
                                     "assistant message")
            previous_uses = {str(u["id"]) for u in uses}
            tool_uses.extend(uses)
            tool_results.extend(results)
        tools = body.get("tools") or []
        if not isinstance(tools, list) or any(
                not isinstance(t, dict) or not t.get("name") or not isinstance(t.get("input_schema"), dict)
                for t in tools):
            raise ValueError("tools: each tool needs a name and an input_schema object")
        system_raw = body.get("system", "")
        system = "\n".join(_block_text(system_raw, images)) if system_raw else ""
        return AnthropicRequest(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            model=model,
            stream=bool(body.get("stream", False)),
            max_tokens=max_tokens,
            system=system,
            messages=tuple(messages),
            images=tuple(images),
            tools=tuple(tools),
            tool_uses=tuple(tool_uses),
            tool_results=tuple(tool_results),
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
            req = self._parse(request, body)
        except (ValueError, json.JSONDecodeError) as err:
            return self._error(400, str(err))
        self.requests.append(req)
        if self.require_api_key and not req.api_key:
            return self._error(401, "x-api-key (or Authorization: Bearer) header is required")
        reply = self._next_reply(AnthropicReply())
        latency = self.latency_s if reply.latency_s is None else reply.latency_s
        if latency > 0:
            await asyncio.sleep(latency)
        if reply.status >= 400:
            message = reply.error_message or {
                429: "Number of request tokens has exceeded your per-minute rate limit",
                500: "Internal server error",
                503: "Overloaded",
                529: "Overloaded",
            }.get(reply.status, f"emulated error {reply.status}")
            return self._error(reply.status, message, reply.retry_after_s)
        text = reply.text if reply.text is not None else (
            "".join(reply.chunks) if reply.chunks is not None else "" if reply.tool_calls else self.responder(req)
        )
        chunks = list(reply.chunks) if reply.chunks is not None else [
            text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)
        ]
        stop_reason = reply.stop_reason
        # Honour max_tokens: cut the reply at the token budget.
        kept: list[str] = []
        used = 0
        for chunk in chunks:
            room = req.max_tokens * 4 - used
            if room <= 0:
                stop_reason = "max_tokens"
                break
            if len(chunk) > room:
                kept.append(chunk[:room])
                stop_reason = "max_tokens"
                break
            kept.append(chunk)
            used += len(chunk)
        chunks = kept
        text = "".join(chunks)
        tool_blocks = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": args}
                       for name, args in reply.tool_calls]
        if tool_blocks:
            stop_reason = "tool_use"
        cache = self.prompt_cache.explicit(req.model, _cache_blocks(body))
        cache_read, cache_write = cache.read, cache.write
        # Uncached input: everything the request counts (tools and tool blocks included) but the cached part.
        input_tokens = max(req.input_tokens - cache_read - cache_write, 0)
        output_tokens = count_text_tokens(text) + sum(count_text_tokens(json.dumps(b)) for b in tool_blocks)
        if reply.usage is not None:
            input_tokens = reply.usage.get("input_tokens", input_tokens)
            output_tokens = reply.usage.get("output_tokens", output_tokens)
            cache_read = reply.usage.get("cache_read_input_tokens", 0)
            cache_write = reply.usage.get("cache_creation_input_tokens", 0)
        usage_obj = self._usage_obj(input_tokens, output_tokens, cache_read, cache_write)
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        if not req.stream:
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": req.model,
                    "content": ([{"type": "text", "text": text}] if text or not tool_blocks else []) + tool_blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage_obj,
                },
                headers={"request-id": f"req_{uuid.uuid4().hex[:24]}"},
            )
        try:
            return await self._stream(request, req, reply, chunks, msg_id, usage_obj, stop_reason, tool_blocks)
        except ConnectionResetError:
            # The client gave up (timeout, cancel) while we were answering: nothing left to send.
            raise web.HTTPRequestTimeout() from None

    @staticmethod
    def _usage_obj(input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> dict[str, Any]:
        return {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
        }

    async def _stream(
        self,
        request: web.Request,
        req: AnthropicRequest,
        reply: AnthropicReply,
        chunks: list[str],
        msg_id: str,
        usage_obj: dict[str, Any],
        stop_reason: str,
        tool_blocks: list[dict[str, Any]],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": f"req_{uuid.uuid4().hex[:24]}",
            },
        )
        await resp.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        await event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": req.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage_obj, "output_tokens": 1},
                },
            },
        )
        text_block = bool(chunks) or not tool_blocks
        if text_block:
            await event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
        await event("ping", {"type": "ping"})
        delay = self.chunk_delay_s if reply.chunk_delay_s is None else reply.chunk_delay_s
        for i, chunk in enumerate(chunks):
            if reply.drop_after_chunks is not None and i >= reply.drop_after_chunks:
                if request.transport is not None:
                    request.transport.abort()
                return resp
            if reply.error_after_chunks is not None and i >= reply.error_after_chunks:
                await event("error", self.error_body(529, reply.error_message or "Overloaded", reply.error_type))
                await resp.write_eof()
                return resp
            if i > 0 and delay > 0:
                await asyncio.sleep(delay)
            await event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
            )
        if text_block:
            await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        step = max(1, reply.json_chunk_chars)
        for i, block in enumerate(tool_blocks, start=1 if text_block else 0):
            await event("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {**block, "input": {}}})
            args = json.dumps(block["input"])
            for j in range(0, len(args), step):
                await event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": args[j : j + step]}})
            await event("content_block_stop", {"type": "content_block_stop", "index": i})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage_obj["output_tokens"]},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp


def _cache_blocks(body: dict[str, Any]) -> list[Block]:
    """The prompt as cacheable blocks in Anthropic's order (system, then messages), text blocks only."""
    out: list[Block] = []

    def add(content: Any, role: str) -> None:
        if isinstance(content, str):
            out.append(Block(f"{role}:{content}", count_text_tokens(content)))
        elif isinstance(content, list):
            for b in content:
                if isinstance(b, dict) and b.get("type") == "text":
                    t = str(b.get("text", ""))
                    out.append(Block(f"{role}:{t}", count_text_tokens(t), "cache_control" in b))

    add(body.get("system", ""), "system")
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            add(m.get("content", ""), str(m.get("role")))
    return out
