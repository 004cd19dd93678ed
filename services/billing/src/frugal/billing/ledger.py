"""The cost ledger: exactly-once writes of cost events (per tenant, under RLS) and usage/savings queries."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import asyncpg
import msgspec

from frugal.api.billing.v1 import billing_pb2
from frugal.billing.budget import BudgetInputs, read_budget_inputs
from frugal.billing.wire import WireEvent
from frugal.common.db import tenant_transaction
from frugal.common.usage import UsageAmounts


class LedgerEntry(msgspec.Struct, frozen=True):
    """A parsed, validated stream entry ready for the ledger (a msgspec struct: one is built per event, and a
    frozen dataclass's __init__ cost more than decoding the event)."""

    stream_id: str
    event: WireEvent
    occurred_at: datetime
    baseline_usd: float
    # SHA-256 of the event's JSON as produced: tells a replay (same payload) from a conflict (another payload).
    payload_sha256: str = ""
    # The entry's event JSON as produced: what a dead letter keeps.
    raw: bytes = b""

    def fields(self) -> dict[str, bytes]:
        """The stream entry's fields (for dead letters)."""
        return {"event": self.raw}


@dataclass
class TenantWriteResult:
    tenant_id: str
    inserted: list[LedgerEntry] = field(default_factory=list)
    # Already in the ledger for this tenant: acknowledged and ignored.
    duplicates: list[LedgerEntry] = field(default_factory=list)
    # The event_id exists in the ledger for ANOTHER tenant (invisible under RLS): dead-lettered.
    collisions: list[LedgerEntry] = field(default_factory=list)
    # The event_id is already in this tenant's ledger with ANOTHER payload: dead-lettered, never merged.
    conflicts: list[LedgerEntry] = field(default_factory=list)
    unknown_tenant: bool = False
    budget: BudgetInputs | None = None
    # BEGIN..COMMIT of this tenant's transaction, seconds (set by the consumer).
    write_seconds: float = 0.0


def _dec(value: float) -> Decimal:
    return Decimal(repr(float(value)))


_INSERT = """
WITH ins AS (
    INSERT INTO cost_ledger (
        event_id, tenant_id, session_id, request_id, service, kind, provider, model, tier,
        input_tokens, output_tokens, audio_seconds, characters, images, requests, estimated, offline,
        cost_usd, baseline_cost_usd, covered_seconds, frames_considered, occurred_at, stream_id,
        catalog_version, attributes)
    SELECT u.event_id, $1, u.session_id, u.request_id, u.service, u.kind, u.provider, u.model, u.tier,
           u.input_tokens, u.output_tokens, u.audio_seconds, u.characters, u.images, u.requests, u.estimated,
           u.offline, u.cost_usd, u.baseline_cost_usd, u.covered_seconds, u.frames_considered, u.occurred_at,
           u.stream_id, $2, u.attributes::jsonb
      FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                  $11::int8[], $12::int8[], $13::float8[], $14::int8[], $15::int8[], $16::int8[], $17::bool[],
                  $18::bool[], $19::numeric[], $20::numeric[], $21::float8[], $22::int8[], $23::timestamptz[],
                  $24::text[], $25::text[])
           AS u(event_id, session_id, request_id, service, kind, provider, model, tier,
                input_tokens, output_tokens, audio_seconds, characters, images, requests, estimated,
                offline, cost_usd, baseline_cost_usd, covered_seconds, frames_considered, occurred_at,
                stream_id, attributes)
     ORDER BY u.event_id  -- one lock order for every writer: concurrent consumers cannot deadlock here
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, cost_usd, offline, occurred_at
), per_month AS (
    SELECT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month,
           coalesce(sum(cost_usd) FILTER (WHERE NOT offline), 0) AS online_usd,
           coalesce(sum(cost_usd) FILTER (WHERE offline), 0) AS offline_usd,
           count(*) AS events
      FROM ins GROUP BY 1
), rollup AS (
    INSERT INTO tenant_monthly_spend AS s (tenant_id, month, online_usd, offline_usd, events)
    SELECT $1, month, online_usd, offline_usd, events FROM per_month ORDER BY month
    ON CONFLICT (tenant_id, month) DO UPDATE SET
        online_usd = s.online_usd + EXCLUDED.online_usd,
        offline_usd = s.offline_usd + EXCLUDED.offline_usd,
        events = s.events + EXCLUDED.events,
        updated_at = now()
)
SELECT event_id FROM ins
"""


def _columns(entries: Sequence[LedgerEntry]) -> list[list[object]]:
    cols: list[list[object]] = [[] for _ in range(23)]
    for e in entries:
        ev = e.event
        u = ev.usage
        values: tuple[object, ...] = (
            ev.event_id, ev.session_id, ev.request_id, ev.service, ev.kind.value, ev.provider, ev.model, ev.tier,
            u.input_tokens, u.output_tokens, u.audio_seconds, u.characters, u.images, u.requests, u.estimated,
            ev.offline, _dec(ev.cost_usd), _dec(e.baseline_usd), ev.covered_seconds, ev.frames_considered,
            e.occurred_at, e.stream_id, json.dumps(ev.attributes),
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    return cols


# billing_ingest_batch's column encoding (migrations/0003): each value preceded by SEP, NULL_MARK alone is NULL.
# The consumer dead-letters events whose text values contain either character (consumer._check_sanity).
SEP = "\x1f"
NULL_MARK = "\x1e"


def _text(values: Sequence[str]) -> str:
    joined = SEP + SEP.join(values)
    if joined.count(SEP) != len(values):  # a separator inside a value: refused upstream, never sent misaligned
        raise ValueError("a ledger text value contains the column separator U+001F")
    return joined


def _opt(values: Sequence[str | None]) -> str:
    return _text([NULL_MARK if v is None else v for v in values])


def _bools(values: Sequence[bool]) -> str:
    return _text(["t" if v else "f" for v in values])


def _batch_columns(entries: Sequence[LedgerEntry]) -> list[str]:
    """billing_ingest_batch's 26 columns, one text each: 26 strings for the driver to send, where arrays were
    52,000 elements to encode one by one (~10 us per event)."""
    evs = [e.event for e in entries]
    us = [ev.usage for ev in evs]
    return [
        _text([ev.tenant_id for ev in evs]),
        _text([ev.event_id for ev in evs]),
        _opt([ev.session_id for ev in evs]),
        _opt([ev.request_id for ev in evs]),
        _text([ev.service for ev in evs]),
        _text([ev.kind for ev in evs]),  # a StrEnum: the member is its value (Enum.value is a slow property)
        _text([ev.provider for ev in evs]),
        _text([ev.model for ev in evs]),
        _opt([ev.tier for ev in evs]),
        _text([str(u.input_tokens) for u in us]),
        _text([str(u.cached_input_tokens) for u in us]),
        _text([str(u.output_tokens) for u in us]),
        _text([repr(u.audio_seconds) for u in us]),
        _text([str(u.characters) for u in us]),
        _text([str(u.images) for u in us]),
        _text([str(u.requests) for u in us]),
        _bools([u.estimated for u in us]),
        _bools([ev.offline for ev in evs]),
        # repr: the shortest text that reads back as the same float, cast to numeric by the server.
        _text([repr(ev.cost_usd) for ev in evs]),
        _text([repr(e.baseline_usd) for e in entries]),
        _opt([None if ev.covered_seconds is None else repr(ev.covered_seconds) for ev in evs]),
        _opt([None if ev.frames_considered is None else str(ev.frames_considered) for ev in evs]),
        # RFC 3339 as produced (the fast path's one format) or the model's isoformat: the instant e.occurred_at.
        _text([ev.occurred_at for ev in evs]),
        _text([e.stream_id for e in entries]),
        _text([json.dumps(ev.attributes) if ev.attributes else "{}" for ev in evs]),
        _opt([e.payload_sha256 or None for e in entries]),
    ]


_INGEST = "SELECT * FROM billing_ingest_batch($1, $2, $3, " + ", ".join(f"${i}" for i in range(4, 30)) + ")"


async def write_batch(
    pool: asyncpg.Pool, entries: Sequence[LedgerEntry], *, catalog_version: str, now: datetime
) -> dict[str, TenantWriteResult]:
    """Writes a whole batch, every tenant, in ONE transaction and one round trip (billing_ingest_batch,
    migrations/0003: RLS in force through the batch's declared tenants). Each event_id at most once, ever;
    `entries` must have distinct event ids.

    The function lists only what was NOT inserted (replays, conflicts, collisions, unknown tenants) and the
    budget inputs: every other event of a known tenant was inserted."""
    ordered = sorted(entries, key=lambda e: e.event.event_id)
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_INGEST, catalog_version, now, len(ordered), *_batch_columns(ordered))
    results: dict[str, TenantWriteResult] = {}
    seen: dict[str, tuple[str, str | None]] = {}
    missing: set[str] = set()
    unknown: set[str] = set()
    for r in rows:
        status = r[0]
        if status == "seen":
            seen[r[2]] = (r[1], r[3])
        elif status == "missing":
            missing.add(r[2])
        elif status == "budget":
            tenant = r[1]
            results[tenant] = TenantWriteResult(
                tenant, budget=BudgetInputs(tenant_id=tenant, budget_usd=r[4], downgrade_at=r[5], refuse_at=r[6],
                                            online_usd=r[7], offline_usd=r[8]))
        elif status == "unknown_tenant":
            unknown.add(r[1])
            results[r[1]] = TenantWriteResult(r[1], unknown_tenant=True)
    for e in ordered:
        eid = e.event.event_id
        tenant = e.event.tenant_id
        res = results.get(tenant)
        if res is None:  # cannot happen (every known tenant has a budget row): kept safe, not guessed
            res = results[tenant] = TenantWriteResult(tenant)
        if tenant in unknown:
            continue
        if eid in seen:
            owner, stored = seen[eid]
            if owner != tenant:  # another tenant of this batch owns the id
                res.collisions.append(e)
            elif stored is None or not e.payload_sha256 or stored == e.payload_sha256:
                res.duplicates.append(e)
            else:
                res.conflicts.append(e)
        elif eid in missing:
            res.collisions.append(e)
        else:
            res.inserted.append(e)
    return results


async def write_tenant_events(
    pool: asyncpg.Pool, tenant_id: str, entries: Sequence[LedgerEntry], *, catalog_version: str, now: datetime
) -> TenantWriteResult:
    """LEGACY path, kept for bench/billing's old-vs-new comparison: one transaction per tenant, no conflict
    detection. The consumer uses write_batch.

    Writes one tenant's events in one transaction; each event_id at most once, ever.

    `entries` must have distinct event ids and all belong to `tenant_id`. The month-to-date roll-up is
    updated in the same statement from the rows actually inserted, so a replayed event changes nothing.
    """
    result = TenantWriteResult(tenant_id)
    try:
        async with tenant_transaction(pool, tenant_id) as conn:
            rows = await conn.fetch(_INSERT, tenant_id, catalog_version, *_columns(entries))
            inserted = {r[0] for r in rows}
            rest = [e for e in entries if e.event.event_id not in inserted]
            visible: set[str] = set()
            if rest:
                found = await conn.fetch(
                    "SELECT event_id FROM cost_ledger WHERE event_id = ANY($1::text[])",
                    [e.event.event_id for e in rest],
                )
                visible = {r[0] for r in found}
            result.budget = await read_budget_inputs(conn, tenant_id, now)
    except asyncpg.ForeignKeyViolationError:
        # cost_ledger.tenant_id references tenants: the tenant is not registered.
        result.unknown_tenant = True
        return result
    for e in entries:
        if e.event.event_id in inserted:
            result.inserted.append(e)
        elif e.event.event_id in visible:
            result.duplicates.append(e)
        else:
            result.collisions.append(e)
    return result


# ----------------------------------------------------------------------------------------------- usage


@dataclass
class _Acc:
    events: int = 0
    cost: float = 0.0
    baseline: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    audio_seconds: float = 0.0
    characters: int = 0
    images: int = 0
    requests: int = 0
    estimated_events: int = 0

    def add(self, rec: asyncpg.Record) -> None:
        self.events += rec["events"]
        self.cost += rec["cost"]
        self.baseline += rec["baseline"]
        self.input_tokens += rec["input_tokens"]
        self.output_tokens += rec["output_tokens"]
        self.audio_seconds += rec["audio_seconds"]
        self.characters += rec["characters"]
        self.images += rec["images"]
        self.requests += rec["requests"]
        self.estimated_events += rec["estimated_events"]

    def breakdown(self, key: str) -> billing_pb2.UsageBreakdown:
        usage = UsageAmounts(
            input_tokens=self.input_tokens, output_tokens=self.output_tokens, audio_seconds=self.audio_seconds,
            characters=self.characters, images=self.images, requests=self.requests,
            estimated=self.estimated_events > 0,
        )
        return billing_pb2.UsageBreakdown(
            key=key, cost_usd=self.cost, baseline_cost_usd=self.baseline, savings=savings(self.cost, self.baseline),
            events=self.events, usage=usage.to_proto(),
        )


def savings(cost: float, baseline: float) -> float:
    """1 - actual/baseline; 0 when the baseline is 0."""
    return 1.0 - cost / baseline if baseline > 0 else 0.0


_USAGE = """
SELECT kind, tier, model,
       count(*) AS events,
       sum(cost_usd)::float8 AS cost,
       sum(baseline_cost_usd)::float8 AS baseline,
       sum(input_tokens)::int8 AS input_tokens,
       sum(output_tokens)::int8 AS output_tokens,
       sum(audio_seconds)::float8 AS audio_seconds,
       sum(characters)::int8 AS characters,
       sum(images)::int8 AS images,
       sum(requests)::int8 AS requests,
       count(*) FILTER (WHERE estimated OR offline) AS estimated_events,
       coalesce(sum(greatest(images, 1)) FILTER (WHERE kind = 'vision'), 0)::int8 AS vision_frames
  FROM cost_ledger
 WHERE tenant_id = $1 AND occurred_at >= $2 AND occurred_at < $3
 GROUP BY kind, tier, model
"""


async def usage_report(
    pool: asyncpg.Pool, tenant_id: str, start: datetime, end: datetime
) -> billing_pb2.GetUsageResponse:
    """Everything from the ledger rows of [start, end) (by occurred_at), under the tenant's RLS."""
    async with tenant_transaction(pool, tenant_id) as conn:
        rows = await conn.fetch(_USAGE, tenant_id, start, end)
    total = _Acc()
    by_kind: dict[str, _Acc] = defaultdict(_Acc)
    by_tier: dict[str, _Acc] = defaultdict(_Acc)
    by_model: dict[str, _Acc] = defaultdict(_Acc)
    llm_requests = 0
    vision_frames = 0
    for rec in rows:
        total.add(rec)
        by_kind[rec["kind"]].add(rec)
        by_model[rec["model"]].add(rec)
        if rec["tier"] is not None:
            by_tier[rec["tier"]].add(rec)
        if rec["kind"] == "llm":
            llm_requests += rec["events"]
        vision_frames += rec["vision_frames"]
    resp = billing_pb2.GetUsageResponse(
        tenant_id=tenant_id,
        cost_usd=total.cost,
        baseline_cost_usd=total.baseline,
        savings=savings(total.cost, total.baseline),
        llm_requests=llm_requests,
        vision_frames=vision_frames,
        events=total.events,
        estimated_events=total.estimated_events,
    )
    resp.start.FromDatetime(start)
    resp.end.FromDatetime(end)
    resp.by_kind.extend(acc.breakdown(key) for key, acc in sorted(by_kind.items()))
    resp.by_tier.extend(acc.breakdown(key) for key, acc in sorted(by_tier.items()))
    resp.by_model.extend(acc.breakdown(key) for key, acc in sorted(by_model.items()))
    return resp
