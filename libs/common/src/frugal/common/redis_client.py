"""Redis client factory: one configuration for every service."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def create_redis(url: str, *, socket_timeout: float = 5.0) -> aioredis.Redis:
    """Bytes in, bytes out (decode where needed); reconnects with backoff on connection errors."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def create_cost_redis(settings: Any, shared: aioredis.Redis) -> aioredis.Redis:
    """The Redis of the `cost-events` stream and billing's published state (COST_EVENTS_REDIS_URL: persistent,
    noeviction): `shared` when it is the same instance as REDIS_URL (caches, rate limits), else its own client.
    Close it with `aclose_cost_redis`."""
    url = settings.cost_redis_url
    return shared if url == settings.redis_url else create_redis(url)


async def aclose_cost_redis(cost_redis: aioredis.Redis, shared: aioredis.Redis) -> None:
    if cost_redis is not shared:
        await cost_redis.aclose()
