"""media-gateway settings (environment variables, validated at start)."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from frugal.common.settings import PORTS, ServiceSettings

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

    # Deadlines of the calls the gateway makes.
    router_timeout_s: float = Field(default=30.0, gt=0, le=300)
    billing_timeout_s: float = Field(default=3.0, gt=0, le=60)
    # Messages of earlier conversation sent with each turn (the router sees at most this many).
    history_max_messages: int = Field(default=12, ge=0, le=200)

    # Speech providers. Without a key the offline stand-in runs and says so in every cost event.
    deepgram_api_key: str | None = None
    deepgram_base_url: str | None = None
    deepgram_model: str = "nova-3"
    elevenlabs_api_key: str | None = None
    elevenlabs_base_url: str | None = None
    elevenlabs_model: str = "eleven_flash_v2_5"
    elevenlabs_voice_id: str | None = None

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
