"""The local embedder's queue: texts of concurrent requests are batched together on the encoder workers,
each caller gets exactly its own vectors, and a query waits for at most one batch behind an ingest."""

from __future__ import annotations

import asyncio

import numpy as np

from frugal.encoder.minilm import load_encoder
from frugal.rag.embedding.local import LocalEmbedder, _Queue, _Request

DOCS = [[f"Document {d} sentence {i} about wing {d * i} lift and drag." for i in range(n)]
        for d, n in enumerate((5, 9, 3))]


async def test_concurrent_requests_get_their_own_vectors() -> None:
    enc = load_encoder()
    emb = LocalEmbedder(enc, max_batch=4, workers=2)
    try:
        results = await asyncio.gather(*(emb.embed(texts, "document") for texts in DOCS),
                                       emb.embed(["what is lift?"], "query"))
    finally:
        await emb.aclose()
    for texts, got in zip([*DOCS, ["what is lift?"]], results, strict=True):
        ref, tokens = enc.encode(texts)
        assert got.vectors.shape == ref.shape
        assert float(np.min(np.sum(ref * got.vectors, axis=1))) > 0.99999
        assert got.tokens == tokens and got.estimated and got.calls == 0


async def test_a_query_overtakes_a_queued_ingest() -> None:
    emb = LocalEmbedder(load_encoder(), max_batch=4, workers=1)
    try:
        big = asyncio.ensure_future(emb.embed([f"chunk {i} of a long manual about nozzles" for i in range(40)],
                                              "document"))
        await asyncio.sleep(0)  # the ingest's texts are queued first
        query = asyncio.ensure_future(emb.embed(["nozzle expansion ratio"], "query"))
        done, _ = await asyncio.wait({big, query}, return_when=asyncio.FIRST_COMPLETED)
        assert query in done and not big.done()
        assert (await big).vectors.shape == (40, 384)
    finally:
        await emb.aclose()


async def test_a_cancelled_caller_does_not_break_the_queue() -> None:
    emb = LocalEmbedder(load_encoder(), max_batch=2, workers=1)
    try:
        gone = asyncio.ensure_future(emb.embed([f"text {i}" for i in range(20)], "document"))
        await asyncio.sleep(0)
        gone.cancel()
        after = await emb.embed(["still served"], "query", budget_s=30)
        assert after.vectors.shape == (1, 384)
    finally:
        await emb.aclose()


def _queued(lengths: list[int]) -> tuple[_Queue, list[_Request]]:
    loop = asyncio.get_running_loop()
    q = _Queue()
    reqs = []
    for n in lengths:
        req = _Request(["x" * n], loop.create_future(), np.zeros((1, 384), np.float32), left=1)
        reqs.append(req)
        q.document.append((req, 0))
    return q, reqs


async def test_document_batches_are_matched_by_length_across_requests() -> None:
    # Chunks of several documents in flight, short and long interleaved: a batch is the oldest text and
    # the queued texts nearest to it in length, so a batch is padded to little more than its own texts.
    q, reqs = _queued([10, 200, 12, 190, 11, 205, 13])
    first = q.take(3, window=6)
    assert [len(r.texts[0]) for r, _ in first] == [10, 12, 11]
    second = q.take(3, window=6)
    assert [len(r.texts[0]) for r, _ in second] == [200, 190, 205]
    assert [len(r.texts[0]) for r, _ in q.take(3, window=6)] == [13]
    # Without a window, arrival order (the old behaviour).
    q, _ = _queued([10, 200, 12, 190])
    assert [len(r.texts[0]) for r, _ in q.take(3, window=0)] == [10, 200, 12]


async def test_length_matching_serves_the_oldest_first_and_skips_cancelled_texts() -> None:
    q, reqs = _queued([50, 10, 49, 51, 48])
    reqs[2].future.cancel()
    batch = q.take(2, window=8)
    assert [len(r.texts[0]) for r, _ in batch] == [50, 51]  # the oldest, then the nearest live one
    assert [len(r.texts[0]) for r, _ in q.take(8, window=8)] == [10, 48]  # nothing lost, order kept


async def test_local_embedder_with_length_matching_returns_each_callers_vectors() -> None:
    enc = load_encoder()
    emb = LocalEmbedder(enc, max_batch=3, workers=2, length_window=16)
    docs = [["short one", "a much longer text about the boundary layer of a swept wing at transonic speed " * 3,
             "mid length text on nozzles"], ["tiny", "another long text on shock waves and their reflection " * 4]]
    try:
        results = await asyncio.gather(*(emb.embed(t, "document") for t in docs))
    finally:
        await emb.aclose()
    for texts, got in zip(docs, results, strict=True):
        ref, tokens = enc.encode(texts)
        assert float(np.min(np.sum(ref * got.vectors, axis=1))) > 0.99999
        assert got.tokens == tokens


async def test_the_services_embedder_takes_the_token_budget_setting() -> None:
    from frugal.rag.config import Settings
    from frugal.rag.server import _local

    default = _local(Settings())
    tight = _local(Settings(local_batch_tokens=32))
    try:
        assert isinstance(default, LocalEmbedder) and default.batch_tokens == 256
        assert isinstance(tight, LocalEmbedder) and tight.batch_tokens == 32
        # Same vectors whatever the budget (it only changes how texts share a forward pass).
        texts = ["tiny", "a much longer text about the boundary layer of a swept wing " * 3, "mid length text"]
        a, b = await asyncio.gather(default.embed(texts, "document"), tight.embed(texts, "document"))
        assert float(np.min(np.sum(a.vectors * b.vectors, axis=1))) > 0.99999 and a.tokens == b.tokens
    finally:
        await default.aclose()
        await tight.aclose()
