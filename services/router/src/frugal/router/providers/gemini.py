"""Gemini tiers through the official `google-genai` SDK (async client, streaming, function calling)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from frugal.common.usage import UsageAmounts
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
)


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


def gemini_contents(messages: Sequence[Message]) -> list[types.Content]:
    """Chat messages as Gemini contents: roles user/model, function calls as `function_call` parts of the
    model's message, tool results as `function_response` parts of a user message; same-role neighbours
    merged (Gemini wants the responses to one turn's calls together)."""
    out: list[types.Content] = []
    for msg in messages:
        g_role = "model" if msg.role == "assistant" else "user"
        parts: list[types.Part] = []
        if msg.role == "tool":
            key = "error" if msg.tool_error else "output"
            parts.append(types.Part(function_response=types.FunctionResponse(
                id=msg.tool_call_id or None, name=msg.tool_name or "tool", response={key: msg.text})))
        else:
            if msg.text.strip():
                parts.append(types.Part.from_text(text=msg.text))
            for call in msg.tool_calls if msg.role == "assistant" else ():
                parts.append(types.Part(function_call=types.FunctionCall(
                    id=call.id or None, name=call.name, args=_arguments(call.arguments_json))))
        if not parts:
            continue
        if out and out[-1].role == g_role and out[-1].parts is not None:
            prev = out[-1].parts[-1]
            if len(parts) == 1 and parts[0].text is not None and prev.text is not None:
                out[-1].parts[-1] = types.Part.from_text(text=f"{prev.text}\n\n{parts[0].text}")
            else:
                out[-1].parts.extend(parts)
        else:
            out.append(types.Content(role=g_role, parts=parts))
    return out


def gemini_tools(tools: Sequence[ToolSpec]) -> list[types.Tool]:
    return [types.Tool(function_declarations=[
        types.FunctionDeclaration(name=t.name, description=t.description, parameters_json_schema=t.parameters)
        for t in tools])]


def _retry_delay(err: genai_errors.APIError) -> float | None:
    details = err.details.get("error", {}).get("details", []) if isinstance(err.details, dict) else []
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            m = re.match(r"([\d.]+)s", str(detail.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


def gemini_usage(md: types.GenerateContentResponseUsageMetadata) -> UsageAmounts | None:
    """prompt_token_count includes cached content; thinking tokens are billed at the output price."""
    if md.prompt_token_count is None:
        return None
    return UsageAmounts(
        input_tokens=md.prompt_token_count + (md.tool_use_prompt_token_count or 0),
        cached_input_tokens=md.cached_content_token_count or 0,
        output_tokens=(md.candidates_token_count or 0) + (md.thoughts_token_count or 0),
        requests=1,
    )


class GeminiProvider:
    provider = "google"
    offline = False

    def __init__(self, api_key: str, *, base_url: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 0, thinking_budget: int = 0) -> None:
        self._thinking_budget = thinking_budget
        self._client = genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=base_url,
                timeout=int(timeout_s * 1000),
                # attempts=1: no SDK retries (and no implicit retry with a 1-10 s sleep on connect errors);
                # our fallback chain decides what happens next.
                retry_options=types.HttpRetryOptions(attempts=1 + max_retries),
            ),
        )

    def _config(self, request: ProviderRequest) -> types.GenerateContentConfig:
        kwargs: dict[str, Any] = {
            "max_output_tokens": request.max_output_tokens,
            "http_options": types.HttpOptions(timeout=max(1, int(request.timeout_s * 1000))),
        }
        if request.system:
            kwargs["system_instruction"] = request.system
        if self._thinking_budget >= 0 and "2.5" in request.model:
            kwargs["thinking_config"] = types.ThinkingConfig(thinking_budget=self._thinking_budget)
        if request.tools:
            kwargs["tools"] = gemini_tools(request.tools)
            # We run the tools (through the caller), never the SDK.
            kwargs["automatic_function_calling"] = types.AutomaticFunctionCallingConfig(disable=True)
        return types.GenerateContentConfig(**kwargs)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        usage: UsageAmounts | None = None
        finish = ""
        text_out = ""
        emitted = False
        try:
            stream = await self._client.aio.models.generate_content_stream(
                model=request.model, contents=gemini_contents(request.messages), config=self._config(request)
            )
            async for chunk in stream:
                if chunk.usage_metadata is not None:
                    reported = gemini_usage(chunk.usage_metadata)
                    if reported is not None:
                        usage = reported
                        yield UsageReport(usage)
                cand = chunk.candidates[0] if chunk.candidates else None
                if cand is not None and cand.finish_reason is not None:
                    finish = str(cand.finish_reason.value if hasattr(cand.finish_reason, "value")
                                 else cand.finish_reason)
                parts = cand.content.parts if cand is not None and cand.content is not None else None
                for part in parts or []:
                    if part.function_call is not None and part.function_call.name:
                        fc = part.function_call
                        emitted = True
                        yield ToolCallChunk(ToolCallOut(fc.id or f"call_{uuid.uuid4().hex[:24]}", fc.name or "",
                                                        json.dumps(fc.args or {})))
                    elif part.text and not part.thought:
                        emitted = True
                        text_out += part.text
                        yield TextChunk(part.text)
        except genai_errors.APIError as err:
            kind = kind_for_status(err.code)
            raise ProviderError(kind if not emitted else "interrupted", f"gemini: {err.status}: {err.message}",
                                status=err.code, retry_after_s=_retry_delay(err)) from err
        except TimeoutError as err:
            raise ProviderError("interrupted" if emitted else "timeout", "gemini: request timed out") from err
        except ProviderError:
            raise
        except Exception as err:
            # Transport errors (aiohttp/httpx), and a chunk the SDK cannot parse (JSON or schema errors):
            # a provider failure like any other, so the fallback chain and billing handle it.
            raise ProviderError("interrupted" if emitted else "unavailable",
                                f"gemini: {type(err).__name__}: {str(err)[:300]}") from err
        if usage is None:
            usage = UsageAmounts(input_tokens=estimate_tokens(request.prompt_text),
                                 output_tokens=estimate_tokens(text_out), requests=1, estimated=True)
        yield StreamDone(usage, finish, usage.cached_input_tokens)

    async def aclose(self) -> None:
        await self._client.aio.aclose()
