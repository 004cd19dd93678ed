"""The ledger's fast event decoder (frugal.billing.wire) against the CostEvent model on one corpus: the fast
path accepts only what the model accepts, with the model's values; whatever else reaches the model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from pydantic import ValidationError

from frugal.billing.wire import WireEvent, WireUsage, _fast, decode_event, from_model
from frugal.common.cost_events import CostEvent, CostKind, baseline_cost, baseline_cost_of
from frugal.common.pricing import default_catalog
from frugal.common.usage import UsageAmounts

BASE: dict[str, Any] = {
    "schema_version": 1, "event_id": "02926e74-c795-5111-8718-7510dcf898c6", "tenant_id": "org_a1",
    "session_id": "s0", "request_id": "r0", "service": "router", "kind": "llm", "provider": "google",
    "model": "gemini-2.5-flash", "tier": "standard",
    "usage": {"input_tokens": 3328, "cached_input_tokens": 1000, "output_tokens": 84, "audio_seconds": 0.0,
              "characters": 0, "images": 0, "requests": 0, "estimated": False},
    "cost_usd": 0.0012084, "offline": False, "occurred_at": "2026-12-01T19:39:19.209674Z",
    "covered_seconds": None, "frames_considered": None, "attributes": {},
}


def doc(**changes: Any) -> str:
    d = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        target, name = (d["usage"], key[2:]) if key.startswith("u_") else (d, key)
        if value is ...:
            target.pop(name)
        else:
            target[name] = value
    return json.dumps(d)


CORPUS: dict[str, str] = {
    "as produced": doc(), "offset": doc(occurred_at="2026-12-01T21:39:19+02:00"),
    "nanoseconds": doc(occurred_at="2026-12-01T19:39:19.123456789Z"),
    "naive": doc(occurred_at="2026-12-01T19:39:19"), "space": doc(occurred_at="2026-12-01 19:39:19Z"),
    "unix time": doc(occurred_at=1764618000), "leap second": doc(occurred_at="2026-12-31T23:59:60Z"),
    "lower-case t": doc(occurred_at="2026-12-01t19:39:19z"), "date only": doc(occurred_at="2026-12-01"),
    "24:00": doc(occurred_at="2026-12-01T24:00:00Z"), "feb 30": doc(occurred_at="2026-02-30T00:00:00Z"),
    "offset 23:59": doc(occurred_at="2026-12-01T19:39:19+23:59"),
    "year 0": doc(occurred_at="0000-01-01T00:00:00Z"), "no occurred_at": doc(occurred_at=...),
    "int as float": doc(u_input_tokens=5.0), "int as text": doc(u_input_tokens="5"),
    "float as int": doc(cost_usd=1), "bool as int": doc(offline=1), "negative cost": doc(cost_usd=-0.1),
    "cached > input": doc(u_cached_input_tokens=4000), "bad tenant": doc(tenant_id="Bad Tenant"),
    "double underscore": doc(tenant_id="a__b"), "long tenant": doc(tenant_id="a" * 65), "bad tier": doc(tier="gold"),
    "null tier": doc(tier=None), "bad kind": doc(kind="teleport"), "no usage": doc(usage=...),
    "null usage": doc(usage=None), "short id": doc(event_id="abc"), "unknown field": doc(extra=1),
    "int attribute": doc(attributes={"a": 1}), "attributes": doc(attributes={"a": "b"}),
    "huge int": doc(u_input_tokens=2**70), "lone surrogate": doc().replace('"s0"', '"\\ud800"'),
    "NUL": doc(session_id="a\x00b"), "duplicate key": doc()[:-1] + ', "cost_usd": 5.5}',
    "NaN": doc().replace('"cost_usd": 0.0012084', '"cost_usd": NaN'),
    "Infinity": doc().replace('"cost_usd": 0.0012084', '"cost_usd": Infinity'),
    "1e400": doc().replace('"cost_usd": 0.0012084', '"cost_usd": 1e400'), "array": "[1]", "not json": "{x",
    "empty": "", "whitespace": "  " + doc() + "\n", "BOM": "\ufeff" + doc(), "schema 2": doc(schema_version=2),
    "int session": doc(session_id=5), "null estimated": doc(u_estimated=None), "null offline": doc(offline=None),
    "negative covered": doc(covered_seconds=-1), "float frames": doc(frames_considered=3.0),
    "vision": doc(kind="vision", tier=None, covered_seconds=12.5, frames_considered=40, u_images=1),
}


def _values(ev: WireEvent, at: datetime) -> tuple[Any, ...]:
    return (at, *(getattr(ev, f) for f in ev.__struct_fields__ if f != "occurred_at"))


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_fast_path_never_accepts_what_the_model_refuses_and_agrees_on_values(name: str) -> None:
    raw = CORPUS[name]
    try:
        model: tuple[WireEvent, datetime] | None = from_model(CostEvent.model_validate_json(raw))
    except ValidationError:
        model = None
    fast = _fast(raw)
    if fast is not None:
        assert model is not None, f"{name}: the fast path accepted what the model refuses"
        assert _values(*fast) == _values(*model)
        assert fast[1].tzinfo is UTC
    if model is None:
        with pytest.raises(ValidationError):
            decode_event(raw)
    elif name == "no occurred_at":  # the model's default is "now": the model decides, each call its own now
        assert fast is None and _values(*decode_event(raw))[1:] == _values(*model)[1:]
    else:
        assert _values(*decode_event(raw)) == _values(*model)


def test_the_usual_event_takes_the_fast_path() -> None:
    assert _fast(doc()) is not None and _fast(doc(occurred_at="2026-12-01T21:39:19+02:00")) is not None


def test_schema_has_exactly_the_models_fields() -> None:
    assert set(WireEvent.__struct_fields__) == set(CostEvent.model_fields)
    assert set(WireUsage.__struct_fields__) == set(UsageAmounts.model_fields)
    for name, field in CostEvent.model_fields.items():
        if not field.is_required() and name != "occurred_at":
            assert msgspec.convert({k: v for k, v in BASE.items() if k != name}, WireEvent).__getattribute__(name) \
                == field.get_default(call_default_factory=True), name


def test_baseline_of_the_parts_equals_the_events_baseline() -> None:
    catalog = default_catalog()
    for raw in (doc(), doc(u_cached_input_tokens=0), CORPUS["vision"], doc(kind="stt", model="nova-3", tier=None)):
        event = CostEvent.model_validate_json(raw)
        ev, _ = decode_event(raw)
        assert baseline_cost_of(ev.kind, ev.usage, ev.cost_usd, ev.covered_seconds, catalog) == baseline_cost(
            event, catalog)
    usage = UsageAmounts(input_tokens=1234, cached_input_tokens=567, output_tokens=89)
    assert baseline_cost_of(CostKind.LLM, usage, 0.0, None, catalog) == catalog.llm_baseline_cost(usage)
