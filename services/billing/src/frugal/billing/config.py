"""billing settings (environment variables, validated at start)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from frugal.common.cost_events import COST_EVENTS_STREAM
from frugal.common.settings import PORTS, DatabaseSettings

DLQ_STREAM = "cost-events-dlq"
CONSUMER_GROUP = "billing-ledger"


def default_consumer_name() -> str:
    """Stable across container restarts in one pod (hostname = pod name, pid usually 1): a restarted
    billing finds its own pending entries at once instead of waiting for the idle timeout."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(DatabaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "billing"
    grpc_port: int = PORTS["billing"][0]
    metrics_port: int = PORTS["billing"][1]

    # Ledger consumer (runs inside the service; `python -m frugal.billing consume` runs it alone).
    ledger_consumer_enabled: bool = True
    ledger_stream: str = Field(default=COST_EVENTS_STREAM, min_length=1, max_length=200)
    ledger_dlq_stream: str = Field(default=DLQ_STREAM, min_length=1, max_length=200)
    ledger_group: str = Field(default=CONSUMER_GROUP, min_length=1, max_length=200)
    # Empty means "{hostname}-{pid}".
    ledger_consumer_name: str = Field(default="", max_length=200)
    # Stream entries read per XREADGROUP; one transaction per batch. 5000: on 2 idle cores ~19-21.6k events/s at
    # 500 tenants against ~16-17k at 2000 (bench/billing/run.py --batch); a transaction then takes ~150-190 ms.
    ledger_batch_size: int = Field(default=5000, ge=1, le=10_000)
    # XREADGROUP BLOCK; must stay below the Redis client's 5 s socket timeout.
    ledger_block_ms: int = Field(default=1000, ge=10, le=4000)
    # A pending entry idle this long belongs to a dead or stuck consumer and is reclaimed (XAUTOCLAIM).
    ledger_claim_idle_ms: int = Field(default=30_000, ge=10, le=3_600_000)
    # How often to reclaim, refresh the lag gauges and trim the stream.
    ledger_maintenance_seconds: float = Field(default=5.0, gt=0, le=3600)
    # An entry delivered this many times without being written goes to the dead-letter stream.
    ledger_max_deliveries: int = Field(default=10, ge=2, le=1000)
    # LEGACY per-tenant path only (LEDGER_PER_TENANT_TRANSACTIONS=true, for comparisons): concurrent
    # tenant transactions of one batch.
    ledger_per_tenant_transactions: bool = False
    ledger_write_concurrency: int = Field(default=4, ge=1, le=64)
    # Acknowledged entries are deleted as soon as they are committed (XDEL) when billing's group is the only
    # one; maintenance also trims (XTRIM MINID) entries every group acknowledged, once older than this (0: at
    # once).
    ledger_stream_retention_seconds: int = Field(default=0, ge=0)

    # Budget state in Redis: re-published for every tenant this often (month roll-over, Redis restarts),
    # with this TTL (readers treat a missing key as "unknown").
    budget_refresh_seconds: float = Field(default=15.0, gt=0, le=86_400)
    budget_state_ttl_seconds: int = Field(default=3600, ge=10)
    # How often the refresher checks that the state store still holds billing's epoch key; gone (a flushed or
    # empty Redis), every tenant is republished at once.
    budget_state_watch_seconds: float = Field(default=1.0, gt=0, le=3600)
    # Whether offline (no API key, nothing was paid) events count toward the month-to-date spend.
    budget_count_offline: bool = False

    @field_validator("budget_state_ttl_seconds")
    @classmethod
    def _ttl_above_refresh(cls, value: int, info: ValidationInfo) -> int:
        refresh = info.data.get("budget_refresh_seconds")
        if refresh is not None and value <= refresh:
            raise ValueError(f"must be greater than BUDGET_REFRESH_SECONDS ({refresh:g})")
        return value

    @field_validator("ledger_dlq_stream")
    @classmethod
    def _dlq_differs(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("ledger_stream"):
            raise ValueError("must differ from LEDGER_STREAM")
        return value

    @property
    def consumer_name(self) -> str:
        return self.ledger_consumer_name or default_consumer_name()
