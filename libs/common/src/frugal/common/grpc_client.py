"""Client channels with keepalive and per-method timeouts/retries (gRPC service config), and
propagation of the caller's deadline and tenant metadata to downstream calls.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from frugal.common.tenancy import (
    REQUEST_ID_METADATA_KEY,
    SESSION_METADATA_KEY,
    TENANT_METADATA_KEY,
    current_identity,
)


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """Timeout for a method (or a whole service when `method` is empty), and whether UNAVAILABLE is
    retried. Retry only idempotent reads: in the mesh, Istio retries connect failures already."""

    service: str
    method: str = ""
    timeout_s: float = 5.0
    retry_unavailable: bool = False
    max_attempts: int = 3


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    policies: Sequence[MethodPolicy] = field(default_factory=tuple)
    max_message_bytes: int = 16 * 1024 * 1024
    keepalive_ms: int = 30_000


def service_config(policies: Sequence[MethodPolicy]) -> str:
    configs = []
    for p in policies:
        name: dict[str, str] = {"service": p.service}
        if p.method:
            name["method"] = p.method
        mc: dict[str, object] = {"name": [name], "timeout": f"{p.timeout_s:.3f}s"}
        if p.retry_unavailable:
            mc["retryPolicy"] = {
                "maxAttempts": p.max_attempts,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        configs.append(mc)
    return json.dumps({"methodConfig": configs})


def create_channel(target: str, config: ChannelConfig | None = None) -> grpc.aio.Channel:
    config = config or ChannelConfig()
    options: list[tuple[str, object]] = [
        ("grpc.keepalive_time_ms", config.keepalive_ms),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.enable_retries", 1),
    ]
    if config.policies:
        options.append(("grpc.service_config", service_config(config.policies)))
    return grpc.aio.insecure_channel(target, options=options)


def outgoing_metadata(
    *, tenant_id: str | None = None, session_id: str | None = None, extra: Mapping[str, str] | None = None
) -> tuple[tuple[str, str], ...]:
    """Metadata for a downstream call: the current RPC's tenant/session/request ids unless given."""
    ident = current_identity()
    tenant = tenant_id or (ident.tenant_id if ident else None)
    session = session_id or (ident.session_id if ident else None)
    request_id = ident.request_id if ident else uuid.uuid4().hex
    md: list[tuple[str, str]] = [(REQUEST_ID_METADATA_KEY, request_id)]
    if tenant:
        md.append((TENANT_METADATA_KEY, tenant))
    if session:
        md.append((SESSION_METADATA_KEY, session))
    md.extend((extra or {}).items())
    return tuple(md)


def remaining_timeout(
    context: grpc.aio.ServicerContext[Any, Any] | None, default_s: float, *, reserve_s: float = 0.0
) -> float:
    """Timeout for a downstream call: at most `default_s`, and never past the caller's deadline
    (minus `reserve_s` kept for our own work after the call). Never below 1 ms, so a call past
    its deadline fails fast with DEADLINE_EXCEEDED instead of having no deadline."""
    left = context.time_remaining() if context is not None else None
    if left is None:
        return default_s
    return max(min(default_s, left - reserve_s), 0.001)
