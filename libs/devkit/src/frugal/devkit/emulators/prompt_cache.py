"""Prompt-cache bookkeeping the LLM emulators share: what the providers' caches would have read and written.

- Anthropic (explicit): a prefix is cached only up to a block carrying `cache_control`, when it reaches the
  model's minimum (1,024 tokens here); a request reads the longest previously written prefix ending at any
  block boundary up to its last breakpoint (Anthropic looks back over earlier block positions), writes the
  rest up to that breakpoint, and the remaining input is uncached. Entries live 5 minutes, refreshed on use.
- Gemini (implicit): every request's block boundaries are remembered; a later request with the same model
  that shares a prefix of at least 1,024 tokens reads it from the cache. No writes are charged.

Time comes from a clock (monotonic by default) so tests can expire entries without sleeping.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIN_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class Block:
    text: str
    tokens: int
    breakpoint: bool = False


@dataclass(frozen=True, slots=True)
class CacheResult:
    uncached: int
    write: int
    read: int


class PromptCacheSim:
    def __init__(self, *, ttl_s: float = 300.0, min_tokens: int = MIN_TOKENS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.min_tokens = min_tokens
        self._clock = clock
        self._entries: dict[str, float] = {}  # prefix hash -> expiry

    def _prefixes(self, model: str, blocks: Sequence[Block]) -> list[tuple[str, int, bool]]:
        h = hashlib.sha256(model.encode())
        out: list[tuple[str, int, bool]] = []
        total = 0
        for b in blocks:
            h.update(b"\x1e" + b.text.encode())
            total += b.tokens
            out.append((h.copy().hexdigest(), total, b.breakpoint))
        return out

    def _live(self, key: str, now: float) -> bool:
        exp = self._entries.get(key)
        return exp is not None and exp > now

    def explicit(self, model: str, blocks: Sequence[Block]) -> CacheResult:
        now = self._clock()
        prefixes = self._prefixes(model, blocks)
        total = prefixes[-1][1] if prefixes else 0
        last_bp = max((i for i, p in enumerate(prefixes) if p[2]), default=-1)
        if last_bp < 0:
            return CacheResult(total, 0, 0)
        read = 0
        for key, tokens, _ in reversed(prefixes[: last_bp + 1]):
            if self._live(key, now):
                read = tokens
                self._entries[key] = now + self.ttl_s
                break
        bp_tokens = prefixes[last_bp][1]
        write = 0
        if bp_tokens >= self.min_tokens:
            write = bp_tokens - read
            for key, tokens, is_bp in prefixes[: last_bp + 1]:
                if is_bp and tokens >= self.min_tokens:
                    self._entries[key] = now + self.ttl_s
        return CacheResult(total - read - write, write, read)

    def implicit(self, model: str, blocks: Sequence[Block]) -> CacheResult:
        now = self._clock()
        prefixes = self._prefixes(model, blocks)
        total = prefixes[-1][1] if prefixes else 0
        read = 0
        for key, tokens, _ in reversed(prefixes):
            if tokens >= self.min_tokens and self._live(key, now):
                read = tokens
                break
        for key, _, _ in prefixes:
            self._entries[key] = now + self.ttl_s
        return CacheResult(total - read, 0, read)
