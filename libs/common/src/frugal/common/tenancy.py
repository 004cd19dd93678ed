"""Tenant and session identity: metadata keys, validation, and the current request's context."""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass

TENANT_METADATA_KEY = "x-tenant-id"
SESSION_METADATA_KEY = "x-session-id"
REQUEST_ID_METADATA_KEY = "x-request-id"

# Tenant ids are strings such as "org_abc123": lowercase letters, digits, '_' and '-', starting with a
# letter or digit, never ending with '_' (the room-name convention splits on '_').
TENANT_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9-])?$")
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
ROOM_PREFIX = "tenant_"


class TenancyError(ValueError):
    """A tenant or session id that does not follow the rules."""


def validate_tenant_id(value: str) -> str:
    if not TENANT_ID_RE.fullmatch(value) or "__" in value:
        raise TenancyError(
            f"invalid tenant id {value!r}: use 1-64 of [a-z0-9_-], starting with a letter or digit, "
            "not ending with '_', no '__'"
        )
    return value


def validate_session_id(value: str) -> str:
    if not SESSION_ID_RE.fullmatch(value):
        raise TenancyError(f"invalid session id {value!r}: use 1-128 of [A-Za-z0-9._:-]")
    return value


def tenant_ids_conflict(a: str, b: str) -> bool:
    """True when one id is the other or an underscore-delimited prefix of it ("org" vs "org_abc").

    Such pairs make room names ambiguous, so the registry refuses to hold both.
    """
    return a == b or a.startswith(b + "_") or b.startswith(a + "_")


def room_tenant_candidates(room_name: str) -> list[tuple[str, str]]:
    """All (tenant_id, room) splits of "tenant_{tenantId}_{roomName}", longest tenant id first.

    The registry decides which candidate exists; because it never holds two conflicting ids, at most
    one can match.
    """
    if not room_name.startswith(ROOM_PREFIX):
        raise TenancyError(f"room name {room_name!r} does not start with {ROOM_PREFIX!r}")
    rest = room_name[len(ROOM_PREFIX) :]
    parts = rest.split("_")
    out: list[tuple[str, str]] = []
    for i in range(len(parts) - 1, 0, -1):
        tenant = "_".join(parts[:i])
        room = "_".join(parts[i:])
        if room and TENANT_ID_RE.fullmatch(tenant) and "__" not in tenant:
            out.append((tenant, room))
    if not out:
        raise TenancyError(f"room name {room_name!r} is not tenant_{{tenantId}}_{{roomName}}")
    return out


@dataclass(frozen=True, slots=True)
class RequestIdentity:
    tenant_id: str | None
    session_id: str | None
    request_id: str


_identity: contextvars.ContextVar[RequestIdentity | None] = contextvars.ContextVar(
    "frugal_request_identity", default=None
)


def set_identity(identity: RequestIdentity) -> contextvars.Token[RequestIdentity | None]:
    return _identity.set(identity)


def reset_identity(token: contextvars.Token[RequestIdentity | None]) -> None:
    _identity.reset(token)


def current_identity() -> RequestIdentity | None:
    return _identity.get()


def current_tenant_id() -> str:
    """The validated tenant of the RPC being served; raises when the RPC carries none."""
    ident = _identity.get()
    if ident is None or ident.tenant_id is None:
        raise TenancyError("no tenant in the current request context")
    return ident.tenant_id

