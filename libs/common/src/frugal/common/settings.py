"""Service configuration from the environment, validated at start.

Every service subclasses :class:`ServiceSettings` and loads it with :func:`load_settings`, which turns a
validation error into one line naming the variable and stops the process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from frugal.common.service_table import SERVICES

# Default (gRPC, metrics) ports per service, from the one service table (frugal.common.service_table).
PORTS: dict[str, tuple[int, int]] = {s.name: (s.grpc_port, s.metrics_port) for s in SERVICES}


class ServiceSettings(BaseSettings):
    """Settings every service shares. Environment variables have no prefix: one process, one service."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_file=None)

    service_name: str = "frugal"
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0 disables the metrics endpoint")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    # Time given to in-flight RPCs (streams included) after SIGTERM before they are cancelled.
    shutdown_grace_seconds: float = Field(default=10.0, gt=0, le=300)
    # Time between reporting NOT_SERVING and closing the listener, so probes and load balancers see it.
    shutdown_delay_seconds: float = Field(default=1.0, ge=0, le=60)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024, le=256 * 1024 * 1024)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The persistent (AOF, noeviction) Redis of the cost-events stream and of billing's published tenant and
    # budget state; unset means REDIS_URL (which may then hold caches too: give it noeviction).
    cost_events_redis_url: str | None = None
    # Where cost events that cannot reach Redis are spooled (append + fsync) until they can; empty means
    # "{tmpdir}/frugal-cost-spool". Give it a volume that survives the container (emptyDir at least).
    cost_spool_dir: str = ""
    # Spool size at which the service stops starting paid calls (UNAVAILABLE); events already paid for are
    # still spooled beyond it, never dropped.
    cost_spool_max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    # Optional override of the bundled price catalog (TOML).
    price_catalog_path: str | None = None
    router_addr: str = f"127.0.0.1:{PORTS['router'][0]}"
    vision_addr: str = f"127.0.0.1:{PORTS['vision-dedup'][0]}"
    rag_addr: str = f"127.0.0.1:{PORTS['rag'][0]}"
    billing_addr: str = f"127.0.0.1:{PORTS['billing'][0]}"

    @property
    def cost_redis_url(self) -> str:
        """COST_EVENTS_REDIS_URL, or REDIS_URL when unset."""
        return self.cost_events_redis_url or self.redis_url

    # A validator rather than Field(ge, le): services re-declare the port fields with their own defaults,
    # which replaces a Field's constraints but keeps inherited validators.
    @field_validator("grpc_port", "metrics_port", check_fields=False)
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("must be a port number in 0..65535")
        return value


class DatabaseSettings(ServiceSettings):
    """For services that own tables: the app connects as a non-owner role, migrations as the owner."""

    database_url: str = "postgresql://frugal_app@127.0.0.1:55432/frugal"
    # Used only to apply migrations; empty means migrations are applied by someone else (`make migrate`).
    migration_database_url: str | None = None
    db_pool_min: int = Field(default=1, ge=0, le=100)
    db_pool_max: int = Field(default=10, ge=1, le=200)


S = TypeVar("S", bound=BaseSettings)


class ConfigError(SystemExit):
    """Raised by load_settings; a SystemExit so that an unhandled one prints and stops with status 2."""


def describe_validation_error(cls: type[BaseSettings], err: ValidationError) -> str:
    first = err.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    prefix = str(cls.model_config.get("env_prefix") or "")
    value = first.get("input")
    shown = "" if value is None or isinstance(value, dict) else f" (got {value!r})"
    return f"config error: {prefix}{field.upper()}: {first['msg']}{shown}"


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Loads settings from the environment; on a bad or missing value, stops with one line naming it."""
    try:
        return cls(**overrides)
    except ValidationError as err:
        line = describe_validation_error(cls, err)
        print(line, file=sys.stderr)
        raise ConfigError(2) from err


def env_cached(cls: type[S]) -> Callable[[], S]:
    """A factory of `cls()` that builds it again only when one of the environment variables it reads changed.

    For settings read on a hot path (per turn): `cls()` re-reads and re-validates the environment through
    pydantic-settings (a tenth of a millisecond or more each; several per turn showed in the router's
    profile), while an unchanged environment gives the same frozen value. The variables are the fields' names
    (and aliases) with the class's env_prefix, in upper and lower case; classes that read an env file are
    not cached (the file could change unseen)."""
    cfg = cls.model_config
    if cfg.get("env_file") or not cfg.get("frozen"):
        return cls
    prefix = str(cfg.get("env_prefix") or "")
    names: list[str] = []
    for field, info in cls.model_fields.items():
        for name in (field, info.alias, info.validation_alias if isinstance(info.validation_alias, str) else None):
            if name:
                names.extend(((prefix + name).upper(), (prefix + name).lower()))
    keys = tuple(dict.fromkeys(names))
    environ = os.environ
    last: list[tuple[tuple[str | None, ...], S]] = []

    def build() -> S:
        key = tuple(environ.get(k) for k in keys)
        if last and last[0][0] == key:
            return last[0][1]
        value = cls()
        last[:] = [(key, value)]
        return value

    return build
