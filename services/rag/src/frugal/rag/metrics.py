"""Prometheus metrics of the rag service (default registry, served on METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from frugal.common.metrics import LATENCY_BUCKETS

STAGE_SECONDS = Histogram(
    "rag_stage_seconds",
    "Time spent in each stage of Retrieve and IngestDocument.",
    ["operation", "stage"],
    buckets=LATENCY_BUCKETS,
)
EMBEDDING_CACHE = Counter(
    "rag_embedding_cache_total", "Query-embedding cache lookups by result (hit, miss, error).", ["result"]
)
INGESTS = Counter("rag_ingest_total", "IngestDocument outcomes.", ["outcome"])
CHUNKS_WRITTEN = Counter("rag_chunks_written_total", "Chunks written by IngestDocument.")
EMBEDDINGS_REUSED = Counter(
    "rag_embeddings_reused_total", "Chunk embeddings reused from the previous version of a document."
)
TEXTS_EMBEDDED = Counter("rag_texts_embedded_total", "Texts sent to the embedder.", ["provider", "purpose"])
VECTOR_SCANS = Counter(
    "rag_vector_scans_total",
    "Vector searches by path: hnsw (iterative index scan), exact (small tenant or non-indexed model), "
    "exact_fallback (the index scan returned fewer rows than the tenant has and k asks for).",
    ["path"],
)
RETRIEVED = Histogram(
    "rag_retrieve_results", "Chunks returned per Retrieve.", buckets=(0, 1, 2, 3, 5, 10, 20, 50)
)
RERANKS = Counter("rag_rerank_total", "Rerank attempts by outcome (ok, error, skipped_no_key).", ["outcome"])
