"""GetUsage's whole-session accounting: ledger rows priced by `frugal.common.session_cost` (list prices for
every kind, offline rows at the price of the model they stood in for, labelled estimated) against the naive
baseline of the same sessions."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg

from frugal.api.billing.v1 import billing_pb2
from frugal.common.db import tenant_transaction
from frugal.common.pricing import PriceCatalog, default_catalog
from frugal.common.session_cost import KINDS, CostRow, SessionCost, session_cost
from frugal.common.usage import UsageAmounts

_ROWS = """
SELECT session_id, kind, model, tier, input_tokens, output_tokens, audio_seconds, characters, images, requests,
       estimated, offline, covered_seconds, attributes
  FROM cost_ledger
 WHERE tenant_id = $1 AND occurred_at >= $2 AND occurred_at < $3 AND ($4 = '' OR session_id = $4)
"""

_catalog: PriceCatalog | None = None


def use_catalog(catalog: PriceCatalog) -> None:
    """The catalog billing was started with (PRICE_CATALOG_PATH); the bundled one until this is called."""
    global _catalog
    _catalog = catalog


def _row(rec: asyncpg.Record) -> CostRow:
    raw = rec["attributes"]
    attrs = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    usage = UsageAmounts(input_tokens=rec["input_tokens"], output_tokens=rec["output_tokens"],
                         audio_seconds=rec["audio_seconds"], characters=rec["characters"], images=rec["images"],
                         requests=rec["requests"], estimated=rec["estimated"])
    return CostRow(kind=rec["kind"], model=rec["model"], usage=usage, offline=rec["offline"], tier=rec["tier"],
                   covered_seconds=rec["covered_seconds"], attributes={str(k): str(v) for k, v in attrs.items()},
                   session_id=rec["session_id"])


def to_proto(cost: SessionCost, sessions: int) -> billing_pb2.SessionCost:
    msg = billing_pb2.SessionCost(
        cost_usd=cost.cost_usd, naive_usd=cost.naive_usd, savings=cost.savings, session_minutes=cost.minutes,
        cost_per_minute_usd=cost.cost_per_minute, naive_per_minute_usd=cost.naive_per_minute,
        estimated=cost.estimated, offline_rule=cost.offline_rule,
        naive_answer_characters=cost.rule.answer_characters, sessions=sessions,
    )
    for k in KINDS:
        acc = cost.kinds.get(k)
        if acc is None:
            continue
        u = acc.units
        msg.kinds.append(billing_pb2.SessionKindCost(
            kind=k, cost_usd=acc.cost_usd, naive_usd=acc.naive_usd, savings=acc.savings, events=acc.events,
            estimated=acc.estimated, audio_seconds=u.get("audio_seconds", 0.0),
            characters=int(u.get("characters", 0)), input_tokens=int(u.get("input_tokens", 0)),
            cached_input_tokens=int(u.get("cached_input_tokens", 0)),
            cache_write_tokens=int(u.get("cache_write_tokens", 0)), output_tokens=int(u.get("output_tokens", 0)),
            images=int(u.get("images", 0)), requests=int(u.get("requests", 0)),
            cache_hit_characters=int(u.get("cache_hit_characters", 0)),
        ))
    return msg


async def session_cost_report(pool: asyncpg.Pool, tenant_id: str, start: datetime, end: datetime,
                              session_id: str = "") -> billing_pb2.SessionCost:
    async with tenant_transaction(pool, tenant_id) as conn:
        records = await conn.fetch(_ROWS, tenant_id, start, end, session_id)
    rows = [_row(r) for r in records]
    cost = session_cost(rows, _catalog or default_catalog())
    return to_proto(cost, len({r.session_id for r in rows if r.session_id}))


async def add_session_cost(resp: billing_pb2.GetUsageResponse, pool: asyncpg.Pool, tenant_id: str,
                           start: datetime, end: datetime, session_id: str = "") -> billing_pb2.GetUsageResponse:
    """The GetUsage hook: fills `session_cost` of a usage report."""
    resp.session_cost.CopyFrom(await session_cost_report(pool, tenant_id, start, end, session_id))
    return resp
