"""Unit tests of frugal.common: tenancy rules, pricing, cost events, settings, client config."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import pytest
from pydantic import ValidationError

from frugal.common.cost_events import CostEvent, CostKind, baseline_cost, make_event_id
from frugal.common.grpc_client import MethodPolicy, outgoing_metadata, service_config
from frugal.common.pricing import PriceCatalog, PriceCatalogError
from frugal.common.settings import ServiceSettings, load_settings
from frugal.common.tenancy import (
    RequestIdentity,
    TenancyError,
    reset_identity,
    room_tenant_candidates,
    set_identity,
    tenant_ids_conflict,
    validate_session_id,
    validate_tenant_id,
)
from frugal.common.usage import UsageAmounts


@pytest.mark.parametrize("good", ["org_abc123", "acme", "a", "org-1_x", "7eleven"])
def test_valid_tenant_ids(good: str) -> None:
    assert validate_tenant_id(good) == good


@pytest.mark.parametrize("bad", ["", "Org", "org_", "_org", "org__x", "org abc", "örg", "a" * 65, "org;drop"])
def test_invalid_tenant_ids(bad: str) -> None:
    with pytest.raises(TenancyError):
        validate_tenant_id(bad)


def test_session_ids() -> None:
    assert validate_session_id("room-1:abc.2") == "room-1:abc.2"
    for bad in ("", " s", "s/1", "x" * 129):
        with pytest.raises(TenancyError):
            validate_session_id(bad)


def test_room_candidates_longest_first_and_org_prefix_not_truncated() -> None:
    # The seed's split("_", 2) would give tenant "org" here.
    cands = room_tenant_candidates("tenant_org_abc123_sales-meeting-2024")
    assert ("org_abc123", "sales-meeting-2024") in cands
    assert ("org", "abc123_sales-meeting-2024") in cands
    assert cands == sorted(cands, key=lambda c: -len(c[0]))
    with pytest.raises(TenancyError):
        room_tenant_candidates("org_abc123_x")
    with pytest.raises(TenancyError):
        room_tenant_candidates("tenant_onlytenant")


def test_tenant_conflicts() -> None:
    assert tenant_ids_conflict("org", "org_abc")
    assert tenant_ids_conflict("org_abc", "org")
    assert tenant_ids_conflict("org", "org")
    assert not tenant_ids_conflict("org", "organic")
    assert not tenant_ids_conflict("org_a", "org_b")


def test_bundled_catalog_prices_input_and_output_separately() -> None:
    cat = PriceCatalog.load()
    usage = UsageAmounts(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cat.cost("gemini-2.5-flash-lite", usage) == pytest.approx(0.10 + 0.40)
    assert cat.cost("gemini-2.5-flash", usage) == pytest.approx(0.30 + 2.50)
    assert cat.cost("claude-sonnet-4-6", usage) == pytest.approx(3.0 + 15.0)
    only_out = UsageAmounts(output_tokens=1000)
    only_in = UsageAmounts(input_tokens=1000)
    assert cat.cost("claude-sonnet-4-6", only_out) == pytest.approx(5 * cat.cost("claude-sonnet-4-6", only_in))
    assert cat.tier_model("premium") == "claude-sonnet-4-6"
    assert cat.llm_baseline_cost(UsageAmounts(input_tokens=300)) == pytest.approx(300 * 3.0 / 1e6)
    assert cat.cost("nova-3", UsageAmounts(audio_seconds=60)) == pytest.approx(0.0077, rel=1e-3)


def test_catalog_rejects_bad_data(tmp_path: object) -> None:
    with pytest.raises(PriceCatalogError, match="unknown model"):
        PriceCatalog.from_dict({"models": {}, "tiers": {"lite": "x", "standard": "x", "premium": "x"}})
    with pytest.raises(PriceCatalogError, match="negative"):
        PriceCatalog.from_dict(
            {"models": {"m": {"provider": "p", "kind": "llm", "input_per_mtok": -1}},
             "tiers": {"lite": "m", "standard": "m", "premium": "m"}}
        )
    with pytest.raises(PriceCatalogError):
        PriceCatalog.load("/nonexistent/prices.toml")
    with pytest.raises(PriceCatalogError, match="no price"):
        PriceCatalog.load().price("gpt-unknown")


def _event(**kw: object) -> CostEvent:
    base: dict[str, object] = dict(
        event_id=make_event_id("router", "turn-1", "0"), tenant_id="org_abc", service="router",
        kind=CostKind.LLM, provider="google", model="gemini-2.5-flash-lite", tier="lite",
        usage=UsageAmounts(input_tokens=1000, output_tokens=200), cost_usd=0.00018,
    )
    base.update(kw)
    return CostEvent.model_validate(base)


def test_cost_event_roundtrip_and_validation() -> None:
    ev = _event()
    again = CostEvent.from_stream_fields({b"event": ev.to_stream_fields()["event"].encode()})
    assert again == ev
    assert make_event_id("a", "b") == make_event_id("a", "b") != make_event_id("a", "c")
    with pytest.raises(ValidationError):
        _event(tenant_id="Bad Tenant")
    with pytest.raises(ValidationError):
        _event(cost_usd=-1)
    with pytest.raises(ValidationError):
        _event(occurred_at=datetime(2026, 1, 1))  # naive
    with pytest.raises(ValueError):
        CostEvent.from_stream_fields({"other": "x"})


def test_baselines() -> None:
    cat = PriceCatalog.load()
    llm = _event()
    assert baseline_cost(llm, cat) == pytest.approx((1000 * 3.0 + 200 * 15.0) / 1e6)
    vision = _event(kind=CostKind.VISION, cost_usd=0.001, covered_seconds=30.0, tier=None)
    assert baseline_cost(vision, cat) == pytest.approx(0.03)
    stt = _event(kind=CostKind.STT, cost_usd=0.5, tier=None)
    assert baseline_cost(stt, cat) == 0.5
    # Offline stand-ins are priced on their estimated usage like any other event (labelled offline/estimated),
    # so cost and baseline stay comparable.
    assert baseline_cost(_event(offline=True), cat) == baseline_cost(llm, cat)


def test_service_config_json() -> None:
    cfg = json.loads(service_config([
        MethodPolicy("frugal.api.rag.v1.RagService", "Retrieve", 0.8, retry_unavailable=True),
        MethodPolicy("frugal.api.billing.v1.BillingService", timeout_s=2),
    ]))
    first, second = cfg["methodConfig"]
    assert first["name"] == [{"service": "frugal.api.rag.v1.RagService", "method": "Retrieve"}]
    assert first["timeout"] == "0.800s"
    assert first["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "retryPolicy" not in second


def test_outgoing_metadata_propagates_identity() -> None:
    token = set_identity(RequestIdentity("org_a", "sess-1", "req-9"))
    try:
        md = dict(outgoing_metadata())
    finally:
        reset_identity(token)
    assert md == {"x-tenant-id": "org_a", "x-session-id": "sess-1", "x-request-id": "req-9"}
    assert dict(outgoing_metadata(tenant_id="org_b"))["x-tenant-id"] == "org_b"


def test_load_settings_fails_fast_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRPC_PORT", "not-a-port")
    with pytest.raises(SystemExit) as exc:
        load_settings(ServiceSettings)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "GRPC_PORT" in err and "not-a-port" in err


def test_service_process_refuses_bad_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "frugal.router"], env={"GRPC_PORT": "99999", "PATH": "/usr/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("config error: GRPC_PORT")


def test_usage_proto_roundtrip() -> None:
    u = UsageAmounts(input_tokens=3, output_tokens=4, audio_seconds=1.5, characters=9, images=1, requests=2,
                     estimated=True)
    assert UsageAmounts.from_proto(u.to_proto()) == u


def test_env_cached_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from frugal.common.settings import env_cached

    class Hot(BaseSettings):
        model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="HOT_")
        cap: int = 5
        enabled: bool = True

    monkeypatch.delenv("HOT_CAP", raising=False)
    monkeypatch.delenv("hot_enabled", raising=False)
    get = env_cached(Hot)
    first = get()
    assert first.cap == 5 and get() is first  # unchanged environment: the same value, not rebuilt
    monkeypatch.setenv("HOT_CAP", "7")
    assert get().cap == 7
    monkeypatch.setenv("hot_enabled", "false")  # pydantic-settings reads names case-insensitively
    assert get().enabled is False and get().cap == 7
    monkeypatch.setenv("HOT_CAP", "nope")
    with pytest.raises(ValueError):  # a bad value fails as cls() does
        get()
