"""The Claude tier through the official `anthropic` SDK (async client, streaming Messages API)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Literal

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    MessageParam,
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    TextDelta,
    UserMessageParam,
)

from frugal.common.usage import UsageAmounts
from frugal.router import cache_aware
from frugal.router.providers.base import (
    ProviderError,
    ProviderRequest,
    StreamDone,
    StreamEvent,
    TextChunk,
    estimate_tokens,
    kind_for_status,
)


def claude_messages(messages: Sequence[tuple[str, str]]) -> list[MessageParam]:
    """Messages API rules: starts with a user message, roles alternate (same-role neighbours merged)."""
    merged: list[tuple[Literal["user", "assistant"], str]] = []
    for role, text in messages:
        r: Literal["user", "assistant"] = "assistant" if role == "assistant" else "user"
        if not merged and r == "assistant":
            continue
        if merged and merged[-1][0] == r:
            merged[-1] = (r, merged[-1][1] + "\n\n" + text)
        else:
            merged.append((r, text))
    out: list[MessageParam] = []
    for r, t in merged:
        if r == "user":
            out.append(UserMessageParam(role="user", content=t))
        else:
            out.append(AssistantMessageParam(role="assistant", content=t))
    return out


class ClaudeProvider:
    provider = "anthropic"
    offline = False

    def __init__(self, api_key: str, *, base_url: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 0) -> None:
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s
        )

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        input_tokens: int | None = None
        output_tokens: int | None = None
        cache = cache_aware.CacheUsage()
        stop = ""
        emitted = ""
        try:
            events = await self._client.with_options(timeout=request.timeout_s).messages.create(
                model=request.model,
                max_tokens=request.max_output_tokens,
                messages=cache_aware.claude_breakpoint(claude_messages(request.messages)),
                stream=True,
                system=cache_aware.claude_system(request.system) if request.system else anthropic.omit,
            )
            async with events:
                async for event in events:
                    if isinstance(event, RawMessageStartEvent):
                        u = event.message.usage
                        input_tokens, cache = cache_aware.claude_usage(
                            u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens)
                        output_tokens = event.message.usage.output_tokens
                    elif isinstance(event, RawContentBlockDeltaEvent) and isinstance(event.delta, TextDelta):
                        emitted += event.delta.text
                        yield TextChunk(event.delta.text)
                    elif isinstance(event, RawMessageDeltaEvent):
                        output_tokens = event.usage.output_tokens
                        if event.delta.stop_reason:
                            stop = event.delta.stop_reason
        except anthropic.APITimeoutError as err:
            raise ProviderError("timeout", "anthropic: request timed out") from err
        except anthropic.APIStatusError as err:
            retry = err.response.headers.get("retry-after")
            kind = kind_for_status(err.status_code)
            if err.status_code == 200:  # an `error` event in the middle of the stream
                kind = "interrupted" if emitted else "unavailable"
            raise ProviderError("interrupted" if emitted else kind, f"anthropic: {err.message}",
                                status=err.status_code if err.status_code != 200 else None,
                                retry_after_s=float(retry) if retry and retry.replace(".", "").isdigit() else None,
                                ) from err
        except anthropic.APIConnectionError as err:
            raise ProviderError("interrupted" if emitted else "unavailable", f"anthropic: {err}") from err
        except Exception as err:  # transport errors the SDK does not wrap (e.g. a dropped stream)
            if isinstance(err, ProviderError):
                raise
            raise ProviderError("interrupted" if emitted else "unavailable",
                                f"anthropic: {type(err).__name__}: {err}") from err
        if input_tokens is None:
            prompt = request.system + "".join(t for _, t in request.messages)
            usage = UsageAmounts(input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(emitted),
                                 requests=1, estimated=True)
        else:
            usage = UsageAmounts(input_tokens=input_tokens, output_tokens=output_tokens or 0, requests=1)
        yield StreamDone(usage, stop, cache.read_tokens, cache.write_tokens)

    async def aclose(self) -> None:
        await self._client.close()
