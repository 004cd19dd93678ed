"""HNSW recall against exact search and QPS on SYNTHETIC data (Zipf words, random vectors), at 10k and 100k
chunks, for one tenant and for 50 tenants of very different sizes sharing the tables under row-level
security. For latency on real text (384 and 1024 dimensions, cold/warm/longest query apart) use
bench/rag/latency.py, which run.py runs; this script is kept for the index-recall and worst-case studies.

    uv run python bench/rag/speed.py            # 10k and 100k chunks (loading 100k takes a few minutes)
    uv run python bench/rag/speed.py --quick    # 4k chunks only (< 30 s)

Data: synthetic. Chunk texts are 120 words drawn with a Zipf-like (log-uniform) law from a 20,000-word
vocabulary whose head is the 100 most frequent English words (so, as in real text, PostgreSQL's English
configuration drops the stop words and the commonest content words are in a fraction of the chunks,
not in all of them). Embeddings are random unit vectors generated in SQL, because embedding 100k
chunks with the NumPy encoder would take hours here: "clustered" (1,000 random topic directions plus
noise, cosine about 0.5 within a topic: the structure real sentence embeddings have) for every
scenario, and "uniform" (independent random directions: the worst case for any graph index, no
neighbourhood structure at all) for one extra recall measurement. The loader writes the service's tables directly as the
schema owner (same rows, postings and statistics the service writes; indexes rebuilt after the bulk
load). Everything measured goes through the service: Retrieve over gRPC on loopback (hybrid, top_k 5,
the service's own settings), and the vector SQL run through the service's role under RLS.

- "warm": the query embedding is in the Redis cache (pure retrieval); "cold": the local NumPy encoder
  embeds the query first (one short sentence).
- QPS: 8 concurrent clients on one channel, warm.
- HNSW recall@10: 100 random unit queries per configuration, the service's HNSW statement (iterative
  scan, relaxed order) against an exact scan of the same tenant's rows; both under RLS as frugal_rag.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from _stack import Stack, bench_stack, latency_summary, running_service  # type: ignore[import-not-found]
from prometheus_client import REGISTRY

from frugal.api.rag.v1 import rag_pb2
from frugal.common.db import create_pool, tenant_transaction
from frugal.common.pricing import default_catalog
from frugal.rag import store
from frugal.rag.config import Settings
from frugal.rag.embedding.local import LocalEmbedder
from frugal.rag.engine import RagEngine

MODEL = "all-minilm-l6-v2"
SPACE = store.VectorSpace(MODEL, 384)
VOCAB = 20_000
N_TOPICS = 1000
TOPIC_NOISE = 0.05  # per dimension: 384 * 0.05^2 ~ 1 -> cosine ~0.5 within a topic, ~0.7 to the topic
COMMON_ENGLISH = (
    "the of and to a in is it you that he was for on are with as i his they be at one have this from or had by"
    " not word but what some we can out other were all there when up use your how said an each she which do"
    " their time if will way about many then them write would like so these her long make thing see him two"
    " has look more day could go come did number sound no most people my over know water than call first who"
    " may down side been now find any new work part take get place made live where after back little only"
).split()
WORDS_PER_CHUNK = 120
CHUNKS_PER_DOC = 50


def vocabulary(rng: random.Random) -> list[str]:
    syllables = ["ka", "lo", "mi", "ner", "tus", "ra", "ven", "do", "pi", "sel", "tor", "qua", "zen", "bri", "ul"]
    head = list(dict.fromkeys(COMMON_ENGLISH))
    words: set[str] = set()
    while len(words) < VOCAB - len(head):
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return head + sorted(words)


def zipf_words(rng: np.random.Generator, vocab: list[str], n: int) -> list[str]:
    idx = np.floor(np.exp(rng.random(n) * np.log(len(vocab)))).astype(int) - 1
    return [vocab[i] for i in idx]


def tenant_sizes(total: int, tenants: int) -> list[int]:
    weights = np.array([1.0 / (i + 1) for i in range(tenants)])
    sizes = np.maximum(1, np.floor(weights / weights.sum() * total)).astype(int)
    sizes[0] += total - int(sizes.sum())
    return [int(s) for s in sizes]


def centroids(seed: int = 17) -> np.ndarray[Any, np.dtype[np.float32]]:
    c = np.random.default_rng(seed).standard_normal((N_TOPICS, 384)).astype(np.float32)
    out: np.ndarray[Any, np.dtype[np.float32]] = c / np.linalg.norm(c, axis=1, keepdims=True)
    return out


def chunk_topic(global_index: int, tenant_index: int) -> int:
    """The topic the loader gives a tenant's chunk (same formula as the SQL in load())."""
    return (global_index * 7919 + tenant_index * 131) % N_TOPICS


def sample_queries(tenant_sizes_in_order: list[tuple[int, int]], dist: str, seed: int
                   ) -> np.ndarray[Any, np.dtype[np.float32]]:
    """One query per (tenant index, tenant size): for clustered data, a point of a topic the tenant
    actually has (users ask about their own documents); for uniform data, any direction."""
    rng = np.random.default_rng(seed)
    n = len(tenant_sizes_in_order)
    if dist == "uniform":
        q = rng.standard_normal((n, 384)).astype(np.float32)
    else:
        topics = [chunk_topic(int(rng.integers(0, size)), t) for t, size in tenant_sizes_in_order]
        q = centroids()[topics] + TOPIC_NOISE * rng.standard_normal((n, 384)).astype(np.float32)
    out: np.ndarray[Any, np.dtype[np.float32]] = q / np.linalg.norm(q, axis=1, keepdims=True)
    return out


async def load(stack: Stack, sizes: dict[str, int], dist: str = "clustered", seed: int = 1) -> float:
    """Bulk load as the owner: documents, chunks (text + random unit vectors), postings, statistics."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    vocab = vocabulary(random.Random(seed))
    conn = await asyncpg.connect(stack.admin_dsn)
    try:
        await conn.execute("SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 1")
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('rag_chunks', 'rag_postings')"
            " AND indexname NOT LIKE '%pkey' AND indexdef NOT LIKE '%UNIQUE%'"
        )
        for ix in indexes:
            await conn.execute(f'DROP INDEX "{ix["indexname"]}"')
        await conn.execute("ALTER TABLE rag_postings DROP CONSTRAINT rag_postings_tenant_id_chunk_id_fkey")
        await conn.execute("ALTER TABLE rag_postings DROP CONSTRAINT rag_postings_pkey")
        await conn.execute("SELECT setseed(0.42)")
        await conn.execute("CREATE TABLE bench_centroids (id int PRIMARY KEY, v real[] NOT NULL)")
        await conn.executemany("INSERT INTO bench_centroids VALUES ($1, $2)",
                               [(i, v.tolist()) for i, v in enumerate(centroids())])
        # Uniform: independent N(0,1) coordinates. Clustered: the chunk's topic direction plus noise.
        component = "random_normal()" if dist == "uniform" else f"c.v[x] + {TOPIC_NOISE} * random_normal()"
        for t_index, (tenant, size) in enumerate(sizes.items()):
            docs = (size + CHUNKS_PER_DOC - 1) // CHUNKS_PER_DOC
            await conn.execute(
                "INSERT INTO rag_documents (tenant_id, document_id, title, content_type, content_hash, fingerprint,"
                " size_bytes, chunk_count, embedding_model)"
                " SELECT $1, 'doc-' || d, 'Document ' || d, 'text/plain', md5($1 || d), md5($1 || d), 8000,"
                " least($3, $2 - d * $3), $4 FROM generate_series(0, $5 - 1) AS d",
                tenant, size, CHUNKS_PER_DOC, MODEL, docs,
            )
            for start in range(0, size, 5000):
                n = min(5000, size - start)
                words = zipf_words(rng, vocab, n * WORDS_PER_CHUNK)
                texts = [" ".join(words[i * WORDS_PER_CHUNK:(i + 1) * WORDS_PER_CHUNK]) + "." for i in range(n)]
                await conn.execute(
                    # tsv and lex_len as the service's insert computes them (rag migration 0003: plain columns).
                    "INSERT INTO rag_chunks (tenant_id, chunk_id, document_id, chunk_index, content, text_hash,"
                    " embedding_model, embedding, tsv, lex_len)"
                    " SELECT $1, gen_random_uuid(), 'doc-' || ((s + g.i) / $4), (s + g.i) % $4, g.t, md5(g.t), $5,"
                    f"  l2_normalize((SELECT array_agg({component} ORDER BY x)"
                    "                FROM generate_series(1, 384) x WHERE g.i >= 0)::vector),"
                    "  tv.tsv, rag_tsv_length(tv.tsv)"
                    " FROM unnest($2::text[]) WITH ORDINALITY AS g(t, i), (SELECT $3::int - 1 AS s) AS o,"
                    "  bench_centroids c,"
                    f"  LATERAL (SELECT {store.chunk_tsvector_sql('g.t')} AS tsv) AS tv"
                    f" WHERE c.id = ((s + g.i) * 7919 + {t_index * 131}) % {N_TOPICS}",
                    tenant, texts, start, CHUNKS_PER_DOC, MODEL,
                )
        await conn.execute(
            "INSERT INTO rag_postings (tenant_id, term, chunk_id, tf, dl)"
            f" SELECT c.tenant_id, u.lexeme, c.chunk_id, {store.posting_tf_sql('u')},"
            "        c.lex_len FROM rag_chunks c, unnest(c.tsv) AS u"
        )
        await conn.execute(
            "INSERT INTO rag_tenant_stats (tenant_id, embedding_model, chunk_count, lex_len_total)"
            " SELECT tenant_id, embedding_model, count(*), sum(lex_len) FROM rag_chunks GROUP BY 1, 2"
        )
        await conn.execute("ALTER TABLE rag_postings ADD PRIMARY KEY (tenant_id, term, chunk_id) INCLUDE (tf, dl)")
        await conn.execute(
            "ALTER TABLE rag_postings ADD CONSTRAINT rag_postings_tenant_id_chunk_id_fkey FOREIGN KEY (tenant_id,"
            " chunk_id) REFERENCES rag_chunks (tenant_id, chunk_id) ON DELETE CASCADE"
        )
        for ix in indexes:
            await conn.execute(ix["indexdef"])
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


@dataclass
class Sample:
    tenant: str
    query: str


async def timed_retrieve(stub: Any, s: Sample, mode: Any = rag_pb2.RETRIEVAL_MODE_HYBRID) -> tuple[float, Any]:
    meta = (("x-tenant-id", s.tenant), ("x-session-id", "bench-speed"))
    t0 = time.perf_counter()
    res = await stub.Retrieve(rag_pb2.RetrieveRequest(query=s.query, top_k=5, mode=mode), metadata=meta)
    return (time.perf_counter() - t0) * 1000.0, res


async def qps(stub: Any, samples: list[Sample], concurrency: int, total: int) -> float:
    it = iter([samples[i % len(samples)] for i in range(total)])

    async def worker() -> None:
        for s in it:
            await timed_retrieve(stub, s)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


def scans(path: str) -> float:
    return REGISTRY.get_sample_value("rag_vector_scans_total", {"path": path}) or 0.0


async def measure_retrieve(stack: Stack, samples: list[Sample], label: str, quick: bool) -> None:
    async with running_service(stack) as svc:
        before = {p: scans(p) for p in ("exact", "hnsw", "exact_fallback")}
        cold: list[float] = []
        for s in samples:
            ms, _ = await timed_retrieve(svc.stub, s)
            cold.append(ms)
        warm: list[float] = []
        stages: dict[str, list[float]] = {}
        results: list[int] = []
        for s in samples:
            ms, res = await timed_retrieve(svc.stub, s)
            warm.append(ms)
            results.append(len(res.chunks))
            for t in res.timings:
                stages.setdefault(t.stage, []).append(t.ms)
        vec = [(await timed_retrieve(svc.stub, s, rag_pb2.RETRIEVAL_MODE_VECTOR))[0] for s in samples[:50]]
        lex = [(await timed_retrieve(svc.stub, s, rag_pb2.RETRIEVAL_MODE_LEXICAL))[0] for s in samples[:50]]
        rate = await qps(svc.stub, samples, 8, 120 if quick else 400)
        paths = {p: scans(p) - before[p] for p in before}
    print(f"  Retrieve hybrid, cold (local encoder embeds the query): {latency_summary(cold)}")
    print(f"  Retrieve hybrid, warm (embedding cached):               {latency_summary(warm)}")
    print(f"  Retrieve vector only, warm:                              {latency_summary(vec)}")
    print(f"  Retrieve lexical (BM25) only:                            {latency_summary(lex)}")
    print(f"  QPS, hybrid warm, 8 concurrent clients:                  {rate:7.1f} req/s")
    print("  server stage medians (warm): " + ", ".join(
        f"{k} {statistics.median(v):.2f} ms" for k, v in stages.items()))
    print(f"  vector scan paths: {', '.join(f'{k} {int(v)}' for k, v in paths.items())}; "
          f"results per query: min {min(results)}, all 5: {sum(r == 5 for r in results)}/{len(results)}")


async def measure_hnsw(stack: Stack, sizes: dict[str, int], queries: int, efs: list[int],
                       dist: str = "clustered") -> None:
    """Recall@10 and latency of the service's HNSW statement against an exact scan, per tenant-size bucket:
    tenants above EXACT_SCAN_MAX_CHUNKS take the HNSW path in the service, smaller ones are scanned exactly
    (their HNSW figures are shown for comparison: that is the RLS post-filtering trap)."""
    threshold = Settings().exact_scan_max_chunks
    pool = await create_pool(stack.app_dsn, min_size=1, max_size=2)
    tenants = list(sizes)
    try:
        q_tenants = [tenants[i % len(tenants)] for i in range(queries)]
        qvecs = sample_queries([(tenants.index(t), sizes[t]) for t in q_tenants], dist, seed=5)
        exact: list[list[str]] = []
        exact_ms: list[float] = []
        for tenant, q in zip(q_tenants, qvecs, strict=True):
            async with tenant_transaction(pool, tenant) as conn:
                t0 = time.perf_counter()
                rows = await store.vector_search(conn, SPACE, store.vector_literal(q), 10, exact=True)
                exact_ms.append((time.perf_counter() - t0) * 1000)
            exact.append([c for c, _ in rows])
        buckets: dict[str, Any] = {"all": lambda t: True}
        if len(tenants) > 1:
            buckets = {f"tenants > {threshold} chunks": lambda t: sizes[t] > threshold,
                       f"tenants <= {threshold} chunks": lambda t: sizes[t] <= threshold}
        for name, member in buckets.items():
            sel = [i for i, t in enumerate(q_tenants) if member(t)]
            if sel:
                print(f"  exact scan, {name:<38} ({len(sel):3d} q): {latency_summary([exact_ms[i] for i in sel])}")
        # What the service does: its own path choice (exact for small tenants / small shares, HNSW with
        # an iterative scan otherwise, exact fallback if short), 50 candidates, the best 10 kept.
        settings = Settings(database_url=stack.app_dsn, redis_url=stack.redis_url)
        engine = RagEngine(settings, pool=pool, embedder=LocalEmbedder(), cache=None, reranker=None, costs=None,
                           catalog=default_catalog())
        svc_ms: list[float] = []
        svc_recall: list[float] = []
        svc_path: list[str] = []
        for tenant, q, truth in zip(q_tenants, qvecs, exact, strict=True):
            async with tenant_transaction(pool, tenant) as conn:
                n = max(settings.retrieve_candidates, 4 * 5)
                await store.configure_scan(conn, ef_search=max(settings.hnsw_ef_search, n),
                                           max_scan_tuples=settings.hnsw_max_scan_tuples,
                                           scan_mem_multiplier=settings.hnsw_scan_mem_multiplier)
                stats = await store.tenant_stats(conn)
                t0 = time.perf_counter()
                rows, path = await engine._vector_candidates(conn, engine.space, stats, q, n)
                svc_ms.append((time.perf_counter() - t0) * 1000)
            svc_path.append(path)
            svc_recall.append(len({c for c, _ in rows[:10]} & set(truth)) / max(1, len(truth)))
        for name, member in buckets.items():
            sel = [i for i, t in enumerate(q_tenants) if member(t)]
            if sel:
                used = sorted({svc_path[i] for i in sel})
                paths = ", ".join(f"{p} {sum(svc_path[i] == p for i in sel)}" for p in used)
                print(f"  SERVICE vector path, {name:<35} ({len(sel):3d} q): recall@10 "
                      f"{statistics.fmean(svc_recall[i] for i in sel):.4f}, {latency_summary([svc_ms[i] for i in sel])}"
                      f" [{paths}]")
        for ef in efs:
            ms: list[float] = []
            recall: list[float] = []
            short: list[bool] = []
            used_index = 0
            for tenant, q, truth in zip(q_tenants, qvecs, exact, strict=True):
                async with tenant_transaction(pool, tenant) as conn:
                    await store.configure_scan(conn, ef_search=ef, max_scan_tuples=50_000, scan_mem_multiplier=2)
                    await conn.execute("SELECT set_config('enable_sort', 'off', true)")
                    plan = "\n".join(r[0] for r in await conn.fetch(
                        "EXPLAIN " + SPACE.hnsw_sql, store.vector_literal(q), 10))
                    await conn.execute("SELECT set_config('enable_sort', 'on', true)")
                    used_index += "rag_chunks_hnsw_minilm" in plan
                    t0 = time.perf_counter()
                    # The service's HNSW statement (iterative scan, relaxed order, index forced).
                    rows = await store.vector_search(conn, SPACE, store.vector_literal(q), 10, exact=False)
                    ms.append((time.perf_counter() - t0) * 1000)
                got = [c for c, _ in rows]
                short.append(len(got) < min(10, sizes[tenant]))
                recall.append(len(set(got) & set(truth)) / max(1, len(truth)))
            for name, member in buckets.items():
                sel = [i for i, t in enumerate(q_tenants) if member(t)]
                if not sel:
                    continue
                print(f"  raw HNSW LIMIT 10, ef={ef:<4} {name:<27} ({len(sel):3d} q): recall@10 "
                      f"{statistics.fmean(recall[i] for i in sel):.4f}, {latency_summary([ms[i] for i in sel])}, "
                      f"< k rows: {sum(short[i] for i in sel)}")
            print(f"  (index used in {used_index}/{queries} plans)")
    finally:
        await pool.close()


async def scenario(total: int, tenants: int, quick: bool) -> None:
    sizes = ({"bench_solo": total} if tenants == 1
             else {f"bench_t{i:02d}": s for i, s in enumerate(tenant_sizes(total, tenants))})
    spread = f"sizes {max(sizes.values())} .. {min(sizes.values())}"
    title = f"{total:,} chunks, " + ("1 tenant" if tenants == 1 else f"{tenants} tenants under RLS ({spread})")
    print(f"\n== {title}")
    async with bench_stack() as stack:
        secs = await load(stack, sizes)
        print(f"  loaded in {secs:.1f} s (bulk, as owner; indexes built after)")
        rng = random.Random(9)
        vocab = vocabulary(random.Random(1))
        np_rng = np.random.default_rng(3)
        n = 40 if quick else 200
        names = list(sizes)
        samples = [Sample(rng.choice(names), " ".join(zipf_words(np_rng, vocab, rng.randint(4, 9))) + " "
                          + uuid.uuid4().hex[:4]) for _ in range(n)]
        await measure_retrieve(stack, samples, title, quick)
        await measure_hnsw(stack, sizes, 30 if quick else 100, [100] if quick else [40, 100, 200])


async def uniform_worst_case(total: int) -> None:
    print(f"\n== {total:,} chunks, 1 tenant, UNIFORM random vectors (worst case for HNSW: no structure)")
    async with bench_stack() as stack:
        secs = await load(stack, {"bench_solo": total}, dist="uniform")
        print(f"  loaded in {secs:.1f} s")
        await measure_hnsw(stack, {"bench_solo": total}, 100, [40, 100, 200, 400], dist="uniform")


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4k chunks only (< 30 s)")
    args = ap.parse_args(argv)
    sizes = [4_000] if args.quick else [10_000, 100_000]
    for total in sizes:
        await scenario(total, 1, args.quick)
        await scenario(total, 50, args.quick)
    if not args.quick:
        await uniform_worst_case(10_000)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
