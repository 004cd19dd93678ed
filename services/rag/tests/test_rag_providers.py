"""Voyage embeddings and Cohere rerank through their official SDKs, against local HTTP emulators that
speak the providers' wire formats; cost events on the Redis stream; the offline labels."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from frugal.api.rag.v1 import rag_pb2
from frugal.common.cost_events import COST_EVENTS_STREAM, CostEvent, baseline_cost
from frugal.common.pricing import PriceCatalogError, default_catalog
from frugal.devkit.cost_spool import spooled_events
from frugal.devkit.devstack import free_port
from frugal.devkit.emulators.cohere import CohereEmulator, CohereReply
from frugal.devkit.emulators.voyage import VoyageEmulator, VoyageReply

pytestmark = pytest.mark.integration

VOYAGE_KEY = "pa-test-voyage"
COHERE_KEY = "co-test-key"


def new_tenant() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", tenant), ("x-session-id", "sess-prov"), ("x-request-id", uuid.uuid4().hex))


def report(n: int, topic: str = "wing") -> bytes:
    return ("\n\n".join(
        f"Section {i} of the {topic} report. The {topic} test number {i} measured lift and drag twice."
        for i in range(n)
    )).encode()


async def events_for(redis_url: str, tenant: str) -> list[CostEvent]:
    r = aioredis.Redis.from_url(redis_url)
    try:
        entries = await r.xrange(COST_EVENTS_STREAM)
    finally:
        await r.aclose()
    out = [CostEvent.from_stream_fields(dict(fields or {})) for _, fields in entries or []]
    return [e for e in out if e.tenant_id == tenant]


@pytest_asyncio.fixture
async def voyage() -> AsyncIterator[VoyageEmulator]:
    async with VoyageEmulator(api_keys=(VOYAGE_KEY,)) as emu:
        yield emu


@pytest_asyncio.fixture
async def cohere() -> AsyncIterator[CohereEmulator]:
    async with CohereEmulator(api_keys=(COHERE_KEY,)) as emu:
        yield emu


async def voyage_rag(start_rag: Any, emu: VoyageEmulator, **kw: Any) -> Any:
    return await start_rag(voyage_api_key=VOYAGE_KEY, voyage_base_url=emu.base_url, chunk_target_words=40,
                           chunk_overlap_words=8, **kw)


async def test_voyage_ingest_and_query_through_the_sdk(start_rag: Any, voyage: VoyageEmulator,
                                                       redis_url: str) -> None:
    rag = await voyage_rag(start_rag, voyage)
    tenant = new_tenant()
    r = await rag.stub.IngestDocument(
        rag_pb2.IngestDocumentRequest(document_id="w", title="Wing", content_type="text/plain",
                                      content=report(6)), metadata=md(tenant))
    assert r.embedder.provider == "voyage" and r.embedder.model == "voyage-3.5-lite" and not r.embedder.offline
    assert len(voyage.requests) == 1
    req = voyage.requests[0]
    assert req.api_key == VOYAGE_KEY and req.model == "voyage-3.5-lite" and req.input_type == "document"
    assert req.output_dimension == 1024 and req.encoding_format == "base64" and len(req.inputs) == r.chunk_count
    assert r.usage.input_tokens > 0 and not r.usage.estimated and r.usage.requests == 1
    price = default_catalog().price("voyage-3.5-lite").input_per_mtok
    assert r.cost_usd == pytest.approx(r.usage.input_tokens * price / 1e6)
    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert listed.documents[0].embedding_model == "voyage-3.5-lite"

    q = rag_pb2.RetrieveRequest(query="lift and drag of the wing test 3", top_k=3)
    res = await rag.stub.Retrieve(q, metadata=md(tenant))
    assert res.embedder.provider == "voyage" and not res.embedding_cache_hit
    assert voyage.requests[-1].input_type == "query" and voyage.requests[-1].inputs == (q.query,)
    assert res.chunks and res.chunks[0].vector_rank > 0
    again = await rag.stub.Retrieve(q, metadata=md(tenant))
    assert again.embedding_cache_hit and len(voyage.requests) == 2  # the cache saved a paid call

    events = await events_for(redis_url, tenant)
    assert [(e.kind.value, e.provider, e.offline) for e in events] == [("embedding", "voyage", False)] * 2
    ingest_event, query_event = events
    assert ingest_event.usage.input_tokens == r.usage.input_tokens and ingest_event.cost_usd == r.cost_usd
    assert not ingest_event.usage.estimated and ingest_event.model == "voyage-3.5-lite"
    assert query_event.attributes["purpose"] == "query" and query_event.cost_usd > 0
    assert len({e.event_id for e in events}) == 2


async def test_changed_document_only_embeds_new_chunks(start_rag: Any, voyage: VoyageEmulator) -> None:
    rag = await voyage_rag(start_rag, voyage)
    tenant = new_tenant()
    v1 = report(8)
    r1 = await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="r", content_type="text/plain", content=v1), metadata=md(tenant))
    sent_first = voyage.texts_embedded
    assert sent_first == r1.chunk_count
    # Append one paragraph: earlier chunks are unchanged and keep their embeddings.
    v2 = v1 + b"\n\nAn appendix about flutter margins of the tail plane."
    r2 = await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="r", content_type="text/plain", content=v2), metadata=md(tenant))
    assert r2.outcome == rag_pb2.INGEST_OUTCOME_REPLACED
    newly_sent = voyage.texts_embedded - sent_first
    assert 1 <= newly_sent < r2.chunk_count
    assert r2.usage.input_tokens < r1.usage.input_tokens
    r3 = await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="r", content_type="text/plain", content=v2), metadata=md(tenant))
    assert r3.outcome == rag_pb2.INGEST_OUTCOME_UNCHANGED and voyage.texts_embedded - sent_first == newly_sent


@pytest.mark.parametrize(("status", "code"), [(500, grpc.StatusCode.UNAVAILABLE), (503, grpc.StatusCode.UNAVAILABLE),
                                              (429, grpc.StatusCode.UNAVAILABLE), (401, grpc.StatusCode.INTERNAL)])
async def test_voyage_errors_on_ingest_store_nothing(start_rag: Any, voyage: VoyageEmulator, status: int,
                                                     code: grpc.StatusCode, redis_url: str) -> None:
    rag = await voyage_rag(start_rag, voyage)
    tenant = new_tenant()
    voyage.fail_next(status)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
            document_id="e", content_type="text/plain", content=report(3)), metadata=md(tenant))
    assert err.value.code() == code
    assert "nothing was stored" in (err.value.details() or "")
    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert len(listed.documents) == 0
    assert await events_for(redis_url, tenant) == []  # a failed call bought nothing


@pytest.mark.parametrize("vectors", [[[0.1, 0.2, 0.3]], [[0.1, 0.2], [0.3]]], ids=["short", "ragged"])
async def test_voyage_wrong_reply_shape_is_an_error_and_still_billed(
    start_rag: Any, voyage: VoyageEmulator, redis_url: str, vectors: list[list[float]]
) -> None:
    """Voyage answered 200 with vectors of the wrong shape: the ingest fails (UNAVAILABLE) and stores nothing,
    and the call is billed for the tokens the reply reported (Voyage charged for them)."""
    rag = await voyage_rag(start_rag, voyage)
    tenant = new_tenant()
    voyage.script(VoyageReply(embeddings=vectors, total_tokens=37))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
            document_id="s", content_type="text/plain", content=b"one short text"), metadata=md(tenant))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shape" in (err.value.details() or "")
    docs = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert list(docs.documents) == []
    [ev] = [e for e in await events_for(redis_url, tenant) if e.kind.value == "embedding"]
    assert ev.usage.input_tokens == 37 and ev.usage.requests == 1 and not ev.usage.estimated
    assert ev.attributes["outcome"] == "unusable_reply" and ev.cost_usd > 0 and not ev.offline


async def test_query_embedding_failure_degrades_hybrid_to_lexical(start_rag: Any, voyage: VoyageEmulator) -> None:
    rag = await voyage_rag(start_rag, voyage)
    tenant = new_tenant()
    await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="w", content_type="text/plain", content=report(4)), metadata=md(tenant))
    voyage.fail_next(503, times=2)
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="wing lift drag"), metadata=md(tenant))
    assert res.chunks and all(c.vector_rank == 0 and c.lexical_rank > 0 for c in res.chunks)
    assert res.notes and "lexical results only" in res.notes[0]
    assert not res.HasField("embedder")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="wing lift drag", mode=rag_pb2.RETRIEVAL_MODE_VECTOR),
                                metadata=md(tenant))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_slow_voyage_respects_the_callers_deadline(start_rag: Any, voyage: VoyageEmulator) -> None:
    rag = await voyage_rag(start_rag, voyage)
    voyage.script(VoyageReply(latency_s=1.5))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="anything", mode=rag_pb2.RETRIEVAL_MODE_VECTOR),
                                metadata=md(new_tenant()), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def tenant_with_docs(rag: Any) -> str:
    """A new tenant with DOCS ingested."""
    tenant = new_tenant()
    for doc_id, text in DOCS.items():
        await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
            document_id=doc_id, content_type="text/plain", content=text.encode()), metadata=md(tenant))
    return tenant


async def cohere_rag(start_rag: Any, emu: CohereEmulator) -> Any:
    return await start_rag(cohere_api_key=COHERE_KEY, cohere_base_url=emu.base_url, rerank_candidates=10)


DOCS = {
    "a": "Flutter of a wing is an aeroelastic instability coupling bending and torsion.",
    "b": "Engine inlet distortion reduces compressor stall margin.",
    "c": "Wing flutter speed rises with torsional stiffness; flutter tests use shakers.",
    "d": "Landing gear loads during touchdown and braking.",
    "e": "Aeroelastic tailoring of composite wings delays divergence and flutter.",
}


async def test_cohere_rerank_through_the_sdk(start_rag: Any, cohere: CohereEmulator, redis_url: str) -> None:
    rag = await cohere_rag(start_rag, cohere)
    tenant = await tenant_with_docs(rag)
    query = "what is wing flutter and how is flutter tested"
    plain = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=3), metadata=md(tenant))
    assert plain.rerank_note == "rerank not requested" and not cohere.requests
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=3, rerank=True), metadata=md(tenant))
    assert len(cohere.requests) == 1
    req = cohere.requests[0]
    assert req.api_key == COHERE_KEY and req.model == "rerank-v3.5" and req.query == query and req.top_n == 3
    assert len(req.documents) == 5  # every fused candidate (at most rerank_candidates)
    assert res.reranker.provider == "cohere" and res.reranker.model == "rerank-v3.5"
    assert res.rerank_note.startswith("reranked 5 fused candidates")
    # The order and scores are the reranker's.
    expected = sorted(zip(req.documents, cohere.scorer(query, list(req.documents)), strict=True), key=lambda x: -x[1])
    assert [c.score for c in res.chunks] == [s for _, s in expected[:3]]
    assert [c.content for c in res.chunks] == [d for d, _ in expected[:3]]
    events = [e for e in await events_for(redis_url, tenant) if e.kind.value == "rerank"]
    assert len(events) == 1
    ev = events[0]
    assert ev.provider == "cohere" and ev.usage.requests == 1 and not ev.usage.estimated and not ev.offline
    assert ev.cost_usd == pytest.approx(default_catalog().price("rerank-v3.5").per_request)


async def test_cohere_failure_keeps_fused_order_and_bills_nothing(start_rag: Any, cohere: CohereEmulator,
                                                                  redis_url: str) -> None:
    rag = await cohere_rag(start_rag, cohere)
    tenant = await tenant_with_docs(rag)
    query = "wing flutter"
    fused = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=3), metadata=md(tenant))
    cohere.fail_next(500)
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=3, rerank=True), metadata=md(tenant))
    assert [c.chunk_id for c in res.chunks] == [c.chunk_id for c in fused.chunks]
    assert res.rerank_note.startswith("rerank failed") and "500" in res.rerank_note
    assert not res.HasField("reranker")
    assert [e for e in await events_for(redis_url, tenant) if e.kind.value == "rerank"] == []
    # A reply without billing metadata is priced as one search and marked estimated.
    cohere.script(CohereReply(omit_meta=True))
    await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=3, rerank=True), metadata=md(tenant))
    [ev] = [e for e in await events_for(redis_url, tenant) if e.kind.value == "rerank"]
    assert ev.usage.estimated and ev.usage.requests == 1


async def test_a_cohere_reply_pointing_past_the_documents_keeps_fused_order_and_is_still_billed(
    start_rag: Any, cohere: CohereEmulator, redis_url: str
) -> None:
    """Cohere answered 200 (and charged the search) with an index past the documents sent: the reply is not
    used (a negative index would silently pick the wrong chunk), the fused order stands, and the search is
    billed from the reply's own billed units, because a paid call always leaves a cost record."""
    rag = await cohere_rag(start_rag, cohere)
    tenant = await tenant_with_docs(rag)
    query = "wing flutter"
    fused = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=3), metadata=md(tenant))
    for offset in (1000, -1000):
        cohere.script(CohereReply(index_offset=offset, search_units=2))
        res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=3, rerank=True),
                                      metadata=md(tenant))
        assert [c.chunk_id for c in res.chunks] == [c.chunk_id for c in fused.chunks]
        assert res.rerank_note.startswith("rerank failed") and "out of range" in res.rerank_note
        assert not res.HasField("reranker")
    reranks = [e for e in await events_for(redis_url, tenant) if e.kind.value == "rerank"]
    assert len(reranks) == 2 and len({e.event_id for e in reranks}) == 2
    price = default_catalog().price("rerank-v3.5").per_request
    assert all(e.usage.requests == 2 and not e.usage.estimated and e.cost_usd == pytest.approx(2 * price)
               and e.attributes["outcome"] == "unusable_reply" for e in reranks)


async def test_local_embedding_events_are_offline_zero_cost_and_never_savings(rag: Any, redis_url: str) -> None:
    tenant = new_tenant()
    r = await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="l", content_type="text/plain", content=report(3)), metadata=md(tenant))
    await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=f"wing {uuid.uuid4().hex}"), metadata=md(tenant))
    events = await events_for(redis_url, tenant)
    assert [e.attributes["purpose"].split(":")[0] for e in events] == ["ingest", "query"]
    for ev in events:
        assert ev.kind.value == "embedding" and ev.provider == "local" and ev.model == "all-minilm-l6-v2"
        assert ev.offline and ev.usage.estimated and ev.cost_usd == 0.0
        # Billing's baseline for a non-optimised kind is its own cost: zero, so no "savings" appear.
        assert baseline_cost(ev, default_catalog()) == 0.0
    assert events[0].usage.input_tokens == r.usage.input_tokens


async def test_a_model_without_a_price_stops_the_service_at_start(start_rag: Any, voyage: VoyageEmulator) -> None:
    with pytest.raises(PriceCatalogError, match="voyage-code-3"):
        await voyage_rag(start_rag, voyage, voyage_model="voyage-code-3")


async def test_no_paid_embedding_or_rerank_starts_while_its_cost_could_not_be_recorded(
    start_rag: Any, voyage: VoyageEmulator, cohere: CohereEmulator, tmp_path: Path
) -> None:
    """The cost-event Redis is down and the spool is full at 4 KiB: ingest is refused with UNAVAILABLE before
    Voyage is called, and writes nothing; a hybrid query goes lexical-only, a vector-only one is refused, rerank
    keeps the fused order; every call made before is on disk."""
    spool = tmp_path / "spool"
    rag = await voyage_rag(start_rag, voyage, cohere_api_key=COHERE_KEY, cohere_base_url=cohere.base_url,
                           cost_events_redis_url=f"redis://127.0.0.1:{free_port()}/0", cost_spool_dir=str(spool),
                           cost_spool_max_bytes=4096)
    tenant = new_tenant()
    stored: list[str] = []
    for n in range(40):  # one event is ~1 KB: 40 accepted documents would mean the limit is not enforced
        sent = len(voyage.requests)
        try:
            await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
                document_id=f"d{n}", content_type="text/plain", content=report(3, f"wing{n}")), metadata=md(tenant))
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            assert "not called" in (err.details() or "") and "spool full" in (err.details() or "")
            assert len(voyage.requests) == sent
            break
        stored.append(f"d{n}")
    else:
        pytest.fail("rag kept calling Voyage with a full cost-event spool")
    assert stored
    listed = await rag.stub.ListDocuments(rag_pb2.ListDocumentsRequest(), metadata=md(tenant))
    assert [d.document_id for d in listed.documents] == stored  # the refused document left nothing behind
    calls = len(voyage.requests)
    query = "wing0 lift and drag"  # not embedded before: no cached vector
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=3, rerank=True), metadata=md(tenant))
    assert res.chunks and len(voyage.requests) == calls and not cohere.requests
    assert any("lexical results only" in n and "not called" in n for n in res.notes)
    assert res.rerank_note.startswith("rerank failed") and "not called" in res.rerank_note
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query=query, mode=rag_pb2.RETRIEVAL_MODE_VECTOR),
                                metadata=md(tenant))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and len(voyage.requests) == calls
    spooled = await spooled_events(spool, at_least=calls)
    assert sum(e.usage.requests for e in spooled if e.provider == "voyage") == calls  # every call billed


async def cancel_once_sent(call: Any, provider_requests: list[Any]) -> None:
    """Cancels a started RPC as soon as the provider emulator has received one more request (the call is then
    mid-flight at the provider)."""
    sent = len(provider_requests)
    for _ in range(150):
        if len(provider_requests) > sent:
            break
        await asyncio.sleep(0.02)
    assert len(provider_requests) > sent, "the provider never received the request"
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def _events_of_kind(redis_url: str, tenant: str, kind: str, *, at_least: int = 1) -> list[CostEvent]:
    # A call cut short by the caller is billed from a shielded task that may finish just after the RPC ends.
    for _ in range(50):
        found = [e for e in await events_for(redis_url, tenant) if e.kind.value == kind]
        if len(found) >= at_least:
            return found
        await asyncio.sleep(0.05)
    return found


async def test_a_voyage_call_sent_but_not_answered_is_billed_as_an_estimate(
    start_rag: Any, voyage: VoyageEmulator, redis_url: str
) -> None:
    """The request reached Voyage, which may bill it, but no answer came: by our own timeout (the query goes
    lexical-only) or because the caller left. Either way one estimated event, outcome timeout or cancelled."""
    rag = await voyage_rag(start_rag, voyage, voyage_timeout_s=0.2)
    tenant = new_tenant()
    voyage.script(VoyageReply(latency_s=1.0))
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="wing lift drag"), metadata=md(tenant))
    assert res.notes and "lexical results only" in res.notes[0]
    [ev] = await _events_of_kind(redis_url, tenant, "embedding")
    assert ev.attributes["outcome"] == "timeout" and ev.usage.estimated and not ev.offline
    assert ev.usage.input_tokens == len("wing lift drag") // 4 + 1 and ev.cost_usd > 0
    # The caller goes away while Voyage is still working on it.
    caller = new_tenant()
    rag2 = await voyage_rag(start_rag, voyage)
    voyage.script(VoyageReply(latency_s=3.0))
    await cancel_once_sent(rag2.stub.Retrieve(rag_pb2.RetrieveRequest(
        query="anything", mode=rag_pb2.RETRIEVAL_MODE_VECTOR), metadata=md(caller)), voyage.requests)
    [ev2] = await _events_of_kind(redis_url, caller, "embedding")
    assert ev2.attributes["outcome"] == "cancelled" and ev2.usage.estimated and ev2.cost_usd > 0


async def test_a_cohere_rerank_not_answered_in_time_keeps_fused_order_and_is_billed_as_an_estimate(
    start_rag: Any, cohere: CohereEmulator, redis_url: str
) -> None:
    rag = await start_rag(cohere_api_key=COHERE_KEY, cohere_base_url=cohere.base_url, rerank_candidates=10,
                          cohere_timeout_s=0.2)
    tenant = await tenant_with_docs(rag)
    cohere.script(CohereReply(latency_s=1.0))
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="wing flutter", top_k=3, rerank=True),
                                  metadata=md(tenant))
    assert res.rerank_note.startswith("rerank failed") and not res.HasField("reranker")
    [ev] = await _events_of_kind(redis_url, tenant, "rerank")
    assert ev.attributes["outcome"] == "timeout" and ev.usage.estimated and ev.usage.requests == 1
    assert ev.cost_usd == pytest.approx(default_catalog().price("rerank-v3.5").per_request)


async def test_a_rerank_the_caller_walks_away_from_is_billed_as_an_estimate(
    start_rag: Any, cohere: CohereEmulator, redis_url: str
) -> None:
    rag = await cohere_rag(start_rag, cohere)
    tenant = await tenant_with_docs(rag)
    cohere.script(CohereReply(latency_s=3.0))
    await cancel_once_sent(rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="wing flutter", top_k=3, rerank=True),
                                             metadata=md(tenant)), cohere.requests)
    [ev] = await _events_of_kind(redis_url, tenant, "rerank")
    assert ev.attributes["outcome"] == "cancelled" and ev.usage.estimated and ev.usage.requests == 1
