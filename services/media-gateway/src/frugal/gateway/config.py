"""media-gateway settings (environment variables, validated at start)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from frugal.common.limits import MAX_HISTORY_MESSAGES
from frugal.common.settings import PORTS, ServiceSettings
from frugal.gateway.long_answers import DEFAULT_NOTICE

# Earlier messages a turn carries to the router by default; the shared MAX_HISTORY_MESSAGES (which the router
# enforces) is the most a deployment may configure.
DEFAULT_HISTORY_MESSAGES = 12

DEFAULT_WELCOME = "Hi, I'm the {display_name} assistant. Ask me anything, and share your screen if it helps."
DEFAULT_INSTRUCTIONS = (
    "You are a concise voice assistant. Answer in short spoken sentences, without markdown or lists."
)


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "media-gateway"
    grpc_port: int = PORTS["media-gateway"][0]
    metrics_port: int = PORTS["media-gateway"][1]

    # LiveKit server. Without LIVEKIT_URL the process serves health and metrics only (replay and console
    # need no server).
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = None
    # Explicit dispatch name; empty means automatic dispatch to every new room.
    livekit_agent_name: str = ""
    # SIGTERM: the worker stops taking jobs and live sessions may finish for up to this long before they are
    # closed. Keep it below the pod's terminationGracePeriodSeconds (600 s in the manifests).
    drain_timeout_s: int = Field(default=540, ge=1, le=3600)
    # Where job processes write their Prometheus metrics (multiprocess mode) for /metrics to merge; a fresh
    # temporary directory when unset. Never the main process's own PROMETHEUS_MULTIPROC_DIR.
    job_metrics_dir: str | None = None
    # Jobs run in processes (production) or threads (tests, small machines); idle processes kept warm.
    job_executor: Literal["process", "thread"] = "process"
    idle_processes: int = Field(default=1, ge=0, le=32)
    # livekit-agents' own HTTP health endpoint (unused: gRPC health is the probe); 0 picks a free port.
    worker_http_port: int = Field(default=0, ge=0, le=65535)
    # Connection attempts to LiveKit before the worker gives up (health goes NOT_SERVING, the pod restarts).
    livekit_max_retry: int = Field(default=16, ge=0, le=1000)
    # How often the worker's LiveKit registration is checked for gRPC health.
    worker_health_interval_s: float = Field(default=1.0, gt=0, le=60)

    # Tenancy. The tenant comes from data only a holder of the LiveKit API secret can write: the job's dispatch
    # metadata, then the room's metadata ({"tenant_id": "..."}). The unsigned room-name convention
    # (tenant_{id}_{room}) is a fallback for development: TENANT_FROM_ROOM_NAME=false in production overlays.
    tenant_from_room_name: bool = True
    # Transient billing errors while screening a job: retried with exponential backoff before the job is
    # declined (declined without terminate, so LiveKit offers it to another worker).
    billing_retry_attempts: int = Field(default=4, ge=1, le=20)
    billing_retry_backoff_s: float = Field(default=0.25, gt=0, le=30)

    # Screen share sampling: at most this many frames per second go to vision-dedup while the user speaks /
    # otherwise. Frames are cheap there, model calls are what cost and dedup decides those (see screen.py).
    active_fps: float = Field(default=5.0, gt=0, le=30)
    idle_fps: float = Field(default=5.0, gt=0, le=30)
    # Camera video is not sampled unless enabled (screen shares are).
    camera_enabled: bool = False
    # Frames wider than this are downscaled (halved until they fit) before they are sent; 0 keeps them.
    max_frame_width: int = Field(default=1280, ge=0, le=7680)
    # Reconnect backoff when the StreamFrames stream to vision-dedup fails.
    vision_reconnect_min_s: float = Field(default=0.2, gt=0, le=60)
    vision_reconnect_max_s: float = Field(default=5.0, gt=0, le=300)

    # A second router deployment the session falls back to (livekit FallbackAdapter) when the first fails.
    router_fallback_addr: str | None = None

    # Deadlines of the calls the gateway makes.
    router_timeout_s: float = Field(default=30.0, gt=0, le=300)
    billing_timeout_s: float = Field(default=3.0, gt=0, le=60)
    # Messages of earlier conversation sent with each turn (the router accepts at most MAX_HISTORY_MESSAGES).
    history_max_messages: int = Field(default=DEFAULT_HISTORY_MESSAGES, ge=0, le=MAX_HISTORY_MESSAGES)

    # The built-in knowledge-base tool (rag.Retrieve on demand): how many passages it reads back.
    kb_tool_enabled: bool = True
    kb_tool_top_k: int = Field(default=3, ge=1, le=20)
    rag_timeout_s: float = Field(default=5.0, gt=0, le=60)

    # Speech providers. Without a key the offline stand-in runs and says so in every cost event.
    deepgram_api_key: str | None = None
    deepgram_base_url: str | None = None
    deepgram_model: str = "nova-3"
    elevenlabs_api_key: str | None = None
    elevenlabs_base_url: str | None = None
    elevenlabs_model: str = "eleven_flash_v2_5"
    elevenlabs_voice_id: str | None = None
    # Raw PCM from ElevenLabs: nothing to decode in the gateway (mp3 decoding costs CPU per session); ElevenLabs
    # bills characters, whatever the format. An mp3_<rate>_<kbps> value is passed through.
    elevenlabs_encoding: str = Field(default="pcm_24000", pattern=r"^(pcm_\d+|mp3_\d+_\d+|opus_\d+_\d+)$")

    # Long answers: speech stops at the first sentence end after this many characters, the whole answer goes to
    # the room chat and a notice says so (frugal.gateway.long_answers); 0 speaks every answer whole.
    long_answer_spoken_chars: int = Field(default=280, ge=0, le=20000)
    long_answer_notice: str = Field(default=DEFAULT_NOTICE, min_length=1, max_length=200)

    # What the agent says when it joins ({display_name} is the tenant's); empty disables it.
    welcome_message: str = DEFAULT_WELCOME
    agent_instructions: str = DEFAULT_INSTRUCTIONS
    # Room name used for console mode and other fake jobs, which have no real room.
    console_room: str = "tenant_org_lumen_console"

    @field_validator("vision_reconnect_max_s")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("vision_reconnect_min_s")
        if low is not None and value < low:
            raise ValueError(f"must be >= VISION_RECONNECT_MIN_S ({low})")
        return value
