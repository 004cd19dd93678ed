"""At the end of a session: its whole-session cost, every kind the gateway saw, into the session metrics.

The gateway sees its own speech events (STT and TTS as billed, and the levers' zero-cost records: audio the STT
gate held back, utterances the TTS cache served) and the router's turn reports (LLM usage, tier, model). They
are priced by frugal.common.session_cost, the rule billing's GetUsage applies to the ledger, and added to
`session_list_price_usd_total`, `session_naive_usd_total`, `session_minutes_total` and
`session_cost_usd_per_minute` (frugal.common.session_cost; the gateway's /metrics merges its job processes').
Vision calls are vision-dedup's events (not seen here), and LLM cache writes are not in the turn report: the
ledger's GetUsage remains the full account, these metrics are the gateway's live view of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from frugal.common.cost_events import CostEvent
from frugal.common.pricing import TIERS, PriceCatalog
from frugal.common.session_cost import CostRow, SessionCost, record_metrics, session_cost
from frugal.gateway.router_llm import TurnReport

log = logging.getLogger(__name__)


def llm_rows(reports: Iterable[TurnReport], catalog: PriceCatalog) -> list[CostRow]:
    rows: list[CostRow] = []
    for r in reports:
        if r.usage is None:
            continue
        attrs: dict[str, str] = {}
        if r.offline and r.tier in TIERS:  # the one offline rule: priced as the tier's model
            attrs["priced_as"] = catalog.tier_model(r.tier)
        rows.append(CostRow(kind="llm", model=r.model, usage=r.usage, offline=r.offline, tier=r.tier,
                            attributes=attrs))
    return rows


def session_seconds(events: Sequence[CostEvent], wall_seconds: float) -> float:
    """The audio the STT gate saw (media time, also right for a replay faster than real time), else the wall
    clock of the session."""
    seen = [float(e.attributes["stream_seconds"]) for e in events if "stream_seconds" in e.attributes]
    return sum(seen) if seen and sum(seen) > 0 else wall_seconds


def finish(events: Sequence[CostEvent], reports: Iterable[TurnReport], catalog: PriceCatalog, *,
           wall_seconds: float, session_id: str) -> SessionCost | None:
    """The session's cost, recorded in the metrics; None (logged) if it could not be computed: a report, never
    a reason to fail the session's close."""
    try:
        rows = [CostRow.from_event(e) for e in events] + llm_rows(reports, catalog)
        cost = session_cost(rows, catalog, session_seconds=session_seconds(events, wall_seconds))
        record_metrics(cost)
    except Exception:
        log.exception("session %s: whole-session cost not recorded in the metrics", session_id)
        return None
    log.info("session %s: $%.4f at list prices (naive $%.4f, %.1f min, %.1f%% saved)", session_id, cost.cost_usd,
             cost.naive_usd, cost.minutes, 100 * cost.savings)
    return cost
