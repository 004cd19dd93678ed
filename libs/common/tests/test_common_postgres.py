"""Migrations runner and row-level security through tenant_transaction, on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from frugal.common.db import create_pool, tenant_transaction
from frugal.common.migrations import MigrationError, apply_migrations
from frugal.devkit.pytest_plugin import with_user

NOTES_SQL = """
CREATE TABLE notes (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), ''),
    body text NOT NULL
);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY notes_tenant ON notes
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO @app_role@;
GRANT USAGE ON SEQUENCE notes_id_seq TO @app_role@;
"""


def _migrations(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "migs"
    d.mkdir(exist_ok=True)
    for name, sql in files.items():
        (d / name).write_text(sql)
    return d


@pytest.fixture
async def notes_db(new_database: Callable[[], Awaitable[str]], tmp_path: Path) -> tuple[str, str]:
    admin = await new_database()
    applied = await apply_migrations(admin, package=_migrations(tmp_path, {"0001_notes.sql": NOTES_SQL}),
                                     component="test", app_role="frugal_test")
    assert applied == ["0001_notes"]
    return admin, with_user(admin, "frugal_test")


async def test_migrations_are_idempotent_and_guarded(notes_db: tuple[str, str], tmp_path: Path) -> None:
    admin, _ = notes_db
    pkg = _migrations(tmp_path, {"0001_notes.sql": NOTES_SQL})
    assert await apply_migrations(admin, package=pkg, component="test", app_role="frugal_test") == []
    (pkg / "0002_more.sql").write_text("ALTER TABLE notes ADD COLUMN extra text;")
    assert await apply_migrations(admin, package=pkg, component="test", app_role="frugal_test") == ["0002_more"]
    (pkg / "0001_notes.sql").write_text(NOTES_SQL + "\n-- edited")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(admin, package=pkg, component="test", app_role="frugal_test")
    (pkg / "0001_notes.sql").write_text(NOTES_SQL)
    (pkg / "3_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="does not match"):
        await apply_migrations(admin, package=pkg, component="test", app_role="frugal_test")


async def test_app_role_is_powerless(notes_db: tuple[str, str]) -> None:
    admin, _ = notes_db
    conn = await asyncpg.connect(admin)
    try:
        role = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = 'frugal_test'")
        assert role is not None and not any(role.values())
        owned = await conn.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = 'frugal_test'")
        assert owned == 0
    finally:
        await conn.close()


async def test_rls_isolates_tenants(notes_db: tuple[str, str]) -> None:
    _, app_dsn = notes_db
    pool = await create_pool(app_dsn, min_size=1, max_size=2)
    try:
        for tenant, body in (("org_a", "a1"), ("org_a", "a2"), ("org_b", "b1")):
            async with tenant_transaction(pool, tenant) as conn:
                await conn.execute("INSERT INTO notes (body) VALUES ($1)", body)

        async with tenant_transaction(pool, "org_a") as conn:
            assert sorted(await conn.fetchval("SELECT array_agg(body) FROM notes")) == ["a1", "a2"]
            assert await conn.fetchval("SELECT count(*) FROM notes WHERE tenant_id = 'org_b'") == 0
            assert await conn.execute("UPDATE notes SET body = 'x' WHERE tenant_id = 'org_b'") == "UPDATE 0"
            assert await conn.execute("DELETE FROM notes WHERE body = 'b1'") == "DELETE 0"
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # WITH CHECK refuses foreign rows
                await conn.execute("INSERT INTO notes (tenant_id, body) VALUES ('org_b', 'sneaky')")

        async with tenant_transaction(pool, "org_b") as conn:
            assert await conn.fetchval("SELECT array_agg(body) FROM notes") == ["b1"]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # cannot move its row to another tenant
                await conn.execute("UPDATE notes SET tenant_id = 'org_a'")

        # No tenant set: nothing visible, nothing writable.
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM notes") == 0
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.NotNullViolationError)):
                await conn.execute("INSERT INTO notes (body) VALUES ('orphan')")
            # The tenant setting is transaction-local: it did not leak into this pooled connection.
            assert await conn.fetchval("SELECT current_setting('app.current_tenant_id', true)") in (None, "")
            # And the role cannot turn RLS off.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("ALTER TABLE notes DISABLE ROW LEVEL SECURITY")
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute("SET row_security = off; SELECT count(*) FROM notes")
    finally:
        await pool.close()


async def test_tenant_transaction_rejects_invalid_ids(notes_db: tuple[str, str]) -> None:
    _, app_dsn = notes_db
    pool = await create_pool(app_dsn, min_size=1, max_size=1)
    try:
        with pytest.raises(ValueError):
            async with tenant_transaction(pool, "x' OR '1'='1"):
                pass
    finally:
        await pool.close()
