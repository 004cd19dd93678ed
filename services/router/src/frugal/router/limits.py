"""Per-tenant requests/minute and tokens/minute, shared by every router replica through Redis.

One Lua script checks *both* limits and, only when both pass, counts the request and reserves its
estimated tokens, atomically (Redis runs a script alone). Windows are a sliding-window counter: the current
minute's count plus the previous minute's, weighted by how much of it still overlaps the last 60 s. Time
comes from Redis (`TIME`), so replicas with skewed clocks agree. After the call, `settle` corrects the
reservation to the tokens the provider reported (may push the tenant over; later requests then wait).
A request larger than the whole token window is refused (`too_large`): it could never fit, and letting one
through an empty window is how a 2.4 M-token turn passed a 200 k tokens/minute limit.

Every call is bounded (`timeout_s`, from the caller's deadline): a Redis that accepts connections and never
answers fails open within that time, like one that refuses them.

Why not the `limits` package: its limiters test one limit per call and cannot record usage that ends up
above the limit, so an RPM+TPM check with post-hoc token accounting would not be atomic.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from frugal.router.metrics import LIMIT_REJECTIONS

log = logging.getLogger(__name__)

WINDOW_S = 60

_CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[4])
local cur = math.floor(now / window)
local elapsed = (now - cur * window) / window
local function used(base)
  local c = tonumber(redis.call('GET', base .. ':' .. cur) or '0')
  local p = tonumber(redis.call('GET', base .. ':' .. (cur - 1)) or '0')
  return c, p, p * (1 - elapsed) + c
end
-- Seconds until `need` more fits under `limit`, given current count c and previous count p.
local function wait_for(c, p, limit, need)
  if c + need <= limit then
    if p <= 0 then return 0 end
    local e = 1 - (limit - c - need) / p
    return math.max(0, (e - elapsed) * window)
  end
  if c <= 0 then return (1 - elapsed) * window end
  local e2 = 1 - (limit - need) / c
  if e2 < 0 then e2 = 0 end
  return (1 - elapsed) * window + e2 * window
end
local req_limit = tonumber(ARGV[1])
local tok_limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local rc, rp, r_used = used(KEYS[1])
local tc, tp, t_used = used(KEYS[2])
if req_limit > 0 and r_used + 1 > req_limit then
  return {0, 'requests', tostring(wait_for(rc, rp, req_limit, 1)), tostring(r_used)}
end
-- A request larger than the whole window can never fit: refused outright (no retry helps).
if tok_limit > 0 and cost > tok_limit then
  return {0, 'too_large', '0', tostring(t_used)}
end
if tok_limit > 0 and t_used + cost > tok_limit then
  return {0, 'tokens', tostring(wait_for(tc, tp, tok_limit, cost)), tostring(t_used)}
end
local ttl = window * 2000 + 5000
redis.call('INCRBY', KEYS[1] .. ':' .. cur, 1)
redis.call('PEXPIRE', KEYS[1] .. ':' .. cur, ttl)
if cost > 0 then
  redis.call('INCRBY', KEYS[2] .. ':' .. cur, cost)
  redis.call('PEXPIRE', KEYS[2] .. ':' .. cur, ttl)
end
return {1, 'ok', '0', tostring(r_used + 1)}
"""

_SETTLE = """
local t = redis.call('TIME')
local window = tonumber(ARGV[2])
local cur = math.floor((tonumber(t[1]) + tonumber(t[2]) / 1000000) / window)
local key = KEYS[1] .. ':' .. cur
local v = redis.call('INCRBY', key, tonumber(ARGV[1]))
if v < 0 then redis.call('SET', key, 0) v = 0 end
redis.call('PEXPIRE', key, window * 2000 + 5000)
return v
"""


@dataclass(frozen=True, slots=True)
class LimitResult:
    allowed: bool
    limit: str  # "ok", "requests", "tokens" or "too_large"
    retry_after_s: float
    # The limits applied (requests/min, tokens/min).
    requests_per_minute: int
    tokens_per_minute: int
    # Set when Redis could not be asked: the request was let through (fail-open), see `check`.
    error: str | None = None

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class TenantRateLimiter:
    def __init__(self, redis: aioredis.Redis, *, prefix: str = "frugal:ratelimit", window_s: int = WINDOW_S) -> None:
        self._redis = redis
        self._prefix = prefix
        self._window = window_s
        self._check = redis.register_script(_CHECK)
        self._settle = redis.register_script(_SETTLE)

    def _keys(self, tenant_id: str) -> tuple[str, str]:
        # Hash tag: both keys of a tenant land in one cluster slot.
        return f"{self._prefix}:{{{tenant_id}}}:req", f"{self._prefix}:{{{tenant_id}}}:tok"

    async def check(self, tenant_id: str, *, requests_per_minute: int, tokens_per_minute: int,
                    estimated_tokens: int, timeout_s: float = 1.0) -> LimitResult:
        """Counts the request and reserves `estimated_tokens` if both limits allow it.

        Redis unreachable -> allowed, with `error` set (fail-open: an outage of the limiter's store does
        not take every conversation down; it is logged and counted). So is a Redis that does not answer
        within `timeout_s`."""
        req_key, tok_key = self._keys(tenant_id)
        try:
            async with asyncio.timeout(timeout_s):
                raw = await self._check(
                    keys=[req_key, tok_key],
                    args=[requests_per_minute, tokens_per_minute, max(0, estimated_tokens), self._window],
                )
        except (TimeoutError, RedisError, OSError) as err:
            why = f"no answer within {timeout_s:.2f}s" if isinstance(err, TimeoutError) else str(err)
            log.warning("rate limiter unavailable, request allowed: %s", why)
            LIMIT_REJECTIONS.labels(tenant=tenant_id, limit="store_unavailable").inc()
            return LimitResult(True, "ok", 0.0, requests_per_minute, tokens_per_minute, error=why)
        allowed = int(raw[0]) == 1
        kind = raw[1].decode() if isinstance(raw[1], bytes) else str(raw[1])
        retry = float(raw[2])
        if not allowed:
            LIMIT_REJECTIONS.labels(tenant=tenant_id, limit=kind).inc()
        return LimitResult(allowed, kind, retry, requests_per_minute, tokens_per_minute)

    async def settle(self, tenant_id: str, delta_tokens: int, *, timeout_s: float = 1.0) -> str | None:
        """Adds (or refunds, when negative) the difference between reserved and actual tokens.
        Returns None, or why it could not (the turn goes on; the window is then off by `delta_tokens`)."""
        if delta_tokens == 0:
            return None
        _, tok_key = self._keys(tenant_id)
        try:
            async with asyncio.timeout(timeout_s):
                await self._settle(keys=[tok_key], args=[delta_tokens, self._window])
        except (TimeoutError, RedisError, OSError) as err:
            why = f"no answer within {timeout_s:.2f}s" if isinstance(err, TimeoutError) else str(err)
            log.warning("could not settle %d tokens for %s: %s", delta_tokens, tenant_id, why)
            return f"rate limiter could not record the {delta_tokens:+d} tokens of this turn ({why})"
        return None
