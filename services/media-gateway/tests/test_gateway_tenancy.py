"""Tenant resolution against the real billing service: unknown rooms are rejected and nothing runs."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from livekit.agents import JobRequest
from livekit.agents.job import JobAcceptArguments
from livekit.agents.testing import fake_job_context
from livekit.protocol import agent as agent_proto
from livekit.protocol import models

from frugal.gateway import metrics, worker
from frugal.gateway.clients import MeshClients, TenantRejected

TENANT = "org_lumen"


class Decisions:
    def __init__(self) -> None:
        self.rejected: list[bool] = []
        self.accepted: list[JobAcceptArguments] = []

    async def reject(self, terminate: bool) -> None:
        self.rejected.append(terminate)

    async def accept(self, args: JobAcceptArguments) -> None:
        self.accepted.append(args)


def job_request(room: str, decisions: Decisions, *, metadata: str = "", room_metadata: str = "") -> JobRequest:
    job = agent_proto.Job(id="AJ_test123", room=models.Room(name=room, sid="RM_test", metadata=room_metadata),
                          type=agent_proto.JobType.JT_ROOM, metadata=metadata)
    return JobRequest(job=job, on_reject=decisions.reject, on_accept=decisions.accept)


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch, billing_addr: str, dead_addr: str) -> str:
    monkeypatch.setenv("BILLING_ADDR", billing_addr)
    monkeypatch.setenv("ROUTER_ADDR", dead_addr)
    monkeypatch.setenv("VISION_ADDR", dead_addr)
    monkeypatch.setattr(worker, "_request_clients", None)
    return billing_addr


async def test_job_requests_are_screened_by_the_tenant_registry(
    worker_env: str, register_tenant: Callable[..., Awaitable[None]]
) -> None:
    await register_tenant(worker_env, TENANT)
    # An underscore tenant id: the registry, not a split on '_', decides (seed defect 1).
    known, unknown, org = Decisions(), Decisions(), Decisions()
    await worker.on_request(job_request("tenant_org_lumen_sales-call", known))
    await worker.on_request(job_request("tenant_org_nobody_sales-call", unknown))
    await worker.on_request(job_request("tenant_org_sales-call", org))
    assert known.rejected == [] and len(known.accepted) == 1
    assert json.loads(known.accepted[0].metadata) == {"tenant_id": TENANT}
    assert unknown.accepted == [] and unknown.rejected == [True]
    assert org.accepted == [] and org.rejected == [True]


async def test_resolution_returns_the_tenant_policy(worker_env: str, register_tenant: Callable[..., Awaitable[None]],
                                                    make_settings: Callable[..., object]) -> None:
    await register_tenant(worker_env, TENANT, "Lumen Desk")
    clients = MeshClients(make_settings(billing_addr=worker_env))  # type: ignore[arg-type]
    try:
        tenant = await clients.resolve_tenant("tenant_org_lumen_weekly_sync", "s-42")
        assert (tenant.tenant_id, tenant.room, tenant.display_name) == (TENANT, "weekly_sync", "Lumen Desk")
        with pytest.raises(TenantRejected) as err:
            await clients.resolve_tenant("tenant_acme_weekly", "s-42")
        assert "unknown tenant" in err.value.reason
        with pytest.raises(TenantRejected) as err:
            await clients.resolve_tenant("lobby", "s-42")  # not the naming convention: billing is not even asked
        assert "does not start with 'tenant_'" in err.value.reason
    finally:
        await clients.aclose()


async def test_billing_down_means_no_job_here_but_the_room_is_not_dropped(
    monkeypatch: pytest.MonkeyPatch, dead_addr: str
) -> None:
    monkeypatch.setenv("BILLING_ADDR", dead_addr)
    monkeypatch.setenv("BILLING_TIMEOUT_S", "1")
    monkeypatch.setenv("BILLING_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("BILLING_RETRY_BACKOFF_S", "0.05")
    monkeypatch.setattr(worker, "_request_clients", None)
    retries = metrics.JOB_SCREENING_RETRIES._value.get()
    decisions = Decisions()
    await worker.on_request(job_request("tenant_org_lumen_sales-call", decisions))
    # Declined without terminate: LiveKit offers the room to another worker instead of dropping it.
    assert decisions.accepted == [] and decisions.rejected == [False]
    assert metrics.JOB_SCREENING_RETRIES._value.get() - retries == 2  # three attempts, backoff between them


async def test_signed_metadata_decides_the_tenant(
    worker_env: str, register_tenant: Callable[..., Awaitable[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    await register_tenant(worker_env, TENANT)
    await register_tenant(worker_env, "acme")
    # Dispatch metadata wins over a room name that names another tenant.
    by_job = Decisions()
    await worker.on_request(job_request("tenant_acme_board", by_job, metadata='{"tenant_id": "org_lumen"}'))
    assert json.loads(by_job.accepted[0].metadata) == {"tenant_id": TENANT}
    # Room metadata when the dispatch carries none; any room name.
    by_room = Decisions()
    await worker.on_request(job_request("lobby", by_room, room_metadata='{"tenant_id": "acme"}'))
    assert json.loads(by_room.accepted[0].metadata) == {"tenant_id": "acme"}
    # A signed source naming an unknown tenant is final: no fallback to the room name.
    unknown = Decisions()
    await worker.on_request(job_request("tenant_org_lumen_x", unknown, metadata='{"tenant_id": "org_nobody"}'))
    assert unknown.accepted == [] and unknown.rejected == [True]
    malformed = Decisions()
    await worker.on_request(job_request("tenant_org_lumen_x", malformed, metadata='{"tenant_id": 7}'))
    assert malformed.accepted == [] and malformed.rejected == [True]
    # Free-text metadata is not ours: the room name decides (fallback on in this environment).
    free_text = Decisions()
    await worker.on_request(job_request("tenant_org_lumen_x", free_text, metadata="vip customer"))
    assert json.loads(free_text.accepted[0].metadata) == {"tenant_id": TENANT}


async def test_room_name_fallback_can_be_switched_off(
    worker_env: str, register_tenant: Callable[..., Awaitable[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    await register_tenant(worker_env, TENANT)
    monkeypatch.setenv("TENANT_FROM_ROOM_NAME", "false")  # production overlays
    by_name = Decisions()
    await worker.on_request(job_request("tenant_org_lumen_sales-call", by_name))
    assert by_name.accepted == [] and by_name.rejected == [True]
    signed = Decisions()
    await worker.on_request(job_request("tenant_org_lumen_sales-call", signed, metadata='{"tenant_id": "org_lumen"}'))
    assert len(signed.accepted) == 1


async def test_rejected_job_starts_no_session(worker_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Console and other fake jobs use CONSOLE_ROOM; nobody registered this tenant.
    monkeypatch.setenv("CONSOLE_ROOM", "tenant_org_nobody_console")
    reasons: list[str] = []
    with fake_job_context() as ctx:
        monkeypatch.setattr(ctx, "shutdown", lambda reason="": reasons.append(reason))
        await worker.entrypoint(ctx)
        assert ctx._primary_agent_session is None  # no AgentSession was ever started
    assert len(reasons) == 1 and reasons[0].startswith("rejected: unknown tenant")
