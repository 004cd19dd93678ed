"""Retrieval quality on the Cranfield collection (1,400 aeronautics abstracts, 225 queries, graded qrels).

    uv run python bench/rag/quality.py            # full collection (several minutes: NumPy encoder)
    uv run python bench/rag/quality.py --quick    # smoke run on a subset (< 30 s), figures not comparable

Everything runs on the real service: documents go in through IngestDocument (gRPC, local
all-MiniLM-L6-v2 encoder, chunking, BM25 postings) into PostgreSQL 18 + pgvector under row-level
security; rankings come from the service's engine (the same code Retrieve runs; called in-process
because the RPC caps top_k at 50 and recall@100 needs 100 documents). Chunks are mapped to their
document, first occurrence wins.

Reported: nDCG@10 (linear gains: grade 1 -> 4, 2 -> 3, 3 -> 2, 4 -> 1, -1 -> 0; ideal DCG from all judged
documents) and recall@100 (relevant = grades 1-4) for
- ts_rank_cd:     plainto_tsquery + ts_rank_cd (PostgreSQL's built-in ranking, AND semantics), the baseline;
- ts_rank_cd OR:  the same ranking over an OR of the query's lexemes (separates "OR" from "BM25");
- BM25:           the service's lexical retriever (OR query, BM25 in SQL from per-tenant statistics);
- vector:         pgvector cosine search over all-MiniLM-L6-v2 embeddings;
- hybrid:         reciprocal rank fusion of BM25 and vector as the service ships it (k = 60, weights 1:1);
- hybrid tuned:   RRF k and vector weight chosen on the even-numbered queries only, reported on the odd ones.
Data: ../shared/data/ir/cranfield (see its SOURCE file); the harness skips with a message when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from _stack import SHARED_DATA, Stack, bench_stack, running_service  # type: ignore[import-not-found]

from frugal.api.rag.v1 import rag_pb2
from frugal.common.db import create_pool, tenant_transaction
from frugal.common.pricing import default_catalog
from frugal.rag import store
from frugal.rag.embedding.local import LocalEmbedder
from frugal.rag.engine import Caller, RagEngine
from frugal.rag.fusion import rrf

CRANFIELD = SHARED_DATA / "ir" / "cranfield"
TENANT = "bench_cranfield"
DEPTH = 200  # candidates per list; recall@100 needs more than 100 chunks to fill 100 documents

OR_TS_RANK_CD_SQL = """
SELECT chunk_id, ts_rank_cd(tsv, query) AS score
FROM rag_chunks,
     (SELECT to_tsquery('english'::regconfig, string_agg(quote_literal(lexeme), ' | ')) AS query
      FROM unnest(to_tsvector('english'::regconfig, $1))) AS q
WHERE tsv @@ query
ORDER BY score DESC, chunk_id
LIMIT $2
"""


# --- Cranfield ------------------------------------------------------------------------------------------


def _smart_records(path: Path) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    field = None
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.rstrip()
        m = re.match(r"^\.([ITABW])(?:\s+(\S+))?\s*$", line)
        if m:
            if m.group(1) == "I":
                records.append({"I": m.group(2) or ""})
                field = None
            else:
                field = m.group(1)
                records[-1].setdefault(field, "")
            continue
        if field is not None and records:
            records[-1][field] += " " + line.strip()
    return [{k: " ".join(v.split()) for k, v in r.items()} for r in records]


@dataclass(frozen=True)
class Cranfield:
    docs: dict[int, tuple[str, str]]  # id -> (title, text)
    queries: list[tuple[int, str]]  # (query number 1..225 by position, text)
    qrels: dict[int, dict[int, int]]  # query -> doc -> grade


def load_cranfield(root: Path) -> Cranfield:
    docs = {int(r["I"]): (r.get("T", ""), r.get("W", "")) for r in _smart_records(root / "cran.all.1400")}
    # cran.qry numbers queries 1..365 with gaps; cranqrel numbers them 1..225 in file order.
    queries = [(i + 1, r.get("W", "")) for i, r in enumerate(_smart_records(root / "cran.qry"))]
    qrels: dict[int, dict[int, int]] = {}
    for line in (root / "cranqrel").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            qrels.setdefault(int(parts[0]), {})[int(parts[1])] = int(parts[2])
    return Cranfield(docs, queries, qrels)


def gain(grade: int) -> float:
    return float(5 - grade) if 1 <= grade <= 4 else 0.0


def ndcg_at(ranked: Sequence[int], judged: dict[int, int], k: int = 10) -> float:
    dcg = sum(gain(judged.get(d, 0)) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((gain(g) for g in judged.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: Sequence[int], judged: dict[int, int], k: int = 100) -> float:
    relevant = {d for d, g in judged.items() if 1 <= g <= 4}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def doc_of(document_id: str) -> int:
    return int(document_id.split("-", 1)[1])


def dedup_docs(chunk_ids: Iterable[str], chunk_doc: dict[str, int], limit: int = 100) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    for cid in chunk_ids:
        d = chunk_doc[cid]
        if d not in seen:
            seen.add(d)
            out.append(d)
            if len(out) == limit:
                break
    return out


# --- run ------------------------------------------------------------------------------------------------


@dataclass
class Lists:
    vector: list[tuple[str, float]]  # (chunk id, cosine distance), best first
    lexical: list[tuple[str, float]]  # (chunk id, BM25), best first
    ts_and: list[str]
    ts_or: list[str]
    hybrid_engine: list[str]


async def ingest_all(stack: Stack, data: Cranfield, doc_ids: list[int]) -> float:
    async with running_service(stack) as svc:
        meta = (("x-tenant-id", TENANT), ("x-session-id", "bench-quality"))
        sem = asyncio.Semaphore(4)
        done = 0
        started = time.perf_counter()

        async def one(doc_id: int) -> None:
            nonlocal done
            title, text = data.docs[doc_id]
            async with sem:
                await svc.stub.IngestDocument(rag_pb2.IngestDocumentRequest(
                    document_id=f"cran-{doc_id:04d}", title=title, content_type="text/plain",
                    content=(text or title).encode()), metadata=meta, timeout=600)
            done += 1
            if done % 200 == 0:
                print(f"  ingested {done}/{len(doc_ids)} ({time.perf_counter() - started:.0f} s)", flush=True)

        await asyncio.gather(*(one(d) for d in doc_ids))
        return time.perf_counter() - started


async def grpc_hybrid_top10(stack: Stack, queries: list[tuple[int, str]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    async with running_service(stack) as svc:
        meta = (("x-tenant-id", TENANT), ("x-session-id", "bench-quality"))
        for qno, text in queries:
            res = await svc.stub.Retrieve(rag_pb2.RetrieveRequest(query=text, top_k=30), metadata=meta)
            docs: list[int] = []
            for c in res.chunks:
                d = doc_of(c.document_id)
                if d not in docs:
                    docs.append(d)
            out[qno] = docs[:10]
    return out


async def collect(
    stack: Stack, queries: list[tuple[int, str]]
) -> tuple[dict[int, Lists], dict[str, int], dict[str, float]]:
    from frugal.rag.config import Settings

    settings = Settings(database_url=stack.app_dsn, redis_url=stack.redis_url)
    # The ts_rank_cd baseline's own GIN index: the service does not keep one (migrations/0003), the baseline
    # is timed with the index it would need.
    admin = await asyncpg.connect(stack.admin_dsn)
    try:
        await admin.execute("CREATE INDEX IF NOT EXISTS bench_rag_chunks_tsv ON rag_chunks USING gin (tsv)")
    finally:
        await admin.close()
    pool = await create_pool(stack.app_dsn, min_size=1, max_size=2)
    engine = RagEngine(settings, pool=pool, embedder=LocalEmbedder(), cache=None, reranker=None, costs=None,
                       catalog=default_catalog())
    caller = Caller(TENANT, "bench", "bench")
    timings: dict[str, list[float]] = {"vector": [], "lexical": [], "hybrid": [], "ts_rank_cd": []}
    lists: dict[int, Lists] = {}
    try:
        async with tenant_transaction(pool, TENANT) as conn:
            chunk_doc = {str(r["chunk_id"]): doc_of(r["document_id"])
                         for r in await conn.fetch("SELECT chunk_id, document_id FROM rag_chunks")}
        for qno, text in queries:
            t0 = time.perf_counter()
            v = await engine.retrieve(caller, query=text, top_k=DEPTH, mode="vector", candidates=DEPTH,
                                      max_top_k=DEPTH)
            t1 = time.perf_counter()
            lx = await engine.retrieve(caller, query=text, top_k=DEPTH, mode="lexical", candidates=DEPTH,
                                       max_top_k=DEPTH)
            t2 = time.perf_counter()
            hy = await engine.retrieve(caller, query=text, top_k=DEPTH, mode="hybrid", candidates=DEPTH,
                                       max_top_k=DEPTH)
            t3 = time.perf_counter()
            async with tenant_transaction(pool, TENANT) as conn:
                ts_and = [str(r["chunk_id"]) for r in await conn.fetch(store.BASELINE_TS_RANK_CD_SQL, text, DEPTH)]
                t4 = time.perf_counter()
                ts_or = [str(r["chunk_id"]) for r in await conn.fetch(OR_TS_RANK_CD_SQL, text, DEPTH)]
            timings["vector"].append((t1 - t0) * 1000)
            timings["lexical"].append((t2 - t1) * 1000)
            timings["hybrid"].append((t3 - t2) * 1000)
            timings["ts_rank_cd"].append((t4 - t3) * 1000)
            lists[qno] = Lists(
                vector=[(it.chunk.chunk_id, 1.0 - it.vector_score) for it in v.items],
                lexical=[(it.chunk.chunk_id, it.lexical_score) for it in lx.items],
                ts_and=ts_and, ts_or=ts_or, hybrid_engine=[it.chunk.chunk_id for it in hy.items],
            )
    finally:
        await pool.close()
    return lists, chunk_doc, {k: statistics.median(v) for k, v in timings.items() if v}


async def hnsw_recall_real(stack: Stack, queries: list[tuple[int, str]], efs: Sequence[int]) -> list[str]:
    """HNSW recall@10 against exact search on real all-MiniLM-L6-v2 embeddings (these chunks, these
    queries), through the service's role under RLS."""
    from frugal.rag.embedding.local import load_encoder

    space = store.VectorSpace("all-minilm-l6-v2", 384)
    vecs, _ = load_encoder().encode([t for _, t in queries])
    pool = await create_pool(stack.app_dsn, min_size=1, max_size=1)
    lines: list[str] = []
    try:
        truth: list[set[str]] = []
        async with tenant_transaction(pool, TENANT) as conn:
            for v in vecs:
                truth.append({c for c, _ in await store.vector_search(conn, space, store.vector_literal(v), 10,
                                                                     exact=True)})
        for ef in efs:
            hits = 0
            ms: list[float] = []
            async with tenant_transaction(pool, TENANT) as conn:
                await store.configure_scan(conn, ef_search=ef, max_scan_tuples=50_000, scan_mem_multiplier=2)
                for v, t in zip(vecs, truth, strict=True):
                    t0 = time.perf_counter()
                    got = await store.vector_search(conn, space, store.vector_literal(v), 10, exact=False)
                    ms.append((time.perf_counter() - t0) * 1000)
                    hits += len({c for c, _ in got} & t)
            lines.append(f"HNSW recall@10 vs exact on real MiniLM embeddings, ef_search={ef}: "
                         f"{hits / (10 * len(vecs)):.4f} (median {statistics.median(ms):.2f} ms)")
    finally:
        await pool.close()
    return lines


Ranker = Callable[[Lists], list[str]]


def fused(k: float, wv: float) -> Ranker:
    return lambda ls: [f.chunk_id for f in rrf(ls.vector, ls.lexical, k=k, vector_weight=wv, lexical_weight=1.0)]


def evaluate(ranker: Ranker, qnos: Sequence[int], lists: dict[int, Lists], chunk_doc: dict[str, int],
             qrels: dict[int, dict[int, int]]) -> tuple[float, float]:
    nd, rc = [], []
    for q in qnos:
        ranked = dedup_docs(ranker(lists[q]), chunk_doc)
        nd.append(ndcg_at(ranked, qrels[q]))
        rc.append(recall_at(ranked, qrels[q]))
    return statistics.fmean(nd), statistics.fmean(rc)


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="subset smoke run (< 60 s); figures not comparable")
    args = ap.parse_args(argv)
    if not (CRANFIELD / "cran.all.1400").is_file():
        print(f"SKIP: Cranfield data not found at {CRANFIELD} (expected <repo>/../shared/data/ir/cranfield)")
        return 0
    data = load_cranfield(CRANFIELD)
    queries = [(q, t) for q, t in data.queries if any(1 <= g <= 4 for g in data.qrels.get(q, {}).values())]
    empty = sorted(d for d, (t, w) in data.docs.items() if not (t or w).strip())
    doc_ids = sorted(d for d in data.docs if d not in empty)
    if empty:
        print(f"skipping {len(empty)} empty Cranfield records (no title, no text): {empty}")
    if args.quick:
        queries = queries[:10]
        wanted = {d for q, _ in queries for d in data.qrels[q]}
        doc_ids = sorted(wanted | set(doc_ids[:max(0, 90 - len(wanted))]))
        print(f"QUICK MODE: {len(doc_ids)} documents, {len(queries)} queries - a smoke run, NOT comparable "
              "with the full figures")
    print(f"Cranfield: {len(doc_ids)} documents, {len(queries)} queries with relevance judgements "
          f"({len(data.queries) - len(queries) if not args.quick else 'n/a'} without)")
    qrels = {q: {d: g for d, g in data.qrels[q].items() if d in set(doc_ids)} for q, _ in queries}
    async with bench_stack() as stack:
        ingest_s = await ingest_all(stack, data, doc_ids)
        async with running_service(stack) as svc:
            listed = await svc.stub.ListDocuments(
                rag_pb2.ListDocumentsRequest(page_size=500), metadata=(("x-tenant-id", TENANT), ("x-session-id", "b")))
        print(f"ingest: {len(doc_ids)} documents in {ingest_s:.1f} s through IngestDocument "
              f"({len(doc_ids) / ingest_s:.1f} docs/s, local encoder; first page lists {len(listed.documents)})")
        lists, chunk_doc, med = await collect(stack, queries)
        top10 = await grpc_hybrid_top10(stack, queries)
        recall_lines = await hnsw_recall_real(stack, queries, (40, 100))
    print(f"chunks: {len(chunk_doc)} for {len(doc_ids)} documents")
    print("median in-process latency per query: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()))

    all_q = [q for q, _ in queries]
    dev = all_q[0::2]
    test = all_q[1::2]
    rankers: dict[str, Ranker] = {
        "ts_rank_cd (plainto_tsquery, AND)": lambda ls: ls.ts_and,
        "ts_rank_cd over an OR tsquery": lambda ls: ls.ts_or,
        "BM25 (service lexical)": lambda ls: [c for c, _ in ls.lexical],
        "vector (MiniLM, pgvector cosine)": lambda ls: [c for c, _ in ls.vector],
        "hybrid RRF k=60 1:1 (service)": lambda ls: ls.hybrid_engine,
    }
    # The in-engine fusion and the harness's re-fusion must agree (same function, same inputs).
    mismatched = sum(dedup_docs(lists[q].hybrid_engine, chunk_doc) != dedup_docs(fused(60, 1.0)(lists[q]), chunk_doc)
                     for q in all_q)
    grid = [(k, w) for k in (1, 5, 10, 20, 40, 60, 100, 200) for w in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)]
    best = max(grid, key=lambda kw: evaluate(fused(*kw), dev, lists, chunk_doc, qrels)[0])
    rankers[f"hybrid RRF k={best[0]} w_vec={best[1]} (tuned on even queries)"] = fused(*best)

    print()
    print(f"{'method':<58} {'nDCG@10':>8} {'R@100':>7} | {'nDCG@10':>8} {'R@100':>7}")
    print(f"{'':<58} {'all ' + str(len(all_q)) + ' queries':>16} | {'odd (held-out) ' + str(len(test)):>16}")
    results: dict[str, tuple[float, float, float, float]] = {}
    for name, ranker in rankers.items():
        a = evaluate(ranker, all_q, lists, chunk_doc, qrels)
        t = evaluate(ranker, test, lists, chunk_doc, qrels)
        results[name] = (*a, *t)
        tuned = name.startswith("hybrid RRF k=") and "tuned" in name
        shown_all = "   (tuned on half)" if tuned else f"{a[0]:8.4f} {a[1]:7.4f}"
        print(f"{name:<58} {shown_all:>16} | {t[0]:8.4f} {t[1]:7.4f}")
    grpc_nd = statistics.fmean(ndcg_at(top10[q], qrels[q]) for q in all_q)
    print(f"{'hybrid via the Retrieve RPC (top_k=30 -> 10 docs)':<58} {grpc_nd:8.4f} {'-':>7} |")
    print(f"engine hybrid vs harness re-fusion: {len(all_q) - mismatched}/{len(all_q)} identical rankings")
    for line in recall_lines:
        print(line)

    hyb = results["hybrid RRF k=60 1:1 (service)"]
    bm = results["BM25 (service lexical)"]
    vec = results["vector (MiniLM, pgvector cosine)"]
    base = results["ts_rank_cd (plainto_tsquery, AND)"]
    print()
    for label, i in (("nDCG@10 (all)", 0), ("recall@100 (all)", 1), ("nDCG@10 (held-out)", 2),
                     ("recall@100 (held-out)", 3)):
        verdict = "YES" if hyb[i] > bm[i] and hyb[i] > vec[i] else "NO"
        print(f"hybrid (shipped) vs BM25 / vector / ts_rank_cd on {label}: {hyb[i]:.4f} vs {bm[i]:.4f} / "
              f"{vec[i]:.4f} / {base[i]:.4f} -> beats both alone: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
