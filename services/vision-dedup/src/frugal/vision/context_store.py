"""The last analyses of each session, in Redis, shared by every instance of the service.

One sorted set per (tenant, session): members are serialized `FrameAnalysis` messages scored by their
completion time (Unix ms), trimmed to the newest `size` and expiring `ttl_s` after the last write. The
tenant is part of the key, so a tenant can never read another tenant's session.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from frugal.api.vision.v1 import vision_pb2

KEY_PREFIX = "frugal:vision:context"


def context_key(tenant_id: str, session_id: str) -> str:
    return f"{KEY_PREFIX}:{tenant_id}:{session_id}"


class ContextStore:
    def __init__(self, redis: aioredis.Redis, *, size: int = 5, ttl_s: int = 1800) -> None:
        self._redis = redis
        self.size = size
        self.ttl_s = ttl_s

    async def add(self, tenant_id: str, session_id: str, analysis: vision_pb2.FrameAnalysis) -> None:
        key = context_key(tenant_id, session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {analysis.SerializeToString(): analysis.completed_at_ms})
            pipe.zremrangebyrank(key, 0, -(self.size + 1))
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def recent(self, tenant_id: str, session_id: str, limit: int | None = None) -> list[vision_pb2.FrameAnalysis]:
        """Newest first, at most `limit` (capped at the store size)."""
        n = self.size if not limit or limit <= 0 else min(limit, self.size)
        raw = cast("list[bytes]", await self._redis.zrevrange(context_key(tenant_id, session_id), 0, n - 1))
        out = []
        for blob in raw:
            msg = vision_pb2.FrameAnalysis()
            msg.ParseFromString(blob)
            out.append(msg)
        return out
