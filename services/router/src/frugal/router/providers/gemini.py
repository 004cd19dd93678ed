"""Gemini tiers through the official `google-genai` SDK (async client, streaming)."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import aiohttp
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

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


def gemini_contents(messages: Sequence[tuple[str, str]]) -> list[types.Content]:
    """Chat messages as Gemini contents: roles user/model, consecutive same-role messages merged."""
    out: list[types.Content] = []
    for role, text in messages:
        g_role = "model" if role == "assistant" else "user"
        if out and out[-1].role == g_role and out[-1].parts:
            prev = out[-1].parts[-1].text or ""
            out[-1].parts[-1] = types.Part.from_text(text=f"{prev}\n\n{text}")
        else:
            out.append(types.Content(role=g_role, parts=[types.Part.from_text(text=text)]))
    return out


def _retry_delay(err: genai_errors.APIError) -> float | None:
    for detail in (err.details or {}).get("error", {}).get("details", []) if isinstance(err.details, dict) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            m = re.match(r"([\d.]+)s", str(detail.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


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
        return types.GenerateContentConfig(**kwargs)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        usage_md: types.GenerateContentResponseUsageMetadata | None = None
        finish = ""
        emitted = ""
        try:
            stream = await self._client.aio.models.generate_content_stream(
                model=request.model, contents=gemini_contents(request.messages), config=self._config(request)
            )
            async for chunk in stream:
                if chunk.usage_metadata is not None:
                    usage_md = chunk.usage_metadata
                cand = chunk.candidates[0] if chunk.candidates else None
                if cand is not None and cand.finish_reason is not None:
                    finish = str(cand.finish_reason.value if hasattr(cand.finish_reason, "value")
                                 else cand.finish_reason)
                parts = cand.content.parts if cand is not None and cand.content is not None else None
                text = "".join(p.text for p in parts or [] if p.text and not p.thought)
                if text:
                    emitted += text
                    yield TextChunk(text)
        except genai_errors.APIError as err:
            kind = kind_for_status(err.code)
            raise ProviderError(kind if not emitted else "interrupted", f"gemini: {err.status}: {err.message}",
                                status=err.code, retry_after_s=_retry_delay(err)) from err
        except TimeoutError as err:
            raise ProviderError("timeout", "gemini: request timed out") from err
        except aiohttp.ClientError as err:
            raise ProviderError("interrupted" if emitted else "unavailable",
                                f"gemini: {type(err).__name__}: {err}") from err
        cached = cache_aware.gemini_usage(usage_md.prompt_token_count or 0, usage_md.cached_content_token_count
                                          ) if usage_md is not None else cache_aware.CacheUsage()
        yield StreamDone(self._usage(request, usage_md, emitted), finish, cached.read_tokens)

    @staticmethod
    def _usage(request: ProviderRequest, md: types.GenerateContentResponseUsageMetadata | None,
               emitted: str) -> UsageAmounts:
        if md is None or md.prompt_token_count is None:
            prompt = request.system + "".join(t for _, t in request.messages)
            return UsageAmounts(input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(emitted),
                                requests=1, estimated=True)
        # Thinking tokens are billed at the output price.
        output = (md.candidates_token_count or 0) + (md.thoughts_token_count or 0)
        return UsageAmounts(input_tokens=md.prompt_token_count, output_tokens=output, requests=1)

    async def aclose(self) -> None:
        await self._client.aio.aclose()
