"""PostgreSQL access: a pool, and the only way services touch tenant data, `tenant_transaction`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import asyncpg

from frugal.common.tenancy import validate_tenant_id

TENANT_SETTING = "app.current_tenant_id"


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, application_name: str = "frugal"
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"application_name": application_name},
        command_timeout=30,
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def tenant_transaction(
    pool: asyncpg.Pool, tenant_id: str, *, snapshot: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction whose row-level-security tenant is `tenant_id`.

    `set_config(..., true)` is transaction-local, so the setting cannot leak to the next user of
    the pooled connection (unlike `SET`, which also takes no bind parameters).

    `snapshot=True`: a read-only REPEATABLE READ transaction, so every statement reads the same committed
    state. Under the default READ COMMITTED each statement has its own snapshot: a reader that checks one
    table and then queries another can see a writer's commit land between the two.
    """
    validate_tenant_id(tenant_id)
    isolation: Literal["repeatable_read"] | None = "repeatable_read" if snapshot else None  # None: the server's
    async with pool.acquire() as conn, conn.transaction(isolation=isolation, readonly=snapshot):
        await conn.execute("SELECT set_config($1, $2, true)", TENANT_SETTING, tenant_id)
        yield conn
