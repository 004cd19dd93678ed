"""rag settings (environment variables, validated at start)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from frugal.common.settings import PORTS, DatabaseSettings


class Settings(DatabaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    service_name: str = "rag"
    grpc_port: int = PORTS["rag"][0]
    metrics_port: int = PORTS["rag"][1]

    # --- embeddings -------------------------------------------------------------------------------
    # Voyage when a key is set; otherwise the local all-MiniLM-L6-v2 encoder (offline, labelled so).
    voyage_api_key: SecretStr | None = None
    voyage_base_url: str | None = Field(default=None, description="override, e.g. a local emulator")
    voyage_model: str = Field(default="voyage-3.5-lite", pattern=r"^[a-z0-9][a-z0-9.\-]{0,63}$")
    voyage_dimensions: int = Field(default=1024, description="output_dimension: 256, 512, 1024 or 2048")
    voyage_timeout_s: float = Field(default=10.0, gt=0, le=120)
    voyage_max_retries: int = Field(default=0, ge=0, le=5)
    voyage_batch_size: int = Field(default=128, ge=1, le=1000)
    # Texts per encoder batch: 8 is fastest per CPU-second here (bigger batches spill the attention
    # scores out of cache; bench/rag/ingest.py), and a query waits behind at most one such batch.
    local_batch_size: int = Field(default=8, ge=1, le=256)
    # ...and at most this many padded positions per forward pass (0: no limit): a batch pays for its padding,
    # and texts past ~100 word pieces encode as fast one by one (bench/rag/ingest.py).
    local_batch_tokens: int = Field(default=256, ge=0, le=65_536)
    # Queued document texts looked at to fill a batch with texts of similar length (less padding); 0: in order.
    local_length_window: int = Field(default=64, ge=0, le=100_000)
    # BLAS threads for the local encoder (process-wide); 0 leaves the library default.
    local_encoder_threads: int = Field(default=1, ge=0, le=64)
    # Batches the local encoder runs at once (one thread each): one per core.
    local_encoder_workers: int = Field(default=2, ge=1, le=64)
    # "numpy" or "onnx" (onnxruntime on a graph built from the same weights); "" picks onnx when
    # installed (faster here, same vectors: bench/rag/ingest.py).
    encoder_runtime: str = Field(default="", pattern=r"^(|numpy|onnx)$")
    # Query-embedding cache in Redis (seconds); 0 disables it.
    embedding_cache_ttl: int = Field(default=7 * 24 * 3600, ge=0, le=365 * 24 * 3600)

    # Background re-embedding after a model change: chunks per batch, and the pause before retrying a
    # failed batch (the error is shown in ListDocuments meanwhile).
    reembed_batch_size: int = Field(default=64, ge=1, le=1000)
    reembed_retry_seconds: float = Field(default=5.0, gt=0, le=3600)

    # --- rerank -----------------------------------------------------------------------------------
    cohere_api_key: SecretStr | None = None
    cohere_base_url: str | None = None
    cohere_rerank_model: str = Field(default="rerank-v3.5", pattern=r"^[a-z0-9][a-z0-9.\-]{0,63}$")
    cohere_timeout_s: float = Field(default=5.0, gt=0, le=60)
    cohere_max_retries: int = Field(default=0, ge=0, le=5)
    # How many fused candidates the reranker sees (it returns top_k of them).
    rerank_candidates: int = Field(default=40, ge=1, le=1000)

    # --- ingestion limits -------------------------------------------------------------------------
    max_document_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_chunks_per_document: int = Field(default=2000, ge=1, le=100_000)
    max_pdf_pages: int = Field(default=500, ge=1, le=10_000)
    chunk_target_words: int = Field(default=160, ge=16, le=2000)
    chunk_overlap_words: int = Field(default=32, ge=0, le=1000)
    max_title_chars: int = Field(default=1000, ge=1, le=10_000)
    max_document_id_chars: int = Field(default=512, ge=1, le=4096)
    max_metadata_entries: int = Field(default=64, ge=0, le=1000)
    max_metadata_value_chars: int = Field(default=2048, ge=1, le=65536)
    # Every chunk is at most this many characters and word pieces, whatever the script (text without
    # spaces is cut at punctuation or hard); 0 tokens disables the word-piece cap.
    max_chunk_chars: int = Field(default=2000, ge=64, le=100_000)
    max_chunk_tokens: int = Field(default=240, ge=0, le=8192)

    # --- extraction budget (per document) ---------------------------------------------------------
    # PDFs and text over `extract_inline_max_bytes` are extracted and chunked in a child process that is
    # killed past its CPU seconds, wall seconds (or the caller's deadline) or memory.
    extract_workers: int = Field(default=2, ge=1, le=64)
    extract_inline_max_bytes: int = Field(default=256 * 1024, ge=0, le=64 * 1024 * 1024)
    extract_cpu_seconds: float = Field(default=20.0, gt=0, le=3600)
    extract_wall_seconds: float = Field(default=60.0, gt=0, le=3600)
    extract_max_inflated_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=4 * 1024 * 1024 * 1024)
    extract_max_text_chars: int = Field(default=4_000_000, ge=1000, le=100_000_000)
    extract_memory_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=0, le=64 * 1024 * 1024 * 1024)

    # --- retrieval --------------------------------------------------------------------------------
    max_query_chars: int = Field(default=4000, ge=16, le=100_000)
    default_top_k: int = Field(default=5, ge=1, le=50)
    # Candidates taken from each list (vector, lexical) before fusion: max(this, 4 * top_k).
    retrieve_candidates: int = Field(default=50, ge=1, le=1000)
    rrf_k: float = Field(default=60.0, gt=0, le=10_000)
    rrf_vector_weight: float = Field(default=1.0, ge=0, le=100)
    rrf_lexical_weight: float = Field(default=1.0, ge=0, le=100)
    bm25_k1: float = Field(default=1.2, ge=0, le=10)
    bm25_b: float = Field(default=0.75, ge=0, le=1)
    # Bounded BM25: at most this many distinct query terms (the rarest ones: highest idf), and per term
    # at most this many postings (those with the highest BM25 term weight, read from an impact-ordered
    # index). Work per query: at most terms x postings index entries, whatever the corpus size.
    bm25_max_query_terms: int = Field(default=32, ge=1, le=1000)
    bm25_max_postings_per_term: int = Field(default=2000, ge=10, le=10_000_000)
    # Statement timeout of Retrieve's SQL: the caller's remaining deadline, never more than this.
    retrieve_statement_timeout_ms: int = Field(default=3000, ge=10, le=600_000)
    # HNSW with iterative scans (pgvector >= 0.8) so that row-level security filtering after the
    # index scan still yields k rows; a tenant with at most `exact_scan_max_chunks` chunks is
    # searched exactly (cheaper than a graph walk over everybody's vectors).
    hnsw_ef_search: int = Field(default=100, ge=1, le=1000)
    hnsw_max_scan_tuples: int = Field(default=50_000, ge=1, le=2_000_000_000)
    hnsw_scan_mem_multiplier: float = Field(default=2.0, ge=1, le=1000)
    exact_scan_max_chunks: int = Field(default=3000, ge=0, le=10_000_000)
    # Above that size a tenant is still scanned exactly when it is a small share of the index:
    # an HNSW scan under RLS visits about n / share tuples, each needing a heap fetch for the policy
    # check, while an exact scan reads the tenant's t rows. Exact when t^2 < ratio * n * T (T: vectors
    # in the index, all tenants, from pg_class.reltuples). Measured in bench/rag/speed.py; 0 disables.
    hnsw_cost_ratio: float = Field(default=30.0, ge=0, le=100_000)

    @field_validator("voyage_dimensions")
    @classmethod
    def _dims(cls, value: int) -> int:
        if value not in (256, 512, 1024, 2048):
            raise ValueError("must be one of 256, 512, 1024, 2048")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunk_overlap_words * 2 > self.chunk_target_words:
            raise ValueError("CHUNK_OVERLAP_WORDS must be at most half of CHUNK_TARGET_WORDS")
        if self.max_document_bytes > self.max_message_bytes:
            raise ValueError("MAX_DOCUMENT_BYTES cannot exceed MAX_MESSAGE_BYTES")
        return self
