"""Prometheus metrics: the HTTP endpoint each service exposes, and the metrics every service shares.

Service-specific metrics are declared in each service's own `metrics` module, on the default registry.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

GRPC_SERVER_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method", "grpc_type"]
)
GRPC_SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
GRPC_SERVER_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to complete an RPC (streams: until the stream ends).",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=LATENCY_BUCKETS,
)
GRPC_SERVER_IN_FLIGHT = Gauge("grpc_server_in_flight", "RPCs being served.", ["grpc_service", "grpc_method"])
AI_COST_TOTAL = Counter(
    "ai_cost_usd_total", "Spend on paid AI calls, USD, as priced from reported usage.",
    ["service", "kind", "provider", "model", "tier", "offline"],
)
AI_REQUESTS_TOTAL = Counter(
    "ai_requests_total", "Calls to AI providers.", ["service", "kind", "provider", "model", "outcome"]
)
COST_EVENTS_EMITTED = Counter("cost_events_emitted_total", "Cost events written to the stream.", ["kind"])
COST_EVENTS_PENDING = Gauge("cost_events_pending", "Cost events buffered while Redis is unreachable.")


class MetricsServer:
    """The /metrics HTTP endpoint (prometheus_client's threaded server)."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.host = host

    def start(self) -> int:
        server, thread = start_http_server(self.port, addr=self.host)
        self._server, self._thread = server, thread
        self.port = server.server_port
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
