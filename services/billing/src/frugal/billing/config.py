"""billing settings (environment variables, validated at start)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from frugal.common.settings import PORTS, DatabaseSettings


class Settings(DatabaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "billing"
    grpc_port: int = PORTS["billing"][0]
    metrics_port: int = PORTS["billing"][1]
