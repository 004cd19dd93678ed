"""vision-dedup Prometheus metrics (default registry; served on METRICS_PORT)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from frugal.common.metrics import LATENCY_BUCKETS

FRAMES_RECEIVED = Counter("vision_frames_received_total", "Frames received on StreamFrames.", ["tenant", "format"])
FRAMES_KEPT = Counter("vision_frames_kept_total", "Frames kept (worth a vision call), by reason.", ["tenant", "reason"])
FRAMES_SKIPPED = Counter("vision_frames_skipped_total", "Frames skipped, by reason.", ["tenant", "reason"])
FRAMES_ERROR = Counter("vision_frames_error_total", "Malformed frames (ERROR verdicts), by kind.", ["tenant", "kind"])
DEDUP_RATE = Gauge("vision_dedup_rate", "Skipped / (kept + skipped) frames since start, per tenant.", ["tenant"])
HASH_SECONDS = Histogram(
    "vision_frame_hash_seconds",
    "Time to decode a frame to its luma thumbnail, hash it and decide (per frame).",
    ["format"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
QUEUE_DEPTH = Gauge("vision_analysis_queue_depth", "Kept frames waiting for the vision model (all streams).")
COALESCED = Counter(
    "vision_frames_coalesced_total", "Kept frames replaced by a newer one while the model was busy.", ["tenant"]
)
VISION_CALLS = Counter(
    "vision_calls_total", "Vision analyses, by provider and outcome.", ["provider", "model", "offline", "outcome"]
)
VISION_CALL_SECONDS = Histogram(
    "vision_call_seconds", "Vision analysis latency.", ["provider", "model"], buckets=LATENCY_BUCKETS
)
VISION_COST = Counter("vision_cost_usd_total", "Vision spend, USD, per tenant.", ["tenant", "model", "offline"])
CIRCUIT_OPEN = Gauge("vision_model_circuit_open", "1 while the vision model's circuit breaker refuses calls.")
TRACKS = Gauge("vision_active_tracks", "Video tracks held by the StreamFrames calls being served.")
ACTIVE_STREAMS = Gauge("vision_active_streams", "StreamFrames calls being served.")

_lock = threading.Lock()
_counts: dict[str, list[int]] = {}


def record_decision(tenant: str, kept: bool, reason: str) -> None:
    (FRAMES_KEPT if kept else FRAMES_SKIPPED).labels(tenant=tenant, reason=reason).inc()
    with _lock:
        c = _counts.setdefault(tenant, [0, 0])
        c[0 if kept else 1] += 1
        rate = c[1] / (c[0] + c[1])
    DEDUP_RATE.labels(tenant=tenant).set(rate)
