"""Bounded work per request: chunks capped in characters and word pieces whatever the script, text
without spaces chunked or refused with a clear status, PDF bombs stopped by the extraction budget
(inflated bytes, CPU seconds, deadline) in a child process while other tenants are served."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
import zlib
from typing import Any

import grpc
import pytest

from frugal.api.rag.v1 import rag_pb2
from frugal.encoder.tokens import token_offsets
from frugal.rag.chunking import cap_tokens, char_windows, chunk_text

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def new_tenant() -> str:
    return f"org_{uuid.uuid4().hex[:10]}"


def md(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("x-tenant-id", tenant), ("x-session-id", "sess-bounded"), ("x-request-id", uuid.uuid4().hex))


def b64_text(n_bytes: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    return base64.b64encode(rng.randbytes(n_bytes * 3 // 4)).decode()[:n_bytes]


def cjk_text(n_chars: int) -> str:
    return "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(n_chars))


def minified_json(n_items: int) -> str:
    return json.dumps([{"id": i, "sku": f"frobnicator{i % 7}", "price": i * 1.5, "tags": ["alpha", "beta"]}
                       for i in range(n_items)], separators=(",", ":"))


# --- the chunker alone -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b64_text(50_000), cjk_text(20_000), minified_json(800)],
                         ids=["base64", "cjk", "json"])
def test_text_without_spaces_is_cut_into_capped_chunks(text: str) -> None:
    chunks = cap_tokens(chunk_text(text, markdown=False, max_chars=2000), 240, token_offsets)
    assert len(chunks) > 1
    assert all(len(c.content) <= 2000 for c in chunks)
    lengths = [len(o) for o in token_offsets([c.content for c in chunks])]
    assert max(lengths) <= 240
    # Nothing is lost: the pieces hold every non-space character of the text, in order.
    assert "".join("".join(c.content.split()) for c in chunks) == "".join(text.split())
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_char_windows_cut_at_punctuation_when_there_is_some() -> None:
    pieces = char_windows("a" * 70 + "," + "b" * 70 + "," + "c" * 70, 100)
    assert pieces == ["a" * 70 + ",", "b" * 70 + ",", "c" * 70]
    assert char_windows("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_english_chunks_keep_their_words_whole() -> None:
    text = " ".join(f"supersonic{i % 13} boundary layer transition measured" for i in range(400))
    chunks = cap_tokens(chunk_text(text, markdown=False, target_words=160, max_chars=2000), 60, token_offsets)
    words = set(text.split())
    for c in chunks:
        assert all(w in words for w in c.content.split())  # never cut inside a word
    assert max(len(o) for o in token_offsets([c.content for c in chunks])) <= 60


# --- through the service ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["base64", "json", "cjk"])
async def test_a_6_mib_document_without_spaces_is_refused_clearly_and_the_tenant_still_works(
    rag: Any, kind: str
) -> None:
    tenant = new_tenant()
    ok = await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="small", content_type="text/plain",
        content=b"The wind tunnel measures lift and drag of the wing."), metadata=md(tenant))
    assert ok.chunk_count == 1
    text = {"base64": lambda: b64_text(6 * MIB), "json": lambda: minified_json(90_000)[: 6 * MIB],
            "cjk": lambda: cjk_text(2 * MIB)}[kind]()
    content = text.encode()
    assert len(content) >= 6 * MIB - 16 and " " not in text
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
            document_id="huge", content_type="text/plain", content=content), metadata=md(tenant), timeout=120)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details() or ""
    assert "limit" in details and "split" in details, details
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="lift and drag", top_k=5), metadata=md(tenant))
    assert [c.document_id for c in res.chunks] == ["small"]


async def test_text_without_spaces_within_the_limits_is_chunked_and_searchable(rag: Any) -> None:
    tenant = new_tenant()
    doc = minified_json(100) + " " + b64_text(2000)
    r = await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="catalog.json", content_type="text/plain", content=doc.encode()), metadata=md(tenant))
    assert r.chunk_count > 5
    listed = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="frobnicator3 price", top_k=50,
                                                             mode=rag_pb2.RETRIEVAL_MODE_LEXICAL),
                                     metadata=md(tenant))
    assert listed.chunks, "minified JSON chunks get BM25 terms"
    assert all(len(c.content) <= rag.settings.max_chunk_chars for c in listed.chunks)
    assert all("frobnicator3" in c.content for c in listed.chunks[:3])
    res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="frobnicator3", top_k=50), metadata=md(tenant))
    assert len(res.chunks) == min(50, r.chunk_count) or len(res.chunks) > 5
    assert max(len(c.content) for c in res.chunks) <= rag.settings.max_chunk_chars


# --- PDF bombs ----------------------------------------------------------------------------------------


def bomb_pdf(inflated_bytes: int, op: bytes = b"(A) Tj ") -> bytes:
    """A valid one-page PDF whose Flate content stream inflates to `inflated_bytes` of text operators."""
    stream = b"BT /F1 12 Tf 72 720 Td " + op * (inflated_bytes // len(op)) + b" ET"
    packed = zlib.compress(stream, 9)
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
        b" /Contents 5 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objs):
        offsets.append(len(out))
        out += f"{i + 1} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def ingest_pdf(doc_id: str, content: bytes) -> Any:
    return rag_pb2.IngestDocumentRequest(document_id=doc_id, content_type="application/pdf", content=content)


async def test_a_pdf_inflating_past_the_budget_is_refused(start_rag: Any) -> None:
    rag = await start_rag(extract_max_inflated_bytes=4 * MIB)
    # 40 MiB of whitespace: over our budget, under pypdf's own limits (75 MB inflated, 2M parsed tokens).
    pdf = bomb_pdf(40 * MIB, op=b"        ")
    assert len(pdf) < 100 * 1024  # small on the wire
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(ingest_pdf("bomb", pdf), metadata=md(new_tenant()), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the extraction budget" in (err.value.details() or ""), err.value.details()


async def test_a_pdf_that_burns_cpu_is_killed_at_its_cpu_budget_while_other_tenants_are_served(
    start_rag: Any,
) -> None:
    # 4 MB of text operators: under the inflation budget, but minutes of pypdf parsing.
    rag = await start_rag(extract_cpu_seconds=1.0, extract_wall_seconds=60.0)
    other = new_tenant()
    await rag.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
        document_id="ok", content_type="text/plain", content=b"Pressure distribution over the airfoil."),
        metadata=md(other))
    bomb = asyncio.ensure_future(rag.stub.IngestDocument(ingest_pdf("slow", bomb_pdf(4 * MIB)),
                                                         metadata=md(new_tenant()), timeout=60))
    served = 0
    while not bomb.done() and served < 20:
        res = await rag.stub.Retrieve(rag_pb2.RetrieveRequest(query="airfoil pressure"), metadata=md(other))
        assert [c.document_id for c in res.chunks] == ["ok"]
        served += 1
    assert served >= 1 and not bomb.done(), "the bomb must still be running while the other tenant is served"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await bomb
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CPU seconds" in (err.value.details() or "")


async def test_the_callers_deadline_cuts_extraction(start_rag: Any) -> None:
    rag = await start_rag(extract_cpu_seconds=120.0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rag.stub.IngestDocument(ingest_pdf("slow", bomb_pdf(4 * MIB)), metadata=md(new_tenant()), timeout=1.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
