"""Turn size: the input tokens one turn may send, and the history trimmed oldest-first to fit.

The budget for a model is the smallest of: its context window minus the reply's output allowance, the
per-turn cap (`max_turn_input_tokens`, a cost guard), and the tenant's tokens per minute minus the output
allowance (a turn that cannot fit the tenant's window would be refused by the limiter anyway).
Tokens are estimated at ~4 characters each, the same rule as the reservation in the rate limiter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from frugal.router.providers.base import Message, estimate_tokens

# Input context windows (tokens) of the catalog's default models; override with MODEL_CONTEXT_WINDOWS.
DEFAULT_CONTEXT_WINDOWS: dict[str, int] = {
    "gemini-2.5-flash-lite": 1_048_576,
    "gemini-2.5-flash": 1_048_576,
    "claude-sonnet-4-6": 200_000,
}
# Window assumed for a model not in the table (conservative).
UNKNOWN_MODEL_WINDOW = 32_000
# Per-message overhead (role markers, separators) in the estimate.
MESSAGE_OVERHEAD_TOKENS = 4


class TurnTooLarge(ValueError):
    """The turn itself (system prompt, context, the user's text) does not fit, even with no history."""


def parse_context_windows(raw: str) -> dict[str, int]:
    """'{"model": tokens, ...}' merged over the defaults; raises ValueError on a bad value."""
    windows = dict(DEFAULT_CONTEXT_WINDOWS)
    if not raw.strip():
        return windows
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"MODEL_CONTEXT_WINDOWS is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError("MODEL_CONTEXT_WINDOWS must be a JSON object {model: tokens}")
    for model, tokens in data.items():
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1024:
            raise ValueError(f"MODEL_CONTEXT_WINDOWS[{model!r}] must be an integer >= 1024")
        windows[str(model)] = tokens
    return windows


def message_tokens(msg: Message) -> int:
    return (estimate_tokens(msg.text) + sum(estimate_tokens(c.arguments_json) + estimate_tokens(c.name)
                                            for c in msg.tool_calls) + MESSAGE_OVERHEAD_TOKENS)


@dataclass(frozen=True, slots=True)
class TurnBudget:
    input_tokens: int
    # Which limit set it: "context window of <model>", "per-turn cap", "tenant tokens per minute".
    bound_by: str


def input_budget(model: str, *, windows: Mapping[str, int], max_output_tokens: int, per_turn_cap: int,
                 tenant_tokens_per_minute: int | None, reserved_output_tokens: int | None = None) -> TurnBudget:
    """`reserved_output_tokens`: the output the rate limiter reserves (default: max_output_tokens)."""
    window = windows.get(model, UNKNOWN_MODEL_WINDOW) - max_output_tokens
    options = [(window, f"context window of {model}"), (per_turn_cap, "per-turn cap")]
    if tenant_tokens_per_minute is not None and tenant_tokens_per_minute > 0:
        out = max_output_tokens if reserved_output_tokens is None else reserved_output_tokens
        options.append((tenant_tokens_per_minute - out, "tenant tokens per minute"))
    tokens, why = min(options, key=lambda o: o[0])
    return TurnBudget(max(0, tokens), why)


@dataclass(frozen=True, slots=True)
class Trimmed:
    messages: list[Message]
    dropped: int
    tokens: int  # estimated input tokens of fixed part + kept history

    def note(self, budget: TurnBudget) -> str:
        return (f"history trimmed: {self.dropped} oldest messages dropped to fit {budget.input_tokens} input "
                f"tokens ({budget.bound_by})")


def fit_history(history: Sequence[Message], *, fixed_tokens: int, budget: TurnBudget) -> Trimmed:
    """Keeps the newest messages whose estimate fits beside `fixed_tokens`; never splits a tool call from
    its results (results whose call was dropped go too). Raises TurnTooLarge when the fixed part alone
    exceeds the budget."""
    if fixed_tokens > budget.input_tokens:
        raise TurnTooLarge(f"this turn needs about {fixed_tokens} input tokens before any history; the limit is "
                           f"{budget.input_tokens} ({budget.bound_by})")
    room = budget.input_tokens - fixed_tokens
    kept_rev: list[Message] = []
    used = 0
    for msg in reversed(history):
        cost = message_tokens(msg)
        if used + cost > room:
            break
        kept_rev.append(msg)
        used += cost
    kept = list(reversed(kept_rev))
    calls = {c.id for m in kept if m.role == "assistant" for c in m.tool_calls}
    orphans = [m for m in kept if m.role == "tool" and m.tool_call_id not in calls]
    if orphans and len(kept) < len(history):  # only trimming creates orphans we must drop
        kept = [m for m in kept if m not in orphans]
        used -= sum(message_tokens(m) for m in orphans)
    return Trimmed(kept, len(history) - len(kept), fixed_tokens + used)
