-- rag 0003: less work per ingested chunk.
--
-- The GIN index on tsv served only the plainto_tsquery/ts_rank_cd baseline that bench/rag measures; BM25 reads
-- rag_postings. Every production insert paid for it: the bench builds it in its own database now.
DROP INDEX IF EXISTS rag_chunks_tsv;

-- tsv and lex_len were two generated columns, each running to_tsvector over the chunk: the insert now
-- computes the tsvector once and stores both (existing values are kept; DROP EXPRESSION does not rewrite).
ALTER TABLE rag_chunks ALTER COLUMN lex_len DROP EXPRESSION;
ALTER TABLE rag_chunks ALTER COLUMN tsv DROP EXPRESSION;
ALTER TABLE rag_chunks ALTER COLUMN tsv SET NOT NULL;
ALTER TABLE rag_chunks ALTER COLUMN lex_len SET NOT NULL;
