-- Rolling updates across 0003: 0003 dropped 0002's billing_ingest_batch (one array per column), so a billing
-- replica of the previous release failed every batch from the moment the new one migrated until it was
-- replaced (nothing lost: the entries stayed pending, but ingestion stalled on the old replicas).
--
-- This restores the previous release's signature and result contract as a thin adapter over 0003's function:
-- the arrays are joined into 0003's column texts (element output text, which casts back to the same value:
-- numeric exactly, float8 shortest-exact, timestamptz in the session's zone), the call is the same single
-- statement with the same RLS (0003 declares the batch's tenants), and the rows are mapped back:
--   0003 'seen', 'unknown_tenant', 'budget'  -> the same status (0002's column order);
--   0003 'missing' (another tenant's id)     -> not listed (0002's caller infers a collision from that);
--   every other event of a known tenant      -> 'inserted', as 0002 listed it.
-- The previous release did not refuse U+001F/U+001E in text values: an event holding one misaligns the
-- columns, and 0003's count check fails that batch whole (a data_exception: nothing written, still pending).
-- Drop this function once no replica of the previous release runs (a later migration).

CREATE FUNCTION billing_join(p anyarray) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN coalesce(cardinality(p), 0) = 0 THEN '' ELSE E'\x1f' || array_to_string(p, E'\x1f', E'\x1e') END
$$;

CREATE FUNCTION billing_ingest_batch(
    p_catalog_version text, p_now timestamptz,
    p_tenant text[], p_event_id text[], p_session_id text[], p_request_id text[], p_service text[],
    p_kind text[], p_provider text[], p_model text[], p_tier text[], p_input_tokens int8[],
    p_cached_input_tokens int8[], p_output_tokens int8[], p_audio_seconds float8[], p_characters int8[],
    p_images int8[], p_requests int8[], p_estimated bool[], p_offline bool[], p_cost_usd numeric[],
    p_baseline_cost_usd numeric[], p_covered_seconds float8[], p_frames_considered int8[],
    p_occurred_at timestamptz[], p_stream_id text[], p_attributes text[], p_payload_sha256 text[])
RETURNS TABLE (r_tenant text, r_event_id text, r_status text, r_detail text, r_budget float8,
               r_downgrade float8, r_refuse float8, r_online float8, r_offline float8)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    WITH r AS MATERIALIZED (
        SELECT * FROM public.billing_ingest_batch(
            p_catalog_version, p_now, coalesce(cardinality(p_event_id), 0),
            public.billing_join(p_tenant), public.billing_join(p_event_id), public.billing_join(p_session_id),
            public.billing_join(p_request_id), public.billing_join(p_service), public.billing_join(p_kind),
            public.billing_join(p_provider), public.billing_join(p_model), public.billing_join(p_tier),
            public.billing_join(p_input_tokens), public.billing_join(p_cached_input_tokens),
            public.billing_join(p_output_tokens), public.billing_join(p_audio_seconds),
            public.billing_join(p_characters), public.billing_join(p_images), public.billing_join(p_requests),
            public.billing_join(p_estimated), public.billing_join(p_offline), public.billing_join(p_cost_usd),
            public.billing_join(p_baseline_cost_usd), public.billing_join(p_covered_seconds),
            public.billing_join(p_frames_considered), public.billing_join(p_occurred_at),
            public.billing_join(p_stream_id), public.billing_join(p_attributes),
            public.billing_join(p_payload_sha256)) AS x
    )
    SELECT r.r_tenant, r.r_event_id, r.r_status, r.r_detail, r.r_budget, r.r_downgrade, r.r_refuse,
           r.r_online, r.r_offline
      FROM r WHERE r.r_status IN ('seen', 'unknown_tenant', 'budget')
    UNION ALL
    SELECT e.t, e.id, 'inserted'::text, NULL::text, NULL::float8, NULL::float8, NULL::float8, NULL::float8,
           NULL::float8
      FROM unnest(p_tenant, p_event_id) AS e(t, id)
     WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.r_status = 'unknown_tenant' AND r.r_tenant = e.t)
       AND NOT EXISTS (SELECT 1 FROM r WHERE r.r_status IN ('seen', 'missing') AND r.r_event_id = e.id);
END
$$;

REVOKE ALL ON FUNCTION billing_join(anyarray) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing_join(anyarray) TO @app_role@;
REVOKE ALL ON FUNCTION billing_ingest_batch(text, timestamptz, text[], text[], text[], text[], text[], text[],
    text[], text[], text[], int8[], int8[], int8[], float8[], int8[], int8[], int8[], bool[], bool[], numeric[],
    numeric[], float8[], int8[], timestamptz[], text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing_ingest_batch(text, timestamptz, text[], text[], text[], text[], text[], text[],
    text[], text[], text[], int8[], int8[], int8[], float8[], int8[], int8[], int8[], bool[], bool[], numeric[],
    numeric[], float8[], int8[], timestamptz[], text[], text[], text[]) TO @app_role@;
