"""Prompt caching for multi-turn sessions, and cache-aware routing.

A voice session resends the same system prompt and a growing history every turn. Both providers discount
input tokens read from a prompt cache (Anthropic reads at 0.1x input, Gemini 2.5's implicit cache at 0.1x),
but only for an identical PREFIX. So:

- Layout: the stable part (service prompt, tenant instructions, speech style) is the system prompt; the
  per-turn context (knowledge-base passages, screen notes) goes with the new user turn at the END, not into
  the system prompt, where it would change the prefix every turn.
- Anthropic: explicit `cache_control` breakpoints, one on the system prompt and one on the last history
  message (the turn before the new one), so each turn reads the previous turns' prefix from the cache and
  writes only what is new (cache writes cost 1.25x input; prefixes under 1,024 tokens are not cached).
- Gemini: implicit caching needs nothing but the stable prefix; `cached_content_token_count` in the usage
  says how much was read, priced at the catalog's cached price.
- Routing: a session whose cache is warm on one tier loses it by switching. `WarmCaches.choose` keeps the
  session on its warm tier when staying is cheaper for this turn than the tier the scorer chose, and only
  when the warm tier is at least as strong (never below the quality the scorer asked for).

Switch: `PROMPT_CACHE_ENABLED` (layout and breakpoints), `CACHE_AWARE_ROUTING_ENABLED` (on by default).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from frugal.common.pricing import TIERS, PriceCatalog, PriceCatalogError, TierName
from frugal.common.session_cost import llm_cost
from frugal.common.settings import env_cached
from frugal.common.usage import UsageAmounts
from frugal.router.prompt import UNTRUSTED_RULE
from frugal.router.providers.base import Message, ToolCallOut

CACHE_CONTROL: dict[str, str] = {"type": "ephemeral"}
# Provider minimums for a cacheable prefix (Claude Sonnet and Gemini 2.5 Flash: 1,024 tokens).
MIN_CACHEABLE_TOKENS = {"anthropic": 1024, "google": 1024}
# How long a prefix stays cached without use: Anthropic's default 5 minutes (refreshed on every hit);
# Gemini's implicit cache is best effort, typically minutes.
CACHE_TTL_S = {"anthropic": 300.0, "google": 180.0}
CONTEXT_HEADER = "Context for this turn (not said by the user):"


class CacheSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    prompt_cache_enabled: bool = True
    cache_aware_routing_enabled: bool = True
    cache_aware_max_sessions: int = Field(default=50_000, ge=1)


_settings = env_cached(CacheSettings)


def settings() -> CacheSettings:
    """Read several times per turn: built again only when its environment variables change."""
    return _settings()


# ---- layout --------------------------------------------------------------------------------------------


def layout(stable_system: str, turn_context: Sequence[str], messages: Sequence[Message],
           *, enabled: bool | None = None, rule: str = UNTRUSTED_RULE) -> tuple[str, list[Message]]:
    """(system, messages) with a cacheable prefix: the per-turn context (the untrusted, escaped blocks of
    frugal.router.prompt) joined to the last message when it is the user's; the rule that says those blocks are
    untrusted data stays in the system prompt (a trusted channel; the same text every turn that has context).

    Disabled, or the turn ends with tool results (they stay exactly as they are): rule and blocks go into the
    system prompt, as before (a prefix that changes every turn)."""
    on = settings().prompt_cache_enabled if enabled is None else enabled
    context = "\n\n".join(c for c in turn_context if c.strip())
    msgs = list(messages)
    if not context:
        return stable_system, msgs
    trusted = f"{stable_system}\n\n{rule}" if stable_system else rule
    if not on or not msgs or msgs[-1].role != "user":
        return f"{trusted}\n\n{context}", msgs
    last = msgs[-1]
    msgs[-1] = dataclasses.replace(last, text=f"{last.text}\n\n{CONTEXT_HEADER}\n{context}")
    return trusted, msgs


# ---- Anthropic breakpoints -----------------------------------------------------------------------------


def claude_system(system: str, *, enabled: bool | None = None) -> Any:
    """The `system` argument: one text block with a breakpoint (or the plain string when disabled)."""
    on = settings().prompt_cache_enabled if enabled is None else enabled
    if not system or not on:
        return system
    return [{"type": "text", "text": system, "cache_control": dict(CACHE_CONTROL)}]


M = TypeVar("M")


def claude_breakpoint(messages: list[M], *, enabled: bool | None = None) -> list[M]:
    """Adds a breakpoint on the last message before the new user turn (the end of the history)."""
    on = settings().prompt_cache_enabled if enabled is None else enabled
    if not on or len(messages) < 2:
        return messages
    out = list(messages)
    prev: Any = dict(out[-2])  # type: ignore[call-overload]
    content = prev.get("content")
    if isinstance(content, str):
        prev["content"] = [{"type": "text", "text": content, "cache_control": dict(CACHE_CONTROL)}]
    elif isinstance(content, list) and content:
        blocks = [dict(b) for b in content]
        blocks[-1]["cache_control"] = dict(CACHE_CONTROL)
        prev["content"] = blocks
    out[-2] = prev
    return out


@dataclass(frozen=True, slots=True)
class CacheUsage:
    read_tokens: int = 0
    write_tokens: int = 0

    def attributes(self) -> dict[str, str]:
        return {"cache_read_tokens": str(self.read_tokens), "cache_write_tokens": str(self.write_tokens)}


def claude_usage(input_tokens: int, cache_creation: int | None, cache_read: int | None) -> tuple[int, CacheUsage]:
    """Anthropic reports uncached input apart from cache writes and reads: total input and the split."""
    w, r = cache_creation or 0, cache_read or 0
    return input_tokens + w + r, CacheUsage(read_tokens=r, write_tokens=w)


def gemini_usage(prompt_tokens: int, cached_content_tokens: int | None) -> CacheUsage:
    """Gemini's prompt_token_count already includes the cached tokens."""
    return CacheUsage(read_tokens=min(cached_content_tokens or 0, prompt_tokens))


def priced(catalog: PriceCatalog, model: str, usage: UsageAmounts, cache: CacheUsage) -> float:
    """The call's cost with cached tokens at the cached price and cache writes at the write price."""
    return llm_cost(catalog.price(model), usage, cache.read_tokens, cache.write_tokens)


# ---- cache-aware routing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Warm:
    tier: str
    provider: str
    prefix_tokens: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class Choice:
    tier: str
    reason: str = ""
    stay_cost: float = 0.0
    switch_cost: float = 0.0


def turn_cost(catalog: PriceCatalog, model: str, prompt_tokens: int, output_tokens: int, cached: int,
              *, writes: int = 0) -> float:
    usage = UsageAmounts(input_tokens=prompt_tokens, output_tokens=output_tokens)
    return llm_cost(catalog.price(model), usage, min(cached, prompt_tokens), writes)


class WarmCaches:
    """Per session: which tier's prompt cache is warm, for how many prefix tokens, until when.

    In process, bounded (LRU): the router keeps a session's turns on the replica that served them only by
    chance, so a cold entry here means "pay the price the scorer expected", never a wrong answer."""

    def __init__(self, catalog: PriceCatalog, *, max_sessions: int = 50_000,
                 clock: Callable[[], float] = time.monotonic, enabled: bool | None = None) -> None:
        self.catalog = catalog
        self._max = max_sessions
        self._clock = clock
        self._enabled = enabled
        self._warm: OrderedDict[tuple[str, str], Warm] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return settings().cache_aware_routing_enabled if self._enabled is None else self._enabled

    def get(self, tenant: str, session: str) -> Warm | None:
        w = self._warm.get((tenant, session))
        if w is None or w.expires_at <= self._clock():
            return None
        return w

    def record(self, tenant: str, session: str, tier: str, provider: str, prefix_tokens: int) -> None:
        """After a successful call: this tier now holds the session's stable prefix (`stable_prefix_tokens`);
        under the provider's minimum nothing was cached."""
        if provider not in CACHE_TTL_S or prefix_tokens < MIN_CACHEABLE_TOKENS.get(provider, 1024):
            self._warm.pop((tenant, session), None)
            return
        key = (tenant, session)
        self._warm[key] = Warm(tier, provider, prefix_tokens, self._clock() + CACHE_TTL_S[provider])
        self._warm.move_to_end(key)
        while len(self._warm) > self._max:
            self._warm.popitem(last=False)

    def choose(self, tenant: str, session: str, chosen: str, prompt_tokens: int, output_tokens: int,
               *, max_tier: str | None = None) -> Choice:
        """Stay on the warm tier when it is at least as strong as `chosen`, allowed, and cheaper this turn."""
        if not self.enabled:
            return Choice(chosen)
        warm = self.get(tenant, session)
        if warm is None or warm.tier == chosen or warm.tier not in TIERS or chosen not in TIERS:
            return Choice(chosen)
        if TIERS.index(warm.tier) < TIERS.index(chosen):
            return Choice(chosen, "warm tier below the scorer's tier: quality first")
        if max_tier is not None and max_tier in TIERS and TIERS.index(warm.tier) > TIERS.index(max_tier):
            return Choice(chosen)
        try:
            warm_model = self.catalog.tier_model(warm.tier)
            chosen_model = self.catalog.tier_model(chosen)
            stay = turn_cost(self.catalog, warm_model, prompt_tokens, output_tokens, warm.prefix_tokens)
            # A switch pays the new tier cold, plus writing its own cache where writes are charged.
            price = self.catalog.price(chosen_model)
            writes = prompt_tokens if price.cache_write_per_mtok is not None else 0
            switch = turn_cost(self.catalog, chosen_model, prompt_tokens, output_tokens, 0, writes=writes)
        except PriceCatalogError:
            return Choice(chosen)
        if stay < switch:
            return Choice(warm.tier, f"cache-aware: stayed on warm {warm.tier} (${stay:.6f} < ${switch:.6f} "
                                     f"on cold {chosen})", stay, switch)
        return Choice(chosen, "", stay, switch)


def apply_choice(decision: Any, choice: Choice, provider_of: Callable[[Any], tuple[str, bool]],
                 catalog: PriceCatalog) -> Any:
    """The router's Decision moved to the chosen tier (a frozen dataclass: a changed copy)."""
    if choice.tier == decision.tier:
        return decision
    tier = cast(TierName, choice.tier)
    provider, offline = provider_of(tier)
    reasons = tuple(getattr(decision, "override_reasons", ())) + ((choice.reason,) if choice.reason else ())
    return dataclasses.replace(decision, tier=tier, model=catalog.tier_model(tier),
                               provider=provider, offline=offline, override_reasons=reasons)


def estimate_prompt_tokens(system: str, messages: Sequence[Message]) -> int:
    return math.ceil((len(system) + sum(len(m.text) + sum(len(c.arguments_json) for c in m.tool_calls)
                                        for m in messages)) / 4)


def stable_prefix_tokens(system: str, messages: Sequence[Message]) -> int:
    """Tokens a later turn can read from the cache: the system prompt and the history, not the new turn
    (which carries this turn's context and is sent differently next time)."""
    return estimate_prompt_tokens(system, messages[:-1])


# ---- the router's per-turn hooks -----------------------------------------------------------------------

_warm: WarmCaches | None = None


def warm_caches(catalog: PriceCatalog) -> WarmCaches:
    """The process-wide tracker (one per router process)."""
    global _warm
    if _warm is None or _warm.catalog is not catalog:
        _warm = WarmCaches(catalog, max_sessions=settings().cache_aware_max_sessions)
    return _warm


def split_router_system(system: str) -> tuple[str, list[str]]:
    """The router's system prompt (frugal.router.prompt.system_prompt) split into its stable, trusted part and
    the per-turn context: the untrusted blocks after UNTRUSTED_RULE (the rule itself is re-added by `layout`)."""
    marker = f"\n\n{UNTRUSTED_RULE}\n\n"
    if marker not in system:
        return system, []
    stable, context = system.split(marker, 1)
    return stable, ([context] if context.strip() else [])


def call_cost(catalog: PriceCatalog, model: str, usage: UsageAmounts, done: Any) -> float:
    """A provider call's cost: cache reads (usage.cached_input_tokens, the one carrier) at the cached price and
    cache writes (`done`: its StreamDone, if any) at the write price."""
    return priced(catalog, model, usage, CacheUsage(usage.cached_input_tokens, getattr(done, "cache_write_tokens", 0)))


def call_attributes(done: Any) -> dict[str, str]:
    if done is None:
        return {}
    return CacheUsage(done.usage.cached_input_tokens, done.cache_write_tokens).attributes()


class TurnLevers:
    """Speech sizing, cache layout and cache-aware routing for one Respond turn (three small hooks in the
    router's Respond: `begin` after the decision, `shape` once the prompt is built, `speak` around the text
    stream, `finished` after a successful call)."""

    def __init__(self, catalog: PriceCatalog, tenant: str, session: str, question: str) -> None:
        from frugal.router import speech_style  # the style module stands alone; imported here to keep one hook

        self._style_mod = speech_style
        self.catalog = catalog
        self.tenant = tenant
        self.session = session
        self.question = question
        self.style: Any = None
        self.prefix_tokens = 0

    @classmethod
    def begin(cls, catalog: PriceCatalog, decision: Any, *, tenant: str, session: str, question: str,
              prompt_chars: int, max_out: int, provider_of: Callable[[Any], tuple[str, bool]],
              max_tier: str | None = None, pinned: bool = False) -> tuple[TurnLevers, Any]:
        """A tenant's pinned tier is never moved."""
        levers = cls(catalog, tenant, session, question)
        if pinned:
            return levers, decision
        choice = warm_caches(catalog).choose(tenant, session, decision.tier, math.ceil(prompt_chars / 4),
                                             max(max_out // 2, 1), max_tier=max_tier)
        return levers, apply_choice(decision, choice, provider_of, catalog)

    def shape(self, system: str, messages: Sequence[Message], tier: str, max_out: int,
              *, offline: bool = False, has_tools: bool = False) -> tuple[str, list[Message], int]:
        """Speech style (instructions and cap; an offline stand-in cannot follow the instruction, so its
        answer is not capped either), then the cache layout. With tools the cap is not applied: a tool call's
        arguments are output tokens, and a cut call is a broken call."""
        self.style = None if offline else self._style_mod.style_for(tier, self.question, max_out)
        if self.style is not None and has_tools:
            self.style = dataclasses.replace(self.style, max_output_tokens=max_out)
        stable, context = split_router_system(system)
        stable = self._style_mod.with_instructions(stable, self.style)
        out_system, out_messages = layout(stable, context, messages)
        self.prefix_tokens = stable_prefix_tokens(out_system, out_messages)
        return out_system, out_messages, self.style.max_output_tokens if self.style else max_out

    async def speak(self, items: AsyncIterator[str | ToolCallOut], call: Any) -> AsyncIterator[str | ToolCallOut]:
        """Text through the sentence guard (when sizing is on); a tool call is never held or cut: the text held
        before it is released and the call passes as it came. `call.done` holds the StreamDone."""
        if self.style is None:
            async for item in items:
                yield item
            return
        guard = self._style_mod.SentenceGuard.for_cap(self.style.max_output_tokens)
        async for item in items:
            if isinstance(item, ToolCallOut):
                held = guard.finish("")
                if held:
                    yield held
                yield item
                continue
            out = guard.push(item)
            if out:
                yield out
        done = getattr(call, "done", None)
        tail = guard.finish(getattr(done, "finish_reason", ""))
        if tail:
            yield tail

    def finished(self, tier: str, provider: str) -> None:
        if settings().prompt_cache_enabled:
            warm_caches(self.catalog).record(self.tenant, self.session, tier, provider, self.prefix_tokens)
