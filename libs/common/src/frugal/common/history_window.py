"""Which earlier messages a turn carries: a window that moves in steps, so the prompt prefix stays cacheable.

A sliding window ("the last 12 messages") changes the first message of the prompt on every turn, and a
prompt cache only serves an identical prefix: no turn ever reads the cache. Moving the window's start in
steps of `step` messages keeps the same start for step/2 turns; the prompt carries between max-step and max
messages. `stable=False` is the plain sliding window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def history_window(messages: Sequence[T], max_messages: int, *, stable: bool = True,
                   step: int | None = None) -> list[T]:
    if max_messages <= 0:
        return []
    if len(messages) <= max_messages:
        return list(messages)
    if not stable:
        return list(messages[-max_messages:])
    step = step or max(max_messages // 2, 1)
    start = math.ceil((len(messages) - max_messages) / step) * step
    return list(messages[start:])
