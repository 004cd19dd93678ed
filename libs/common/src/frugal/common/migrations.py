"""Versioned SQL migrations: plain files `NNNN_name.sql` in a package, applied in order, once.

Each service owns its files (e.g. `frugal.rag.migrations`). The runner connects as the schema owner,
serialises concurrent runners with an advisory lock, refuses to run when an applied file changed, and
creates the service's application role: LOGIN, no superuser, no BYPASSRLS, owning nothing. In SQL,
`@app_role@` stands for that role's quoted name.

The database may come up after the runner (compose starts them together; in Kubernetes the init
container may start before a managed database is reachable): the runner waits up to `--wait-seconds` for
it, retrying the connection with backoff while the server refuses connections, is still starting, or has
not created the database yet. Wrong credentials or a bad DSN fail at once.

CLI: python -m frugal.common.migrations --dsn OWNER_DSN --package frugal.rag.migrations \
         --component rag --app-role frugal_rag [--wait-seconds 120]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg

FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
LOCK_KEY = 0x46525547  # "FRUG"
# Errors that mean "the database is not there yet": worth waiting for. Anything else (authentication,
# a malformed DSN, SQL errors) is a configuration problem and fails at once.
_NOT_YET = (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError, asyncpg.InvalidCatalogNameError,
            asyncpg.TooManyConnectionsError)


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


async def connect_when_ready(dsn: str, wait_s: float, *, log: bool = True) -> asyncpg.Connection:
    """Connects to `dsn`, retrying (backoff 0.2 s doubling to 2 s) for up to `wait_s` seconds while the
    database is not reachable yet. The last error is raised when the time is up."""
    deadline = time.monotonic() + max(wait_s, 0.0)
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
        except _NOT_YET as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if log:
                print(f"migrations: database not ready ({type(err).__name__}: {err}); retrying "
                      f"(attempt {attempt}, {left:.0f}s left)", file=sys.stderr, flush=True)
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)
            continue
        if attempt > 1 and log:
            print(f"migrations: connected after {attempt} attempts", file=sys.stderr, flush=True)
        return conn


async def apply_migrations(
    dsn: str,
    *,
    package: str | Traversable,
    component: str,
    app_role: str,
    app_password: str | None = None,
    wait_s: float = 0.0,
) -> list[str]:
    """Applies pending migrations; returns the names applied now. Waits up to `wait_s` for the database."""
    migrations = load_migrations(package)
    conn = await connect_when_ready(dsn, wait_s)
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
    p.add_argument("--wait-seconds", type=float, default=float(os.environ.get("MIGRATIONS_WAIT_SECONDS", "120")),
                   help="how long to wait for the database to accept connections (default 120, "
                        "env MIGRATIONS_WAIT_SECONDS; 0: one attempt)")
    args = p.parse_args(argv)
    try:
        applied = asyncio.run(
            apply_migrations(args.dsn, package=args.package, component=args.component,
                             app_role=args.app_role, app_password=args.app_password, wait_s=args.wait_seconds)
        )
    except (MigrationError, asyncpg.PostgresError, OSError) as err:
        print(f"migrations failed: {err}", file=sys.stderr)
        return 1
    print(f"{args.component}: applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
