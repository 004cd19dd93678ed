-- rag 0002: bounded BM25 (impact-ordered postings, per-tenant document frequencies) and one embedding
-- model per tenant's index (explicit model changes, re-embedded in the background).

-- BM25 term weight of a posting at a reference length of 128 tokens (k1 = 1.2, b = 0.75): the order in
-- which a term's postings are read, best first, so a query reads at most N postings per term (the
-- score itself is computed exactly, with the tenant's real average length, on the postings read).
ALTER TABLE rag_postings
    ADD COLUMN impact real GENERATED ALWAYS AS (tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / 128.0))) STORED;
CREATE INDEX rag_postings_impact ON rag_postings (tenant_id, term, impact DESC) INCLUDE (chunk_id, tf, dl);

-- Document frequency per tenant and term, kept by statement triggers on rag_postings (cascaded
-- deletes included), so a query reads one row per term instead of counting every posting.
-- Writers of one tenant are serialised by a transaction advisory lock (store.py), so the counters'
-- row locks never deadlock.
CREATE TABLE rag_term_df (
    tenant_id text   NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), ''),
    term      text   NOT NULL,
    df        bigint NOT NULL CHECK (df >= 0),
    PRIMARY KEY (tenant_id, term)
);
INSERT INTO rag_term_df (tenant_id, term, df)
    SELECT tenant_id, term, count(*) FROM rag_postings GROUP BY tenant_id, term;

CREATE FUNCTION rag_df_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rag_term_df AS d (tenant_id, term, df)
        SELECT tenant_id, term, count(*) FROM new_rows GROUP BY tenant_id, term ORDER BY tenant_id, term
    ON CONFLICT (tenant_id, term) DO UPDATE SET df = d.df + EXCLUDED.df;
    RETURN NULL;
END
$$;

CREATE FUNCTION rag_df_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rag_term_df AS d SET df = d.df - o.n
        FROM (SELECT tenant_id, term, count(*) AS n FROM old_rows GROUP BY tenant_id, term) AS o
        WHERE d.tenant_id = o.tenant_id AND d.term = o.term;
    DELETE FROM rag_term_df AS d USING (SELECT DISTINCT tenant_id, term FROM old_rows) AS o
        WHERE d.tenant_id = o.tenant_id AND d.term = o.term AND d.df <= 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER rag_postings_df_insert AFTER INSERT ON rag_postings
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION rag_df_after_insert();
CREATE TRIGGER rag_postings_df_delete AFTER DELETE ON rag_postings
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION rag_df_after_delete();

-- The embedding model of each tenant's index. No row: the service's default model. A model change
-- sets target_model; the re-embedder fills next_model/next_embedding chunk by chunk while retrieval
-- keeps using model/embedding, then swaps them in one transaction when every chunk has its new vector.
CREATE TABLE rag_tenant_index (
    tenant_id     text        NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), ''),
    model         text        NOT NULL,
    target_model  text,
    requested_at  timestamptz,
    completed_at  timestamptz,
    last_error    text        NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id),
    CHECK (target_model IS NULL OR target_model <> model)
);

-- Existing tenants keep the model most of their chunks have.
INSERT INTO rag_tenant_index (tenant_id, model)
    SELECT DISTINCT ON (tenant_id) tenant_id, embedding_model
    FROM (SELECT tenant_id, embedding_model, count(*) AS n FROM rag_chunks GROUP BY 1, 2) AS x
    ORDER BY tenant_id, n DESC, embedding_model;

ALTER TABLE rag_chunks ADD COLUMN next_model text, ADD COLUMN next_embedding vector;
ALTER TABLE rag_chunks ALTER COLUMN next_embedding SET STORAGE MAIN;
CREATE INDEX rag_chunks_reembed ON rag_chunks (tenant_id, chunk_id) WHERE next_model IS NULL;

-- Above 2000 dimensions pgvector cannot HNSW-index `vector`; half precision (`halfvec`, pgvector >= 0.7)
-- indexes up to 4000. The column keeps full precision; only the index (and the query's cast) is halfvec.
DO $$
BEGIN
    IF string_to_array((SELECT extversion FROM pg_extension WHERE extname = 'vector'), '.')::int[] >= ARRAY[0, 7] THEN
        EXECUTE 'CREATE INDEX rag_chunks_hnsw_voyage35lite_2048 ON rag_chunks USING hnsw '
                '((embedding::halfvec(2048)) halfvec_cosine_ops) WHERE embedding_model = ''voyage-3.5-lite@2048''';
        EXECUTE 'CREATE INDEX rag_chunks_hnsw_voyage35_2048 ON rag_chunks USING hnsw '
                '((embedding::halfvec(2048)) halfvec_cosine_ops) WHERE embedding_model = ''voyage-3.5@2048''';
    END IF;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rag_term_df', 'rag_tenant_index'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = NULLIF(current_setting(''app.current_tenant_id'', true), '''')) '
            'WITH CHECK (tenant_id = NULLIF(current_setting(''app.current_tenant_id'', true), ''''))', t);
    END LOOP;
END
$$;

-- Which tenants have a model change in progress, so the re-embedder resumes them after a restart.
-- Tenant ids only (no content): the one table without row-level security, as the service serves every
-- tenant anyway and this is how it finds work it was asked to do.
CREATE TABLE rag_reembed_queue (
    tenant_id    text        NOT NULL PRIMARY KEY CHECK (tenant_id <> ''),
    requested_at timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE, DELETE ON rag_term_df, rag_tenant_index TO @app_role@;
GRANT SELECT, INSERT, DELETE ON rag_reembed_queue TO @app_role@;
