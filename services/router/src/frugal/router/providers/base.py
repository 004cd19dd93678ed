"""The provider interface: one streaming call with usage, and errors classified for the fallback chain."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from frugal.common.usage import UsageAmounts

ErrorKind = Literal["rate_limited", "unavailable", "timeout", "interrupted", "bad_request", "auth", "unknown"]
# Errors after which another tier may succeed; a bad request or a bad key would fail there too... mostly.
# Auth is kept: the fallback tier may be another provider with a valid key.
FALLBACK_KINDS: frozenset[str] = frozenset({"rate_limited", "unavailable", "timeout", "interrupted", "auth",
                                            "unknown"})


@dataclass(frozen=True, slots=True)
class Passage:
    title: str
    content: str
    document_id: str = ""


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    model: str
    system: str
    # (role, text), role "user" or "assistant", oldest first; the last one is the user's turn.
    messages: Sequence[tuple[str, str]]
    max_output_tokens: int
    # The turn's own text and its context, for providers that answer without a model (offline).
    question: str = ""
    passages: Sequence[Passage] = field(default_factory=tuple)
    screen_notes: Sequence[str] = field(default_factory=tuple)
    # Overall time budget of this call, seconds (the SDK's own timeout; the caller also enforces it).
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass(frozen=True, slots=True)
class StreamDone:
    usage: UsageAmounts
    finish_reason: str = ""
    # Of usage.input_tokens: read from / written to the provider's prompt cache (frugal.router.cache_aware).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


StreamEvent = TextChunk | StreamDone


class ProviderError(Exception):
    def __init__(self, kind: ErrorKind, message: str, *, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def fallback_ok(self) -> bool:
        return self.kind in FALLBACK_KINDS

    def __str__(self) -> str:
        code = f" (HTTP {self.status})" if self.status else ""
        return f"{self.kind}{code}: {self.args[0]}"


def kind_for_status(status: int | None) -> ErrorKind:
    if status is None:
        return "unknown"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status in (408, 504):
        return "timeout"
    if status >= 500:
        return "unavailable"
    if status >= 400:
        return "bad_request"
    return "unknown"


def estimate_tokens(text: str) -> int:
    """Rough token count (about 4 characters per token) for estimates and offline usage."""
    return math.ceil(len(text) / 4) if text else 0


class LlmProvider(Protocol):
    # "google", "anthropic" or "offline".
    provider: str
    offline: bool

    def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Text chunks as they arrive, then exactly one StreamDone. Raises ProviderError."""
        ...

    async def aclose(self) -> None: ...
