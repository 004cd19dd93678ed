"""Billing metrics (default registry, served on METRICS_PORT).

Ledger-side cost counters carry `tenant_id`, like the seed's `ai_cost_total`: their cardinality is bounded by
the registry, because events of unknown tenants are dead-lettered before they reach the ledger. They count
only rows this process inserted, so summed over replicas they match the ledger (a replayed event adds 0).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from frugal.common.metrics import LATENCY_BUCKETS

EVENTS_CONSUMED = Counter(
    "billing_events_consumed_total",
    "Stream entries read by the ledger consumer (source: new, pending = own pending/reclaimed).",
    ["source"],
)
EVENTS_WRITTEN = Counter("billing_events_written_total", "Cost events written to the ledger.", ["kind"])
EVENTS_DUPLICATE = Counter(
    "billing_events_duplicate_total", "Cost events already in the ledger (replays): acknowledged and ignored."
)
EVENTS_DEAD_LETTERED = Counter(
    "billing_events_dead_lettered_total", "Stream entries moved to the dead-letter stream.", ["reason"]
)
EVENTS_RECLAIMED = Counter(
    "billing_events_reclaimed_total", "Pending entries of idle consumers claimed by this one (XAUTOCLAIM)."
)
WRITE_SECONDS = Histogram(
    "billing_ledger_write_seconds", "One tenant's ledger transaction, from BEGIN to COMMIT.", buckets=LATENCY_BUCKETS
)
BATCH_SECONDS = Histogram(
    "billing_ledger_batch_seconds", "One stream batch: parse, write every tenant, acknowledge.",
    buckets=LATENCY_BUCKETS,
)
WRITE_ERRORS = Counter(
    "billing_ledger_write_errors_total", "Ledger transactions that failed and were left pending for retry.", ["error"]
)
INGEST_DELAY_SECONDS = Histogram(
    "billing_event_ingest_delay_seconds", "From an entry's stream id (XADD time) to its ledger commit.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
CONSUMER_LAG_SECONDS = Gauge(
    "billing_consumer_lag_seconds", "Age of the oldest entry not yet delivered to the consumer group (0 = caught up)."
)
CONSUMER_PENDING = Gauge(
    "billing_consumer_pending_entries", "Entries delivered to the group but not yet acknowledged."
)
STREAM_LENGTH = Gauge("billing_stream_length", "Entries in the cost-events stream (after trimming).")


class LedgerTotals(Collector):
    """The per-tenant ledger counters and budget gauges, kept in plain dicts and turned into metric families
    at scrape time. A batch touches thousands of label sets (500 tenants x kinds x models); prometheus_client
    children cost ~0.1 ms to create and a lock per increment, which at 20k events/s was more than the
    database. Updated under one lock per batch; a scrape copies under the same lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cost: defaultdict[tuple[str, str, str, str, str], float] = defaultdict(float)
        self.baseline: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.tokens: defaultdict[tuple[str, str, str], float] = defaultdict(float)
        self.budget: dict[str, tuple[float, float]] = {}

    def add(self, cost: Mapping[tuple[str, str, str, str, str], float], baseline: Mapping[tuple[str, str], float],
            tokens: Mapping[tuple[str, str, str], float]) -> None:
        with self._lock:
            for k1, v in cost.items():
                self.cost[k1] += v
            for k2, v in baseline.items():
                self.baseline[k2] += v
            for k3, v in tokens.items():
                self.tokens[k3] += v

    def set_budgets(self, states: Mapping[str, tuple[float, float]]) -> None:
        """tenant -> (fraction used, BudgetStatus value)."""
        with self._lock:
            self.budget.update(states)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cost, baseline, tokens = dict(self.cost), dict(self.baseline), dict(self.tokens)
            budget = dict(self.budget)
        c = CounterMetricFamily("billing_ledger_cost_usd", "Spend written to the ledger, USD (seed: ai_cost_total).",
                                labels=["tenant_id", "kind", "model", "tier", "offline"])
        for k1, v in cost.items():
            c.add_metric(list(k1), v)
        b = CounterMetricFamily("billing_ledger_baseline_cost_usd",
                                "What the same traffic would have cost on the baseline, USD.",
                                labels=["tenant_id", "kind"])
        for k2, v in baseline.items():
            b.add_metric(list(k2), v)
        t = CounterMetricFamily("billing_ledger_tokens", "Tokens written to the ledger (seed: ai_tokens_total).",
                                labels=["tenant_id", "model", "token_type"])
        for k3, v in tokens.items():
            t.add_metric(list(k3), v)
        f = GaugeMetricFamily("billing_budget_fraction_used",
                              "Month-to-date spend / monthly budget (0 when unlimited).", labels=["tenant_id"])
        st = GaugeMetricFamily("billing_budget_status",
                               "BudgetStatus enum value (1 unlimited, 2 ok, 3 downgrade, 4 exhausted).",
                               labels=["tenant_id"])
        for tenant, (fraction, status) in budget.items():
            f.add_metric([tenant], fraction)
            st.add_metric([tenant], status)
        yield from (c, b, t, f, st)


LEDGER_TOTALS = LedgerTotals()
REGISTRY.register(LEDGER_TOTALS)
STATE_PUBLISH_ERRORS = Counter(
    "billing_state_publish_errors_total", "Failed publications of policy/budget state to Redis.", ["what"]
)
