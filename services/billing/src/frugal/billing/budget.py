"""Month-to-date budget state: spend (from the ledger's roll-up) against the tenant's monthly budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from frugal.api.billing.v1 import billing_pb2
from frugal.common.tenant_state import STATUS_ENUM, budget_status


def month_start(moment: datetime) -> date:
    """First day of the UTC calendar month of `moment`."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


@dataclass(frozen=True, slots=True)
class BudgetInputs:
    tenant_id: str
    budget_usd: float
    downgrade_at: float
    refuse_at: float
    online_usd: float
    offline_usd: float


def budget_state(inputs: BudgetInputs, *, now: datetime, count_offline: bool) -> billing_pb2.BudgetState:
    spent = inputs.online_usd + (inputs.offline_usd if count_offline else 0.0)
    ts = Timestamp()
    ts.FromDatetime(now.astimezone(UTC))
    state = billing_pb2.BudgetState(
        tenant_id=inputs.tenant_id,
        month=f"{now.astimezone(UTC):%Y-%m}",
        spent_usd=spent,
        budget_usd=inputs.budget_usd,
        updated_at=ts,
    )
    # The one rule (frugal.common.tenant_state.budget_status), which the router applies to what we publish.
    status = budget_status(inputs.budget_usd, spent, inputs.downgrade_at, inputs.refuse_at)
    state.status = STATUS_ENUM[status]  # type: ignore[assignment]
    suspended = 1.0 if status == "suspended" else 0.0
    state.fraction_used = spent / inputs.budget_usd if inputs.budget_usd > 0 else suspended
    return state


async def read_budget_inputs(conn: asyncpg.Connection, tenant_id: str, now: datetime) -> BudgetInputs | None:
    """Inside a tenant_transaction for `tenant_id`; None when the tenant is not registered."""
    rec = await conn.fetchrow(
        """SELECT t.monthly_budget_usd, t.downgrade_at, t.refuse_at,
                  coalesce(s.online_usd, 0)::float8 AS online_usd, coalesce(s.offline_usd, 0)::float8 AS offline_usd
             FROM tenants t
             LEFT JOIN tenant_monthly_spend s ON s.tenant_id = t.tenant_id AND s.month = $2
            WHERE t.tenant_id = $1""",
        tenant_id, month_start(now),
    )
    if rec is None:
        return None
    return BudgetInputs(
        tenant_id=tenant_id,
        budget_usd=rec["monthly_budget_usd"],
        downgrade_at=rec["downgrade_at"],
        refuse_at=rec["refuse_at"],
        online_usd=rec["online_usd"],
        offline_usd=rec["offline_usd"],
    )
