"""A session's routers behind livekit's `llm.FallbackAdapter`, with recovery checks that cost nothing.

The adapter checks whether a failed LLM has recovered by replaying the session's current turn to it in the
background and throwing the answer away (`FallbackLLMStream._try_recovery`, livekit-agents 1.x). Against a router
that replay is a real, paid answer with its own cost event: one wasted answer per failure that recovers, and
one per turn while the primary fails intermittently. Here a router the adapter holds unavailable, while another
one is available, answers `chat()` with a gRPC health check of its deployment instead (`grpc.health.v1`, the
router's own service name): SERVING counts as recovered and the stream ends with no text; anything else fails
the check, and the adapter keeps the router out. The router says NOT_SERVING there while every one of its LLM
deployments is cooling down (frugal.router.serving), so a router whose turns would all be refused stays out.

When every router is unavailable the adapter's calls are real attempts at the user's turn (its `all_failed`
path), so they go to `Respond` as turns. The adapter reports each change of availability in its
`llm_availability_changed` event, synchronously, before it starts a recovery check: that event is the state read
here, no private attribute of the adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from livekit.agents import APIConnectionError, llm
from livekit.agents.llm.fallback_adapter import AvailabilityChangedEvent
from livekit.agents.types import APIConnectOptions

from frugal.api.router.v1 import router_pb2
from frugal.common.grpc_server import service_full_name
from frugal.gateway import metrics
from frugal.gateway.router_llm import RouterLLM

log = logging.getLogger(__name__)

ROUTER_SERVICE = service_full_name(router_pb2.DESCRIPTOR, "RouterService")
HEALTH_CHECK_TIMEOUT_S = 2.0


class RecoveryChecks:
    """Which routers of one session the adapter holds unavailable; decides when a `chat()` is a recovery check."""

    def __init__(self, routers: Sequence[RouterLLM]) -> None:
        self._routers = list(routers)
        self._unavailable: set[int] = set()

    def on_availability_changed(self, event: AvailabilityChangedEvent) -> None:
        key = id(event.llm)
        if event.available:
            self._unavailable.discard(key)
        else:
            self._unavailable.add(key)

    def is_recovery_check(self, router: RouterLLM) -> bool:
        """The adapter calls a router it holds unavailable only to check its recovery, unless it holds every
        router unavailable (then each call is a real attempt at the turn)."""
        if id(router) not in self._unavailable:
            return False
        return any(id(r) not in self._unavailable for r in self._routers)


class HealthCheckStream(llm.LLMStream):
    """The recovery check of one router: `grpc.health.v1.Health/Check`, no text, no cost."""

    def __init__(self, router: RouterLLM, health: health_pb2_grpc.HealthStub, *, chat_ctx: llm.ChatContext,
                 conn_options: APIConnectOptions) -> None:
        super().__init__(router, chat_ctx=chat_ctx, tools=[], conn_options=conn_options)
        self._router = router
        self._health = health

    async def _run(self) -> None:
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE),
                                             timeout=HEALTH_CHECK_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            metrics.ROUTER_RECOVERY_CHECKS.labels(outcome="unreachable").inc()
            raise APIConnectionError(f"router health check: {err.code().name}: {err.details()}") from err
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            metrics.ROUTER_RECOVERY_CHECKS.labels(outcome="not_serving").inc()
            raise APIConnectionError(f"router health check: {status}")
        metrics.ROUTER_RECOVERY_CHECKS.labels(outcome="serving").inc()
        log.info("router recovered (health SERVING); the next turn goes to it",
                 extra={"session_id": self._router.session_id})


def fallback_llm(
    routers: Sequence[tuple[RouterLLM, grpc.aio.Channel | None]], *, attempt_timeout: float
) -> llm.FallbackAdapter:
    """The adapter over `routers` (each with the channel of its deployment), in order of preference."""
    adapter = llm.FallbackAdapter([r for r, _ in routers], attempt_timeout=attempt_timeout)
    checks = RecoveryChecks([r for r, _ in routers])
    adapter.on("llm_availability_changed", checks.on_availability_changed)
    for router, channel in routers:
        if channel is None:  # no channel to check it on: the adapter's own check (a replayed turn) stays
            continue
        health = health_pb2_grpc.HealthStub(channel)

        def check(chat_ctx: llm.ChatContext, conn_options: APIConnectOptions, *, router: RouterLLM = router,
                  health: health_pb2_grpc.HealthStub = health) -> llm.LLMStream | None:
            if not checks.is_recovery_check(router):
                return None
            return HealthCheckStream(router, health, chat_ctx=chat_ctx, conn_options=conn_options)

        router.recovery_check = check
    return adapter
