"""RouterLLM in livekit-agents' own AgentSession (no LiveKit server): the framework's error model (retryable
APIErrors, FallbackAdapter, nothing invented in the history), interruptions cancelling the router call,
function tools round trip and per-reply instructions.

Router: the real router (offline providers) where its behaviour is the point; `ScriptedRouter` (a test double
of the router's provider side, see conftest) where the test needs a tool call or a stalled stream, which the
router on this branch cannot produce yet."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from livekit.agents import APIConnectionError, APIStatusError, APITimeoutError, RunResult, llm, vad
from prometheus_client import REGISTRY

from frugal.api.rag.v1 import rag_pb2, rag_pb2_grpc
from frugal.api.router.v1 import router_pb2
from frugal.common.cost_events import CostKind
from frugal.common.grpc_client import outgoing_metadata
from frugal.common.pricing import default_catalog
from frugal.gateway.agent import SessionParts, build_session, load_vad
from frugal.gateway.clients import MeshClients
from frugal.gateway.config import Settings
from frugal.gateway.replay.runner import SimulatedAudioOutput
from frugal.gateway.router_fallback import ROUTER_SERVICE
from frugal.gateway.router_llm import APOLOGIES, api_error, enum_label, status_of
from frugal.gateway.tools import KB_TOOL_NAME

ROOM = "tenant_org_lumen_onboarding-call"
WAIT_S = 30.0  # safety net against a hang, never a measured assertion


@pytest.fixture(scope="module")
def vad_model() -> vad.VAD:
    return load_vad()


async def session_parts(settings: Settings, vad_model: vad.VAD, session_id: str) -> tuple[MeshClients, SessionParts]:
    clients = MeshClients(settings)
    tenant = await clients.resolve_tenant(ROOM, session_id)
    parts = build_session(settings, clients, tenant, session_id, vad_model=vad_model, producer=None,
                          catalog=default_catalog(), user_away_timeout=None)
    return clients, parts


def history_texts(parts: SessionParts) -> list[str]:
    return [item.text_content or "" for item in parts.session.history.items if item.type == "message"]


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom")


@pytest.mark.parametrize(("code", "kind", "retryable"), [
    (grpc.StatusCode.UNAVAILABLE, APIConnectionError, True),
    (grpc.StatusCode.DEADLINE_EXCEEDED, APITimeoutError, True),
    (grpc.StatusCode.INTERNAL, APIStatusError, True),
    (grpc.StatusCode.CANCELLED, APIStatusError, True),  # the router went away: not the framework's silent 499
    (grpc.StatusCode.RESOURCE_EXHAUSTED, APIStatusError, False),  # budget or rate limit: retrying is no use
    (grpc.StatusCode.INVALID_ARGUMENT, APIStatusError, False),
    (grpc.StatusCode.PERMISSION_DENIED, APIStatusError, False),
])
def test_router_errors_are_livekit_api_errors(code: grpc.StatusCode, kind: type, retryable: bool) -> None:
    err = api_error(rpc_error(code), "turn-1")
    assert type(err) is kind and err.retryable is retryable
    assert status_of(err) == code
    if isinstance(err, APIStatusError):
        assert err.status_code != 499


def test_unknown_enum_values_are_labelled_not_fatal() -> None:
    assert enum_label(router_pb2.ContextSource, router_pb2.CONTEXT_SOURCE_RAG, "CONTEXT_SOURCE_") == "rag"
    assert enum_label(router_pb2.ContextSource, 97, "CONTEXT_SOURCE_") == "unknown_97"


async def test_router_outage_is_handled_by_the_fallback_adapter(
    mesh: dict[str, str], make_settings: Callable[..., Settings], vad_model: vad.VAD, dead_addr: str
) -> None:
    settings = make_settings(billing_addr=mesh["billing"], router_addr=dead_addr, router_fallback_addr=mesh["router"],
                             vision_addr=dead_addr, rag_addr=dead_addr, welcome_message="")
    clients, parts = await session_parts(settings, vad_model, "s-fallback-1")
    try:
        async with parts.session as session:
            await session.start(parts.agent)
            assert isinstance(session.llm, llm.FallbackAdapter)
            result: RunResult[None] = await session.run(user_input="What is Lumen Desk, in one sentence?")
            msg = result.expect.next_event().is_message(role="assistant")
            # The primary failed (its recovery check, a health check, failed too); the backup answered.
            reports = parts.llm.reports
            (answered,) = [r for r in reports if r.ok]
            assert reports[0].error_code == "UNAVAILABLE" and {r.error_code for r in reports if not r.ok} == {
                "UNAVAILABLE"}
            assert answered.offline and msg.event().item.text_content == answered.answer
            assert len({r.turn_id for r in reports}) == len(reports)  # each attempt is its own call and cost ids
            assert not any(a in history_texts(parts) for a in APOLOGIES.values())
    finally:
        await parts.aclose()
        await clients.aclose()


async def _turn(parts: SessionParts, question: str) -> None:
    """One user turn, however it ends (answered, or failed with the session's apology)."""
    n = len(parts.llm.reports)
    parts.session.generate_reply(user_input=question)
    await until(lambda: len(parts.llm.reports) > n and parts.session.agent_state != "thinking", f"turn {question!r}")
    await parts.session.wait_for_idle()


@contextlib.asynccontextmanager
async def fallback_session(
    settings: Settings, vad_model: vad.VAD, session_id: str
) -> AsyncIterator[tuple[SessionParts, list[tuple[int, bool]]]]:
    """A started session behind a FallbackAdapter, and the availability changes it reports as
    (index of the router, available)."""
    clients, parts = await session_parts(settings, vad_model, session_id)
    try:
        async with parts.session as session:
            adapter = session.llm
            assert isinstance(adapter, llm.FallbackAdapter)
            routers = list(adapter._llm_instances)  # the order the adapter was built with
            changes: list[tuple[int, bool]] = []
            adapter.on("llm_availability_changed", lambda ev: changes.append((routers.index(ev.llm), ev.available)))
            await session.start(parts.agent)
            yield parts, changes
    finally:
        await parts.aclose()
        await clients.aclose()


def _behind(make_settings: Callable[..., Settings], mesh: dict[str, str], primary: str, dead_addr: str) -> Settings:
    """A gateway whose router is `primary`, with the mesh's real router as its fallback deployment."""
    return make_settings(billing_addr=mesh["billing"], router_addr=primary, router_fallback_addr=mesh["router"],
                         vision_addr=dead_addr, rag_addr=dead_addr, welcome_message="")


def _checks(outcome: str) -> float:
    return REGISTRY.get_sample_value("gateway_router_recovery_checks_total", {"outcome": outcome}) or 0.0


async def test_the_fallback_adapters_recovery_check_is_a_health_check_not_a_paid_turn(
    mesh: dict[str, str], scripted_routers: Callable[..., Any], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, dead_addr: str,
) -> None:
    """livekit's own recovery check replays the turn to the failed LLM and throws the answer away: against a
    router, a paid answer. Here it is a health check; the recovered router answers the next turn."""
    primary, primary_addr = await scripted_routers()
    primary.script(grpc.StatusCode.UNAVAILABLE)  # one failed turn, then it answers ("ok")
    serving_before = _checks("serving")
    async with fallback_session(_behind(make_settings, mesh, primary_addr, dead_addr), vad_model,
                                "s-recover-1") as (parts, changes):
        await _turn(parts, "What is Lumen Desk, in one sentence?")
        await until(lambda: (0, True) in changes, "the primary's recovery")
        assert changes == [(0, False), (0, True)]
        assert len(primary.requests) == 1, "the recovery check must not replay the turn to the router"
        assert _checks("serving") == serving_before + 1
        first, second = parts.llm.reports[:2]
        assert first.error_code == "UNAVAILABLE" and second.ok and second.offline  # the backup answered
        await _turn(parts, "And how much does it cost?")
        assert len(primary.requests) == 2 and parts.llm.reports[-1].answer == "ok"  # back on the primary
        assert [r.ok for r in parts.llm.reports] == [False, True, True]  # every Respond was a turn


async def test_a_router_not_serving_stays_out_without_a_paid_turn_until_it_serves(
    mesh: dict[str, str], scripted_routers: Callable[..., Any], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, dead_addr: str,
) -> None:
    primary, primary_addr = await scripted_routers()
    primary.script(grpc.StatusCode.UNAVAILABLE)
    await primary.health.set(ROUTER_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    refused_before = _checks("not_serving")
    async with fallback_session(_behind(make_settings, mesh, primary_addr, dead_addr), vad_model,
                                "s-recover-2") as (parts, changes):
        for question in ("What is Lumen Desk?", "Who uses it?", "Is there a free plan?"):
            await _turn(parts, question)
        await until(lambda: _checks("not_serving") >= refused_before + 3, "a check per turn")
        assert changes == [(0, False)] and len(primary.requests) == 1
        assert all(r.ok and r.offline for r in parts.llm.reports[1:])  # the backup answered them all
        await primary.health.set(ROUTER_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await _turn(parts, "Does it have an API?")  # still the backup; this turn's check finds it serving
        await until(lambda: (0, True) in changes, "the primary's recovery")
        await _turn(parts, "Thanks, and the pricing?")
        assert len(primary.requests) == 2 and parts.llm.reports[-1].answer == "ok"


async def test_with_every_router_unavailable_the_adapters_calls_are_real_turns(
    mesh: dict[str, str], scripted_routers: Callable[..., Any], make_settings: Callable[..., Settings],
    vad_model: vad.VAD,
) -> None:
    """With all routers out, the adapter tries each for the user's turn itself: those calls are turns, not
    recovery checks (else the turn would end with no answer)."""
    (primary, primary_addr), (backup, backup_addr) = await scripted_routers(), await scripted_routers()
    for r in (primary, backup):
        r.refuse = grpc.StatusCode.UNAVAILABLE
        await r.health.set(ROUTER_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    settings = make_settings(billing_addr=mesh["billing"], router_addr=primary_addr, router_fallback_addr=backup_addr,
                             welcome_message="")
    async with fallback_session(settings, vad_model, "s-recover-3") as (parts, changes):
        await _turn(parts, "Hello?")
        assert sorted(changes) == [(0, False), (1, False)] and not any(r.ok for r in parts.llm.reports)
        primary.refuse = None  # it answers again, though its health check still says NOT_SERVING
        await _turn(parts, "Hello again?")
        assert parts.llm.reports[-1].ok and parts.llm.reports[-1].answer == "ok"
        assert history_texts(parts)[-1] == "ok"


async def test_router_down_no_apology_in_history_and_the_session_lives_on(
    mesh: dict[str, str], make_settings: Callable[..., Settings], vad_model: vad.VAD, dead_addr: str
) -> None:
    settings = make_settings(billing_addr=mesh["billing"], router_addr=dead_addr, welcome_message="")
    clients, parts = await session_parts(settings, vad_model, "s-down-1")
    speaker = SimulatedAudioOutput(speed=20.0)
    parts.session.output.audio = speaker  # so the apology goes through TTS (and its cost meter)
    try:
        async with parts.session as session:
            await session.start(parts.agent)
            for question in ("Hello?", "Are you still there?", "Anyone?", "Hello again?", "Last try?"):
                n = len(parts.llm.reports)
                session.generate_reply(user_input=question)
                def failed(n: int = n) -> bool:
                    return len(parts.llm.reports) > n and parts.session.agent_state != "thinking"

                await until(failed, "the failed turn")
                await session.wait_for_idle()
            # The framework retried (max_retry 3 by default): several attempts per turn, all UNAVAILABLE.
            assert {r.error_code for r in parts.llm.reports} == {"UNAVAILABLE"}
            assert len(parts.llm.reports) > 5
            texts = history_texts(parts)
            assert texts == ["Hello?", "Are you still there?", "Anyone?", "Hello again?", "Last try?"]
            # The apology was spoken (TTS billed) but kept out of the history the router would see.
            # Synthesised and billed, or served again from the TTS cache (frugal.gateway.tts_cache): both spoken.
            spoken = sum(e.usage.characters + int(e.attributes.get("served_characters", 0))
                         for e in parts.meter.events if e.kind is CostKind.TTS)
            assert spoken >= 5 * (len(APOLOGIES[grpc.StatusCode.UNAVAILABLE]) - 2)  # TTS counts what it speaks
            assert session.agent_state in ("listening", "idle")  # more than max_unrecoverable_errors: still alive
    finally:
        await parts.aclose()
        await clients.aclose()
        await speaker.aclose()


async def test_an_interruption_cancels_the_router_call(
    mesh: dict[str, str], scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, dead_addr: str, chunks: Any,
) -> None:
    router, addr = scripted_router
    router.script(chunks.text("Let me think about that"), 60.0, chunks.text(" for a long time."), chunks.completed())
    settings = make_settings(billing_addr=mesh["billing"], router_addr=addr, welcome_message="")
    clients, parts = await session_parts(settings, vad_model, "s-interrupt-1")
    try:
        async with parts.session as session:
            await session.start(parts.agent)
            session.generate_reply(user_input="Tell me a very long story")
            await until(lambda: bool(router.requests) and parts.session.agent_state == "speaking", "speech")
            await session.interrupt()
            await until(lambda: router.cancelled[0], "the router to see the call cancelled")
            await until(lambda: bool(parts.llm.reports), "the turn report")
            assert parts.llm.reports[0].error_code == "CANCELLED"
            assert "for a long time" not in " ".join(history_texts(parts))
    finally:
        await parts.aclose()
        await clients.aclose()


async def test_a_tool_call_round_trip_through_the_knowledge_base(
    mesh: dict[str, str], rag_addr: str, scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, dead_addr: str, chunks: Any,
) -> None:
    async with grpc.aio.insecure_channel(rag_addr) as ch:
        await rag_pb2_grpc.RagServiceStub(ch).IngestDocument(
            rag_pb2.IngestDocumentRequest(document_id="kb/sso.md", title="Single sign-on", content_type="text/markdown",
                                          content=b"# Single sign-on\n\nSAML single sign-on comes with the Business "
                                                  b"plan; Okta and Entra ID are supported."),
            metadata=outgoing_metadata(tenant_id="org_lumen", session_id="test-setup"), timeout=60)
    router, addr = scripted_router
    router.script(chunks.tool_call("call_1", KB_TOOL_NAME, {"query": "single sign-on"}), chunks.completed())
    router.script(chunks.text("Yes: SAML SSO comes with Business."), chunks.completed())
    settings = make_settings(billing_addr=mesh["billing"], router_addr=addr, rag_addr=rag_addr, welcome_message="")
    clients, parts = await session_parts(settings, vad_model, "s-tool-1")
    try:
        async with parts.session as session:
            await session.start(parts.agent)
            result: RunResult[None] = await session.run(user_input="Do you support SSO?")
            result.expect.next_event().is_function_call(name=KB_TOOL_NAME, arguments={"query": "single sign-on"})
            out = result.expect.next_event().is_function_call_output()
            assert "Okta" in out.event().item.output and not out.event().item.is_error
            result.expect.next_event().is_message(role="assistant")
    finally:
        await parts.aclose()
        await clients.aclose()
    first, second = router.requests
    assert [t.name for t in first.tools] == [KB_TOOL_NAME] and '"query"' in first.tools[0].parameters_json
    assert first.turn.text == "Do you support SSO?"
    history = list(second.turn.history)
    assert second.turn.text == "Do you support SSO?"
    assert [m.role for m in history[-3:]] == [router_pb2.ROLE_USER, router_pb2.ROLE_ASSISTANT, router_pb2.ROLE_TOOL]
    assert history[-2].tool_calls[0].id == "call_1" and history[-2].tool_calls[0].name == KB_TOOL_NAME
    assert history[-1].tool_call_id == "call_1" and "Okta" in history[-1].content and not history[-1].tool_error
    assert parts.llm.reports[0].tool_calls == [KB_TOOL_NAME]


async def test_generate_reply_instructions_reach_the_router(
    mesh: dict[str, str], scripted_router: tuple[Any, str], make_settings: Callable[..., Settings],
    vad_model: vad.VAD, chunks: Any,
) -> None:
    router, addr = scripted_router
    router.script(chunks.text("Hello Ada!"), chunks.completed(context=[
        router_pb2.ContextStatus(source=42, state=router_pb2.CONTEXT_STATE_USED),  # type: ignore[arg-type] # newer
    ]))
    settings = make_settings(billing_addr=mesh["billing"], router_addr=addr, welcome_message="")
    clients, parts = await session_parts(settings, vad_model, "s-instr-1")
    try:
        async with parts.session as session:
            await session.start(parts.agent)
            await session.generate_reply(instructions="Greet the caller by name: Ada.")
    finally:
        await parts.aclose()
        await clients.aclose()
    (request,) = router.requests
    assert request.instructions == "Greet the caller by name: Ada."
    assert request.turn.text == ""
    assert request.turn.history[0].role == router_pb2.ROLE_SYSTEM  # the agent's own instructions head the history
    assert parts.llm.reports[0].ok and parts.llm.reports[0].context == {"unknown_42": "used"}
