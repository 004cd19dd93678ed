"""Query-embedding cache in Redis: key = tenant + model + sha256(text), value = float32 bytes, with TTL.

The tenant is part of the key so that one tenant's queries can never be observed (not even by timing)
through another tenant's cache hits. A Redis failure is a miss, never an error for the caller.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from frugal.rag.embedding.base import Vector
from frugal.rag.metrics import EMBEDDING_CACHE

log = logging.getLogger(__name__)

KEY_PREFIX = "frugal:rag:qemb"


def cache_key(tenant_id: str, model: str, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{KEY_PREFIX}:{tenant_id}:{model}:{digest}"


class QueryEmbeddingCache:
    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl = ttl_s

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    async def get(self, tenant_id: str, model: str, dims: int, text: str) -> Vector | None:
        if not self.enabled:
            return None
        try:
            raw = await self._redis.get(cache_key(tenant_id, model, text))
        except (RedisError, OSError) as err:
            EMBEDDING_CACHE.labels(result="error").inc()
            log.warning("embedding cache read failed: %s", err)
            return None
        if raw is None or len(raw) != dims * 4:
            EMBEDDING_CACHE.labels(result="miss").inc()
            return None
        EMBEDDING_CACHE.labels(result="hit").inc()
        return np.frombuffer(bytes(raw) if isinstance(raw, bytes) else raw.encode(), dtype=np.float32).copy()

    async def put(self, tenant_id: str, model: str, text: str, vector: Vector) -> None:
        if not self.enabled:
            return
        try:
            await self._redis.set(cache_key(tenant_id, model, text), np.asarray(vector, np.float32).tobytes(),
                                  ex=self._ttl)
        except (RedisError, OSError) as err:
            EMBEDDING_CACHE.labels(result="error").inc()
            log.warning("embedding cache write failed: %s", err)
