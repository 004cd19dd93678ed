-- Ledger ingestion at 500 tenants per batch (issue 13, throughput): the same transaction and the same RLS
-- design as 0002, with per-row costs that do not grow with the number of tenants in the batch.
--
-- 1. The ingest policies test membership in a JSON object whose keys are the batch's tenants
--    (app.ingest_tenants = '{"acme": 1, "beta": 1}'): `jsonb ? text` on an object is a binary search, where
--    0002's `tenant_id = ANY (array)` compared every row with every tenant of the batch (2,000 rows x 500
--    tenants: a million string comparisons per statement, per policy). The object is cast once per statement
--    (an InitPlan: the scalar subquery). Unset or empty: NULL, nothing visible, nothing writable. The app role
--    still has no BYPASSRLS and gains nothing it did not have (it could already set app.current_tenant_id to
--    any tenant).
-- 2. The batch arrives as one text per column (values joined by U+001F, each preceded by it; U+001E alone is
--    NULL): a driver encodes 26 strings instead of 52,000 array elements, and the server splits and casts them
--    in C. The consumer refuses these two control characters in every text value (dead letter "invalid"), and
--    the function checks that every column has exactly p_n values (else a data_exception: nothing written).
--    Money is the text Python's repr writes, cast to numeric: exactly the digits the producer meant.
-- 3. billing_ingest_batch returns what the caller cannot infer: the ids NOT inserted (with the stored payload
--    hash when the id is visible, i.e. this tenant's), the unknown tenants and the budget inputs. Every event
--    of a known tenant not listed was inserted.
-- 0002's function is dropped: during a rolling update, a billing of the previous version fails its batches
-- (a database error: the entries stay pending, nothing is lost) until it is replaced.

DROP FUNCTION billing_ingest_batch(text, timestamptz, text[], text[], text[], text[], text[], text[], text[],
    text[], text[], int8[], int8[], int8[], float8[], int8[], int8[], int8[], bool[], bool[], numeric[], numeric[],
    float8[], int8[], timestamptz[], text[], text[], text[]);

ALTER POLICY ledger_ingest ON cost_ledger
    USING ((SELECT NULLIF(current_setting('app.ingest_tenants', true), '')::jsonb) ? tenant_id)
    WITH CHECK ((SELECT NULLIF(current_setting('app.ingest_tenants', true), '')::jsonb) ? tenant_id);
ALTER POLICY ledger_ingest ON tenant_monthly_spend
    USING ((SELECT NULLIF(current_setting('app.ingest_tenants', true), '')::jsonb) ? tenant_id)
    WITH CHECK ((SELECT NULLIF(current_setting('app.ingest_tenants', true), '')::jsonb) ? tenant_id);
ALTER POLICY ledger_ingest_read ON tenants
    USING ((SELECT NULLIF(current_setting('app.ingest_tenants', true), '')::jsonb) ? tenant_id);

CREATE FUNCTION billing_split(p_joined text, p_n int) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v text[] := (string_to_array(p_joined, E'\x1f', E'\x1e'))[2:];
BEGIN
    IF p_joined IS NULL OR coalesce(cardinality(v), 0) <> p_n THEN
        RAISE EXCEPTION 'billing_ingest_batch: a column holds % values, not %', coalesce(cardinality(v), 0), p_n
            USING ERRCODE = 'data_exception';
    END IF;
    RETURN v;
END
$$;

-- The columns are parallel and sorted by event_id (one lock order for every writer). Result rows
-- (r_status, r_tenant, r_event_id, r_detail, budget inputs):
--   'seen'            the event_id was not inserted and is in the ledger for one of the batch's tenants
--                     (r_tenant: the stored row's; r_detail: its payload_sha256): a replay or a conflict;
--   'missing'         the event_id was not inserted and is not visible: another tenant's id (a collision);
--   'unknown_tenant'  the tenant is not registered (none of its events written, none listed otherwise);
--   'budget'          a batch tenant's month-to-date budget inputs after the batch.
CREATE FUNCTION billing_ingest_batch(
    p_catalog_version text, p_now timestamptz, p_n int,
    p_tenant text, p_event_id text, p_session_id text, p_request_id text, p_service text,
    p_kind text, p_provider text, p_model text, p_tier text, p_input_tokens text,
    p_cached_input_tokens text, p_output_tokens text, p_audio_seconds text, p_characters text,
    p_images text, p_requests text, p_estimated text, p_offline text, p_cost_usd text,
    p_baseline_cost_usd text, p_covered_seconds text, p_frames_considered text,
    p_occurred_at text, p_stream_id text, p_attributes text, p_payload_sha256 text)
RETURNS TABLE (r_status text, r_tenant text, r_event_id text, r_detail text, r_budget float8,
               r_downgrade float8, r_refuse float8, r_online float8, r_offline float8)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a_tenant text[] := public.billing_split(p_tenant, p_n);
    a_event_id text[] := public.billing_split(p_event_id, p_n);
    v_batch  text[] := ARRAY(SELECT DISTINCT unnest(a_tenant));
    v_known  text[];
    v_ins_id text[];
BEGIN
    PERFORM set_config('app.ingest_tenants', (SELECT jsonb_object_agg(b.t, 1) FROM unnest(v_batch) AS b(t))::text,
                       true);
    v_known := ARRAY(SELECT x.tenant_id FROM public.tenants x JOIN unnest(v_batch) AS b(t) ON b.t = x.tenant_id);
    RETURN QUERY SELECT 'unknown_tenant'::text, b.t, NULL::text, NULL::text, NULL::float8, NULL::float8,
                        NULL::float8, NULL::float8, NULL::float8
                   FROM (SELECT unnest(v_batch) EXCEPT SELECT unnest(v_known)) AS b(t);
    WITH u AS (
        SELECT * FROM unnest(
            a_tenant, a_event_id, public.billing_split(p_session_id, p_n), public.billing_split(p_request_id, p_n),
            public.billing_split(p_service, p_n), public.billing_split(p_kind, p_n),
            public.billing_split(p_provider, p_n), public.billing_split(p_model, p_n),
            public.billing_split(p_tier, p_n), public.billing_split(p_input_tokens, p_n)::int8[],
            public.billing_split(p_cached_input_tokens, p_n)::int8[],
            public.billing_split(p_output_tokens, p_n)::int8[],
            public.billing_split(p_audio_seconds, p_n)::float8[], public.billing_split(p_characters, p_n)::int8[],
            public.billing_split(p_images, p_n)::int8[], public.billing_split(p_requests, p_n)::int8[],
            public.billing_split(p_estimated, p_n)::bool[], public.billing_split(p_offline, p_n)::bool[],
            public.billing_split(p_cost_usd, p_n)::numeric[], public.billing_split(p_baseline_cost_usd, p_n)::numeric[],
            public.billing_split(p_covered_seconds, p_n)::float8[],
            public.billing_split(p_frames_considered, p_n)::int8[],
            public.billing_split(p_occurred_at, p_n)::timestamptz[], public.billing_split(p_stream_id, p_n),
            public.billing_split(p_attributes, p_n), public.billing_split(p_payload_sha256, p_n))
               AS u(tenant_id, event_id, session_id, request_id, service, kind, provider, model, tier,
                    input_tokens, cached_input_tokens, output_tokens, audio_seconds, characters, images,
                    requests, estimated, offline, cost_usd, baseline_cost_usd, covered_seconds,
                    frames_considered, occurred_at, stream_id, attributes, payload_sha256)
    ), ins AS (
        INSERT INTO public.cost_ledger AS l (
            event_id, tenant_id, session_id, request_id, service, kind, provider, model, tier,
            input_tokens, cached_input_tokens, output_tokens, audio_seconds, characters, images, requests,
            estimated, offline, cost_usd, baseline_cost_usd, covered_seconds, frames_considered,
            occurred_at, stream_id, catalog_version, attributes, payload_sha256)
        SELECT u.event_id, u.tenant_id, u.session_id, u.request_id, u.service, u.kind, u.provider, u.model,
               u.tier, u.input_tokens, u.cached_input_tokens, u.output_tokens, u.audio_seconds, u.characters,
               u.images, u.requests, u.estimated, u.offline, u.cost_usd,
               u.baseline_cost_usd, u.covered_seconds, u.frames_considered, u.occurred_at,
               u.stream_id, p_catalog_version, u.attributes::jsonb, u.payload_sha256
          FROM u
         -- Unknown tenants' rows are left out here (not by the FK): one bad tenant does not fail the batch.
         -- IN (subquery), not = ANY (array): a hashed lookup, not a scan of the tenant list per row.
         WHERE u.tenant_id IN (SELECT unnest(v_known))
         ORDER BY u.event_id  -- one lock order for every writer: concurrent consumers cannot deadlock here
        ON CONFLICT (event_id) DO NOTHING
        RETURNING l.tenant_id, l.event_id, l.cost_usd, l.offline, l.occurred_at
    ), per_month AS (
        SELECT i.tenant_id, date_trunc('month', i.occurred_at AT TIME ZONE 'UTC')::date AS month,
               coalesce(sum(i.cost_usd) FILTER (WHERE NOT i.offline), 0) AS online_usd,
               coalesce(sum(i.cost_usd) FILTER (WHERE i.offline), 0) AS offline_usd,
               count(*) AS events
          FROM ins i GROUP BY 1, 2
    ), rollup AS (
        -- One row per (tenant, month) of the batch, in one lock order.
        INSERT INTO public.tenant_monthly_spend AS s (tenant_id, month, online_usd, offline_usd, events)
        SELECT pm.tenant_id, pm.month, pm.online_usd, pm.offline_usd, pm.events FROM per_month pm
         ORDER BY pm.tenant_id, pm.month
        ON CONFLICT (tenant_id, month) DO UPDATE SET
            online_usd = s.online_usd + EXCLUDED.online_usd,
            offline_usd = s.offline_usd + EXCLUDED.offline_usd,
            events = s.events + EXCLUDED.events,
            updated_at = now()
    )
    SELECT coalesce(array_agg(i.event_id), '{}') INTO v_ins_id FROM ins i;
    -- The ids of known tenants not inserted (replays, conflicts, other tenants' ids), probed by primary key
    -- (OFFSET 0 keeps the lateral a per-id probe). A new statement, a new snapshot: it sees rows committed
    -- meanwhile by a concurrent consumer (which ON CONFLICT waited for).
    RETURN QUERY
    SELECT CASE WHEN s.event_id IS NULL THEN 'missing' ELSE 'seen' END, s.tenant_id, e.id, s.payload_sha256,
           NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::float8
      FROM (SELECT x.id FROM unnest(a_event_id, a_tenant) AS x(id, t) WHERE x.t IN (SELECT unnest(v_known))
            EXCEPT SELECT unnest(v_ins_id)) AS e(id)
      LEFT JOIN LATERAL (SELECT l.tenant_id, l.event_id, l.payload_sha256 FROM public.cost_ledger l
                          WHERE l.event_id = e.id OFFSET 0) AS s ON true;
    RETURN QUERY
    SELECT 'budget'::text, x.tenant_id, NULL::text, NULL::text, x.monthly_budget_usd, x.downgrade_at,
           x.refuse_at, coalesce(s.online_usd, 0)::float8, coalesce(s.offline_usd, 0)::float8
      FROM public.tenants x
      JOIN unnest(v_known) AS k(t) ON k.t = x.tenant_id
      LEFT JOIN public.tenant_monthly_spend s
             ON s.tenant_id = x.tenant_id AND s.month = date_trunc('month', p_now AT TIME ZONE 'UTC')::date;
    PERFORM set_config('app.ingest_tenants', '', true);
END
$$;

REVOKE ALL ON FUNCTION billing_split(text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing_split(text, int) TO @app_role@;
REVOKE ALL ON FUNCTION billing_ingest_batch(text, timestamptz, int, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing_ingest_batch(text, timestamptz, int, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, text) TO @app_role@;
