"""Versioned SQL migrations: plain files `NNNN_name.sql` in a package, applied in order, once.

Each service owns its files (e.g. `frugal.rag.migrations`). The runner connects as the schema owner,
serialises concurrent runners with an advisory lock, refuses to run when an applied file changed, and
creates the service's application role: LOGIN, no superuser, no BYPASSRLS, owning nothing. In SQL,
`@app_role@` stands for that role's quoted name.

CLI: python -m frugal.common.migrations --dsn OWNER_DSN --package frugal.rag.migrations \
         --component rag --app-role frugal_rag
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
LOCK_KEY = 0x46525547  # "FRUG"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(package: str | Traversable) -> list[Migration]:
    root = resources.files(package) if isinstance(package, str) else package
    found: list[Migration] = []
    for entry in root.iterdir():
        m = FILE_RE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"migration file {entry.name!r} does not match NNNN_name.sql")
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {package}")
    return found


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_app_role(conn: asyncpg.Connection, role: str, password: str | None = None) -> None:
    """Creates (or normalises) a login role that can never bypass row-level security."""
    if not ROLE_RE.fullmatch(role):
        raise MigrationError(f"invalid role name {role!r}")
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    ident = quote_ident(role)
    if not exists:
        await conn.execute(f"CREATE ROLE {ident} LOGIN")
    await conn.execute(
        f"ALTER ROLE {ident} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION"
    )
    if password:
        # ALTER ROLE takes no bind parameters; quote the literal safely via format().
        stmt = await conn.fetchval("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, password)
        await conn.execute(stmt)
    db = await conn.fetchval("SELECT current_database()")
    await conn.execute(f"GRANT CONNECT ON DATABASE {quote_ident(db)} TO {ident}")
    await conn.execute(f"GRANT USAGE ON SCHEMA public TO {ident}")


async def apply_migrations(
    dsn: str,
    *,
    package: str | Traversable,
    component: str,
    app_role: str,
    app_password: str | None = None,
) -> list[str]:
    """Applies pending migrations; returns the names applied now."""
    migrations = load_migrations(package)
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS frugal_migrations (
                       component text NOT NULL,
                       version int NOT NULL,
                       name text NOT NULL,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (component, version))"""
            )
            await ensure_app_role(conn, app_role, app_password)
            rows = await conn.fetch(
                "SELECT version, name, checksum FROM frugal_migrations WHERE component = $1", component
            )
            done = {r["version"]: r for r in rows}
            for mig in migrations:
                if mig.version in done:
                    if done[mig.version]["checksum"] != mig.checksum:
                        raise MigrationError(
                            f"{component} migration {mig.version:04d}_{mig.name} changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                sql = mig.sql.replace("@app_role@", quote_ident(app_role))
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO frugal_migrations (component, version, name, checksum) VALUES ($1,$2,$3,$4)",
                        component, mig.version, mig.name, mig.checksum,
                    )
                applied_now.append(f"{mig.version:04d}_{mig.name}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
    return applied_now


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m frugal.common.migrations", description=__doc__.splitlines()[0])
    p.add_argument("--dsn", required=True, help="owner/admin connection string")
    p.add_argument("--package", required=True, help="package holding NNNN_name.sql files")
    p.add_argument("--component", required=True)
    p.add_argument("--app-role", required=True)
    p.add_argument("--app-password", default=None)
    args = p.parse_args(argv)
    try:
        applied = asyncio.run(
            apply_migrations(args.dsn, package=args.package, component=args.component,
                             app_role=args.app_role, app_password=args.app_password)
        )
    except (MigrationError, asyncpg.PostgresError, OSError) as err:
        print(f"migrations failed: {err}", file=sys.stderr)
        return 1
    print(f"{args.component}: applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
