"""gRPC clients of the mesh (router, vision-dedup, rag, billing) and tenant resolution for a job."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import grpc

from frugal.api.billing.v1 import billing_pb2, billing_pb2_grpc
from frugal.api.rag.v1 import rag_pb2_grpc
from frugal.api.router.v1 import router_pb2_grpc
from frugal.api.vision.v1 import vision_pb2_grpc
from frugal.common.grpc_client import ChannelConfig, MethodPolicy, create_channel, outgoing_metadata
from frugal.common.tenancy import TenancyError, room_tenant_candidates, validate_session_id, validate_tenant_id
from frugal.gateway import metrics
from frugal.gateway.config import Settings

log = logging.getLogger(__name__)

BILLING_SERVICE = "frugal.api.billing.v1.BillingService"
# Billing answers that say "try again": the registry is restarting or overloaded, not "no such tenant".
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
                             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
TENANT_KEY = "tenant_id"


class TenantRejected(Exception):
    """The room does not belong to a known tenant (or it could not be checked): the job must not run."""

    def __init__(self, room_name: str, reason: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(f"room {room_name!r} rejected: {reason}")
        self.room_name = room_name
        self.reason = reason
        self.code = code

    @property
    def transient(self) -> bool:
        """The registry could not be asked (as opposed to: it said no)."""
        return self.code in TRANSIENT_CODES


def tenant_from_metadata(metadata: str) -> str | None:
    """The tenant id a backend wrote into job dispatch or room metadata (JSON `{"tenant_id": ...}`); None when
    the metadata names none. Raises TenancyError for a malformed id (a backend bug: never guessed around)."""
    if not metadata.strip():
        return None
    try:
        data = json.loads(metadata)
    except ValueError:
        return None  # not ours: other metadata may be free text
    if not isinstance(data, dict) or TENANT_KEY not in data:
        return None
    value = data[TENANT_KEY]
    if not isinstance(value, str):
        raise TenancyError(f"{TENANT_KEY} in metadata must be a string, got {type(value).__name__}")
    return validate_tenant_id(value)


@dataclass(frozen=True, slots=True)
class JobTenancy:
    """What a job says about its tenant: signed sources first, the room name last."""

    room_name: str
    job_metadata: str = ""
    room_metadata: str = ""


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
        self.router_fallback_channel = (create_channel(settings.router_fallback_addr, plain)
                                        if settings.router_fallback_addr else None)
        self.router_fallback: router_pb2_grpc.RouterServiceAsyncStub | None = (
            router_pb2_grpc.RouterServiceStub(self.router_fallback_channel)
            if self.router_fallback_channel is not None else None
        )
        self.rag_channel = create_channel(settings.rag_addr, plain)
        self.rag: rag_pb2_grpc.RagServiceAsyncStub = rag_pb2_grpc.RagServiceStub(self.rag_channel)
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

    async def resolve_job_tenant(self, job: JobTenancy, session_id: str) -> ResolvedTenant:
        """Tenant of a job: dispatch metadata, then room metadata (only holders of the LiveKit API secret can
        write either), then, if TENANT_FROM_ROOM_NAME allows, the room-name convention. A source that names a
        tenant decides: an unknown tenant there is rejected, never resolved some other way."""
        validate_session_id(session_id)
        for source, raw in (("job metadata", job.job_metadata), ("room metadata", job.room_metadata)):
            try:
                tenant_id = tenant_from_metadata(raw)
            except TenancyError as err:
                raise TenantRejected(job.room_name, f"{source}: {err}") from None
            if tenant_id is not None:
                policy = await self.tenant_policy(tenant_id, session_id)
                if policy.tenant_id and policy.tenant_id != tenant_id:
                    raise TenantRejected(job.room_name, f"{source}: billing answered for another tenant")
                return ResolvedTenant(tenant_id=tenant_id, room=job.room_name, policy=policy)
        if not self.settings.tenant_from_room_name:
            raise TenantRejected(job.room_name, "no tenant_id in job or room metadata (TENANT_FROM_ROOM_NAME is off)")
        return await self.resolve_tenant(job.room_name, session_id)

    async def resolve_with_retry(self, job: JobTenancy, session_id: str) -> ResolvedTenant:
        """resolve_job_tenant, retrying transient billing errors with exponential backoff."""
        attempts = self.settings.billing_retry_attempts
        delay = self.settings.billing_retry_backoff_s
        for attempt in range(1, attempts + 1):
            try:
                return await self.resolve_job_tenant(job, session_id)
            except TenantRejected as err:
                if not err.transient or attempt == attempts:
                    raise
                log.warning("tenant registry unavailable for room %r (attempt %d/%d): %s; retrying in %.2fs",
                            job.room_name, attempt, attempts, err.reason, delay)
                metrics.JOB_SCREENING_RETRIES.inc()
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def tenant_policy(self, tenant_id: str, session_id: str) -> billing_pb2.TenantPolicy:
        md = outgoing_metadata(tenant_id=tenant_id, session_id=session_id)
        try:
            resp = await self.billing.GetTenantPolicy(
                billing_pb2.GetTenantPolicyRequest(tenant_id=tenant_id), metadata=md,
                timeout=self.settings.billing_timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            code = err.code()
            what = "unknown tenant" if code == grpc.StatusCode.NOT_FOUND else "no policy"
            raise TenantRejected(tenant_id, f"{what} {tenant_id!r} ({code.name}: {err.details()})", code) from None
        return resp.policy

    async def aclose(self) -> None:
        for ch in (self.router_channel, self.vision_channel, self.rag_channel, self.billing_channel):
            await ch.close()
        if self.router_fallback_channel is not None:
            await self.router_fallback_channel.close()
