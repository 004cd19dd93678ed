"""The local embedder's queue: texts of concurrent requests are batched together on the encoder workers,
each caller gets exactly its own vectors, and a query waits for at most one batch behind an ingest."""

from __future__ import annotations

import asyncio

import numpy as np

from frugal.encoder.minilm import load_encoder
from frugal.rag.embedding.local import LocalEmbedder

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
