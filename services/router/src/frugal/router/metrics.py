"""The router's Prometheus metrics (default registry, served on METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from frugal.common.metrics import LATENCY_BUCKETS

SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)

ROUTER_REQUESTS = Counter(
    "router_requests_total",
    "Turns handled by Respond, by tenant, final tier, model and outcome "
    "(ok, fallback_ok, rate_limited, too_large, budget_exhausted, provider_error, deadline_exceeded, cancelled, "
    "invalid).",
    ["tenant", "tier", "model", "outcome"],
)
ROUTER_DECISIONS = Counter(
    "router_decisions_total", "Routing decisions, by scorer and tier (Route and Respond).", ["scorer", "tier"]
)
DECISION_SECONDS = Histogram(
    "router_decision_seconds", "Time to compute a routing decision (features, score, thresholds).",
    buckets=DECISION_BUCKETS,
)
FIRST_TOKEN_SECONDS = Histogram(
    "router_first_token_seconds", "Respond: time from request to the first text delta.", ["tier", "model"],
    buckets=SLOW_BUCKETS,
)
TOTAL_SECONDS = Histogram(
    "router_total_seconds", "Respond: time from request to the completed message.", ["tier", "model"],
    buckets=SLOW_BUCKETS,
)
CONTEXT_SECONDS = Histogram(
    "router_context_seconds", "Time to fetch context, by source and state.", ["source", "state"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "router_tokens_total", "LLM tokens, by model, direction (input/output) and whether estimated.",
    ["model", "direction", "estimated"],
)
COST_USD = Counter(
    "router_cost_usd_total", "LLM spend priced from reported usage, USD, by tenant, tier and model.",
    ["tenant", "tier", "model", "offline"],
)
FALLBACKS = Counter(
    "router_fallbacks_total", "Fallbacks taken after a provider error or timeout.", ["from_tier", "to_tier", "reason"]
)
LIMIT_REJECTIONS = Counter(
    "router_limit_rejections_total",
    "Requests refused by a limit (requests, tokens, budget) or let through because the store was down.",
    ["tenant", "limit"],
)
DEPLOYMENT_OPEN = Gauge(
    "router_deployment_open", "1 while a deployment is cooling down (breaker open), 0 when closed.", ["deployment"]
)
DEPLOYMENT_FAILURES = Counter(
    "router_deployment_failures_total", "Failed provider calls, by deployment and error kind.", ["deployment", "kind"]
)
DEPLOYMENT_SKIPS = Counter(
    "router_deployment_skips_total", "Deployments skipped without a call because they were cooling down.",
    ["deployment"],
)
DEPLOYMENT_CALLS = Counter(
    "router_deployment_calls_total", "Provider calls started, by deployment (load balancing).", ["deployment"]
)
FAIL_OPEN = Counter(
    "router_fail_open_total",
    "Turns that went on without a dependency that did not answer in time (rate limiter, tenant state, "
    "breaker store, cost events), by dependency.",
    ["dependency"],
)
HISTORY_TRIMMED = Counter(
    "router_history_trimmed_messages_total", "History messages dropped (oldest first) to fit the turn budget."
)
