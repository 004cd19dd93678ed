"""The one cost recorder: every paid provider call of every service goes through it.

Rules it enforces so services cannot get them wrong:
- **One event per call attempt, its own id.** An attempt's id is derived from the service, the tenant, the
  caller's key (turn id, track and frame, purpose and batch...) and a random nonce drawn when the attempt
  is opened and stored in the event (`attributes.attempt_nonce`). Re-sending that event (producer retry,
  spool replay) keeps the id, so billing deduplicates it; a new attempt, even with the same turn id, draws a
  new nonce and can never collide. Callers whose provider gives each request its own id may pass it as the
  nonce instead.
- **Usage seen before an interruption is billed.** `CallAttempt.report()` keeps the latest usage the
  provider reported (streams report input tokens first); the attempt is recorded when its `async with`
  block exits, whatever the outcome (success, error, timeout, cancellation), with that usage. A call that
  reported nothing is billed on the caller's estimate of what it sent (`estimate=`), labelled
  `usage.estimated`: a call that reached the provider is never booked at 0 input tokens.
- **One offline rule.** An offline stand-in (no API key) is booked at the list price of the model it
  stands in for (`priced_as`) on estimated usage, `offline=true`, `usage.estimated=true`,
  `attributes.priced_as`; billing keeps offline events out of budgets.
- **Cached input tokens** are priced at the catalog's cached price, and prompt-cache writes (the
  `cache_write_tokens` attribute) at its cache-write price (frugal.common.pricing, the rule the session
  report uses too).
- **Zero-cost records** (work a lever saved) are built here too (`build_free`): one place for every event.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from frugal.common.cost_events import (
    CostEvent,
    CostKind,
    CostRecordingUnavailable,
    make_event_id,
)
from frugal.common.metrics import AI_COST_TOTAL
from frugal.common.pricing import CACHE_WRITE_ATTR, PriceCatalog, PriceCatalogError, TierName
from frugal.common.usage import UsageAmounts

log = logging.getLogger(__name__)

__all__ = ["CallAttempt", "CostRecorder", "CostRecordingUnavailable"]


def _int(raw: str | None) -> int:
    try:
        return max(int(raw or 0), 0)
    except ValueError:
        return 0


def _outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "error"


class CallAttempt:
    """One provider call attempt. Use as `async with recorder.attempt(...) as a:`; call `a.report(usage)`
    whenever the provider reports usage (cumulative: the latest report wins)."""

    def __init__(
        self,
        recorder: CostRecorder,
        *,
        tenant_id: str,
        kind: CostKind,
        provider: str,
        model: str,
        key: Sequence[str],
        session_id: str | None,
        request_id: str | None,
        tier: TierName | None,
        offline: bool,
        priced_as: str | None,
        estimate: UsageAmounts | None,
        covered_seconds: float | None,
        frames_considered: int | None,
        attributes: Mapping[str, str] | None,
        nonce: str | None,
        occurred_at: datetime | None = None,
    ) -> None:
        self._recorder = recorder
        # When the call started: fixed with the attempt, so a re-sent event is byte-for-byte the same.
        self.occurred_at = occurred_at or datetime.now(UTC)
        self.tenant_id = tenant_id
        self.kind = kind
        self.provider = provider
        self.model = model
        self.session_id = session_id
        self.request_id = request_id
        self.tier = tier
        self.offline = offline
        self.priced_as = priced_as
        self.estimate = estimate
        self.covered_seconds = covered_seconds
        self.frames_considered = frames_considered
        self.attributes: dict[str, str] = dict(attributes or {})
        self.nonce = nonce or uuid.uuid4().hex
        self.event_id = make_event_id(recorder.service, tenant_id, kind.value, *key, self.nonce)
        self.usage: UsageAmounts | None = None
        self.outcome: str | None = None
        self.event: CostEvent | None = None
        self._lock = asyncio.Lock()

    def report(self, usage: UsageAmounts) -> None:
        """The provider's latest (cumulative) usage report; partial reports are welcome (input tokens first)."""
        self.usage = usage

    def set_estimate(self, usage: UsageAmounts) -> None:
        """What the call consumed by our own count, used only if the provider reports nothing."""
        self.estimate = usage

    def set_outcome(self, outcome: str) -> None:
        self.outcome = outcome

    async def __aenter__(self) -> CallAttempt:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome = self.outcome or _outcome_of(exc)
        # Shielded: a cancelled caller (barge-in, deadline) still gets its paid call recorded.
        await asyncio.shield(self.finish(outcome))

    async def finish(self, outcome: str | None = None) -> CostEvent:
        """Records the attempt (once; later calls return the same event)."""
        async with self._lock:
            if self.event is not None:
                return self.event
            self.event = self._recorder.build_event(self, outcome or self.outcome or "ok")
            await self._recorder.emit(self.event)
            return self.event


class CostSink(Protocol):
    """Where events go: a CostEventProducer, or a wrapper of one (the router bounds its wait)."""

    def check_can_spend(self) -> None: ...

    async def emit(self, event: CostEvent) -> bool: ...


class CostRecorder:
    """Builds, prices and emits cost events for one service (see the module docstring for the rules)."""

    def __init__(self, producer: CostSink | None, catalog: PriceCatalog, *, service: str) -> None:
        self.producer = producer
        self.catalog = catalog
        self.service = service

    def check_can_spend(self) -> None:
        """Call before starting a paid call; raises CostRecordingUnavailable (map it to UNAVAILABLE)."""
        if self.producer is not None:
            self.producer.check_can_spend()

    def why_not_spend(self) -> str | None:
        """check_can_spend as a value: why a paid call must not start now, or None. For callers that fall back
        (an offline description, lexical-only search, silence) rather than fail."""
        try:
            self.check_can_spend()
        except CostRecordingUnavailable as err:
            return str(err)
        return None

    def attempt(
        self,
        *,
        tenant_id: str,
        kind: CostKind,
        provider: str,
        model: str,
        key: Sequence[str] = (),
        session_id: str | None = None,
        request_id: str | None = None,
        tier: TierName | None = None,
        offline: bool = False,
        priced_as: str | None = None,
        estimate: UsageAmounts | None = None,
        covered_seconds: float | None = None,
        frames_considered: int | None = None,
        attributes: Mapping[str, str] | None = None,
        nonce: str | None = None,
        occurred_at: datetime | None = None,
    ) -> CallAttempt:
        """`nonce`: the attempt's own idempotency key, when the caller persists one (e.g. a job that can be
        re-run after a crash, or the provider's request id); default a fresh random one."""
        return CallAttempt(
            self, tenant_id=tenant_id, kind=kind, provider=provider, model=model, key=key, session_id=session_id,
            request_id=request_id, tier=tier, offline=offline, priced_as=priced_as, estimate=estimate,
            covered_seconds=covered_seconds, frames_considered=frames_considered, attributes=attributes,
            nonce=nonce, occurred_at=occurred_at,
        )

    async def record(self, *, usage: UsageAmounts, outcome: str = "ok", **attempt_args: Any) -> CostEvent:
        """A call whose usage is known at once: open an attempt, report, finish (emitted)."""
        att = self.attempt(**attempt_args)
        att.report(usage)
        return await att.finish(outcome)

    def build(self, *, usage: UsageAmounts, outcome: str = "ok", **attempt_args: Any) -> CostEvent:
        """The same event as `record`, built synchronously (for callbacks) and NOT emitted: the caller must
        pass it to `emit` (e.g. from a queue worker)."""
        att = self.attempt(**attempt_args)
        att.report(usage)
        att.event = self.build_event(att, outcome)
        return att.event

    def build_free(self, *, saved_by: str, **attempt_args: Any) -> CostEvent:
        """A zero-cost record of work a lever saved (a TTS cache hit, a gated STT stream's unsent audio): no
        usage, no price, its own event id like every attempt, `attributes.saved_by`; the attributes say what
        the naive agent would have paid for (e.g. `served_characters`, `stream_seconds`). Built, NOT emitted
        (like `build`)."""
        att = self.attempt(**attempt_args)
        att.report(UsageAmounts(estimated=att.offline))
        att.attributes["saved_by"] = saved_by
        att.event = self.build_event(att, "ok")
        return att.event

    # ------------------------------------------------------------------------------------------ rules

    def settle_usage(self, att: CallAttempt) -> UsageAmounts:
        """Reported usage, else the estimate (labelled estimated), else one request with nothing known."""
        usage = att.usage
        est = att.estimate
        if usage is None:
            usage = (est.model_copy(update={"estimated": True}) if est is not None
                     else UsageAmounts(requests=1, estimated=True))
        elif est is not None and usage.input_tokens == 0 and usage.output_tokens > 0 and est.input_tokens > 0:
            # The provider reported output but no input (some streams report input only at the end): the
            # prompt was sent all the same, so bill our count of it, labelled as an estimate.
            usage = usage.model_copy(update={"input_tokens": est.input_tokens, "cached_input_tokens": 0,
                                             "estimated": True})
        if att.offline and not usage.estimated:
            usage = usage.model_copy(update={"estimated": True})
        return usage

    def price(self, att: CallAttempt, usage: UsageAmounts) -> tuple[float, str]:
        """(cost, model priced): online at the model's price; offline at the list price of `priced_as`."""
        priced_as = (att.priced_as or att.model) if att.offline else att.model
        # Prompt-cache writes (an LLM attempt's `cache_write_tokens` attribute) at the catalog's write price.
        writes = _int(att.attributes.get(CACHE_WRITE_ATTR)) if att.kind is CostKind.LLM else 0
        try:
            return self.catalog.cost(priced_as, usage, writes), priced_as
        except PriceCatalogError:
            log.error("no price for %s in catalog %s; cost recorded as 0", priced_as, self.catalog.version)
            return 0.0, priced_as

    def build_event(self, att: CallAttempt, outcome: str) -> CostEvent:
        usage = self.settle_usage(att)
        cost, priced_as = self.price(att, usage)
        attributes = {**att.attributes, "outcome": outcome, "attempt_nonce": att.nonce}
        if att.offline:
            attributes["priced_as"] = priced_as
        event = CostEvent(
            event_id=att.event_id, tenant_id=att.tenant_id, session_id=att.session_id, request_id=att.request_id,
            service=self.service, kind=att.kind, provider=att.provider, model=att.model, tier=att.tier,
            usage=usage, cost_usd=cost, offline=att.offline, occurred_at=att.occurred_at,
            covered_seconds=att.covered_seconds,
            frames_considered=att.frames_considered, attributes=attributes,
        )
        AI_COST_TOTAL.labels(service=self.service, kind=att.kind.value, provider=att.provider, model=att.model,
                             tier=att.tier or "", offline=str(att.offline).lower()).inc(cost)
        return event

    async def emit(self, event: CostEvent) -> None:
        if self.producer is None:
            return
        try:
            await self.producer.emit(event)
        except Exception:
            # emit spools on any Redis failure; reaching here is a bug or a closed producer: say so loudly.
            log.exception("cost event %s could not be recorded", event.event_id)
