"""gRPC wiring of the billing service."""

from __future__ import annotations

from typing import Any

import grpc

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.billing.config import Settings
from frugal.common.grpc_server import GrpcApp, abort_unimplemented, service_full_name

SERVICE_NAME = service_full_name(billing_pb2.DESCRIPTOR, "BillingService")


class BillingServiceServicer(billing_pb2_grpc.BillingServiceServicer):

    async def ResolveTenant(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "BillingService.ResolveTenant")

    async def GetTenantPolicy(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "BillingService.GetTenantPolicy")

    async def UpsertTenant(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "BillingService.UpsertTenant")

    async def GetUsage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "BillingService.GetUsage")

    async def GetBudgetState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_unimplemented(context, "BillingService.GetBudgetState")


async def build_app(settings: Settings) -> GrpcApp:
    app = GrpcApp(
        settings,
        services=[SERVICE_NAME],
        # The gateway resolves the tenant from the room name: it has no tenant id to send yet.
        tenant_optional_methods=[f"/{SERVICE_NAME}/ResolveTenant"],
    )
    billing_pb2_grpc.add_BillingServiceServicer_to_server(BillingServiceServicer(), app.server)  # type: ignore[no-untyped-call]
    return app
