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
Role = Literal["user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class Passage:
    title: str
    content: str
    document_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; `parameters` is a JSON Schema object."""

    name: str
    description: str
    parameters: dict[str, object]


@dataclass(frozen=True, slots=True)
class ToolCallOut:
    """A complete tool call the model made (arguments fully received), or one from the history."""

    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the conversation in provider-neutral form.

    role "tool": `text` is the tool's result for `tool_call_id` (`tool_name` resolved from the history,
    Gemini needs it); role "assistant" may carry the tool calls the model made."""

    role: Role
    text: str
    tool_calls: tuple[ToolCallOut, ...] = ()
    tool_call_id: str = ""
    tool_name: str = ""
    tool_error: bool = False


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    model: str
    system: str
    # Oldest first; normally ends with the user's turn (or with tool results answering the model's calls).
    messages: Sequence[Message]
    max_output_tokens: int
    # The turn's own text and its context, for providers that answer without a model (offline).
    question: str = ""
    passages: Sequence[Passage] = field(default_factory=tuple)
    screen_notes: Sequence[str] = field(default_factory=tuple)
    tools: Sequence[ToolSpec] = field(default_factory=tuple)
    # Overall time budget of this call, seconds (the SDK's own timeout; the caller also enforces it).
    timeout_s: float = 60.0

    @property
    def prompt_text(self) -> str:
        """Everything sent as input, for estimates when the provider reports nothing."""
        return self.system + "".join(m.text + "".join(c.arguments_json for c in m.tool_calls) for m in self.messages)


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallChunk:
    call: ToolCallOut


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Usage the provider has reported so far (Claude's message_start, Gemini's usage_metadata on a chunk).

    Kept by the caller so that a call cut short (error, cancel, timeout) is billed with what the provider
    said it had already counted, not with zero."""

    usage: UsageAmounts


@dataclass(frozen=True, slots=True)
class StreamDone:
    usage: UsageAmounts
    finish_reason: str = ""
    # Of usage.input_tokens: read from / written to the provider's prompt cache (frugal.router.cache_aware).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


StreamEvent = TextChunk | ToolCallChunk | UsageReport | StreamDone


# Provider errors that mean the request was refused or failed before the model ran (the provider bills
# nothing); timeouts, interruptions, cancellations and unknown errors are billed on reported or estimated usage.
NOT_PROCESSED: frozenset[str] = frozenset({"rate_limited", "auth", "bad_request", "unavailable"})


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


def parse_retry_after(value: str | None) -> float | None:
    """`retry-after` in seconds (the HTTP-date form is not used by these providers)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


def estimate_tokens(text: str) -> int:
    """Rough token count (about 4 characters per token) for estimates and offline usage."""
    return math.ceil(len(text) / 4) if text else 0


def merge_partial(reported: UsageAmounts | None, emitted: str) -> UsageAmounts | None:
    """Usage of a call cut short: what the provider reported, output at least what we saw stream out.

    None when the provider reported nothing (the caller then estimates)."""
    if reported is None:
        return None
    seen = estimate_tokens(emitted)
    if reported.output_tokens >= seen:
        return reported.model_copy(update={"requests": 1})
    return reported.model_copy(update={"output_tokens": seen, "requests": 1, "estimated": True})


class LlmProvider(Protocol):
    # "google", "anthropic" or "offline".
    provider: str
    offline: bool

    def stream(self, request: ProviderRequest) -> AsyncGenerator[StreamEvent, None]:
        """Usage reports, text chunks and tool calls as they arrive, then exactly one StreamDone.
        Raises ProviderError."""
        ...

    async def aclose(self) -> None: ...
