"""The tenant registry: validated policies, conflict-free ids, room-name resolution.

Policies live in `tenants` (RLS: a transaction sees only its own tenant's row). The set of registered ids
lives in `tenant_registry`, which the app role cannot touch except through SECURITY DEFINER functions
(see migrations/0001_init.sql): registration of the current tenant (conflict-checked under an advisory
lock), membership of candidate ids (resolution), and the list of ids (re-publication to Redis).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import asyncpg

from frugal.api.billing.v1 import billing_pb2
from frugal.api.common.v1 import common_pb2
from frugal.common.db import tenant_transaction
from frugal.common.tenancy import TenancyError, room_tenant_candidates, validate_tenant_id
from frugal.common.tenant_state import DEFAULT_DOWNGRADE_AT, DEFAULT_REFUSE_AT, NO_CAP, effective_thresholds

PLAN_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DEFAULT_PLAN = "default"
MAX_DISPLAY_NAME = 200
MAX_INSTRUCTIONS = 16_000
MAX_BUDGET_USD = 1e9
MAX_THRESHOLD = 10.0
MAX_ROOM_NAME = 512
MIX_TOLERANCE = 1e-6
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
TIER_NAMES = {common_pb2.TIER_LITE: "lite", common_pb2.TIER_STANDARD: "standard", common_pb2.TIER_PREMIUM: "premium"}

_COLUMNS = (
    "tenant_id, display_name, plan, monthly_budget_usd, requests_per_minute, tokens_per_minute, "
    "mix_lite, mix_standard, mix_premium, max_tier, pinned_tier, instructions, knowledge_base_enabled, "
    "downgrade_at, refuse_at"
)


class PolicyError(ValueError):
    """A tenant policy that breaks a rule (INVALID_ARGUMENT)."""


class TenantConflictError(Exception):
    """The id is an underscore-delimited prefix of a registered id, or has one as its prefix."""

    def __init__(self, tenant_id: str, existing: str) -> None:
        super().__init__(
            f"tenant id {tenant_id!r} conflicts with registered tenant {existing!r}: one is an underscore-delimited "
            f"prefix of the other, so room names 'tenant_{{id}}_{{room}}' would be ambiguous; choose another id"
        )
        self.tenant_id = tenant_id
        self.existing = existing


class TenantNotFoundError(LookupError):
    pass


class RegistryInconsistentError(RuntimeError):
    """More than one candidate of a room name is registered: the conflict rule was bypassed."""


def _finite(name: str, value: float, low: float, high: float) -> float:
    if not math.isfinite(value) or value < low or value > high:
        raise PolicyError(f"{name} must be a finite number in [{low:g}, {high:g}] (got {value!r})")
    return value


def _text(name: str, value: str, max_len: int, *, allow_newlines: bool = False) -> str:
    if len(value) > max_len:
        raise PolicyError(f"{name} is longer than {max_len} characters")
    probe = value.replace("\n", "").replace("\t", "").replace("\r", "") if allow_newlines else value
    if _CONTROL_RE.search(probe):
        raise PolicyError(f"{name} contains control characters")
    return value


def validate_policy(policy: billing_pb2.TenantPolicy) -> billing_pb2.TenantPolicy:
    """Checks every field; returns a normalised copy (defaults filled in: display name, plan)."""
    out = billing_pb2.TenantPolicy()
    out.CopyFrom(policy)
    try:
        validate_tenant_id(policy.tenant_id)
    except TenancyError as err:
        raise PolicyError(f"policy.tenant_id: {err}") from None
    name = _text("display_name", policy.display_name.strip(), MAX_DISPLAY_NAME)
    out.display_name = name or policy.tenant_id
    plan = policy.plan or DEFAULT_PLAN
    if not PLAN_RE.fullmatch(plan):
        raise PolicyError(f"plan {policy.plan!r} must be 1-32 of [a-z0-9_-], starting with a letter or digit")
    out.plan = plan
    # > 0 a hard cap, 0 suspends the tenant, < 0 means no cap (stored as NO_CAP).
    _finite("monthly_budget_usd", policy.monthly_budget_usd, -MAX_BUDGET_USD, MAX_BUDGET_USD)
    if policy.monthly_budget_usd < 0:
        out.monthly_budget_usd = NO_CAP
    if policy.requests_per_minute < 0 or policy.tokens_per_minute < 0:
        raise PolicyError("requests_per_minute and tokens_per_minute must be >= 0 (0 means the service default)")
    valid_tiers = set(common_pb2.Tier.values())
    for field in ("max_tier", "pinned_tier"):
        if getattr(policy, field) not in valid_tiers:
            raise PolicyError(f"{field} {getattr(policy, field)} is not a known tier")
    max_tier = policy.max_tier or common_pb2.TIER_PREMIUM
    if policy.pinned_tier and policy.pinned_tier > max_tier:
        raise PolicyError(
            f"pinned_tier {common_pb2.Tier.Name(policy.pinned_tier)} is above max_tier {common_pb2.Tier.Name(max_tier)}"
        )
    if policy.HasField("target_mix"):
        mix = policy.target_mix
        shares = {"lite": mix.lite, "standard": mix.standard, "premium": mix.premium}
        for tier_name, share in shares.items():
            _finite(f"target_mix.{tier_name}", share, 0.0, 1.0)
        total = sum(shares.values())
        if abs(total - 1.0) > MIX_TOLERANCE:
            raise PolicyError(f"target_mix shares must sum to 1 (got {total:.6f})")
        for tier_value, tier_name in TIER_NAMES.items():
            if tier_value > max_tier and shares[tier_name] > 0:
                raise PolicyError(
                    f"target_mix gives {shares[tier_name]:.3f} of traffic to {tier_name}, above max_tier "
                    f"{common_pb2.Tier.Name(max_tier)}"
                )
    _text("instructions", policy.instructions, MAX_INSTRUCTIONS, allow_newlines=True)
    for field in ("downgrade_at", "refuse_at"):
        _finite(field, getattr(policy, field), 0.0, MAX_THRESHOLD)
    downgrade, refuse = effective_thresholds(policy.downgrade_at, policy.refuse_at)
    if downgrade > refuse:
        raise PolicyError(
            f"downgrade_at ({downgrade:g}, 0 = default {DEFAULT_DOWNGRADE_AT:g}) must not exceed refuse_at "
            f"({refuse:g}, 0 = default {DEFAULT_REFUSE_AT:g})"
        )
    return out


def policy_from_record(rec: asyncpg.Record) -> billing_pb2.TenantPolicy:
    policy = billing_pb2.TenantPolicy(
        tenant_id=rec["tenant_id"],
        display_name=rec["display_name"],
        plan=rec["plan"],
        monthly_budget_usd=rec["monthly_budget_usd"],
        requests_per_minute=rec["requests_per_minute"],
        tokens_per_minute=rec["tokens_per_minute"],
        max_tier=rec["max_tier"],
        pinned_tier=rec["pinned_tier"],
        instructions=rec["instructions"],
        knowledge_base_enabled=rec["knowledge_base_enabled"],
        downgrade_at=rec["downgrade_at"],
        refuse_at=rec["refuse_at"],
    )
    if rec["mix_lite"] is not None:
        policy.target_mix.CopyFrom(
            common_pb2.TierMix(lite=rec["mix_lite"], standard=rec["mix_standard"], premium=rec["mix_premium"])
        )
    return policy


async def fetch_policy(conn: asyncpg.Connection, tenant_id: str) -> billing_pb2.TenantPolicy | None:
    """Inside a tenant_transaction for `tenant_id` (RLS shows no other row anyway)."""
    rec = await conn.fetchrow(f"SELECT {_COLUMNS} FROM tenants WHERE tenant_id = $1", tenant_id)
    return None if rec is None else policy_from_record(rec)


@dataclass(frozen=True, slots=True)
class Resolution:
    tenant_id: str
    room: str


def room_candidates(room_name: str) -> list[tuple[str, str]]:
    """Validated (tenant_id, room) splits of a room name; TenancyError when malformed."""
    if not room_name:
        raise TenancyError("room_name is empty")
    if len(room_name) > MAX_ROOM_NAME:
        raise TenancyError(f"room_name is longer than {MAX_ROOM_NAME} characters")
    if _CONTROL_RE.search(room_name):
        raise TenancyError("room_name contains control characters")
    return room_tenant_candidates(room_name)


class TenantRegistry:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert(self, policy: billing_pb2.TenantPolicy) -> tuple[billing_pb2.TenantPolicy, bool]:
        """Creates or replaces the tenant's policy. Returns (stored policy, created)."""
        policy = validate_policy(policy)
        tid = policy.tenant_id
        mix = policy.target_mix if policy.HasField("target_mix") else None
        async with tenant_transaction(self._pool, tid) as conn:
            # Takes the registry lock for the rest of this transaction, then checks conflicts.
            conflict = await conn.fetchval("SELECT billing_register_tenant($1)", tid)
            if conflict is not None:
                raise TenantConflictError(tid, conflict)
            existed = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)", tid)
            rec = await conn.fetchrow(
                f"""INSERT INTO tenants ({_COLUMNS})
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                    ON CONFLICT (tenant_id) DO UPDATE SET
                        display_name = EXCLUDED.display_name, plan = EXCLUDED.plan,
                        monthly_budget_usd = EXCLUDED.monthly_budget_usd,
                        requests_per_minute = EXCLUDED.requests_per_minute,
                        tokens_per_minute = EXCLUDED.tokens_per_minute,
                        mix_lite = EXCLUDED.mix_lite, mix_standard = EXCLUDED.mix_standard,
                        mix_premium = EXCLUDED.mix_premium, max_tier = EXCLUDED.max_tier,
                        pinned_tier = EXCLUDED.pinned_tier, instructions = EXCLUDED.instructions,
                        knowledge_base_enabled = EXCLUDED.knowledge_base_enabled,
                        downgrade_at = EXCLUDED.downgrade_at, refuse_at = EXCLUDED.refuse_at,
                        updated_at = now()
                    RETURNING {_COLUMNS}""",
                tid, policy.display_name, policy.plan, policy.monthly_budget_usd, policy.requests_per_minute,
                policy.tokens_per_minute, mix.lite if mix else None, mix.standard if mix else None,
                mix.premium if mix else None, policy.max_tier, policy.pinned_tier, policy.instructions,
                policy.knowledge_base_enabled, policy.downgrade_at, policy.refuse_at,
            )
        assert rec is not None
        return policy_from_record(rec), not existed

    async def get(self, tenant_id: str) -> billing_pb2.TenantPolicy:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            policy = await fetch_policy(conn, tenant_id)
        if policy is None:
            raise TenantNotFoundError(f"tenant {tenant_id!r} is not registered")
        return policy

    async def resolve(self, room_name: str) -> Resolution:
        """`tenant_{tenantId}_{roomName}` -> the registered tenant. TenancyError when malformed,
        TenantNotFoundError when no candidate is registered."""
        candidates = room_candidates(room_name)
        # Registry membership only (SECURITY DEFINER function): no tenant data is read here.
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT billing_resolve_tenant($1::text[])", [tenant for tenant, _ in candidates]
            )
        found = {r[0] for r in rows}
        matches = [c for c in candidates if c[0] in found]
        if len(matches) > 1:
            raise RegistryInconsistentError(f"room {room_name!r} matches several tenants: {sorted(found)}")
        if not matches:
            raise TenantNotFoundError(f"no registered tenant for room {room_name!r}")
        tenant_id, room = matches[0]
        return Resolution(tenant_id=tenant_id, room=room)

    async def list_ids(self) -> list[str]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT billing_list_tenant_ids()")
        return [r[0] for r in rows]
