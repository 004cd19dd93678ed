"""Bulk decoding of cost events for the ledger consumer: msgspec first, the CostEvent model when in doubt.

The ledger reads tens of thousands of events a second; validating each through the pydantic model
(frugal.common.cost_events.CostEvent) cost ~30 us of the ~50 us an event may take in all. `decode_event` uses
a strict msgspec schema that mirrors CostEvent field by field (C-speed decoding and range checks) and
accepts a document only when the model would accept it with the same values: anything the strict schema
refuses (another JSON type that the model's lax mode would coerce, a datetime that is not RFC 3339, a missing
`occurred_at`, an out-of-range number, a bad tenant id...) is decided by CostEvent itself, which gives the
model's error message or its coerced values. So the fast path never accepts what the model refuses, and the
two cannot disagree on the values (services/billing/tests/test_billing_wire.py checks both on one corpus,
and that the schema has exactly the model's fields).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from frugal.common.cost_events import SCHEMA_VERSION, CostEvent, CostKind
from frugal.common.tenancy import TENANT_ID_RE

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


class WireUsage(msgspec.Struct, frozen=True):
    """frugal.common.usage.UsageAmounts: same fields, defaults and bounds."""

    input_tokens: NonNegInt = 0
    cached_input_tokens: NonNegInt = 0
    output_tokens: NonNegInt = 0
    audio_seconds: NonNegFloat = 0.0
    characters: NonNegInt = 0
    images: NonNegInt = 0
    requests: NonNegInt = 0
    estimated: bool = False


class WireEvent(msgspec.Struct, frozen=True):
    """frugal.common.cost_events.CostEvent: same fields, defaults and bounds (occurred_at required here: the
    model's default is "now", which the fast path leaves to the model; the model's time comes with it)."""

    event_id: Annotated[str, msgspec.Meta(min_length=8, max_length=128)]
    tenant_id: str
    service: str
    kind: CostKind
    provider: str
    model: str
    usage: WireUsage
    cost_usd: NonNegFloat
    # As written; parsed by decode_event, not by msgspec: msgspec rounds fractions beyond microseconds where the
    # model truncates them.
    occurred_at: str
    schema_version: int = SCHEMA_VERSION
    session_id: str | None = None
    request_id: str | None = None
    tier: Literal["lite", "standard", "premium"] | None = None
    offline: bool = False
    covered_seconds: NonNegFloat | None = None
    frames_considered: NonNegInt | None = None
    attributes: dict[str, str] = {}


_DECODER = msgspec.json.Decoder(WireEvent)
# What CostEvent.model_dump_json writes (RFC 3339, at most microseconds, an explicit offset): the one format the
# fast path parses itself; any other spelling the model may still accept is left to it.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
# Tenant ids already checked against the model's rule: a bounded memo (a batch has at most a few thousand).
_VALID_TENANTS: set[str] = set()
_MAX_MEMO = 100_000


def _tenant_ok(tenant_id: str) -> bool:
    if tenant_id in _VALID_TENANTS:
        return True
    if TENANT_ID_RE.fullmatch(tenant_id) is None or "__" in tenant_id:
        return False
    if len(_VALID_TENANTS) >= _MAX_MEMO:
        _VALID_TENANTS.clear()
    _VALID_TENANTS.add(tenant_id)
    return True


def _fast(raw: bytes | str) -> tuple[WireEvent, datetime] | None:
    """The strict schema's event and its time, or None when the model must decide."""
    try:
        ev = _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if (ev.usage.cached_input_tokens > ev.usage.input_tokens or not _tenant_ok(ev.tenant_id)
            or _RFC3339.fullmatch(ev.occurred_at) is None):
        return None
    try:
        at = datetime.fromisoformat(ev.occurred_at)
    except ValueError:
        return None
    return ev, at.astimezone(UTC)


def from_model(event: CostEvent) -> tuple[WireEvent, datetime]:
    """The model's (validated, coerced) event in the wire form, and its time."""
    at = event.occurred_at.astimezone(UTC)
    doc: dict[str, Any] = event.model_dump(mode="python")
    doc["occurred_at"] = at.isoformat()
    return msgspec.convert(doc, WireEvent, strict=False), at


def decode_event(raw: bytes | str) -> tuple[WireEvent, datetime]:
    """One stream entry's JSON -> its event and time (UTC); raises what CostEvent.model_validate_json raises
    (pydantic.ValidationError) when the model refuses the document."""
    fast = _fast(raw)
    if fast is not None:
        return fast
    return from_model(CostEvent.model_validate_json(raw))
