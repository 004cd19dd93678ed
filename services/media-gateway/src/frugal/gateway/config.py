"""media-gateway settings (environment variables, validated at start)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from frugal.common.settings import PORTS, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "media-gateway"
    grpc_port: int = PORTS["media-gateway"][0]
    metrics_port: int = PORTS["media-gateway"][1]
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = None
