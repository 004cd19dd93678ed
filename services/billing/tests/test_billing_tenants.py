"""Tenant registry over real gRPC + Postgres + Redis: validation, conflicting ids (also under concurrency),
adversarial room-name resolution, the registry's RLS design, and the policy published to Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from frugal.api.billing.v1 import billing_pb2
from frugal.api.common.v1 import common_pb2
from frugal.common.db import create_pool, tenant_transaction
from frugal.common.tenant_state import read_budget, read_policy


async def _code(coro: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    return err.value.code(), err.value.details() or ""


async def test_upsert_creates_updates_and_publishes(service: Any, kit: Any, redis_client: aioredis.Redis) -> None:
    resp = await kit.upsert(
        service.stub, "org_abc123", display_name="ACME", plan="pro", monthly_budget_usd=50.0,
        requests_per_minute=60, tokens_per_minute=100_000,
        target_mix=common_pb2.TierMix(lite=0.6, standard=0.3, premium=0.1), instructions="Be brief.\nAlways.",
        knowledge_base_enabled=True, downgrade_at=0.7, refuse_at=0.95,
    )
    assert resp.created is True
    assert resp.policy.display_name == "ACME" and resp.policy.target_mix.premium == pytest.approx(0.1)
    published = await read_policy(redis_client, "org_abc123")
    assert published == resp.policy
    budget = await read_budget(redis_client, "org_abc123")
    assert budget is not None and budget.status == billing_pb2.BUDGET_STATUS_OK and budget.budget_usd == 50.0
    assert 0 < await redis_client.ttl("frugal:budget:org_abc123") <= 7200

    again = await kit.upsert(service.stub, "org_abc123", display_name="ACME Corp", monthly_budget_usd=-5)
    assert again.created is False
    assert again.policy.display_name == "ACME Corp" and not again.policy.HasField("target_mix")
    assert again.policy.plan == "default"
    got = await service.stub.GetTenantPolicy(billing_pb2.GetTenantPolicyRequest(), metadata=kit.md("org_abc123"))
    assert got.policy == again.policy
    assert (await read_policy(redis_client, "org_abc123")) == again.policy
    budget = await read_budget(redis_client, "org_abc123")
    assert again.policy.monthly_budget_usd == -1  # any negative budget is stored as "no cap"
    assert budget is not None and budget.status == billing_pb2.BUDGET_STATUS_UNLIMITED

    # Budget 0 suspends the tenant (it used to mean "unlimited": fail open).
    await kit.upsert(service.stub, "org_abc123", monthly_budget_usd=0)
    budget = await read_budget(redis_client, "org_abc123")
    assert budget is not None and budget.status == billing_pb2.BUDGET_STATUS_EXHAUSTED


INVALID_POLICIES: list[tuple[dict[str, Any], str]] = [
    (dict(target_mix=common_pb2.TierMix(lite=0.5, standard=0.3, premium=0.1)), "sum to 1"),
    (dict(target_mix=common_pb2.TierMix(lite=1.5, standard=-0.5, premium=0.0)), "target_mix.lite"),
    (dict(target_mix=common_pb2.TierMix()), "sum to 1"),
    (dict(target_mix=common_pb2.TierMix(lite=0.5, standard=0.0, premium=0.5), max_tier=common_pb2.TIER_STANDARD),
     "above max_tier"),
    (dict(monthly_budget_usd=-2e9), "monthly_budget_usd"),
    (dict(monthly_budget_usd=float("nan")), "monthly_budget_usd"),
    (dict(monthly_budget_usd=float("inf")), "monthly_budget_usd"),
    (dict(requests_per_minute=-5), "requests_per_minute"),
    (dict(max_tier=7), "max_tier"),
    (dict(pinned_tier=common_pb2.TIER_PREMIUM, max_tier=common_pb2.TIER_LITE), "pinned_tier"),
    (dict(downgrade_at=0.9, refuse_at=0.5), "downgrade_at"),
    (dict(refuse_at=0.5), "downgrade_at"),  # default downgrade 0.8 > 0.5
    (dict(refuse_at=11.0), "refuse_at"),
    (dict(plan="Gold Plan"), "plan"),
    (dict(display_name="x" * 201), "display_name"),
    (dict(display_name="bad\x00name"), "display_name"),
    (dict(instructions="nul\x00byte"), "instructions"),
]


async def test_upsert_rejects_invalid_policies(service: Any, kit: Any) -> None:
    for fields, needle in INVALID_POLICIES:
        code, details = await _code(kit.upsert(service.stub, "acme", **fields))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (fields, details)
        assert needle in details, (fields, details)
    code, _ = await _code(service.stub.GetTenantPolicy(billing_pb2.GetTenantPolicyRequest(), metadata=kit.md("acme")))
    assert code == grpc.StatusCode.NOT_FOUND  # nothing was stored


async def test_upsert_identity_rules(service: Any, kit: Any) -> None:
    policy = billing_pb2.TenantPolicy(tenant_id="acme", display_name="A")
    code, details = await _code(service.stub.UpsertTenant(billing_pb2.UpsertTenantRequest(policy=policy),
                                                          metadata=kit.md("other")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "x-tenant-id" in details
    code, _ = await _code(service.stub.UpsertTenant(billing_pb2.UpsertTenantRequest(), metadata=kit.md("acme")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await _code(service.stub.UpsertTenant(billing_pb2.UpsertTenantRequest(policy=policy),
                                                    metadata=(("x-session-id", "s1"),)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await _code(service.stub.UpsertTenant(billing_pb2.UpsertTenantRequest(policy=policy),
                                                    metadata=kit.md("Bad_Tenant")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    await kit.upsert(service.stub, "acme")
    code, _ = await _code(service.stub.GetTenantPolicy(billing_pb2.GetTenantPolicyRequest(tenant_id="acme"),
                                                       metadata=kit.md("other")))
    assert code == grpc.StatusCode.PERMISSION_DENIED


CONFLICTS = [("org", "org_abc"), ("org_abc", "org"), ("org_abc", "org_abc_x"), ("a_b_c", "a"), ("a-b", "a-b_c")]


async def test_conflicting_ids_are_refused(service: Any, kit: Any) -> None:
    for n, (first_suffix, second_suffix) in enumerate(CONFLICTS):
        # A distinct namespace per case ("c0org" / "c0org_abc"...), one database for all of them.
        first, second = f"c{n}{first_suffix}", f"c{n}{second_suffix}"
        await kit.upsert(service.stub, first)
        code, details = await _code(kit.upsert(service.stub, second))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (first, second, details)
        assert repr(first) in details and "prefix" in details
        code, _ = await _code(service.stub.GetTenantPolicy(billing_pb2.GetTenantPolicyRequest(),
                                                           metadata=kit.md(second)))
        assert code == grpc.StatusCode.NOT_FOUND


async def test_non_conflicting_neighbours_coexist(service: Any, kit: Any) -> None:
    for tid in ("org_abc", "org_abc123", "organic", "org-abc", "org_abd"):
        assert (await kit.upsert(service.stub, tid)).created


async def test_concurrent_conflicting_upserts_never_both_succeed(service: Any, kit: Any) -> None:
    for round_no in range(6):
        ids = [f"r{round_no}", f"r{round_no}_a", f"r{round_no}_a_b", f"r{round_no}_a_c"]
        results = await asyncio.gather(*(kit.upsert(service.stub, tid) for tid in ids), return_exceptions=True)
        ok = [tid for tid, r in zip(ids, results, strict=True) if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        # r_a_b and r_a_c do not conflict with each other, but every other pair does.
        assert ok in ([ids[0]], [ids[1]], [ids[2], ids[3]]), ok
        for err in errors:
            assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_registration_is_serialised_by_the_registry_lock(billing_db: Any) -> None:
    """A registration waits for an open one to commit, then sees it: no window for 'org' + 'org_abc'."""
    pool = await create_pool(billing_db.app_dsn, min_size=2, max_size=3)
    admin = await asyncpg.connect(billing_db.admin_dsn)
    try:
        async with tenant_transaction(pool, "org") as conn:
            assert await conn.fetchval("SELECT billing_register_tenant('org')") is None

            async def second() -> str | None:
                async with tenant_transaction(pool, "org_abc") as c2:
                    result: str | None = await c2.fetchval("SELECT billing_register_tenant('org_abc')")
                    return result

            task = asyncio.create_task(second())
            for _ in range(200):
                waiting = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' "
                    "AND datname = current_database()")
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting == 1 and not task.done()
        assert await task == "org"  # committed 'org' is visible once the lock is granted
    finally:
        await admin.close()
        await pool.close()


async def test_registry_rls_design(service: Any, kit: Any, billing_db: Any) -> None:
    await kit.upsert(service.stub, "alpha", display_name="Alpha secret name", instructions="alpha-only")
    await kit.upsert(service.stub, "beta", display_name="Beta")
    pool = await create_pool(billing_db.app_dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT * FROM tenant_registry")
            # Without a tenant setting RLS shows no policy rows at all.
            assert await conn.fetch("SELECT * FROM tenants") == []
        async with tenant_transaction(pool, "beta") as conn:
            rows = await conn.fetch("SELECT tenant_id, display_name FROM tenants")
            assert [tuple(r) for r in rows] == [("beta", "Beta")]
            assert await conn.fetchval("SELECT count(*) FROM tenants WHERE tenant_id = 'alpha'") == 0
            # Registration is bound to the transaction's own tenant.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval("SELECT billing_register_tenant('gamma')")
        async with tenant_transaction(pool, "beta") as conn:
            # An update of another tenant's row touches nothing; an insert for it is refused by WITH CHECK.
            status = await conn.execute("UPDATE tenants SET display_name = 'pwned' WHERE tenant_id = 'alpha'")
            assert status == "UPDATE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with tenant_transaction(pool, "beta") as conn:
                await conn.execute("INSERT INTO tenants (tenant_id, display_name, plan) VALUES ('alpha', 'x', 'p')")
        # Resolution reveals membership of the given candidates only.
        async with pool.acquire() as conn:
            assert [r[0] for r in await conn.fetch("SELECT billing_resolve_tenant(ARRAY['alpha','nope'])")] == ["alpha"]
    finally:
        await pool.close()
    got = await service.stub.GetTenantPolicy(billing_pb2.GetTenantPolicyRequest(), metadata=kit.md("alpha"))
    assert got.policy.display_name == "Alpha secret name"


@pytest.fixture
async def resolvable(service: Any, kit: Any) -> Any:
    for tid in ("org_abc", "org_abc123", "acme", "a-b"):
        await kit.upsert(service.stub, tid, display_name=f"name of {tid}")
    return service


RESOLVED = [
    ("tenant_org_abc123_sales-meeting-2024", "org_abc123", "sales-meeting-2024"),
    ("tenant_org_abc123_x", "org_abc123", "x"),
    ("tenant_org_abc_123_x", "org_abc", "123_x"),
    ("tenant_org_abc_x_y_z", "org_abc", "x_y_z"),
    ("tenant_acme_réunion-été", "acme", "réunion-été"),
    ("tenant_acme_a＿b", "acme", "a＿b"),  # a fullwidth underscore is not a separator
    ("tenant_acme__", "acme", "_"),
    ("tenant_a-b_room", "a-b", "room"),
    ("tenant_acme_org_abc123_x", "acme", "org_abc123_x"),
]
NOT_FOUND = [
    "tenant_org_x",  # 'org' is not registered (org_abc is): no fallback to a neighbour
    "tenant_org_abc1234_x",
    "tenant_org_ab_c123_x",
    "tenant_acm_e",
    "tenant_organic_x",
    "tenant_org_abc123",  # the whole rest is one registered id: no room part, so only 'org' is a candidate
    "tenant_org_abc123_",  # likewise: empty room part for org_abc123
]
MALFORMED = [
    "", "org_abc123_x", "Tenant_org_abc123_x", "tenant_", "tenant_acme", "tenant__acme_x",
    "tenant_ACME_x", "tenant_örg_x", "tenant_ａcme_x", "tenant_acme_x\n", "tenant_acme_\x00",
    "tenant_" + "a" * 600 + "_x", " tenant_acme_x",
]


async def _resolve(svc: Any, kit: Any, room: str) -> Any:
    return await svc.stub.ResolveTenant(billing_pb2.ResolveTenantRequest(room_name=room), metadata=kit.md(None))


async def test_resolve_tenant(resolvable: Any, kit: Any) -> None:
    for room, tenant, part in RESOLVED:
        resp = await _resolve(resolvable, kit, room)
        assert (resp.tenant_id, resp.room) == (tenant, part), room
        assert resp.policy.tenant_id == tenant and resp.policy.display_name == f"name of {tenant}"


async def test_resolve_unknown_is_not_found(resolvable: Any, kit: Any) -> None:
    for room in NOT_FOUND:
        code, details = await _code(_resolve(resolvable, kit, room))
        assert code == grpc.StatusCode.NOT_FOUND, (room, details)


async def test_resolve_malformed_is_invalid_argument(resolvable: Any, kit: Any) -> None:
    for room in MALFORMED:
        code, details = await _code(_resolve(resolvable, kit, room))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (room, details)


async def test_resolve_needs_a_session(resolvable: Any) -> None:
    code, _ = await _code(resolvable.stub.ResolveTenant(billing_pb2.ResolveTenantRequest(room_name="tenant_acme_x")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
