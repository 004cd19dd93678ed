"""The Claude tier through the official `anthropic` SDK (async client, streaming Messages API, tool use)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    InputJSONDelta,
    MessageParam,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    TextDelta,
    ToolParam,
    ToolUseBlock,
    UserMessageParam,
)

from frugal.common.usage import UsageAmounts
from frugal.router import cache_aware
from frugal.router.providers.base import (
    Message,
    ProviderError,
    ProviderRequest,
    StreamDone,
    StreamEvent,
    TextChunk,
    ToolCallChunk,
    ToolCallOut,
    ToolSpec,
    UsageReport,
    estimate_tokens,
    kind_for_status,
    parse_retry_after,
)


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


def claude_messages(messages: Sequence[Message]) -> list[MessageParam]:
    """Messages API rules: starts with a user message, roles alternate (same-role neighbours merged into one
    message of several blocks), tool results are user `tool_result` blocks answering an earlier `tool_use`."""
    merged: list[tuple[Literal["user", "assistant"], list[dict[str, Any]]]] = []
    known_calls: set[str] = set()
    for msg in messages:
        role: Literal["user", "assistant"] = "assistant" if msg.role == "assistant" else "user"
        blocks: list[dict[str, Any]] = []
        if msg.role == "tool":
            if msg.tool_call_id in known_calls:
                blocks.append({"type": "tool_result", "tool_use_id": msg.tool_call_id,
                               "content": msg.text or "(no output)", "is_error": msg.tool_error})
            else:  # its tool_use was trimmed away: keep the information as plain text
                blocks.append({"type": "text", "text": f"[result of tool {msg.tool_name or msg.tool_call_id}] "
                                                       f"{msg.text}"})
        else:
            if msg.text.strip():
                blocks.append({"type": "text", "text": msg.text})
            for call in msg.tool_calls if role == "assistant" else ():
                blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                               "input": _arguments(call.arguments_json)})
        if not blocks:
            continue
        if not merged and role == "assistant":
            continue
        if role == "assistant":
            known_calls.update(c.id for c in msg.tool_calls)
        if merged and merged[-1][0] == role:
            merged[-1][1].extend(blocks)
        else:
            merged.append((role, blocks))
    out: list[MessageParam] = []
    for r, b in merged:
        content: Any = b[0]["text"] if len(b) == 1 and b[0]["type"] == "text" else b
        out.append(UserMessageParam(role="user", content=content) if r == "user"
                   else AssistantMessageParam(role="assistant", content=content))
    return out


def claude_tools(tools: Sequence[ToolSpec]) -> list[ToolParam]:
    return [ToolParam(name=t.name, description=t.description, input_schema=t.parameters) for t in tools]


def _usage(u: Any, *, previous: UsageAmounts | None = None) -> UsageAmounts:
    """Anthropic counts cache reads and cache writes outside `input_tokens`: the total input is the sum."""
    def num(name: str) -> int | None:
        v = getattr(u, name, None)
        return int(v) if isinstance(v, int) else None

    plain, read, write = num("input_tokens"), num("cache_read_input_tokens"), num("cache_creation_input_tokens")
    out = num("output_tokens")
    if previous is not None and plain is None:  # message_delta: output only, input as at message_start
        return previous.model_copy(update={"output_tokens": out if out is not None else previous.output_tokens})
    total_in = (plain or 0) + (read or 0) + (write or 0)
    return UsageAmounts(input_tokens=total_in, cached_input_tokens=read or 0, output_tokens=out or 0, requests=1)


class ClaudeProvider:
    provider = "anthropic"
    offline = False

    def __init__(self, api_key: str, *, base_url: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 0) -> None:
        # The SDK's aiohttp transport (vendored in the SDK; aiohttp is a router dependency) rather than its
        # default httpx one: a C HTTP parser and an O(1) connection pool, where the default pool checks every
        # idle connection on each request. Less CPU per streamed call (bench/overhead), same SDK, same errors.
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s,
            http_client=anthropic.DefaultAioHttpClient(timeout=timeout_s),
        )

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        usage: UsageAmounts | None = None
        cache_write = 0
        stop = ""
        emitted = False
        text_out = ""
        # content block index -> (tool_use id, name, streamed JSON pieces)
        pending_tools: dict[int, tuple[str, str, list[str]]] = {}
        try:
            # The per-request `timeout` argument, not `with_options`: a client copy per call re-resolves the
            # platform headers in a worker thread on every turn (seen in the router's profile).
            events = await self._client.messages.create(
                timeout=request.timeout_s,
                model=request.model,
                max_tokens=request.max_output_tokens,
                messages=cache_aware.claude_breakpoint(claude_messages(request.messages)),
                stream=True,
                system=cache_aware.claude_system(request.system) if request.system else anthropic.omit,
                tools=claude_tools(request.tools) if request.tools else anthropic.omit,
            )
            async with events:
                async for event in events:
                    if isinstance(event, RawMessageStartEvent):
                        usage = _usage(event.message.usage)
                        cache_write = int(getattr(event.message.usage, "cache_creation_input_tokens", 0) or 0)
                        yield UsageReport(usage)
                    elif isinstance(event, RawContentBlockStartEvent) and isinstance(event.content_block,
                                                                                     ToolUseBlock):
                        block = event.content_block
                        pending_tools[event.index] = (block.id, block.name, [])
                    elif isinstance(event, RawContentBlockDeltaEvent):
                        if isinstance(event.delta, TextDelta) and event.delta.text:
                            emitted = True
                            text_out += event.delta.text
                            yield TextChunk(event.delta.text)
                        elif isinstance(event.delta, InputJSONDelta) and event.index in pending_tools:
                            pending_tools[event.index][2].append(event.delta.partial_json)
                    elif isinstance(event, RawContentBlockStopEvent) and event.index in pending_tools:
                        call_id, name, pieces = pending_tools.pop(event.index)
                        emitted = True
                        yield ToolCallChunk(ToolCallOut(call_id, name, "".join(pieces) or "{}"))
                    elif isinstance(event, RawMessageDeltaEvent):
                        usage = _usage(event.usage, previous=usage)
                        yield UsageReport(usage)
                        if event.delta.stop_reason:
                            stop = event.delta.stop_reason
        except anthropic.APITimeoutError as err:
            raise ProviderError("interrupted" if emitted else "timeout", "anthropic: request timed out") from err
        except anthropic.APIStatusError as err:
            kind = kind_for_status(err.status_code)
            if err.status_code == 200:  # an `error` event in the middle of the stream
                kind = "unavailable"
            raise ProviderError("interrupted" if emitted else kind, f"anthropic: {err.message}",
                                status=err.status_code if err.status_code != 200 else None,
                                retry_after_s=parse_retry_after(err.response.headers.get("retry-after")),
                                ) from err
        except anthropic.APIConnectionError as err:
            raise ProviderError("interrupted" if emitted else "unavailable", f"anthropic: {err}") from err
        except ProviderError:
            raise
        except Exception as err:  # transport or parse errors the SDK does not wrap (e.g. a dropped stream)
            raise ProviderError("interrupted" if emitted else "unavailable",
                                f"anthropic: {type(err).__name__}: {err}") from err
        if usage is None:
            usage = UsageAmounts(input_tokens=estimate_tokens(request.prompt_text),
                                 output_tokens=estimate_tokens(text_out), requests=1, estimated=True)
        yield StreamDone(usage, stop, usage.cached_input_tokens, cache_write)

    async def aclose(self) -> None:
        await self._client.close()
