"""Health of LLM deployments: cooldown after failures or a 429, and a circuit breaker shared in Redis.

Per deployment, in this process: consecutive failures (timeouts, 5xx, broken streams, bad keys); at
`failure_threshold` the deployment cools down for `cooldown_s`. A 429 cools it down at once for the
provider's `retry-after` (or `rate_limit_cooldown_s` when it gives none). While cooling down, turns skip it
without a call; when the cooldown ends the next turn tries it again (half-open), and one more failure
re-opens it at once because the failure count is only reset by a success.

Shared: the same rules run in Redis (a Lua script counts failures across replicas and sets the open-until
time), so one replica's evidence protects every replica. Every Redis access is bounded by the caller (see
`timeout_s`); when Redis does not answer, the local state alone decides (fail open, said by the caller).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from frugal.router import metrics as m
from frugal.router.providers.base import ProviderError

log = logging.getLogger(__name__)

PREFIX = "frugal:breaker"
# Errors that say nothing about the deployment's health.
NEUTRAL_KINDS = frozenset({"bad_request"})

# KEYS[1] open-until key, KEYS[2] failure counter; ARGV: threshold, cooldown ms, failure window ms,
# immediate cooldown ms (429: open now for this long; 0: count). Returns the open-until time in ms, or 0.
_FAIL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local threshold, cooldown, window, immediate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local function open(ms)
  local current = tonumber(redis.call('GET', KEYS[1]) or '0')
  local untl = math.max(current, now + ms)
  redis.call('SET', KEYS[1], untl, 'PX', untl - now)
  redis.call('DEL', KEYS[2])
  return untl
end
if immediate > 0 then return open(immediate) end
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], window)
if n >= threshold then return open(cooldown) end
return 0
"""


@dataclass
class _Local:
    failures: int = 0
    open_until: float = 0.0  # epoch seconds
    last_reason: str = ""


@dataclass(frozen=True, slots=True)
class HealthConfig:
    failure_threshold: int = 3
    cooldown_s: float = 30.0
    rate_limit_cooldown_s: float = 10.0
    max_cooldown_s: float = 600.0
    failure_window_s: float = 60.0
    # The shared state is read at most this often per process (one MGET per interval, not per turn).
    refresh_interval_s: float = 0.5


@dataclass
class DeploymentHealth:
    redis: aioredis.Redis
    config: HealthConfig = field(default_factory=HealthConfig)
    _local: dict[str, _Local] = field(default_factory=dict)
    _shared_open: dict[str, float] = field(default_factory=dict)
    _refreshed_at: float = -1e9

    def __post_init__(self) -> None:
        self._fail_script = self.redis.register_script(_FAIL)

    def _state(self, name: str) -> _Local:
        return self._local.setdefault(name, _Local())

    def open_until(self, name: str) -> float:
        """Epoch seconds until which the deployment is skipped (0: closed), local or shared."""
        return max(self._state(name).open_until, self._shared_open.get(name, 0.0))

    def is_open(self, name: str, now: float | None = None) -> bool:
        return self.open_until(name) > (time.time() if now is None else now)

    def reason(self, name: str) -> str:
        return self._state(name).last_reason

    async def refresh(self, names: list[str], *, timeout_s: float) -> str | None:
        """Reads the shared breaker state of `names`; returns None, or why it could not (fail open)."""
        if not names or time.monotonic() - self._refreshed_at < self.config.refresh_interval_s:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                raw = await self.redis.mget([f"{PREFIX}:{n}" for n in names])
        except (TimeoutError, RedisError, OSError) as err:
            return f"circuit-breaker store unavailable ({_what(err)}): local deployment health only"
        self._refreshed_at = time.monotonic()
        for name, value in zip(names, raw, strict=True):
            until = float(value) / 1000 if value is not None else 0.0
            self._shared_open[name] = until
            m.DEPLOYMENT_OPEN.labels(deployment=name).set(1 if until > time.time() else 0)
        return None

    async def failure(self, name: str, err: ProviderError, *, timeout_s: float) -> str | None:
        """Records a failed call; returns None, or why the shared store could not be updated."""
        if err.kind in NEUTRAL_KINDS:
            return None
        cfg = self.config
        st = self._state(name)
        st.failures += 1
        st.last_reason = str(err)[:200]
        m.DEPLOYMENT_FAILURES.labels(deployment=name, kind=err.kind).inc()
        immediate = 0.0
        now = time.time()
        if err.kind == "rate_limited":
            immediate = min(err.retry_after_s if err.retry_after_s is not None else cfg.rate_limit_cooldown_s,
                            cfg.max_cooldown_s)
            st.open_until = max(st.open_until, now + immediate)
        elif st.failures >= cfg.failure_threshold:
            st.open_until = max(st.open_until, now + cfg.cooldown_s)
        if st.open_until > now:
            m.DEPLOYMENT_OPEN.labels(deployment=name).set(1)
            log.warning("deployment %s cooling down for %.1fs after %s", name, st.open_until - now, err)
        try:
            async with asyncio.timeout(timeout_s):
                until_ms = await self._fail_script(
                    keys=[f"{PREFIX}:{name}", f"{PREFIX}:{name}:fails"],
                    args=[cfg.failure_threshold, int(cfg.cooldown_s * 1000), int(cfg.failure_window_s * 1000),
                          int(immediate * 1000)],
                )
        except (TimeoutError, RedisError, OSError) as err2:
            return f"circuit-breaker store unavailable ({_what(err2)}): failure of {name} recorded locally only"
        if until_ms:
            self._shared_open[name] = float(until_ms) / 1000
        return None

    async def success(self, name: str, *, timeout_s: float) -> None:
        st = self._state(name)
        had = st.failures
        st.failures = 0
        st.open_until = 0.0
        m.DEPLOYMENT_OPEN.labels(deployment=name).set(0)
        if had:
            try:
                async with asyncio.timeout(timeout_s):
                    await self.redis.delete(f"{PREFIX}:{name}:fails")
            except (TimeoutError, RedisError, OSError) as err:
                log.warning("could not reset the shared failure count of %s: %s", name, _what(err))


def _what(err: BaseException) -> str:
    return "timed out" if isinstance(err, TimeoutError) else f"{type(err).__name__}: {err}"[:160]
