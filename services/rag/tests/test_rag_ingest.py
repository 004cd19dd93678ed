"""IngestDocument / DeleteDocument / ListDocuments through the real service over loopback gRPC."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from typing import Any

import asyncpg
import grpc
import pytest

from frugal.api.rag.v1 import rag_pb2

pytestmark = pytest.mark.integration


def new_tenant() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def md(tenant: str | None, session: str | None = "sess-1") -> tuple[tuple[str, str], ...]:
    out = []
    if tenant is not None:
        out.append(("x-tenant-id", tenant))
    if session is not None:
        out.append(("x-session-id", session))
    return tuple(out)


def doc_text(n_paragraphs: int, topic: str = "wing") -> bytes:
    paras = [
        f"Paragraph {i} about the {topic}. It explains point {i} of the {topic} study in some detail. "
        f"The measurements for case {i} were repeated twice."
        for i in range(n_paragraphs)
    ]
    return ("# Report\n\n" + "\n\n".join(paras)).encode()


def ingest_req(doc_id: str, content: bytes, **kw: Any) -> rag_pb2.IngestDocumentRequest:
    kw.setdefault("title", "Report")
    kw.setdefault("content_type", "text/markdown")
    return rag_pb2.IngestDocumentRequest(document_id=doc_id, content=content, **kw)


async def chunk_count(admin_dsn: str, tenant: str, doc_id: str) -> int:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM rag_chunks WHERE tenant_id = $1 AND document_id = $2", tenant, doc_id
        ))
    finally:
        await conn.close()


async def text_index_mismatches(admin_dsn: str, tenant: str) -> int:
    """Chunks whose stored tsvector or length is not what BM25 assumes (the insert computes both once)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM rag_chunks WHERE tenant_id = $1 AND (tsv IS DISTINCT FROM"
            " to_tsvector('english'::regconfig, context || E'\\n' || content) OR lex_len <> rag_tsv_length(tsv)"
            " OR lex_len <> (SELECT coalesce(sum(tf), 0) FROM rag_postings p WHERE p.tenant_id = $1"
            "                AND p.chunk_id = rag_chunks.chunk_id))", tenant))
    finally:
        await conn.close()


async def test_create_unchanged_replaced(rag: Any, rag_db: Any) -> None:
    tenant = new_tenant()
    content = doc_text(12)
    r1 = await rag.stub.IngestDocument(ingest_req("rep-1", content, metadata={"team": "aero"}), metadata=md(tenant))
    assert r1.outcome == rag_pb2.INGEST_OUTCOME_CREATED
    assert r1.content_hash == hashlib.sha256(content).hexdigest()
    assert r1.chunk_count >= 2
    assert r1.embedder.provider == "local" and r1.embedder.offline
    assert r1.usage.input_tokens > 0 and r1.usage.estimated and r1.cost_usd == 0.0
    assert await chunk_count(rag_db.admin_dsn, tenant, "rep-1") == r1.chunk_count

    r2 = await rag.stub.IngestDocument(ingest_req("rep-1", content, metadata={"team": "aero"}), metadata=md(tenant))
    assert r2.outcome == rag_pb2.INGEST_OUTCOME_UNCHANGED
    assert r2.chunk_count == r1.chunk_count and r2.usage.input_tokens == 0  # nothing embedded

    # Same bytes, new metadata: the stored document changes (fingerprint), the content hash does not.
    r3 = await rag.stub.IngestDocument(ingest_req("rep-1", content, metadata={"team": "cfd"}), metadata=md(tenant))
    assert r3.outcome == rag_pb2.INGEST_OUTCOME_REPLACED and r3.content_hash == r1.content_hash

    bigger = doc_text(20)
    r4 = await rag.stub.IngestDocument(ingest_req("rep-1", bigger, metadata={"team": "cfd"}), metadata=md(tenant))
    assert r4.outcome == rag_pb2.INGEST_OUTCOME_REPLACED and r4.chunk_count > r1.chunk_count
    assert await chunk_count(rag_db.admin_dsn, tenant, "rep-1") == r4.chunk_count
    assert await text_index_mismatches(rag_db.admin_dsn, tenant) == 0

    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert [d.document_id for d in listed.documents] == ["rep-1"]
    d = listed.documents[0]
    assert d.content_hash == hashlib.sha256(bigger).hexdigest() and d.chunk_count == r4.chunk_count
    assert d.size_bytes == len(bigger) and d.metadata == {"team": "cfd"} and d.embedding_model == "all-minilm-l6-v2"
    assert d.updated_at.ToDatetime() >= d.created_at.ToDatetime()


async def test_failed_replacement_leaves_the_old_version_whole(rag: Any, rag_db: Any) -> None:
    """A failure half-way through writing the new chunks rolls everything back."""
    tenant = new_tenant()
    old = doc_text(8, topic="nozzle")
    r1 = await rag.stub.IngestDocument(ingest_req("atomic", old), metadata=md(tenant))
    admin = await asyncpg.connect(rag_db.admin_dsn)
    try:
        # Make the postings insert fail for one term that only the new version contains.
        await admin.execute("""
            CREATE FUNCTION test_explode() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.term = 'xylophon' THEN RAISE EXCEPTION 'injected failure'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_explode BEFORE INSERT ON rag_postings FOR EACH ROW EXECUTE FUNCTION test_explode();
        """)
        new = doc_text(9, topic="nozzle") + b"\n\nA final xylophone paragraph."
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rag.stub.IngestDocument(ingest_req("atomic", new), metadata=md(tenant))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "nothing was changed" in (err.value.details() or "")
    finally:
        await admin.execute(
            "DROP TRIGGER IF EXISTS test_explode ON rag_postings; DROP FUNCTION IF EXISTS test_explode()"
        )
        await admin.close()
    assert await chunk_count(rag_db.admin_dsn, tenant, "atomic") == r1.chunk_count
    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert listed.documents[0].content_hash == r1.content_hash
    hits = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="nozzle measurements", top_k=50,
                                                           mode=rag_pb2.RETRIEVAL_MODE_LEXICAL), metadata=md(tenant))
    assert len(hits.chunks) == r1.chunk_count  # every old chunk still indexed, nothing of the new one


async def test_readers_see_the_old_or_the_new_version_never_a_mix(rag: Any, app_pool: asyncpg.Pool) -> None:
    tenant = new_tenant()
    r1 = await rag.stub.IngestDocument(ingest_req("swap", doc_text(6)), metadata=md(tenant))
    seen: set[tuple[int, int]] = set()
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            async with app_pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT set_config('app.current_tenant_id', $1, true)", tenant)
                # One statement, one snapshot.
                row = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM rag_chunks WHERE document_id = 'swap') AS chunks,"
                    " (SELECT chunk_count FROM rag_documents WHERE document_id = 'swap') AS declared"
                )
                seen.add((int(row["chunks"]), int(row["declared"])))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        r2 = await rag.stub.IngestDocument(ingest_req("swap", doc_text(16)), metadata=md(tenant))
        await asyncio.sleep(0.05)
    finally:
        done.set()
        await watcher
    assert r2.chunk_count != r1.chunk_count
    # Within one snapshot the chunk rows always agree with the document row.
    assert seen <= {(r1.chunk_count, r1.chunk_count), (r2.chunk_count, r2.chunk_count)}
    assert (r2.chunk_count, r2.chunk_count) in seen


async def test_delete_document(rag: Any, rag_db: Any) -> None:
    tenant = new_tenant()
    r = await rag.stub.IngestDocument(ingest_req("gone", doc_text(6)), metadata=md(tenant))
    d = await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(document_id="gone"), metadata=md(tenant))
    assert d.document_id == "gone" and d.chunks_deleted == r.chunk_count
    assert await chunk_count(rag_db.admin_dsn, tenant, "gone") == 0
    hits = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="wing study"), metadata=md(tenant))
    assert len(hits.chunks) == 0
    admin = await asyncpg.connect(rag_db.admin_dsn)
    try:
        assert await admin.fetchval("SELECT count(*) FROM rag_postings WHERE tenant_id = $1", tenant) == 0
        assert await admin.fetchval("SELECT count(*) FROM rag_tenant_stats WHERE tenant_id = $1", tenant) == 0
    finally:
        await admin.close()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(document_id="gone"), metadata=md(tenant))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "gone" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(document_id=""), metadata=md(tenant))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_documents_pages(rag: Any) -> None:
    tenant = new_tenant()
    ids = [f"doc-{i:02d}" for i in range(7)]
    for doc_id in reversed(ids):
        await rag.stub.IngestDocument(ingest_req(doc_id, f"Text of {doc_id}.".encode(), content_type="text/plain"),
                                      metadata=md(tenant))
    got: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(page_size=3, page_token=token),
                                            metadata=md(tenant))
        got += [d.document_id for d in page.documents]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert got == ids and pages == 3
    default = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert len(default.documents) == 7 and default.next_page_token == ""
    for bad in (rag_pb2.ListDocumentsRequest(page_token="!!not-a-token"),
                rag_pb2.ListDocumentsRequest(page_size=501), rag_pb2.ListDocumentsRequest(page_size=-1)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rag.stub.ListDocuments(bad, metadata=md(tenant))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("empty content", {"content": b""}, "content is empty"),
    ("no document id", {"document_id": ""}, "document_id is required"),
    ("long document id", {"document_id": "x" * 600}, "the limit is 512"),
    ("control chars in id", {"document_id": "a\nb"}, "control characters"),
    ("title too long", {"title": "t" * 1001}, "title is 1001 characters"),
    ("unknown content type", {"content_type": "application/zip"}, "not supported"),
    ("no content type", {"content_type": ""}, "content_type is required"),
    ("invalid utf-8", {"content": b"abc \xff\xfe", "content_type": "text/plain"}, "not valid UTF-8"),
    ("binary as text", {"content": b"\x00\x01\x02", "content_type": "text/plain"}, "NUL"),
    ("not a pdf", {"content": b"plain words", "content_type": "application/pdf"}, "not a PDF"),
    ("whitespace only", {"content": b"   \n\n\t  ", "content_type": "text/plain"}, "no text"),
    ("reserved metadata key", {"metadata": {"tenant_id": "org_other"}}, "reserved"),
    ("metadata value too long", {"metadata": {"k": "v" * 3000}}, "the limit is 2048"),
]


@pytest.mark.parametrize(("case", "fields", "message"), BAD_INPUTS, ids=[c for c, _, _ in BAD_INPUTS])
async def test_bad_documents_are_rejected_and_nothing_is_stored(
    rag: Any, case: str, fields: dict[str, Any], message: str
) -> None:
    tenant = new_tenant()
    base: dict[str, Any] = {"document_id": "bad", "title": "T", "content_type": "text/markdown",
                            "content": b"Some valid text."}
    base.update(fields)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(**base), metadata=md(tenant))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert message in (err.value.details() or ""), err.value.details()
    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert len(listed.documents) == 0


async def test_size_and_chunk_limits(start_rag: Any) -> None:
    rag = await start_rag(max_document_bytes=4096, max_chunks_per_document=3, chunk_target_words=20,
                          chunk_overlap_words=4)
    tenant = new_tenant()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(ingest_req("big", b"word " * 1000), metadata=md(tenant))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "5000 bytes; the limit is 4096 bytes" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(ingest_req("many", doc_text(10)), metadata=md(tenant))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunks; the limit is 3" in (err.value.details() or "")
    ok = await rag.stub.IngestDocument(ingest_req("fits", b"A short text that fits."), metadata=md(tenant))
    assert ok.outcome == rag_pb2.INGEST_OUTCOME_CREATED and ok.chunk_count <= 3


async def test_pdf_ingest(rag: Any, make_pdf: Any) -> None:
    from pypdf import PdfWriter

    tenant = new_tenant()
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a blank page has no text
        await rag.stub.IngestDocument(ingest_req("blank.pdf", buf.getvalue(), content_type="application/pdf"),
                                      metadata=md(tenant))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "OCR" in (err.value.details() or "")

    pdf = make_pdf(["Supersonic inlet design notes.", "Shock wave boundary layer interaction."])
    r = await rag.stub.IngestDocument(ingest_req("notes.pdf", pdf, content_type="application/pdf"),
                                      metadata=md(tenant))
    assert r.outcome == rag_pb2.INGEST_OUTCOME_CREATED
    hits = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="shock wave interaction"), metadata=md(tenant))
    assert hits.chunks and hits.chunks[0].document_id == "notes.pdf"


async def test_calls_without_tenant_or_with_a_malformed_one_are_refused(rag: Any) -> None:
    req = ingest_req("x", b"text")
    for meta, code in ((md(None), grpc.StatusCode.UNAUTHENTICATED),
                       (md("org_a", session=None), grpc.StatusCode.UNAUTHENTICATED),
                       (md("Org A!"), grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rag.stub.IngestDocument(req, metadata=meta)
        assert err.value.code() == code
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="text"), metadata=meta)
        assert err.value.code() == code
