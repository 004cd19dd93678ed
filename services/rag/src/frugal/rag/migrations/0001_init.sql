-- rag: per-tenant documents, chunks (embedding + lexical data), BM25 postings and statistics.
-- Every table carries tenant_id, defaults it from the transaction's tenant setting, and is guarded
-- by row-level security (ENABLED and FORCED) comparing it, as text, with
-- NULLIF(current_setting('app.current_tenant_id', true), ''). No setting (or an empty one) -> NULL ->
-- no row is visible or writable.

CREATE EXTENSION IF NOT EXISTS vector;

-- Number of tokens a tsvector was built from (sum of position counts): the BM25 document length.
CREATE FUNCTION rag_tsv_length(v tsvector) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0)::integer FROM unnest(v) AS u);

CREATE TABLE rag_documents (
    tenant_id       text        NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), ''),
    document_id     text        NOT NULL,
    title           text        NOT NULL DEFAULT '',
    content_type    text        NOT NULL,
    content_hash    text        NOT NULL,           -- sha256 of the content bytes
    fingerprint     text        NOT NULL,           -- content + title + metadata + chunker + model
    size_bytes      bigint      NOT NULL CHECK (size_bytes >= 0),
    chunk_count     integer     NOT NULL CHECK (chunk_count >= 0),
    embedding_model text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, document_id),
    CHECK (tenant_id <> '' AND document_id <> '')
);

CREATE TABLE rag_chunks (
    tenant_id       text    NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), ''),
    chunk_id        uuid    NOT NULL,
    document_id     text    NOT NULL,
    chunk_index     integer NOT NULL CHECK (chunk_index >= 0),
    heading         text    NOT NULL DEFAULT '',
    context         text    NOT NULL DEFAULT '',    -- title/heading line prepended for search
    content         text    NOT NULL,
    text_hash       text    NOT NULL,               -- sha256 of the embedded text (embedding reuse)
    embedding_model text    NOT NULL,
    embedding       vector  NOT NULL,
    tsv             tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, context || E'\n' || content)) STORED,
    lex_len         integer GENERATED ALWAYS AS (rag_tsv_length(to_tsvector('english'::regconfig, context || E'\n' || content))) STORED,
    PRIMARY KEY (tenant_id, chunk_id),
    UNIQUE (tenant_id, document_id, chunk_index),
    FOREIGN KEY (tenant_id, document_id) REFERENCES rag_documents (tenant_id, document_id) ON DELETE CASCADE
);

-- Keep vectors inline (compressed or moved out only as a last resort; the text columns go first):
-- an out-of-line vector costs extra buffer reads per row in every exact scan and re-rank.
ALTER TABLE rag_chunks ALTER COLUMN embedding SET STORAGE MAIN;

-- Exact (small-tenant / fallback) scans and per-model counts.
CREATE INDEX rag_chunks_tenant_model ON rag_chunks (tenant_id, embedding_model);
-- HNSW, cosine ops, one partial index per embedding model (pgvector's documented way to index
-- vectors of different dimensions in one column). Queries use the same cast and predicate.
CREATE INDEX rag_chunks_hnsw_minilm ON rag_chunks
    USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE embedding_model = 'all-minilm-l6-v2';
CREATE INDEX rag_chunks_hnsw_voyage35lite ON rag_chunks
    USING hnsw ((embedding::vector(1024)) vector_cosine_ops) WHERE embedding_model = 'voyage-3.5-lite';
CREATE INDEX rag_chunks_hnsw_voyage35 ON rag_chunks
    USING hnsw ((embedding::vector(1024)) vector_cosine_ops) WHERE embedding_model = 'voyage-3.5';
-- Only for the measured plainto_tsquery/ts_rank_cd baseline (bench/rag); BM25 uses rag_postings.
CREATE INDEX rag_chunks_tsv ON rag_chunks USING gin (tsv);

-- Inverted index for BM25: one row per (tenant, term, chunk) with the term frequency and the
-- chunk's length. Document frequencies are counted from these rows at query time (exact, no
-- drift); N and the average length come from rag_tenant_stats.
CREATE TABLE rag_postings (
    tenant_id text     NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), ''),
    term      text     NOT NULL,
    chunk_id  uuid     NOT NULL,
    tf        smallint NOT NULL CHECK (tf > 0),
    dl        integer  NOT NULL CHECK (dl > 0),
    PRIMARY KEY (tenant_id, term, chunk_id) INCLUDE (tf, dl),
    FOREIGN KEY (tenant_id, chunk_id) REFERENCES rag_chunks (tenant_id, chunk_id) ON DELETE CASCADE
);
CREATE INDEX rag_postings_chunk ON rag_postings (tenant_id, chunk_id);

-- Per tenant and embedding model: chunk count and total token length (BM25's N and avgdl; the
-- vector search's choice between exact and HNSW scans).
CREATE TABLE rag_tenant_stats (
    tenant_id       text   NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), ''),
    embedding_model text   NOT NULL,
    chunk_count     bigint NOT NULL DEFAULT 0 CHECK (chunk_count >= 0),
    lex_len_total   bigint NOT NULL DEFAULT 0 CHECK (lex_len_total >= 0),
    PRIMARY KEY (tenant_id, embedding_model)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rag_documents', 'rag_chunks', 'rag_postings', 'rag_tenant_stats'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = NULLIF(current_setting(''app.current_tenant_id'', true), '''')) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.current_tenant_id'', true), ''''))', t);
    END LOOP;
END
$$;

-- The app role: row access only. No TRUNCATE (it ignores row-level security), no REFERENCES,
-- no TRIGGER, no ownership.
GRANT SELECT, INSERT, UPDATE, DELETE ON rag_documents, rag_chunks, rag_postings, rag_tenant_stats TO @app_role@;
GRANT EXECUTE ON FUNCTION rag_tsv_length(tsvector) TO @app_role@;
