"""The embedding model belongs to the tenant's index: a settings change does not strand its chunks, a
model change is explicit, chunks are re-embedded in the background with progress in ListDocuments, and
Retrieve answers from the old vectors until every chunk has its new one (then from the new ones:
Voyage at 2048 dimensions, HNSW-indexed as halfvec)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio

from frugal.api.rag.v1 import rag_pb2
from frugal.devkit.emulators.voyage import VoyageEmulator, VoyageReply
from frugal.rag import store

pytestmark = pytest.mark.integration

VOYAGE_KEY = "pa-test-model-change"
DOCS = {
    "wing": "Wing lift and drag were measured in the wind tunnel at several angles of attack.",
    "nozzle": "The rocket nozzle expands the exhaust gas to supersonic speed through its divergent section.",
    "shock": "A normal shock wave forms ahead of a blunt body in supersonic flow, raising the pressure.",
    "heat": "Heat transfer to the leading edge grows with Mach number during hypersonic re-entry.",
}
QUERY = ("rocket nozzle exhaust supersonic", "nozzle")


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", tenant), ("x-session-id", "sess-model"), ("x-request-id", uuid.uuid4().hex))


@pytest_asyncio.fixture
async def voyage() -> AsyncIterator[VoyageEmulator]:
    async with VoyageEmulator(api_keys=(VOYAGE_KEY,)) as emu:
        yield emu


async def top_doc(rag: Any, tenant: str, mode: Any = rag_pb2.RETRIEVAL_MODE_VECTOR) -> tuple[str, str]:
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=QUERY[0], top_k=3, mode=mode), metadata=md(tenant))
    assert res.chunks, "retrieval must answer throughout"
    return res.chunks[0].document_id, res.embedder.model


async def test_model_change_reembeds_in_the_background_and_retrieval_works_throughout(
    start_rag: Any, voyage: VoyageEmulator, rag_db: Any,
) -> None:
    tenant = f"org_{uuid.uuid4().hex[:10]}"
    local = await start_rag()  # no Voyage key: the local encoder is the default model
    for doc_id, text in DOCS.items():
        await local.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
            document_id=doc_id, content_type="text/plain", content=text.encode()), metadata=md(tenant))
    assert await top_doc(local, tenant) == (QUERY[1], "all-minilm-l6-v2")

    # Voyage configured (now the default for new tenants): this tenant's index keeps its model.
    rag = await start_rag(voyage_api_key=VOYAGE_KEY, voyage_base_url=voyage.base_url, reembed_batch_size=1,
                          reembed_retry_seconds=0.2, exact_scan_max_chunks=0, hnsw_cost_ratio=0)
    assert await top_doc(rag, tenant) == (QUERY[1], "all-minilm-l6-v2")
    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert listed.index.model == "all-minilm-l6-v2" and listed.index.target_model == ""
    assert listed.index.chunks_total == len(DOCS)

    # Slow replies first (so the change is still running when a document arrives), then failures
    # (retried): the change must stall, visibly, with retrieval still on the old vectors.
    voyage.script(*[VoyageReply(latency_s=0.5) for _ in range(3)])
    changed = await rag.stub.ChangeEmbeddingModel(
        rag_pb2.ChangeEmbeddingModelRequest(model="voyage-3.5-lite@2048"), metadata=md(tenant))
    assert changed.index.target_model == "voyage-3.5-lite@2048" and changed.index.model == "all-minilm-l6-v2"
    # A document ingested during the change is embedded with both models.
    await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="flutter", content_type="text/plain",
        content=b"Flutter of the tail surface couples bending and torsion."), metadata=md(tenant))
    voyage.fail_next(500, times=3)

    seen_progress: set[int] = set()
    errors: set[str] = set()
    for _ in range(600):
        listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
        if not listed.index.target_model:
            break
        seen_progress.add(listed.index.chunks_reembedded)
        if listed.index.last_error:
            errors.add(listed.index.last_error)
        assert listed.index.chunks_total == len(DOCS) + 1
        # Throughout: answers, from the old model's vectors until the swap (which may commit between the
        # listing above and this query: then the new model answers and the change is finished).
        doc, model = await top_doc(rag, tenant)
        assert doc == QUERY[1]
        if model != "all-minilm-l6-v2":
            after = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
            assert model == "voyage-3.5-lite@2048" and not after.index.target_model, "new vectors before the swap"
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the model change did not complete")
    assert errors, "the injected Voyage failures show in ListDocuments while they are retried"
    assert len(seen_progress) >= 2 and max(seen_progress) <= len(DOCS) + 1  # it moved while we watched

    assert listed.index.model == "voyage-3.5-lite@2048" and listed.index.last_error == ""
    assert {d.embedding_model for d in listed.documents} == {"voyage-3.5-lite@2048"}
    assert await top_doc(rag, tenant) == (QUERY[1], "voyage-3.5-lite@2048")
    assert await top_doc(rag, tenant, rag_pb2.RETRIEVAL_MODE_HYBRID) == (QUERY[1], "voyage-3.5-lite@2048")

    admin = await asyncpg.connect(rag_db.admin_dsn)
    try:
        rows = await admin.fetch(
            "SELECT embedding_model, vector_dims(embedding) AS d, next_model FROM rag_chunks WHERE tenant_id = $1",
            tenant)
        plan = "\n".join(r[0] for r in await admin.fetch(
            "EXPLAIN SELECT chunk_id FROM rag_chunks WHERE embedding_model = 'voyage-3.5-lite@2048'"
            " ORDER BY embedding::halfvec(2048) <=> (SELECT embedding FROM rag_chunks LIMIT 1)::halfvec(2048)"
            " LIMIT 5"))
    finally:
        await admin.close()
    assert {(r["embedding_model"], r["d"], r["next_model"]) for r in rows} == {("voyage-3.5-lite@2048", 2048, None)}
    assert "rag_chunks_hnsw_voyage35lite_2048" in plan

    # The local service cannot run Voyage: it says so instead of answering from nothing.
    res = await local.stub.Retrieve(rag_pb2.RetrieveRequest(query=QUERY[0], top_k=3), metadata=md(tenant))
    assert res.notes and "not available" in res.notes[0]
    assert res.chunks and res.chunks[0].document_id == QUERY[1]  # lexical still answers


async def test_model_change_requests_are_validated(start_rag: Any) -> None:
    rag = await start_rag()
    tenant = f"org_{uuid.uuid4().hex[:10]}"
    for model, code in [("", grpc.StatusCode.INVALID_ARGUMENT), ("Bad Model!", grpc.StatusCode.INVALID_ARGUMENT),
                        ("voyage-3.5-lite", grpc.StatusCode.FAILED_PRECONDITION)]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rag.stub.ChangeEmbeddingModel(rag_pb2.ChangeEmbeddingModelRequest(model=model), metadata=md(tenant))
        assert err.value.code() == code, (model, err.value.details())
    same = await rag.stub.ChangeEmbeddingModel(rag_pb2.ChangeEmbeddingModelRequest(model="all-minilm-l6-v2"),
                                               metadata=md(tenant))
    assert same.index.model == "all-minilm-l6-v2" and same.index.target_model == ""


@pytest.mark.parametrize("when", ["inside_the_snapshot", "before_the_snapshot"])
async def test_a_swap_that_commits_during_a_retrieval_does_not_empty_its_results(
    start_rag: Any, app_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, when: str,
) -> None:
    """The race the background test above can hit: the swap commits after Retrieve checked the index's model
    and before its vector search ran. Here the swap is made to commit at exactly that point: inside the
    retrieval's transaction (its snapshot still holds the old vectors: they answer), or between the first check
    and the transaction (the snapshot holds the new ones, in a model this service cannot embed: it says so)."""
    tenant = f"org_{uuid.uuid4().hex[:10]}"
    rag = await start_rag()  # the local encoder only: it cannot embed a query with Voyage
    for doc_id, text in DOCS.items():
        await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
            document_id=doc_id, content_type="text/plain", content=text.encode()), metadata=md(tenant))
    # Every chunk already has its target vector (as the worker leaves them just before the swap).
    target = "voyage-3.5-lite@2048"
    await store.request_model_change(app_pool, tenant, "all-minilm-l6-v2", target)
    pending = await store.pending_reembed(app_pool, tenant, target, 100)
    unit = "[" + ",".join(["0.0221"] * 2048) + "]"
    assert await store.store_reembedded(app_pool, tenant, target, [(p, unit) for p in pending]) == len(DOCS)

    real_get_index, real_configure_scan = store.get_index, store.configure_scan
    armed: list[bool] = [True] if when == "before_the_snapshot" else []
    swapped: list[bool] = []

    async def configure_scan_and_arm(conn: asyncpg.Connection, **kw: Any) -> None:
        await real_configure_scan(conn, **kw)
        armed.append(True)  # inside the retrieval's transaction, before its check of the index

    async def get_index_then_swap(conn: asyncpg.Connection) -> store.IndexState | None:
        state = await real_get_index(conn)
        if armed and not swapped and state is not None and state.target_model == target:
            swapped.append(True)  # before the call below, which reads the index through this function too
            assert await store.complete_model_change(app_pool, tenant, target)
        return state

    monkeypatch.setattr(store, "configure_scan", configure_scan_and_arm)
    monkeypatch.setattr(store, "get_index", get_index_then_swap)
    if when == "inside_the_snapshot":
        res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(
            query=QUERY[0], top_k=3, mode=rag_pb2.RETRIEVAL_MODE_VECTOR), metadata=md(tenant))
        assert swapped, "the swap ran inside the retrieval"
        assert [c.document_id for c in res.chunks][:1] == [QUERY[1]], "answered from the snapshot it started on"
        assert res.embedder.model == "all-minilm-l6-v2"
    else:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rag.stub.Retrieve(rag_pb2.RetrieveRequest(
                query=QUERY[0], top_k=3, mode=rag_pb2.RETRIEVAL_MODE_VECTOR), metadata=md(tenant))
        assert swapped
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert "cannot run" in str(err.value.details())
        res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=QUERY[0], top_k=3), metadata=md(tenant))
        assert res.notes and "not available" in res.notes[0]
        assert [c.document_id for c in res.chunks][:1] == [QUERY[1]], "lexical still answers"
    monkeypatch.undo()
    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert listed.index.model == target and not listed.index.target_model
