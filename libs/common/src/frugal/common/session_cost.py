"""Whole-session cost at list prices, every kind, against the naive baseline of the same session.

One offline rule for every kind: a row's list price is the catalog price of the model it was (or, offline,
stood in for) on the usage it reports; rows of offline stand-ins have estimated usage, so their figures are
labelled `estimated`. Nothing here reads `cost_usd` as truth: the same rule prices online and offline rows,
so a session replayed offline shows where the money would go.

Conventions the rows carry (attributes are strings, as on `CostEvent.attributes`):
- llm: `usage.input_tokens` counts every input token; `cache_read_tokens` / `cache_write_tokens` say how many
  of them were read from / written to the provider's prompt cache (priced with the catalog's cached prices).
- stt: `usage.audio_seconds` is what the provider billed (audio received); `stream_seconds` is the audio the
  gateway had for the session, gated or not (what a naive always-streaming client would have sent).
- tts: `usage.characters` is what the provider synthesised; `tts_cache=hit` with `served_characters` marks
  an utterance served from the audio cache (nothing synthesised); `utterance=answer` marks a model answer, and
  `answer_id` the answer a row belongs to (the gateway sends an answer to TTS sentence by sentence: its rows are
  one answer for the naive rule); `chat_only_characters` is a long answer's rest that went to the room chat
  unspoken (a naive agent speaks it).
- vision: `covered_seconds` on the row (seconds of screen share the call stands for).
- offline rows name the model they stand in for: `priced_as` (router) or `list_price_model` (gateway).

The naive baseline of a session: every LLM turn on the baseline (premium) model with no prompt cache and an
answer of at least `NaiveRule.answer_characters`; STT streamed for every second of the session; every
utterance synthesised (cache hits included) and every answer at least that long; one vision call per second
of screen share; embedding and rerank as they were (nothing optimises them here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from frugal.common.cost_events import CostEvent
from frugal.common.pricing import CACHE_WRITE_ATTR, ModelPrice, PriceCatalog, PriceCatalogError
from frugal.common.usage import UsageAmounts

KINDS: tuple[str, ...] = ("stt", "tts", "llm", "vision", "embedding", "rerank")
OFFLINE_RULE = "list price of the model stood in for, on estimated usage (offline rows are labelled estimated)"


@dataclass(frozen=True, slots=True)
class NaiveRule:
    """What the naive agent does. `answer_characters`: a spoken answer without speech sizing (the demo
    session's eight unsized answers were about 400 characters each); 4 characters per token."""

    answer_characters: int = 400
    chars_per_token: float = 4.0

    def __post_init__(self) -> None:
        if self.answer_characters < 0 or self.chars_per_token <= 0:
            raise ValueError("NaiveRule: answer_characters must be >= 0 and chars_per_token > 0")


@dataclass(frozen=True, slots=True)
class CostRow:
    """One ledger row or cost event, reduced to what pricing needs."""

    kind: str
    model: str
    usage: UsageAmounts
    offline: bool = False
    tier: str | None = None
    covered_seconds: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    session_id: str | None = None

    @classmethod
    def from_event(cls, event: CostEvent) -> CostRow:
        return cls(kind=event.kind.value, model=event.model, usage=event.usage, offline=event.offline,
                   tier=event.tier, covered_seconds=event.covered_seconds, attributes=dict(event.attributes),
                   session_id=event.session_id)

    def int_attr(self, name: str) -> int:
        try:
            return max(int(float(self.attributes.get(name, "0"))), 0)
        except ValueError:
            return 0

    def float_attr(self, name: str) -> float | None:
        raw = self.attributes.get(name)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            return None
        return value if math.isfinite(value) and value >= 0 else None

    @property
    def priced_model(self) -> str:
        """The model whose list price applies: the one stood in for when offline."""
        if self.offline:
            return self.attributes.get("priced_as") or self.attributes.get("list_price_model") or self.model
        return self.model


def llm_cost(price: ModelPrice, usage: UsageAmounts, cache_read: int = 0, cache_write: int = 0) -> float:
    """Input tokens split into uncached, cache reads and cache writes, each at its own price.

    Cache reads are `usage.cached_input_tokens` (the one carrier); `cache_read` (an event's
    `cache_read_tokens` attribute) names the same tokens, so the larger of the two counts, never their sum."""
    cache_read = min(max(cache_read, usage.cached_input_tokens), usage.input_tokens)
    return price.cost(usage.model_copy(update={"cached_input_tokens": cache_read}), cache_write)


def list_price(row: CostRow, catalog: PriceCatalog) -> float:
    """The row at the catalog's list price (0 when its model has no price)."""
    try:
        price = catalog.price(row.priced_model)
    except PriceCatalogError:
        return 0.0
    if row.kind == "llm":
        return llm_cost(price, row.usage, row.int_attr("cache_read_tokens"), row.int_attr(CACHE_WRITE_ATTR))
    return price.cost(row.usage)


def _stt_model(rows: Iterable[CostRow], catalog: PriceCatalog) -> str | None:
    for r in rows:
        if r.kind == "stt" and r.priced_model in catalog.models:
            return r.priced_model
    stt = [m for m, p in catalog.models.items() if p.kind == "stt" and p.per_audio_second > 0]
    return stt[0] if stt else None


def naive_tts_characters(row: CostRow) -> int:
    """What the naive agent synthesises for this TTS row: what was synthesised, what the audio cache served in
    its place, and what went to the room chat only (`chat_only_characters`, a long answer's unspoken rest)."""
    chars = row.usage.characters
    if row.attributes.get("tts_cache") == "hit":
        chars = max(chars, row.int_attr("served_characters"))
    return chars + row.int_attr("chat_only_characters")


def naive_price(row: CostRow, catalog: PriceCatalog, rule: NaiveRule, *, tts_characters: int | None = None) -> float:
    """What this row's work costs done the naive way (STT is handled per session, see session_cost).
    `tts_characters`: for a TTS row that stands for a whole answer, the answer's naive characters."""
    try:
        price = catalog.price(row.priced_model)
    except PriceCatalogError:
        price = None
    if row.kind == "llm":
        answer_tokens = math.ceil(rule.answer_characters / rule.chars_per_token)
        usage = row.usage.model_copy(update={"output_tokens": max(row.usage.output_tokens, answer_tokens)})
        return catalog.llm_baseline_cost(usage)
    if price is None:
        return 0.0
    if row.kind == "tts":
        chars = naive_tts_characters(row) if tts_characters is None else tts_characters
        if row.attributes.get("utterance") == "answer":
            chars = max(chars, rule.answer_characters)
        return price.cost(row.usage.model_copy(update={"characters": chars}))
    if row.kind == "vision":
        per_call = price.cost(row.usage)
        covered = row.covered_seconds
        calls = max(covered * catalog.baseline_vision_fps, 1.0) if covered is not None else 1.0
        return per_call * calls
    return price.cost(row.usage)


@dataclass
class KindCost:
    kind: str
    cost_usd: float = 0.0
    naive_usd: float = 0.0
    events: int = 0
    estimated: bool = False
    # What was billed, by unit: audio_seconds, characters, input/cached/output tokens, images, requests.
    units: dict[str, float] = field(default_factory=dict)

    @property
    def savings(self) -> float:
        return savings(self.cost_usd, self.naive_usd)

    def add_units(self, **values: float) -> None:
        for k, v in values.items():
            if v:
                self.units[k] = self.units.get(k, 0.0) + v


@dataclass
class SessionCost:
    kinds: dict[str, KindCost]
    session_seconds: float
    rule: NaiveRule
    offline_rule: str = OFFLINE_RULE

    @property
    def minutes(self) -> float:
        return self.session_seconds / 60.0

    @property
    def cost_usd(self) -> float:
        return sum(k.cost_usd for k in self.kinds.values())

    @property
    def naive_usd(self) -> float:
        return sum(k.naive_usd for k in self.kinds.values())

    @property
    def savings(self) -> float:
        return savings(self.cost_usd, self.naive_usd)

    @property
    def ratio(self) -> float:
        """actual / naive (the target is <= 0.25)."""
        return self.cost_usd / self.naive_usd if self.naive_usd > 0 else 0.0

    def per_minute(self, usd: float) -> float:
        return usd / self.minutes if self.minutes > 0 else 0.0

    @property
    def cost_per_minute(self) -> float:
        return self.per_minute(self.cost_usd)

    @property
    def naive_per_minute(self) -> float:
        return self.per_minute(self.naive_usd)

    @property
    def estimated(self) -> bool:
        return any(k.estimated for k in self.kinds.values())


def savings(cost: float, baseline: float) -> float:
    """1 - actual/baseline; 0 when the baseline is 0."""
    return 1.0 - cost / baseline if baseline > 0 else 0.0


def session_cost(
    rows: Iterable[CostRow],
    catalog: PriceCatalog,
    *,
    session_seconds: float | None = None,
    screen_share_seconds: float | None = None,
    rule: NaiveRule | None = None,
) -> SessionCost:
    """Per-kind list-price cost and naive baseline of one session (or any set of rows).

    `session_seconds`: the session's length; without it, the audio the STT rows say the gateway had
    (`stream_seconds`, else billed seconds). `screen_share_seconds`: when given, the naive vision cost is one
    call per second of it (priced as the session's mean vision call) instead of the rows' covered seconds.
    """
    rule = rule or NaiveRule()
    rows = list(rows)
    kinds = {k: KindCost(k) for k in KINDS}
    # Per session: the audio the gateway had (`stream_seconds` records), else what was billed.
    streamed: dict[str, float] = {}
    billed: dict[str, float] = {}
    vision_calls: list[float] = []
    answers: dict[tuple[str, str], tuple[CostRow, int]] = {}
    for r in rows:
        acc = kinds.setdefault(r.kind, KindCost(r.kind))
        acc.events += 1
        acc.estimated = acc.estimated or r.offline or r.usage.estimated
        acc.cost_usd += list_price(r, catalog)
        u = r.usage
        read = min(max(r.int_attr("cache_read_tokens"), u.cached_input_tokens), u.input_tokens)
        write = min(r.int_attr("cache_write_tokens"), u.input_tokens - read)
        acc.add_units(audio_seconds=u.audio_seconds, characters=u.characters, images=u.images,
                      requests=u.requests, input_tokens=u.input_tokens - read - write, cached_input_tokens=read,
                      cache_write_tokens=write, output_tokens=u.output_tokens)
        if r.kind == "tts" and r.attributes.get("tts_cache") == "hit":
            acc.add_units(cache_hit_characters=r.int_attr("served_characters"))
        if r.kind == "stt":
            seen = r.float_attr("stream_seconds")
            key = r.session_id or ""
            if seen is not None:
                streamed[key] = streamed.get(key, 0.0) + seen
            else:
                billed[key] = billed.get(key, 0.0) + u.audio_seconds
            continue
        if r.kind == "vision":
            vision_calls.append(list_price(r, catalog))
            if screen_share_seconds is not None:
                continue
        answer_id = r.attributes.get("answer_id") if r.attributes.get("utterance") == "answer" else None
        if r.kind == "tts" and answer_id:
            # One answer is several TTS requests (one per sentence): the naive answer length applies to the answer.
            answer_key = (r.session_id or "", answer_id)
            first, chars = answers.get(answer_key, (r, 0))
            answers[answer_key] = (first, chars + naive_tts_characters(r))
            continue
        acc.naive_usd += naive_price(r, catalog, rule)
    for first, chars in answers.values():
        kinds["tts"].naive_usd += naive_price(first, catalog, rule, tts_characters=chars)
    stream_seconds = sum(streamed.get(k, billed.get(k, 0.0)) for k in set(streamed) | set(billed))
    seconds = session_seconds if session_seconds is not None else stream_seconds
    stt_model = _stt_model(rows, catalog)
    if stt_model is not None:
        kinds["stt"].naive_usd = catalog.price(stt_model).cost(UsageAmounts(audio_seconds=max(seconds, 0.0)))
    if screen_share_seconds is not None:
        per_call = sum(vision_calls) / len(vision_calls) if vision_calls else _cheapest_vision_call(catalog)
        kinds["vision"].naive_usd = per_call * screen_share_seconds * catalog.baseline_vision_fps
    return SessionCost(kinds=kinds, session_seconds=seconds, rule=rule)


# One screenshot as a vision call on the lite tier when the session made none: 258 input tokens (Gemini's
# figure for an image up to 384 px a side... and per 768 px tile beyond) and a one-line description.
_VISION_INPUT_TOKENS = 258
_VISION_OUTPUT_TOKENS = 40


def _cheapest_vision_call(catalog: PriceCatalog) -> float:
    return catalog.cost(catalog.tier_model("lite"), UsageAmounts(input_tokens=_VISION_INPUT_TOKENS,
                                                                 output_tokens=_VISION_OUTPUT_TOKENS))


def format_report(cost: SessionCost, title: str = "") -> str:
    """A plain-text table: kind, billed units, list-price cost, naive cost, savings; totals per minute."""
    lines = [title] if title else []
    lines.append(f"{'kind':<10}{'cost $':>10}{'naive $':>10}{'savings':>9}  units")
    for k in KINDS:
        acc = cost.kinds.get(k)
        if acc is None or (acc.events == 0 and acc.naive_usd == 0):
            continue
        units = ", ".join(f"{n}={v:.1f}" if isinstance(v, float) and not v.is_integer() else f"{n}={int(v)}"
                          for n, v in sorted(acc.units.items()))
        label = f"{k}{'*' if acc.estimated else ''}"
        lines.append(f"{label:<10}{acc.cost_usd:>10.4f}{acc.naive_usd:>10.4f}{acc.savings:>9.1%}  {units}")
    lines.append(f"{'total':<10}{cost.cost_usd:>10.4f}{cost.naive_usd:>10.4f}{cost.savings:>9.1%}  "
                 f"{cost.minutes:.1f} min: ${cost.cost_per_minute:.4f}/min vs naive ${cost.naive_per_minute:.4f}/min")
    if cost.estimated:
        lines.append(f"* estimated: {cost.offline_rule}")
    return "\n".join(lines)


# ---- metrics (default registry; each service serves it on its metrics port) ----------------------------

SESSION_LIST_PRICE = Counter("session_list_price_usd_total",
                             "Whole-session cost at list prices (offline rows estimated), by kind.", ["kind"])
SESSION_NAIVE = Counter("session_naive_usd_total", "The same sessions' naive baseline, by kind.", ["kind"])
SESSION_MINUTES = Counter("session_minutes_total", "Minutes of sessions accounted.")
SESSION_COST_PER_MINUTE = Histogram("session_cost_usd_per_minute", "List-price cost per session-minute.",
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5))


def record_metrics(cost: SessionCost) -> None:
    """Adds a finished session to the metrics."""
    for k, acc in cost.kinds.items():
        if acc.cost_usd:
            SESSION_LIST_PRICE.labels(kind=k).inc(acc.cost_usd)
        if acc.naive_usd:
            SESSION_NAIVE.labels(kind=k).inc(acc.naive_usd)
    if cost.minutes > 0:
        SESSION_MINUTES.inc(cost.minutes)
        SESSION_COST_PER_MINUTE.observe(cost.cost_per_minute)


def format_usage_session_cost(msg: Any) -> list[str]:
    """Lines for a report from GetUsage's `session_cost` (a billing_pb2.SessionCost)."""
    if not msg.kinds:
        return []
    lines = [f"whole session at list prices ({msg.sessions} session(s), {msg.session_minutes:.1f} min; "
             f"naive = all-premium LLM without prompt caching, STT streamed throughout, every answer synthesised "
             f"at >= {msg.naive_answer_characters} chars, 1 vision call/s of screen share):",
             f"  {'kind':<10} {'events':>6} {'cost USD':>12} {'naive USD':>12} {'savings':>8}"]
    for k in msg.kinds:
        if k.events == 0 and k.naive_usd == 0:
            continue
        lines.append(f"  {k.kind + ('*' if k.estimated else ''):<10} {k.events:>6} {k.cost_usd:>12.6f} "
                     f"{k.naive_usd:>12.6f} {k.savings:>8.1%}")
    lines.append(f"  {'TOTAL':<10} {'':>6} {msg.cost_usd:>12.6f} {msg.naive_usd:>12.6f} {msg.savings:>8.1%}  "
                 f"${msg.cost_per_minute_usd:.4f}/min vs naive ${msg.naive_per_minute_usd:.4f}/min")
    if msg.estimated:
        lines.append(f"  * estimated: {msg.offline_rule}")
    return lines
