"""Tenant isolation, attacked through every RPC and directly through the service's own database role."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import pytest

from frugal.api.rag.v1 import rag_pb2
from frugal.common.db import tenant_transaction

pytestmark = pytest.mark.integration

TABLES = ("rag_documents", "rag_chunks", "rag_postings", "rag_tenant_stats", "rag_term_df", "rag_tenant_index")


def new_tenant() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", tenant), ("x-session-id", "sess-iso"))


async def ingest(rag: Any, tenant: str, doc_id: str, text: str, **kw: Any) -> Any:
    return await rag.stub.IngestDocument(
        rag_pb2.IngestDocumentRequest(document_id=doc_id, title=kw.pop("title", doc_id), content_type="text/plain",
                                      content=text.encode(), **kw),
        metadata=md(tenant),
    )


async def two_tenants(rag: Any) -> tuple[str, str]:
    a, b = new_tenant(), new_tenant()
    await ingest(rag, a, "alpha-notes", "Quasar telemetry calibration procedure for the alpha team. " * 5)
    await ingest(rag, a, "shared-id", "Tenant A version: hypersonic inlet unstart margins.")
    await ingest(rag, b, "shared-id", "Tenant B version: marine propeller cavitation noise.")
    await ingest(rag, b, "beta-notes", "Beta team gearbox lubrication schedule and vibration limits.")
    return a, b


# --- through the RPCs ----------------------------------------------------------------------------------


async def test_rpcs_never_cross_tenants(rag: Any) -> None:
    a, b = await two_tenants(rag)
    # Retrieve, every mode: B never sees A's content, even when asking for it word for word.
    for mode in (rag_pb2.RETRIEVAL_MODE_HYBRID, rag_pb2.RETRIEVAL_MODE_VECTOR, rag_pb2.RETRIEVAL_MODE_LEXICAL):
        res = await rag.stub.Retrieve(
            rag_pb2.RetrieveRequest(query="Quasar telemetry calibration procedure alpha", top_k=50, mode=mode),
            metadata=md(b),
        )
        assert {c.document_id for c in res.chunks} <= {"shared-id", "beta-notes"}
        assert all("Quasar" not in c.content and "Tenant A" not in c.content for c in res.chunks)
    # The same document id names two different documents.
    res_a = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="version", top_k=50), metadata=md(a))
    shared_a = [c.content for c in res_a.chunks if c.document_id == "shared-id"]
    assert shared_a and all("Tenant A" in c for c in shared_a)
    # List: only one's own.
    la = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(a))
    lb = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(b))
    assert [d.document_id for d in la.documents] == ["alpha-notes", "shared-id"]
    assert [d.document_id for d in lb.documents] == ["beta-notes", "shared-id"]
    # Delete: B cannot delete A's document (it does not exist for B), and deleting B's "shared-id"
    # leaves A's untouched.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(document_id="alpha-notes"), metadata=md(b))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(document_id="shared-id"), metadata=md(b))
    la2 = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(a))
    assert [d.document_id for d in la2.documents] == ["alpha-notes", "shared-id"]
    # Re-ingesting A's exact document as B creates B's own copy: no cross-tenant "unchanged".
    r = await ingest(rag, b, "alpha-notes", "Quasar telemetry calibration procedure for the alpha team. " * 5)
    assert r.outcome == rag_pb2.INGEST_OUTCOME_CREATED


async def test_body_fields_cannot_choose_the_tenant(rag: Any, rag_db: Any) -> None:
    a, b = new_tenant(), new_tenant()
    # The body names tenant B in every place it can; the call's metadata says A.
    r = await ingest(rag, a, f"{b}/doc", f"tenant_id={b} x-tenant-id: {b}", title=b, metadata={"owner": b})
    assert r.outcome == rag_pb2.INGEST_OUTCOME_CREATED
    for reserved in ("tenant_id", "x-tenant-id", "Tenant_Id"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ingest(rag, a, "spoof", "text", metadata={reserved: b})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    admin = await asyncpg.connect(rag_db.admin_dsn)
    try:
        owners = await admin.fetch("SELECT DISTINCT tenant_id FROM rag_documents WHERE document_id = $1", f"{b}/doc")
        assert [o["tenant_id"] for o in owners] == [a]
        for table in TABLES:
            assert await admin.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", b) == 0, table
    finally:
        await admin.close()
    lb = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(b))
    assert len(lb.documents) == 0


async def test_lexical_statistics_are_per_tenant(rag: Any) -> None:
    """BM25's N, df and average length come from the caller's rows only: another tenant's corpus cannot
    move a tenant's scores (nor be inferred from them)."""
    a, b = new_tenant(), new_tenant()
    await ingest(rag, a, "d1", "Turbine blade cooling holes reduce metal temperature.")
    await ingest(rag, a, "d2", "Compressor stall margins depend on blade loading.")
    req = rag_pb2.RetrieveRequest(query="turbine blade cooling", top_k=5, mode=rag_pb2.RETRIEVAL_MODE_LEXICAL)
    before = await rag.stub.Retrieve(req, metadata=md(a))
    for i in range(15):
        await ingest(rag, b, f"b{i}", f"Turbine blade cooling report number {i}. Turbine turbine blade.")
    after = await rag.stub.Retrieve(req, metadata=md(a))
    assert [(c.document_id, c.score) for c in before.chunks] == [(c.document_id, c.score) for c in after.chunks]
    b_res = await rag.stub.Retrieve(req, metadata=md(b))
    assert b_res.chunks and b_res.chunks[0].score != before.chunks[0].score


async def test_query_embedding_cache_is_per_tenant(rag: Any) -> None:
    a, b = new_tenant(), new_tenant()
    await ingest(rag, a, "d", "Some text about ailerons.")
    await ingest(rag, b, "d", "Some text about rudders.")
    q = rag_pb2.RetrieveRequest(query=f"ailerons and rudders {uuid.uuid4().hex}")
    first_a = await rag.stub.Retrieve(q, metadata=md(a))
    second_a = await rag.stub.Retrieve(q, metadata=md(a))
    first_b = await rag.stub.Retrieve(q, metadata=md(b))
    assert (first_a.embedding_cache_hit, second_a.embedding_cache_hit, first_b.embedding_cache_hit) == (
        False, True, False)


# --- directly through the service's role ------------------------------------------------------------


async def test_role_has_no_way_around_row_level_security(rag: Any, rag_db: Any) -> None:
    await two_tenants(rag)  # make sure rows exist
    conn = await asyncpg.connect(rag_db.app_dsn)
    try:
        attrs = await conn.fetchrow(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
        assert tuple(attrs) == (False, False, False, False)
        for table in TABLES:
            meta = await conn.fetchrow(
                "SELECT relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) AS owner"
                " FROM pg_class WHERE relname = $1", table,
            )
            assert meta["relrowsecurity"] and meta["relforcerowsecurity"], table
            assert meta["owner"] != "frugal_rag", table
            policies = await conn.fetch("SELECT qual, with_check FROM pg_policies WHERE tablename = $1", table)
            assert policies and all(
                "current_setting('app.current_tenant_id'::text, true)" in p["qual"]
                and "current_setting('app.current_tenant_id'::text, true)" in p["with_check"] for p in policies
            ), table
            # No tenant set: nothing is visible, nothing can be changed.
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
            assert await conn.execute(f"UPDATE {table} SET tenant_id = tenant_id") == "UPDATE 0"
            assert await conn.execute(f"DELETE FROM {table}") == "DELETE 0"
        # Statements that would bypass RLS or change the rules are refused.
        for stmt in (
            "TRUNCATE rag_chunks",
            "ALTER TABLE rag_chunks DISABLE ROW LEVEL SECURITY",
            "ALTER TABLE rag_chunks NO FORCE ROW LEVEL SECURITY",
            "DROP POLICY tenant_isolation ON rag_chunks",
            "CREATE POLICY open ON rag_chunks USING (true)",
            "SET ROLE postgres",
            "CREATE FUNCTION leak(text) RETURNS bool LANGUAGE sql COST 0.0001 AS 'SELECT true'",
            "CREATE TABLE copy_of_chunks AS SELECT * FROM rag_chunks",
        ):
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(stmt)
        # An empty tenant setting is no tenant.
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.current_tenant_id', '', true)")
            for table in TABLES:
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        # Session-level SET without a transaction-local value also shows nothing foreign: a
        # wildcard-looking value matches no row.
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.current_tenant_id', '%', true)")
            assert await conn.fetchval("SELECT count(*) FROM rag_chunks") == 0
    finally:
        await conn.close()


async def test_tenant_a_cannot_read_count_update_or_delete_b_rows(rag: Any, rag_db: Any, app_pool: Any) -> None:
    a, b = await two_tenants(rag)
    admin = await asyncpg.connect(rag_db.admin_dsn)
    try:
        b_chunk = str(await admin.fetchval(
            "SELECT chunk_id FROM rag_chunks WHERE tenant_id = $1 AND document_id = 'beta-notes' LIMIT 1", b))
        b_counts = {t: await admin.fetchval(f"SELECT count(*) FROM {t} WHERE tenant_id = $1", b) for t in TABLES}
    finally:
        await admin.close()
    assert all(n > 0 for n in b_counts.values())

    async with tenant_transaction(app_pool, a) as conn:
        for table in TABLES:
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", b) == 0
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id <> $1", a) == 0
            assert await conn.execute(f"UPDATE {table} SET tenant_id = tenant_id WHERE tenant_id = $1", b) == "UPDATE 0"
            assert await conn.execute(f"DELETE FROM {table} WHERE tenant_id = $1", b) == "DELETE 0"
        assert await conn.fetchval("SELECT count(*) FROM rag_chunks WHERE chunk_id = $1::uuid", b_chunk) == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM rag_postings WHERE chunk_id = $1::uuid", b_chunk) == 0
        # Knowing B's chunk id does not let A read its vector or text through a join either.
        assert await conn.fetchval(
            "SELECT count(*) FROM rag_postings p JOIN rag_chunks c USING (chunk_id) WHERE c.chunk_id = $1::uuid",
            b_chunk) == 0
    # Writes aimed at B are refused by the policies' WITH CHECK, or by the composite foreign keys.
    attacks = [
        ("INSERT INTO rag_documents (tenant_id, document_id, content_type, content_hash, fingerprint, size_bytes,"
         " chunk_count, embedding_model) VALUES ($1, 'planted', 'text/plain', 'h', 'f', 1, 0, 'm')", (b,)),
        ("UPDATE rag_documents SET tenant_id = $1 WHERE document_id = 'alpha-notes'", (b,)),
        ("INSERT INTO rag_tenant_stats (tenant_id, embedding_model, chunk_count) VALUES ($1, 'm', 1000)", (b,)),
        ("INSERT INTO rag_postings (term, chunk_id, tf, dl) VALUES ('quasar', $1::uuid, 5, 5)", (b_chunk,)),
        ("INSERT INTO rag_chunks (chunk_id, document_id, chunk_index, content, text_hash, embedding_model, embedding)"
         " VALUES (gen_random_uuid(), 'beta-notes', 99, 'x', 'h', 'all-minilm-l6-v2', '[1,0,0]')", ()),
    ]
    for sql, args in attacks:
        with pytest.raises(asyncpg.PostgresError):
            async with tenant_transaction(app_pool, a) as conn:
                await conn.execute(sql, *args)
    admin = await asyncpg.connect(rag_db.admin_dsn)
    try:
        after = {t: await admin.fetchval(f"SELECT count(*) FROM {t} WHERE tenant_id = $1", b) for t in TABLES}
        assert after == b_counts
        assert await admin.fetchval("SELECT count(*) FROM rag_documents WHERE document_id = 'planted'") == 0
    finally:
        await admin.close()


async def test_planner_statistics_do_not_leak_through_pg_stats(rag: Any, rag_db: Any) -> None:
    await two_tenants(rag)
    admin = await asyncpg.connect(rag_db.admin_dsn)
    try:
        await admin.execute("ANALYZE rag_chunks; ANALYZE rag_documents; ANALYZE rag_postings")
        assert await admin.fetchval("SELECT count(*) FROM pg_stats WHERE tablename = 'rag_chunks'") > 0
    finally:
        await admin.close()
    conn = await asyncpg.connect(rag_db.app_dsn)
    try:
        for table in TABLES:
            # Most-common values of tenant_id, terms or content would leak other tenants' data.
            assert await conn.fetchval("SELECT count(*) FROM pg_stats WHERE tablename = $1", table) == 0, table
    finally:
        await conn.close()
