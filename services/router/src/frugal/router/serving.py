"""The router service's own health status follows its deployments.

`grpc.health.v1` status of `frugal.router.v1.RouterService`: NOT_SERVING while every LLM deployment is cooling
down (frugal.router.health), i.e. while any turn would be refused at once (UNAVAILABLE, retry-after); SERVING
again as soon as one deployment may be tried. A pool with an offline tier always answers, so it stays SERVING.

The server's overall status ("", what the Kubernetes probes ask) is left alone: the process is healthy, and a
replica taken out of its Service for a provider outage would only trade the router's clear refusal for the
mesh's "no healthy upstream". Who reads the service status: the media gateway's recovery check
(frugal.gateway.router_fallback), which keeps a router out of a session's rotation while it could not answer
instead of handing it the next turn to fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from grpc_health.v1 import health_pb2

from frugal.common.pricing import TIERS
from frugal.router.deployments import DeploymentPool
from frugal.router.health import DeploymentHealth

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthSetter(Protocol):
    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None: ...


def can_answer(pool: DeploymentPool, health: DeploymentHealth, now: float | None = None) -> bool:
    """False only when no turn could be tried: no offline tier and every deployment cooling down."""
    if any(pool.route_tier(t).offline for t in TIERS):
        return True
    now = time.time() if now is None else now
    return any(not health.is_open(d.name, now) for d in pool.deployments)


class ServingStatus:
    """Sets the service's status from the deployments' health every `interval_s` (the breaker's own refresh
    interval: the shared state is read at most that often, turns included)."""

    def __init__(self, servicer: HealthSetter, service: str, pool: DeploymentPool, health: DeploymentHealth, *,
                 interval_s: float, redis_timeout_s: float) -> None:
        self._servicer = servicer
        self._service = service
        self._pool = pool
        self._health = health
        self._interval_s = interval_s
        self._redis_timeout_s = redis_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.serving = True

    async def update(self) -> None:
        # Fails open like a turn does: when Redis does not answer, the local breaker state decides.
        await self._health.refresh([d.name for d in self._pool.deployments], timeout_s=self._redis_timeout_s)
        serving = can_answer(self._pool, self._health)
        if serving == self.serving:
            return
        self.serving = serving
        await self._servicer.set(self._service, SERVING if serving else NOT_SERVING)
        if serving:
            log.info("%s SERVING again: a deployment may be tried", self._service)
        else:
            log.warning("%s NOT_SERVING: every LLM deployment is cooling down after failures", self._service)

    async def _run(self) -> None:
        while True:
            try:
                await self.update()
            except Exception:  # the status is advisory: never let the loop die for one bad read
                log.exception("could not update %s's health status", self._service)
            await asyncio.sleep(self._interval_s)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="router-serving-status")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
