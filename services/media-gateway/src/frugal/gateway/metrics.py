"""media-gateway metrics (default registry, served on METRICS_PORT).

Sessions run in job processes: there these metrics are written in Prometheus multiprocess mode and `/metrics`
(served by the main process, see `job_metrics.py`) merges them with the main process's own. Gauges that job
processes set say how to combine processes (`multiprocess_mode`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from frugal.common.metrics import LATENCY_BUCKETS

JOBS = Counter("gateway_jobs_total", "LiveKit job requests, by outcome.", ["outcome"])
ACTIVE_SESSIONS = Gauge("gateway_active_sessions", "Agent sessions running (all job processes).",
                        multiprocess_mode="livesum")
# The autoscaling signal (KEDA ScaledObject): jobs the worker is running, set by the main process.
ACTIVE_JOBS = Gauge("gateway_active_jobs", "LiveKit jobs this worker is running.", multiprocess_mode="livesum")
WORKER_REGISTERED = Gauge("gateway_worker_registered", "1 while the worker is registered with LiveKit.",
                          multiprocess_mode="max")
JOB_SCREENING_RETRIES = Counter("gateway_job_screening_retries_total",
                                "Billing calls retried while screening a job request.")
TURNS = Counter("gateway_turns_total", "Turns answered through the router, by outcome and tier.", ["outcome", "tier"])
TURN_SECONDS = Histogram("gateway_turn_seconds", "Router Respond duration as seen by the gateway.",
                         buckets=LATENCY_BUCKETS)
FRAMES_IN = Counter("gateway_frames_received_total", "Screen-share frames read from tracks.", ["source"])
FRAMES_DROPPED = Counter("gateway_frames_dropped_total", "Frames not sent to vision-dedup, by reason.", ["reason"])
FRAMES_SENT = Counter("gateway_frames_sent_total", "Frames sent to vision-dedup.")
VERDICTS = Counter("gateway_vision_verdicts_total", "Verdicts from vision-dedup.", ["kind"])
VISION_RECONNECTS = Counter("gateway_vision_reconnects_total", "StreamFrames streams (re)opened after a failure.")
TOOL_CALLS = Counter("gateway_tool_calls_total", "Built-in tool calls, by tool and outcome.", ["tool", "outcome"])
SPEECH_EVENTS = Counter("gateway_speech_cost_events_total", "STT/TTS cost events emitted.", ["kind", "offline"])
SPEECH_NOT_CALLED = Counter(
    "gateway_speech_not_called_total",
    "STT audio chunks and TTS utterances not sent to a paid provider: their cost could not be recorded durably.",
    ["kind"])
LONG_ANSWERS = Counter("gateway_long_answers_total",
                       "Long answers spoken in short and posted whole to the room chat.")
ROUTER_RECOVERY_CHECKS = Counter("gateway_router_recovery_checks_total",
                                 "Health checks of a router the fallback adapter holds unavailable, by outcome.",
                                 ["outcome"])
