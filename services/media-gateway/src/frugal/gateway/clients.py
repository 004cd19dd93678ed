"""gRPC clients of the mesh (router, vision-dedup, billing) and tenant resolution for a room."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.api.router.v1 import router_pb2_grpc
from frugal.api.vision.v1 import vision_pb2_grpc
from frugal.common.grpc_client import ChannelConfig, MethodPolicy, create_channel, outgoing_metadata
from frugal.common.tenancy import TenancyError, room_tenant_candidates, validate_session_id
from frugal.gateway.config import Settings

log = logging.getLogger(__name__)

BILLING_SERVICE = "frugal.api.billing.v1.BillingService"


class TenantRejected(Exception):
    """The room does not belong to a known tenant (or it could not be checked): the job must not run."""

    def __init__(self, room_name: str, reason: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(f"room {room_name!r} rejected: {reason}")
        self.room_name = room_name
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class ResolvedTenant:
    tenant_id: str
    room: str
    policy: billing_pb2.TenantPolicy

    @property
    def display_name(self) -> str:
        return self.policy.display_name or self.tenant_id


class MeshClients:
    """One channel per service, shared by every session of the process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        plain = ChannelConfig(max_message_bytes=settings.max_message_bytes)
        self.router_channel = create_channel(settings.router_addr, plain)
        self.vision_channel = create_channel(settings.vision_addr, plain)
        self.billing_channel = create_channel(
            settings.billing_addr,
            ChannelConfig(policies=[
                # Reads only: safe to retry when billing restarts.
                MethodPolicy(BILLING_SERVICE, "ResolveTenant", settings.billing_timeout_s, retry_unavailable=True),
                MethodPolicy(BILLING_SERVICE, "GetTenantPolicy", settings.billing_timeout_s, retry_unavailable=True),
            ]),
        )
        self.router: router_pb2_grpc.RouterServiceAsyncStub = router_pb2_grpc.RouterServiceStub(self.router_channel)
        self.vision: vision_pb2_grpc.VisionServiceAsyncStub = vision_pb2_grpc.VisionServiceStub(self.vision_channel)
        self.billing: billing_pb2_grpc.BillingServiceAsyncStub = billing_pb2_grpc.BillingServiceStub(
            self.billing_channel
        )

    async def resolve_tenant(self, room_name: str, session_id: str) -> ResolvedTenant:
        """Room name -> tenant and policy, through billing's registry. Raises TenantRejected."""
        validate_session_id(session_id)
        try:
            room_tenant_candidates(room_name)  # cheap local check of the naming convention
        except TenancyError as err:
            raise TenantRejected(room_name, str(err)) from None
        md = outgoing_metadata(session_id=session_id)
        try:
            resp = await self.billing.ResolveTenant(
                billing_pb2.ResolveTenantRequest(room_name=room_name), metadata=md,
                timeout=self.settings.billing_timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise TenantRejected(room_name, f"unknown tenant ({code.name}: {err.details()})", code) from None
            raise TenantRejected(
                room_name, f"tenant registry unavailable ({code.name}: {err.details()})", code
            ) from None
        if not resp.tenant_id:
            raise TenantRejected(room_name, "billing returned no tenant")
        policy = resp.policy
        if policy.tenant_id != resp.tenant_id:
            policy = await self.tenant_policy(resp.tenant_id, session_id)
        return ResolvedTenant(tenant_id=resp.tenant_id, room=resp.room, policy=policy)

    async def tenant_policy(self, tenant_id: str, session_id: str) -> billing_pb2.TenantPolicy:
        md = outgoing_metadata(tenant_id=tenant_id, session_id=session_id)
        try:
            resp = await self.billing.GetTenantPolicy(
                billing_pb2.GetTenantPolicyRequest(tenant_id=tenant_id), metadata=md,
                timeout=self.settings.billing_timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise TenantRejected(tenant_id, f"no policy ({err.code().name}: {err.details()})", err.code()) from None
        return resp.policy

    async def aclose(self) -> None:
        for ch in (self.router_channel, self.vision_channel, self.billing_channel):
            await ch.close()
