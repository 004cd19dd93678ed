"""Retrieve latency on real text: p50/p95/p99 at 10k and 100k chunks shared by 50 tenants under RLS, at 384
and 1024 dimensions, with cold (query never seen: embedded first), warm (query embedding cached) and
longest-allowed-query (4,000 characters, never seen) figures apart.

    uv run python bench/rag/latency.py            # 10k and 100k chunks, 384 and 1024 dimensions
    uv run python bench/rag/latency.py --quick    # 2k chunks

Data: sentences of the Cranfield abstracts (../shared/data/ir/cranfield). Each chunk is 5 sentences
drawn at random from them (so 100k chunks are 100k different real-text passages); its vector is the
normalised mean of its sentences' all-MiniLM-L6-v2 vectors (every sentence really embedded; a chunk's
own forward pass would take hours here for 100k chunks). 1024 dimensions: the same vectors through a
fixed random Gaussian projection (same neighbourhoods, 1024 coordinates; the index and scan costs are
those of 1024 dimensions). Queries: the 225 Cranfield questions (real questions about that text).

- cold: a query the service has not seen (cache miss): at 384 the service's local encoder embeds it; at
  1024 the Voyage SDK calls the local Voyage emulator on loopback (so "cold 1024" is loopback HTTP, not
  Voyage's own latency).
- warm: the same queries again, their embeddings in the Redis cache (100% hits, said so).
- longest: 4,000-character queries (Cranfield text), never seen, hybrid.
Everything goes through the service (gRPC on loopback, hybrid, top_k 5, its own settings).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import sys
import time
import uuid
from typing import Any

import asyncpg
import numpy as np
import redis.asyncio as aioredis
from _stack import SHARED_DATA, Stack, bench_stack, latency_summary, running_service  # type: ignore[import-not-found]
from quality import load_cranfield  # type: ignore[import-not-found]

from frugal.api.rag.v1 import rag_pb2
from frugal.devkit.emulators.voyage import VoyageEmulator
from frugal.encoder.minilm import load_encoder
from frugal.rag import store
from frugal.rag.embedding.cache import cache_key

CRANFIELD = SHARED_DATA / "ir" / "cranfield"
TENANTS = 50
SENTENCES_PER_CHUNK = 5
MODELS = {384: "all-minilm-l6-v2", 1024: "voyage-3.5-lite"}
VOYAGE_KEY = "pa-bench-latency"


def tenant_sizes(total: int, tenants: int) -> list[int]:
    weights = np.array([1.0 / (i + 1) for i in range(tenants)])
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[0] += total - int(sizes.sum())
    return [int(s) for s in sizes]


def unit(v: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out: np.ndarray[Any, Any] = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return out


class Corpus:
    def __init__(self, n_sentences: int) -> None:
        data = load_cranfield(CRANFIELD)
        sentences = [s.strip() for _, (_, w) in sorted(data.docs.items())
                     for s in re.split(r"(?<=[.!?])\s+", w) if len(s.split()) >= 5]
        rng = random.Random(3)
        rng.shuffle(sentences)
        self.sentences = sentences[:n_sentences]
        enc = load_encoder()
        t0 = time.perf_counter()
        self.vectors, _ = enc.encode(self.sentences, batch_size=32)
        print(f"  embedded {len(self.sentences)} Cranfield sentences in {time.perf_counter() - t0:.0f} s")
        self.queries = [q for _, q in data.queries]
        self.query_vectors, _ = enc.encode(self.queries, batch_size=32)
        long_text = " ".join(w for _, (_, w) in sorted(data.docs.items()))
        self.long_queries = [long_text[i * 4000: i * 4000 + 4000].rsplit(" ", 1)[0] for i in range(60)]
        self.projection = np.random.default_rng(11).standard_normal((384, 1024)).astype(np.float32)

    def vector(self, v: np.ndarray[Any, Any], dims: int) -> np.ndarray[Any, Any]:
        return unit(v if dims == 384 else v @ self.projection)


def literal(v: np.ndarray[Any, Any]) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v.tolist()) + "]"


async def load(stack: Stack, corpus: Corpus, total: int, dims: int) -> tuple[dict[str, int], float]:
    model = MODELS[dims]
    sizes = {f"bench_t{i:02d}": s for i, s in enumerate(tenant_sizes(total, TENANTS))}
    rng = np.random.default_rng(5)
    t0 = time.perf_counter()
    conn = await asyncpg.connect(stack.admin_dsn)
    try:
        await conn.execute("TRUNCATE rag_postings, rag_chunks, rag_documents, rag_tenant_stats, rag_term_df,"
                           " rag_tenant_index CASCADE")
        await conn.execute("SET maintenance_work_mem = '1GB'; SET session_replication_role = replica")
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('rag_chunks', 'rag_postings')"
            " AND indexname NOT LIKE '%pkey' AND indexdef NOT LIKE '%UNIQUE%'")
        for ix in indexes:
            await conn.execute(f'DROP INDEX "{ix["indexname"]}"')
        await conn.execute("CREATE TEMP TABLE stage (tenant_id text, doc int, idx int, content text, v text)")
        for tenant, size in sizes.items():
            await conn.execute(
                "INSERT INTO rag_documents (tenant_id, document_id, content_type, content_hash, fingerprint,"
                " size_bytes, chunk_count, embedding_model) SELECT $1, 'doc-' || d, 'text/plain', md5($1 || d),"
                " md5($1 || d), 4000, 20, $3 FROM generate_series(0, ($2 - 1) / 20) AS d", tenant, size, model)
            rows = []
            for i in range(size):
                pick = rng.integers(0, len(corpus.sentences), SENTENCES_PER_CHUNK)
                text = " ".join(corpus.sentences[j] for j in pick)
                vec = corpus.vector(corpus.vectors[pick].mean(axis=0), dims)
                rows.append((tenant, i // 20, i % 20, text, literal(vec)))
            await conn.copy_records_to_table("stage", records=rows)
        await conn.execute(
            # tsv and lex_len as the service's insert computes them (rag migration 0003: plain columns now).
            "INSERT INTO rag_chunks (tenant_id, chunk_id, document_id, chunk_index, content, text_hash,"
            " embedding_model, embedding, tsv, lex_len) SELECT tenant_id, gen_random_uuid(), 'doc-' || doc, idx,"
            " content, md5(content), $1, v::vector, tsv, rag_tsv_length(tsv)"
            f" FROM (SELECT s.*, {store.chunk_tsvector_sql('s.content')} AS tsv FROM stage s) AS x",
            model)
        await conn.execute(
            "INSERT INTO rag_postings (tenant_id, term, chunk_id, tf, dl) SELECT c.tenant_id, u.lexeme, c.chunk_id,"
            f" {store.posting_tf_sql('u')}, c.lex_len FROM rag_chunks c, unnest(c.tsv) u")
        await conn.execute("INSERT INTO rag_term_df (tenant_id, term, df) SELECT tenant_id, term, count(*)"
                           " FROM rag_postings GROUP BY 1, 2")
        await conn.execute("INSERT INTO rag_tenant_stats (tenant_id, embedding_model, chunk_count, lex_len_total)"
                           " SELECT tenant_id, embedding_model, count(*), sum(lex_len) FROM rag_chunks GROUP BY 1, 2")
        await conn.execute("INSERT INTO rag_tenant_index (tenant_id, model) SELECT DISTINCT tenant_id, $1"
                           " FROM rag_chunks", model)
        for ix in indexes:
            await conn.execute(ix["indexdef"])
        await conn.execute("SET session_replication_role = origin")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return sizes, time.perf_counter() - t0


async def timed(stub: Any, tenant: str, query: str) -> float:
    meta = (("x-tenant-id", tenant), ("x-session-id", "bench-latency"))
    t0 = time.perf_counter()
    await stub.Retrieve(rag_pb2.RetrieveRequest(query=query, top_k=5), metadata=meta, timeout=30)
    return (time.perf_counter() - t0) * 1000.0


async def measure(stack: Stack, corpus: Corpus, sizes: dict[str, int], dims: int, quick: bool) -> None:
    model = MODELS[dims]
    tenants = list(sizes)
    rng = random.Random(7)
    n = 40 if quick else 300
    picks = [(rng.choice(tenants), rng.randrange(len(corpus.queries))) for _ in range(n)]
    emu: VoyageEmulator | None = None
    overrides: dict[str, Any] = {}
    if dims == 1024:
        emu = VoyageEmulator(api_keys=(VOYAGE_KEY,))
        await emu.start()
        overrides = {"voyage_api_key": VOYAGE_KEY, "voyage_base_url": emu.base_url, "voyage_model": model,
                     "voyage_dimensions": 1024}
    try:
        async with running_service(stack, **overrides) as svc:
            await timed(svc.stub, tenants[0], "warm up")
            # cold: each (tenant, query) pair seen for the first time (a unique suffix defeats the cache).
            cold = [await timed(svc.stub, t, f"{corpus.queries[q]} {uuid.uuid4().hex[:6]}") for t, q in picks]
            # warm: embeddings cached (seeded with the queries' real vectors in this space).
            r = aioredis.Redis.from_url(stack.redis_url)
            try:
                for t, q in set(picks):
                    text = corpus.queries[q].strip()
                    await r.set(cache_key(t, model, text), corpus.vector(corpus.query_vectors[q], dims).tobytes())
            finally:
                await r.aclose()
            warm = [await timed(svc.stub, t, corpus.queries[q]) for t, q in picks]
            # A unique suffix here too: the same (tenant, text) pairs come up at every size, and the previous
            # size's run left their embeddings in the cache (its 100k "uncached" figures were cache hits).
            longest = [await timed(svc.stub, rng.choice(tenants),
                                   f"{corpus.long_queries[i % 60][:3990]} {uuid.uuid4().hex[:6]}")
                       for i in range(10 if quick else 60)]
    finally:
        if emu is not None:
            await emu.aclose()
    label = "local encoder" if dims == 384 else "Voyage emulator on loopback"
    print(f"  cold  (0% cache hits, {label} embeds):  {latency_summary(cold)}")
    print(f"  warm  (100% cache hits, seeded):            {latency_summary(warm)}")
    print(f"  longest query (4,000 chars, uncached):      {latency_summary(longest)}")


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2k chunks only")
    ap.add_argument("--sizes", default="", help="comma-separated chunk totals (default 10000,100000)")
    ap.add_argument("--dims", default="384,1024", help="comma-separated: 384 and/or 1024")
    args = ap.parse_args(argv)
    if not (CRANFIELD / "cran.all.1400").is_file():
        print(f"SKIP: Cranfield data not found at {CRANFIELD}")
        return 0
    corpus = Corpus(400 if args.quick else 3000)
    totals = [2_000] if args.quick else [10_000, 100_000]
    if args.sizes:
        totals = [int(x) for x in args.sizes.split(",")]
    async with bench_stack() as stack:
        for dims in [int(d) for d in args.dims.split(",")]:
            for total in totals:
                sizes, secs = await load(stack, corpus, total, dims)
                spread = f"sizes {max(sizes.values())} .. {min(sizes.values())}"
                print(f"\n== {total:,} chunks, {TENANTS} tenants ({spread}), {dims} dimensions ({MODELS[dims]} index);"
                      f" loaded in {secs:.0f} s; load average {os.getloadavg()[0]:.1f}")
                await measure(stack, corpus, sizes, dims, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
