"""The one budget verdict (frugal.common.tenant_state): billing publishes with it, the router applies it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from frugal.api.billing.v1 import billing_pb2
from frugal.common.tenant_state import NO_CAP, budget_status, budget_verdict

NOW = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)


def _state(spent: float, budget: float, *, month: str = "2026-12", age_s: float = 1.0) -> billing_pb2.BudgetState:
    ts = Timestamp()
    ts.FromDatetime(NOW - timedelta(seconds=age_s))
    return billing_pb2.BudgetState(tenant_id="t", month=month, spent_usd=spent, budget_usd=budget, updated_at=ts)


def _policy(budget: float, *, downgrade_at: float = 0.0, refuse_at: float = 0.0) -> billing_pb2.TenantPolicy:
    return billing_pb2.TenantPolicy(tenant_id="t", monthly_budget_usd=budget, downgrade_at=downgrade_at,
                                    refuse_at=refuse_at)


def test_budget_zero_suspends_and_negative_means_no_cap() -> None:
    v = budget_verdict(_policy(0), _state(0, 0), now=NOW)
    assert v.status == "suspended" and v.refuses and not v.retryable
    assert budget_verdict(_policy(NO_CAP), None, now=NOW).status == "unlimited"
    assert budget_status(0, 0, 0, 0) == "suspended" and budget_status(-1, 1e9, 0, 0) == "unlimited"


def test_unknown_state_of_a_capped_tenant_fails_closed_and_says_why() -> None:
    missing = budget_verdict(_policy(10), None, now=NOW)  # flushed Redis, billing down past the TTL
    assert missing.status == "unknown" and missing.refuses and missing.retryable
    assert "hard cap of $10.00" in missing.detail
    stale = budget_verdict(_policy(10), _state(1, 10, age_s=3600), now=NOW)
    assert stale.status == "unknown" and "old" in stale.detail
    # No policy published at all: nothing known about a cap (the router answers; billing re-publishes soon).
    assert not budget_verdict(None, None, now=NOW).refuses


def test_thresholds_and_the_new_month_starting_at_once() -> None:
    assert budget_verdict(_policy(10), _state(5, 10), now=NOW).status == "ok"
    assert budget_verdict(_policy(10), _state(8.5, 10), now=NOW).status == "downgrade"
    assert budget_verdict(_policy(10), _state(10, 10), now=NOW).status == "exhausted"
    assert budget_verdict(_policy(10, refuse_at=0.9, downgrade_at=0.5), _state(9.2, 10), now=NOW).status == "exhausted"
    # Exhausted in November; five seconds into December the tenant spends again (no 300 s wait for billing).
    assert budget_verdict(_policy(10), _state(12, 10, month="2026-11"), now=NOW).status == "ok"


def test_a_store_that_lost_billings_state_reads_unknown_for_tenants_with_no_keys() -> None:
    from frugal.common.tenant_state import lost_budget_state

    lost = lost_budget_state("t")
    v = budget_verdict(None, lost, now=NOW)  # neither key left, and the reader saw the epoch go
    assert v.status == "unknown" and v.refuses and v.retryable and "missing from Redis" in v.detail
    # A policy republished already decides: capped -> unknown until its state is back; no cap -> unlimited.
    assert budget_verdict(_policy(10), lost, now=NOW).status == "unknown"
    assert budget_verdict(_policy(NO_CAP), lost, now=NOW).status == "unlimited"
    # Billing never publishes UNSPECIFIED without updated_at: its own states are not mistaken for the marker.
    assert budget_verdict(None, _state(1, 10), now=NOW).status == "ok"
