"""gRPC wiring of the billing service: tenants, usage and budgets over the ledger, and the ledger consumer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import asyncpg
import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.billing import session_report
from frugal.billing.budget import month_start, read_budget_inputs
from frugal.billing.config import Settings
from frugal.billing.consumer import UNAVAILABLE_DB_ERRORS, ConsumerConfig, LedgerConsumer
from frugal.billing.ledger import usage_report
from frugal.billing.state import StatePublisher, StateRefresher
from frugal.billing.tenants import (
    PolicyError,
    RegistryInconsistentError,
    TenantConflictError,
    TenantNotFoundError,
    TenantRegistry,
)
from frugal.common.db import create_pool, tenant_transaction
from frugal.common.grpc_server import GrpcApp, service_full_name
from frugal.common.migrations import apply_migrations
from frugal.common.pricing import PriceCatalog, default_catalog
from frugal.common.redis_client import create_redis
from frugal.common.tenancy import TenancyError, current_tenant_id

SERVICE_NAME = service_full_name(billing_pb2.DESCRIPTOR, "BillingService")
MIGRATIONS_PACKAGE = "frugal.billing.migrations"
APP_ROLE = "frugal_billing"

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


async def _fail(context: Context, err: Exception) -> NoReturn:
    """Maps an exception to a gRPC status with a useful message."""
    if isinstance(err, grpc.aio.AbortError):
        raise err
    code: grpc.StatusCode
    if isinstance(err, PolicyError | TenancyError):
        code, msg = grpc.StatusCode.INVALID_ARGUMENT, str(err)
    elif isinstance(err, TenantNotFoundError):
        code, msg = grpc.StatusCode.NOT_FOUND, str(err)
    elif isinstance(err, TenantConflictError):
        code, msg = grpc.StatusCode.FAILED_PRECONDITION, str(err)
    elif isinstance(err, RedisError):
        code, msg = grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {err}"
    elif isinstance(err, UNAVAILABLE_DB_ERRORS):
        code, msg = grpc.StatusCode.UNAVAILABLE, f"database unavailable: {type(err).__name__}: {err}"
    elif isinstance(err, RegistryInconsistentError):
        log.error("tenant registry inconsistent: %s", err)
        code, msg = grpc.StatusCode.INTERNAL, str(err)
    else:
        log.exception("unexpected error", exc_info=err)
        code, msg = grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}"
    await context.abort(code, msg)
    raise AssertionError("unreachable")  # abort raises


def _window(request: billing_pb2.GetUsageRequest, now: datetime) -> tuple[datetime, datetime]:
    try:
        start = (request.start.ToDatetime(tzinfo=UTC) if request.HasField("start")
                 else datetime.combine(month_start(now), datetime.min.time(), tzinfo=UTC))
        end = request.end.ToDatetime(tzinfo=UTC) if request.HasField("end") else now
    except (ValueError, OverflowError) as err:
        raise PolicyError(f"invalid window timestamp: {err}") from None
    if start >= end:
        raise PolicyError(f"window start {start.isoformat()} must be before end {end.isoformat()}")
    return start, end


class BillingServiceServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self, pool: asyncpg.Pool, registry: TenantRegistry, publisher: StatePublisher) -> None:
        self._pool = pool
        self._registry = registry
        self._publisher = publisher

    async def ResolveTenant(
        self, request: billing_pb2.ResolveTenantRequest, context: Context
    ) -> billing_pb2.ResolveTenantResponse:
        try:
            found = await self._registry.resolve(request.room_name)
            policy = await self._registry.get(found.tenant_id)
            return billing_pb2.ResolveTenantResponse(tenant_id=found.tenant_id, room=found.room, policy=policy)
        except Exception as err:
            await _fail(context, err)

    async def GetTenantPolicy(
        self, request: billing_pb2.GetTenantPolicyRequest, context: Context
    ) -> billing_pb2.GetTenantPolicyResponse:
        try:
            tenant = current_tenant_id()
            if request.tenant_id and request.tenant_id != tenant:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"tenant_id {request.tenant_id!r} differs from x-tenant-id {tenant!r}")
            return billing_pb2.GetTenantPolicyResponse(policy=await self._registry.get(tenant))
        except Exception as err:
            await _fail(context, err)

    async def UpsertTenant(
        self, request: billing_pb2.UpsertTenantRequest, context: Context
    ) -> billing_pb2.UpsertTenantResponse:
        try:
            tenant = current_tenant_id()
            if not request.HasField("policy"):
                raise PolicyError("policy is required")
            if request.policy.tenant_id != tenant:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"policy.tenant_id {request.policy.tenant_id!r} must equal x-tenant-id {tenant!r}",
                )
            policy, created = await self._registry.upsert(request.policy)
            log.info("tenant %s %s", tenant, "created" if created else "updated")
            try:
                await self._publisher.refresh_tenant(tenant)
            except (RedisError, OSError) as err:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"tenant saved, but its policy could not be published to Redis ({err}); retry the upsert",
                )
            return billing_pb2.UpsertTenantResponse(policy=policy, created=created)
        except Exception as err:
            await _fail(context, err)

    async def GetUsage(self, request: billing_pb2.GetUsageRequest, context: Context) -> billing_pb2.GetUsageResponse:
        try:
            tenant = current_tenant_id()
            start, end = _window(request, datetime.now(UTC))
            resp = await usage_report(self._pool, tenant, start, end)
            return await session_report.add_session_cost(resp, self._pool, tenant, start, end, request.session_id)
        except Exception as err:
            await _fail(context, err)

    async def GetBudgetState(
        self, request: billing_pb2.GetBudgetStateRequest, context: Context
    ) -> billing_pb2.GetBudgetStateResponse:
        try:
            tenant = current_tenant_id()
            now = datetime.now(UTC)
            async with tenant_transaction(self._pool, tenant) as conn:
                inputs = await read_budget_inputs(conn, tenant, now)
            if inputs is None:
                raise TenantNotFoundError(f"tenant {tenant!r} is not registered")
            return billing_pb2.GetBudgetStateResponse(state=self._publisher.state(inputs, now))
        except Exception as err:
            await _fail(context, err)


@dataclass
class Billing:
    """The service's resources, for build_app and for tests."""

    app: GrpcApp
    pool: asyncpg.Pool
    redis: aioredis.Redis
    catalog: PriceCatalog
    registry: TenantRegistry
    publisher: StatePublisher
    refresher: StateRefresher
    consumer: LedgerConsumer | None


async def migrate(settings: Settings) -> list[str]:
    if not settings.migration_database_url:
        return []
    applied = await apply_migrations(
        settings.migration_database_url, package=MIGRATIONS_PACKAGE, component="billing", app_role=APP_ROLE
    )
    if applied:
        log.info("billing migrations applied: %s", ", ".join(applied))
    return applied


async def build_billing(settings: Settings) -> Billing:
    await migrate(settings)
    catalog = default_catalog(settings.price_catalog_path)
    session_report.use_catalog(catalog)
    pool = await create_pool(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
                             application_name="frugal-billing")
    redis = create_redis(settings.cost_redis_url)
    registry = TenantRegistry(pool)
    publisher = StatePublisher(pool, redis, count_offline=settings.budget_count_offline,
                               budget_ttl_s=settings.budget_state_ttl_seconds)
    app = GrpcApp(
        settings,
        services=[SERVICE_NAME],
        # The gateway resolves the tenant from the room name: it has no tenant id to send yet.
        tenant_optional_methods=[f"/{SERVICE_NAME}/ResolveTenant"],
    )
    billing_pb2_grpc.add_BillingServiceServicer_to_server(
        BillingServiceServicer(pool, registry, publisher), app.server
    )
    # Shutdown hooks run in reverse order: consumer, refresher, then Redis and the pool.
    app.on_shutdown(pool.close)
    app.on_shutdown(redis.aclose)
    refresher = StateRefresher(publisher, registry, settings.budget_refresh_seconds,
                               watch_s=settings.budget_state_watch_seconds)
    refresher.start()
    app.on_shutdown(refresher.aclose)
    consumer: LedgerConsumer | None = None
    if settings.ledger_consumer_enabled:
        consumer = LedgerConsumer(pool, redis, catalog, ConsumerConfig.from_settings(settings), publisher=publisher)
        await consumer.start()
        app.on_shutdown(consumer.aclose)
    return Billing(app, pool, redis, catalog, registry, publisher, refresher, consumer)


async def build_app(settings: Settings) -> GrpcApp:
    return (await build_billing(settings)).app
