"""vision-dedup settings (environment variables, validated at start)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from frugal.common.settings import PORTS, ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "vision-dedup"
    grpc_port: int = PORTS["vision-dedup"][0]
    metrics_port: int = PORTS["vision-dedup"][1]
