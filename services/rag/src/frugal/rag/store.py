"""PostgreSQL access for the rag service. Every function runs inside `tenant_transaction` (or takes a
connection obtained from it): row-level security scopes every statement to the caller's tenant, and
tenant ids never appear in SQL written here (columns default to the transaction's tenant setting).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np

from frugal.common.db import tenant_transaction
from frugal.rag.embedding.base import Vectors

# Embedding spaces that have a partial HNSW index (migrations/0001_init.sql). Other spaces still
# work, searched exactly.
INDEXED_SPACES: dict[str, int] = {
    "all-minilm-l6-v2": 384, "voyage-3.5-lite": 1024, "voyage-3.5": 1024,
    "voyage-3.5-lite@2048": 2048, "voyage-3.5@2048": 2048,  # halfvec indexes (migrations/0002)
}
INDEX_NAMES: dict[str, str] = {
    "all-minilm-l6-v2": "rag_chunks_hnsw_minilm",
    "voyage-3.5-lite": "rag_chunks_hnsw_voyage35lite",
    "voyage-3.5": "rag_chunks_hnsw_voyage35",
    "voyage-3.5-lite@2048": "rag_chunks_hnsw_voyage35lite_2048",
    "voyage-3.5@2048": "rag_chunks_hnsw_voyage35_2048",
}
# pgvector's HNSW indexes `vector` up to 2000 dimensions and `halfvec` up to 4000.
MAX_VECTOR_INDEX_DIMS = 2000
_MODEL_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9.@\-]{0,79}$")


@dataclass(frozen=True, slots=True)
class VectorSpace:
    """An embedding model and dimension; its SQL uses the same cast and predicate as its index."""

    model_key: str
    dims: int

    def __post_init__(self) -> None:
        if not _MODEL_KEY_RE.fullmatch(self.model_key) or not 1 <= self.dims <= 16000:
            raise ValueError(f"invalid vector space {self.model_key!r}/{self.dims}")

    @property
    def indexed(self) -> bool:
        return INDEXED_SPACES.get(self.model_key) == self.dims

    @property
    def _pred(self) -> str:
        return f"embedding_model = '{self.model_key}'"  # validated above: no quote can occur

    @property
    def index_type(self) -> str:
        """The type the index (and the query) casts to: halfvec above `vector`'s HNSW limit."""
        return f"halfvec({self.dims})" if self.dims > MAX_VECTOR_INDEX_DIMS else f"vector({self.dims})"

    @property
    def hnsw_sql(self) -> str:
        t = self.index_type
        # relaxed_order iterative scans may return rows slightly out of order: re-sort outside.
        return (
            "WITH c AS MATERIALIZED ("
            f" SELECT chunk_id, (embedding::{t} <=> $1::vector::{t}) AS distance"
            f" FROM rag_chunks WHERE {self._pred}"
            f" ORDER BY embedding::{t} <=> $1::vector::{t} LIMIT $2)"
            " SELECT chunk_id, distance FROM c ORDER BY distance, chunk_id"
        )

    @property
    def exact_sql(self) -> str:
        d = self.dims
        # cosine_distance() is the function behind <=>; as a function call it cannot match the HNSW
        # index's ordering operator, so this is always an exact scan of the tenant's rows.
        return (
            f"SELECT chunk_id, cosine_distance(embedding::vector({d}), $1::vector({d})) AS distance"
            f" FROM rag_chunks WHERE {self._pred} ORDER BY distance, chunk_id LIMIT $2"
        )


def vector_literal(vec: Sequence[float] | np.ndarray[Any, Any]) -> str:
    arr = np.asarray(vec, dtype=np.float32)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise ValueError("embedding must be a finite 1-D vector")
    return "[" + ",".join(repr(float(x)) for x in arr.tolist()) + "]"


def parse_vector(text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.array(text.strip("[]").split(","), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class DocumentRow:
    document_id: str
    title: str
    content_type: str
    content_hash: str
    fingerprint: str
    size_bytes: int
    chunk_count: int
    embedding_model: str
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> DocumentRow:
        meta = r["metadata"]
        return cls(
            document_id=r["document_id"], title=r["title"], content_type=r["content_type"],
            content_hash=r["content_hash"], fingerprint=r["fingerprint"], size_bytes=r["size_bytes"],
            chunk_count=r["chunk_count"], embedding_model=r["embedding_model"],
            metadata=json.loads(meta) if isinstance(meta, str) else dict(meta or {}),
            created_at=r["created_at"], updated_at=r["updated_at"],
        )


_DOC_COLUMNS = ("document_id, title, content_type, content_hash, fingerprint, size_bytes, chunk_count, "
                "embedding_model, metadata, created_at, updated_at")


@dataclass(frozen=True, slots=True)
class NewDocument:
    document_id: str
    title: str
    content_type: str
    content_hash: str
    fingerprint: str
    size_bytes: int
    embedding_model: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class NewChunk:
    chunk_id: str
    chunk_index: int
    heading: str
    context: str
    content: str
    text_hash: str
    embedding: str  # vector literal
    next_embedding: str | None = None  # in the index's target model, while a model change runs


@dataclass(frozen=True, slots=True)
class IndexState:
    """The embedding model of a tenant's index, and the model it is changing to (if any)."""

    model: str
    target_model: str | None
    requested_at: datetime | None = None
    completed_at: datetime | None = None
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class IndexProgress:
    state: IndexState
    chunks_total: int
    chunks_reembedded: int


class IndexModelChanged(Exception):
    """The index's model changed between embedding and writing: embed again."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: str  # "created" | "replaced" | "unchanged"
    document: DocumentRow


@dataclass(frozen=True, slots=True)
class ChunkRow:
    chunk_id: str
    document_id: str
    title: str
    chunk_index: int
    heading: str
    content: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class TenantStats:
    chunks_by_model: dict[str, int]
    total_chunks: int
    total_length: int

    @property
    def avg_length(self) -> float:
        return self.total_length / self.total_chunks if self.total_chunks else 0.0


async def get_document_and_index(
    pool: asyncpg.Pool, tenant_id: str, document_id: str
) -> tuple[DocumentRow | None, IndexState | None]:
    """The document (None: not stored) and the tenant's index state (None: no index yet), in one
    transaction: ingest reads both before embedding, and each transaction is ~5 round trips."""
    async with tenant_transaction(pool, tenant_id) as conn:
        r = await conn.fetchrow(f"SELECT {_DOC_COLUMNS} FROM rag_documents WHERE document_id = $1", document_id)
        index = await get_index(conn)
    return (DocumentRow.from_record(r) if r else None), index


async def reusable_embeddings(
    pool: asyncpg.Pool, tenant_id: str, document_id: str, model_key: str
) -> dict[str, str]:
    """text_hash -> vector literal of the document's current chunks in `model_key` (re-ingest reuse)."""
    async with tenant_transaction(pool, tenant_id) as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT ON (text_hash) text_hash, embedding::text AS v FROM rag_chunks"
            " WHERE document_id = $1 AND embedding_model = $2",
            document_id, model_key,
        )
    return {r["text_hash"]: r["v"] for r in rows}


async def _adjust_stats(conn: asyncpg.Connection, deltas: dict[str, tuple[int, int]]) -> None:
    for model, (chunks, length) in sorted(deltas.items()):
        if chunks == 0 and length == 0:
            continue
        if chunks < 0 or length < 0:  # the row exists (these chunks were counted when written)
            await conn.execute(
                "UPDATE rag_tenant_stats SET chunk_count = chunk_count + $2, lex_len_total = lex_len_total + $3"
                " WHERE embedding_model = $1",
                model, chunks, length,
            )
            continue
        await conn.execute(
            "INSERT INTO rag_tenant_stats AS s (embedding_model, chunk_count, lex_len_total) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant_id, embedding_model) DO UPDATE"
            " SET chunk_count = s.chunk_count + EXCLUDED.chunk_count,"
            "     lex_len_total = s.lex_len_total + EXCLUDED.lex_len_total",
            model, chunks, length,
        )
    await conn.execute("DELETE FROM rag_tenant_stats WHERE chunk_count = 0")


async def _delete_chunks(conn: asyncpg.Connection, document_id: str) -> tuple[int, dict[str, tuple[int, int]]]:
    rows = await conn.fetch(
        "DELETE FROM rag_chunks WHERE document_id = $1 RETURNING embedding_model, lex_len", document_id
    )
    deltas: dict[str, tuple[int, int]] = {}
    for r in rows:
        c, n = deltas.get(r["embedding_model"], (0, 0))
        deltas[r["embedding_model"]] = (c - 1, n - r["lex_len"])
    return len(rows), deltas


def chunk_tsvector_sql(content: str, context: str = "''") -> str:
    """SQL for a chunk's indexed text: its context line (default: none) and its content, each a column or an
    expression. The service's insert and the benches' bulk loads (bench/rag) are built from this and
    posting_tf_sql, so what is indexed cannot drift between them."""
    return f"to_tsvector('english'::regconfig, {context} || E'\\n' || {content})"


def posting_tf_sql(lexeme: str) -> str:
    """SQL for a posting's term frequency from one `unnest(tsvector)` row (its positions; capped for smallint)."""
    return f"least(coalesce(array_length({lexeme}.positions, 1), 1), 32767)"


_INSERT_CHUNKS = f"""
WITH input AS (
    SELECT t.*, {chunk_tsvector_sql("t.content", "t.context")} AS tsv
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $11::text[])
        AS t(chunk_id, chunk_index, heading, context, content, text_hash, embedding, next_embedding)
), ins AS (
    -- The tsvector computed once per chunk: stored, counted for the length and turned into postings.
    INSERT INTO rag_chunks (chunk_id, document_id, chunk_index, heading, context, content, text_hash,
                            embedding_model, embedding, next_model, next_embedding, tsv, lex_len)
    SELECT chunk_id, $8, chunk_index, heading, context, content, text_hash, $9, embedding::vector,
           CASE WHEN next_embedding IS NULL THEN NULL ELSE $10 END, next_embedding::vector,
           tsv, rag_tsv_length(tsv) FROM input
    RETURNING chunk_id, tsv, lex_len
), post AS (
    INSERT INTO rag_postings (term, chunk_id, tf, dl)
    SELECT u.lexeme, ins.chunk_id, {posting_tf_sql("u")}, ins.lex_len
    FROM ins, unnest(ins.tsv) AS u
    RETURNING 1
)
SELECT count(*)::int AS chunks, coalesce(sum(lex_len), 0)::bigint AS length, (SELECT count(*) FROM post) AS postings
FROM ins
"""


async def lock_tenant(conn: asyncpg.Connection) -> None:
    """Serialises one tenant's writers (document writes, model changes, the swap to a new model) for the
    rest of the transaction: the per-tenant counters (rag_tenant_stats, rag_term_df) are then updated by
    one writer at a time and can never deadlock. Other tenants are not affected."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('frugal.rag:' || current_setting('app.current_tenant_id'), 0))"
    )


_INDEX_COLUMNS = "model, target_model, requested_at, completed_at, last_error"


def _index_state(r: asyncpg.Record) -> IndexState:
    return IndexState(r["model"], r["target_model"], r["requested_at"], r["completed_at"], r["last_error"])


async def get_index(conn: asyncpg.Connection) -> IndexState | None:
    r = await conn.fetchrow(f"SELECT {_INDEX_COLUMNS} FROM rag_tenant_index")
    return _index_state(r) if r else None


async def write_document(
    pool: asyncpg.Pool, tenant_id: str, doc: NewDocument, chunks: Sequence[NewChunk],
    *, index: IndexState | None = None,
) -> WriteResult:
    """Creates or atomically replaces a document and its chunks; unchanged when the fingerprint matches.
    `index` is the index state the chunks were embedded for (model, and target while a model change
    runs); IndexModelChanged when it is no longer current."""
    async with tenant_transaction(pool, tenant_id) as conn:
        await lock_tenant(conn)
        current_index = await get_index(conn)
        if current_index is None:
            await conn.execute("INSERT INTO rag_tenant_index (model) VALUES ($1)", doc.embedding_model)
            current_index = IndexState(doc.embedding_model, None)
        expected = index or IndexState(doc.embedding_model, None)
        if (current_index.model, current_index.target_model) != (expected.model, expected.target_model):
            raise IndexModelChanged(f"index model is now {current_index.model}->{current_index.target_model}")
        for _attempt in range(2):
            existing = await conn.fetchrow(
                f"SELECT {_DOC_COLUMNS} FROM rag_documents WHERE document_id = $1 FOR UPDATE", doc.document_id
            )
            if existing is not None:
                break
            created = await conn.fetchrow(
                "INSERT INTO rag_documents (document_id, title, content_type, content_hash, fingerprint,"
                " size_bytes, chunk_count, embedding_model, metadata)"
                " VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8::jsonb)"
                " ON CONFLICT (tenant_id, document_id) DO NOTHING RETURNING document_id",
                doc.document_id, doc.title, doc.content_type, doc.content_hash, doc.fingerprint,
                doc.size_bytes, doc.embedding_model, json.dumps(doc.metadata),
            )
            if created is not None:
                outcome = "created"
                deltas: dict[str, tuple[int, int]] = {}
                break
        else:  # pragma: no cover - a concurrent writer created and deleted it twice in a row
            raise asyncpg.SerializationError("document changed concurrently; retry")
        if existing is not None:
            current = DocumentRow.from_record(existing)
            if current.fingerprint == doc.fingerprint:
                return WriteResult("unchanged", current)
            outcome = "replaced"
            _, deltas = await _delete_chunks(conn, doc.document_id)
            await conn.execute(
                "UPDATE rag_documents SET title = $2, content_type = $3, content_hash = $4, fingerprint = $5,"
                " size_bytes = $6, embedding_model = $7, metadata = $8::jsonb, updated_at = now()"
                " WHERE document_id = $1",
                doc.document_id, doc.title, doc.content_type, doc.content_hash, doc.fingerprint,
                doc.size_bytes, doc.embedding_model, json.dumps(doc.metadata),
            )
        if chunks:
            r = await conn.fetchrow(
                _INSERT_CHUNKS,
                [c.chunk_id for c in chunks], [c.chunk_index for c in chunks], [c.heading for c in chunks],
                [c.context for c in chunks], [c.content for c in chunks], [c.text_hash for c in chunks],
                [c.embedding for c in chunks], doc.document_id, doc.embedding_model,
                current_index.target_model, [c.next_embedding for c in chunks],
            )
            assert r is not None
            c0, n0 = deltas.get(doc.embedding_model, (0, 0))
            deltas[doc.embedding_model] = (c0 + int(r["chunks"]), n0 + int(r["length"]))
        await _adjust_stats(conn, deltas)
        row = await conn.fetchrow(
            f"UPDATE rag_documents SET chunk_count = $2 WHERE document_id = $1 RETURNING {_DOC_COLUMNS}",
            doc.document_id, len(chunks),
        )
        assert row is not None
        return WriteResult(outcome, DocumentRow.from_record(row))


async def delete_document(pool: asyncpg.Pool, tenant_id: str, document_id: str) -> int | None:
    """Number of chunks deleted, or None when the tenant has no such document."""
    async with tenant_transaction(pool, tenant_id) as conn:
        await lock_tenant(conn)
        found = await conn.fetchval(
            "SELECT 1 FROM rag_documents WHERE document_id = $1 FOR UPDATE", document_id
        )
        if found is None:
            return None
        count, deltas = await _delete_chunks(conn, document_id)
        await conn.execute("DELETE FROM rag_documents WHERE document_id = $1", document_id)
        await _adjust_stats(conn, deltas)
        return count


async def list_documents(
    pool: asyncpg.Pool, tenant_id: str, *, page_size: int, after: str | None
) -> tuple[list[DocumentRow], bool]:
    """A page ordered by document_id (keyset pagination), and whether more follow."""
    async with tenant_transaction(pool, tenant_id) as conn:
        rows = await conn.fetch(
            f"SELECT {_DOC_COLUMNS} FROM rag_documents WHERE ($1::text IS NULL OR document_id > $1)"
            " ORDER BY document_id LIMIT $2",
            after, page_size + 1,
        )
    docs = [DocumentRow.from_record(r) for r in rows[:page_size]]
    return docs, len(rows) > page_size


# --- the index's embedding model -----------------------------------------------------------------


async def index_progress(pool: asyncpg.Pool, tenant_id: str, default_model: str) -> IndexProgress:
    async with tenant_transaction(pool, tenant_id) as conn:
        state = await get_index(conn) or IndexState(default_model, None)
        r = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE next_model = $1) AS done FROM rag_chunks",
            state.target_model or "",
        )
    assert r is not None
    return IndexProgress(state, int(r["total"]), int(r["done"]) if state.target_model else 0)


async def request_model_change(pool: asyncpg.Pool, tenant_id: str, default_model: str, model: str) -> IndexState:
    """Sets (or, when `model` is the current one, cancels) the index's target model. Vectors of an
    abandoned target are dropped; vectors already made for this target are kept."""
    async with tenant_transaction(pool, tenant_id) as conn:
        await lock_tenant(conn)
        state = await get_index(conn)
        if state is None:
            current = await conn.fetchval(
                "SELECT embedding_model FROM rag_chunks GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
            )
            state = IndexState(current or default_model, None)
            await conn.execute("INSERT INTO rag_tenant_index (model) VALUES ($1)", state.model)
        if state.target_model == (None if model == state.model else model):
            return state
        target = None if model == state.model else model
        await conn.execute(
            "UPDATE rag_chunks SET next_model = NULL, next_embedding = NULL"
            " WHERE next_model IS NOT NULL AND next_model IS DISTINCT FROM $1",
            target,
        )
        row = await conn.fetchrow(
            "UPDATE rag_tenant_index SET target_model = $1, requested_at = CASE WHEN $1::text IS NULL THEN"
            f" requested_at ELSE now() END, last_error = '' RETURNING {_INDEX_COLUMNS}",
            target,
        )
        if target is None:
            await conn.execute("DELETE FROM rag_reembed_queue WHERE tenant_id = $1", tenant_id)
        else:
            await conn.execute(
                "INSERT INTO rag_reembed_queue (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING", tenant_id
            )
    assert row is not None
    return _index_state(row)


@dataclass(frozen=True, slots=True)
class PendingChunk:
    chunk_id: str
    text_hash: str
    text: str  # what is embedded: context line + content


async def pending_reembed(pool: asyncpg.Pool, tenant_id: str, target: str, limit: int) -> list[PendingChunk]:
    async with tenant_transaction(pool, tenant_id) as conn:
        state = await get_index(conn)
        if state is None or state.target_model != target:
            return []
        rows = await conn.fetch(
            "SELECT chunk_id, text_hash, context, content FROM rag_chunks WHERE next_model IS NULL"
            " ORDER BY chunk_id LIMIT $1",
            limit,
        )
    return [PendingChunk(str(r["chunk_id"]), r["text_hash"],
                         f"{r['context']}\n{r['content']}" if r["context"] else r["content"]) for r in rows]


async def store_reembedded(
    pool: asyncpg.Pool, tenant_id: str, target: str, rows: Sequence[tuple[PendingChunk, str]]
) -> int:
    """Stores target-model vectors; skips chunks replaced meanwhile and a target no longer current."""
    async with tenant_transaction(pool, tenant_id) as conn:
        state = await get_index(conn)
        if state is None or state.target_model != target:
            return 0
        result = await conn.execute(
            "UPDATE rag_chunks c SET next_model = $1, next_embedding = u.v::vector"
            " FROM unnest($2::uuid[], $3::text[], $4::text[]) AS u(id, h, v)"
            " WHERE c.chunk_id = u.id AND c.text_hash = u.h AND c.next_model IS NULL",
            target, [p.chunk_id for p, _ in rows], [p.text_hash for p, _ in rows], [v for _, v in rows],
        )
    return int(result.split()[-1])


async def complete_model_change(pool: asyncpg.Pool, tenant_id: str, target: str) -> bool:
    """Swaps the index to `target` in one transaction once every chunk has its target vector; until
    this commits, retrieval reads the old vectors. False when chunks are still missing one."""
    async with tenant_transaction(pool, tenant_id) as conn:
        await lock_tenant(conn)
        state = await get_index(conn)
        if state is None or state.target_model != target:
            return False
        if await conn.fetchval("SELECT 1 FROM rag_chunks WHERE next_model IS DISTINCT FROM $1 LIMIT 1", target):
            return False
        await conn.execute(
            "UPDATE rag_chunks SET embedding_model = next_model, embedding = next_embedding,"
            " next_model = NULL, next_embedding = NULL"
        )
        await conn.execute("UPDATE rag_documents SET embedding_model = $1", target)
        await conn.execute("DELETE FROM rag_tenant_stats")
        await conn.execute(
            "INSERT INTO rag_tenant_stats (embedding_model, chunk_count, lex_len_total)"
            " SELECT embedding_model, count(*), sum(lex_len) FROM rag_chunks GROUP BY 1"
        )
        await conn.execute(
            "UPDATE rag_tenant_index SET model = $1, target_model = NULL, completed_at = now(), last_error = ''",
            target,
        )
        await conn.execute("DELETE FROM rag_reembed_queue WHERE tenant_id = $1", tenant_id)
    return True


async def note_reembed_error(pool: asyncpg.Pool, tenant_id: str, message: str) -> None:
    async with tenant_transaction(pool, tenant_id) as conn:
        await conn.execute("UPDATE rag_tenant_index SET last_error = $1", message[:1000])


async def pending_tenants(pool: asyncpg.Pool) -> list[str]:
    """Tenants with a model change in progress (rag_reembed_queue holds tenant ids only, no RLS)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT tenant_id FROM rag_reembed_queue ORDER BY requested_at")
    return [r["tenant_id"] for r in rows]


# --- retrieval (these take a connection from tenant_transaction) ------------------------------------


async def tenant_stats(conn: asyncpg.Connection) -> TenantStats:
    rows = await conn.fetch("SELECT embedding_model, chunk_count, lex_len_total FROM rag_tenant_stats")
    by_model = {r["embedding_model"]: int(r["chunk_count"]) for r in rows}
    return TenantStats(by_model, sum(by_model.values()), sum(int(r["lex_len_total"]) for r in rows))


async def indexed_vectors_estimate(conn: asyncpg.Connection, space: VectorSpace) -> int:
    """The planner's estimate of how many vectors the space's HNSW index holds, all tenants together
    (pg_class.reltuples, a world-readable catalog figure: no per-tenant information). -1 when unknown
    (never vacuumed or analysed)."""
    name = INDEX_NAMES.get(space.model_key)
    if name is None or not space.indexed:
        return -1
    value = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)", name)
    return int(value) if value is not None and value >= 0 else -1


async def configure_scan(
    conn: asyncpg.Connection,
    *,
    ef_search: int,
    max_scan_tuples: int,
    scan_mem_multiplier: float,
    iterative: bool = True,
    statement_timeout_ms: int | None = None,
) -> None:
    """Transaction-local (SET LOCAL equivalent) HNSW and timeout settings. In a fresh backend pgvector is
    not loaded yet: the hnsw.* values are kept as placeholders and applied when it loads (tested)."""
    await conn.execute(
        "SELECT set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', $2, true),"
        " set_config('hnsw.max_scan_tuples', $3, true), set_config('hnsw.scan_mem_multiplier', $4, true),"
        " set_config('statement_timeout', $5, true)",
        str(ef_search), "relaxed_order" if iterative else "off", str(max_scan_tuples),
        repr(float(scan_mem_multiplier)), str(statement_timeout_ms or 0),
    )


async def vector_search(
    conn: asyncpg.Connection, space: VectorSpace, query: str, limit: int, *, exact: bool
) -> list[tuple[str, float]]:
    """Exact: a scan of the tenant's rows. Otherwise the HNSW index, always: under RLS the planner only
    has a generic estimate of the tenant's share of the table and may prefer scanning and sorting
    everything; the caller knows the tenant's real size and chose the index. `enable_sort = off` for
    that one statement makes the ordered index scan the only plan without a Sort node."""
    if exact or not space.indexed:
        rows = await conn.fetch(space.exact_sql, query, limit)
    else:
        await conn.execute("SELECT set_config('enable_sort', 'off', true)")
        rows = await conn.fetch(space.hnsw_sql, query, limit)
        # (After an error the transaction is aborted and the setting dies with it.)
        await conn.execute("SELECT set_config('enable_sort', 'on', true)")
    return [(str(r["chunk_id"]), float(r["distance"])) for r in rows]


# BM25 (Robertson/Sparck Jones idf as in Lucene: ln(1 + (N - df + 0.5) / (df + 0.5)), never negative),
# OR semantics over the query's lexemes (Snowball English stems, stop words removed: the same
# to_tsvector configuration as the indexed text). df is the tenant's own document frequency
# (rag_term_df, kept by triggers, under RLS). $2 = N, $3 = average length, $4 = k1, $5 = b.
#
# Bounded work: only the $7 rarest query terms (highest idf; a 4,000-character query has hundreds)
# and, per term, only its $8 postings of highest impact (BM25 term weight at a reference length),
# read in order from the impact index and stopped there. The scores of what is read are exact; a chunk
# whose posting of a very common term was past the cut misses that term's (small) contribution.
_BM25_SQL = """
WITH q AS (
    SELECT lexeme AS term, coalesce(array_length(positions, 1), 1) AS qtf
    FROM unnest(to_tsvector('english'::regconfig, $1)) AS u
), qd AS (
    SELECT q.term, q.qtf, d.df::float8 AS df
    FROM q JOIN rag_term_df d ON d.term = q.term
    ORDER BY d.df, q.term
    LIMIT $7
), p AS (
    SELECT qd.qtf, qd.df, x.chunk_id, x.tf, x.dl
    FROM qd CROSS JOIN LATERAL (
        SELECT p.chunk_id, p.tf, p.dl FROM rag_postings p WHERE p.term = qd.term ORDER BY p.impact DESC LIMIT $8
    ) AS x
)
SELECT p.chunk_id,
       sum(p.qtf * ln(1.0 + ($2::float8 - p.df + 0.5) / (p.df + 0.5))
           * (p.tf * ($4::float8 + 1.0)) / (p.tf + $4::float8 * (1.0 - $5::float8 + $5::float8 * p.dl / $3::float8)))
           AS score
FROM p
GROUP BY p.chunk_id
ORDER BY score DESC, p.chunk_id
LIMIT $6
"""

# The unbounded form (every posting of every query term, df counted from the postings): the exact
# reference the bounded form is measured against (bench/rag, tests).
EXHAUSTIVE_BM25_SQL = """
WITH q AS (
    SELECT lexeme AS term, coalesce(array_length(positions, 1), 1) AS qtf
    FROM unnest(to_tsvector('english'::regconfig, $1)) AS u
), p AS MATERIALIZED (
    SELECT p.chunk_id, p.term, p.tf, p.dl, q.qtf FROM q JOIN rag_postings p ON p.term = q.term
), df AS (
    SELECT term, count(*)::float8 AS df FROM p GROUP BY term
)
SELECT p.chunk_id,
       sum(p.qtf * ln(1.0 + ($2::float8 - df.df + 0.5) / (df.df + 0.5))
           * (p.tf * ($4::float8 + 1.0)) / (p.tf + $4::float8 * (1.0 - $5::float8 + $5::float8 * p.dl / $3::float8)))
           AS score
FROM p JOIN df USING (term)
GROUP BY p.chunk_id
ORDER BY score DESC, p.chunk_id
LIMIT $6
"""


async def lexical_search(
    conn: asyncpg.Connection, query: str, limit: int, stats: TenantStats, *, k1: float, b: float,
    max_terms: int = 32, max_postings: int = 2000, exhaustive: bool = False,
) -> list[tuple[str, float]]:
    if stats.total_chunks == 0:
        return []
    args: list[Any] = [query, float(stats.total_chunks), max(stats.avg_length, 1.0), k1, b, limit]
    if exhaustive:
        rows = await conn.fetch(EXHAUSTIVE_BM25_SQL, *args)
    else:
        rows = await conn.fetch(_BM25_SQL, *args, max_terms, max_postings)
    return [(str(r["chunk_id"]), float(r["score"])) for r in rows]


async def query_terms(conn: asyncpg.Connection, query: str) -> list[str]:
    rows = await conn.fetch("SELECT lexeme FROM unnest(to_tsvector('english'::regconfig, $1))", query)
    return [r["lexeme"] for r in rows]


# The measured baseline (bench only): PostgreSQL's own full text ranking, AND semantics.
BASELINE_TS_RANK_CD_SQL = """
SELECT chunk_id, ts_rank_cd(tsv, query) AS score
FROM rag_chunks, plainto_tsquery('english'::regconfig, $1) AS query
WHERE tsv @@ query
ORDER BY score DESC, chunk_id
LIMIT $2
"""


async def fetch_chunks(conn: asyncpg.Connection, chunk_ids: Sequence[str]) -> dict[str, ChunkRow]:
    if not chunk_ids:
        return {}
    rows = await conn.fetch(
        "SELECT c.chunk_id, c.document_id, d.title, c.chunk_index, c.heading, c.content, d.metadata"
        " FROM rag_chunks c JOIN rag_documents d USING (tenant_id, document_id)"
        " WHERE c.chunk_id = ANY($1::uuid[])",
        list(chunk_ids),
    )
    out: dict[str, ChunkRow] = {}
    for r in rows:
        meta = r["metadata"]
        out[str(r["chunk_id"])] = ChunkRow(
            chunk_id=str(r["chunk_id"]), document_id=r["document_id"], title=r["title"],
            chunk_index=r["chunk_index"], heading=r["heading"], content=r["content"],
            metadata=json.loads(meta) if isinstance(meta, str) else dict(meta or {}),
        )
    return out


def vectors_to_literals(vectors: Vectors) -> list[str]:
    return [vector_literal(v) for v in vectors]
