"""Billing metrics (default registry, served on METRICS_PORT).

Ledger-side cost counters carry `tenant_id`, like the seed's `ai_cost_total`: their cardinality is bounded by
the registry, because events of unknown tenants are dead-lettered before they reach the ledger. They count
only rows this process inserted, so summed over replicas they match the ledger (a replayed event adds 0).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
LEDGER_COST = Counter(
    "billing_ledger_cost_usd_total", "Spend written to the ledger, USD (seed: ai_cost_total).",
    ["tenant_id", "kind", "model", "tier", "offline"],
)
LEDGER_BASELINE = Counter(
    "billing_ledger_baseline_cost_usd_total", "What the same traffic would have cost on the baseline, USD.",
    ["tenant_id", "kind"],
)
LEDGER_TOKENS = Counter(
    "billing_ledger_tokens_total", "Tokens written to the ledger (seed: ai_tokens_total).",
    ["tenant_id", "model", "token_type"],
)
BUDGET_FRACTION = Gauge(
    "billing_budget_fraction_used", "Month-to-date spend / monthly budget (0 when unlimited).", ["tenant_id"]
)
BUDGET_STATUS = Gauge(
    "billing_budget_status", "BudgetStatus enum value (1 unlimited, 2 ok, 3 downgrade, 4 exhausted).", ["tenant_id"]
)
STATE_PUBLISH_ERRORS = Counter(
    "billing_state_publish_errors_total", "Failed publications of policy/budget state to Redis.", ["what"]
)
