-- Billing integrity (issue 13): budgets that fail closed, conflicting duplicates, cached tokens, and ingestion
-- of a whole stream batch in ONE transaction whatever the number of tenants.

-- monthly_budget_usd: > 0 a hard cap, 0 suspends the tenant, -1 means no cap. Rows written under the old rule
-- (0 meant "no budget") keep their meaning. FORCE RLS applies to the owner too: lifted for this one UPDATE.
ALTER TABLE tenants DROP CONSTRAINT tenants_monthly_budget_usd_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_monthly_budget_usd_check
    CHECK (monthly_budget_usd = -1 OR monthly_budget_usd >= 0);
ALTER TABLE tenants ALTER COLUMN monthly_budget_usd SET DEFAULT -1;
ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY;
ALTER TABLE tenants DISABLE ROW LEVEL SECURITY;
UPDATE tenants SET monthly_budget_usd = -1 WHERE monthly_budget_usd = 0;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;

-- Of input_tokens, those served from the provider's prompt cache (priced at the cached price).
ALTER TABLE cost_ledger ADD COLUMN cached_input_tokens bigint NOT NULL DEFAULT 0
    CHECK (cached_input_tokens >= 0 AND cached_input_tokens <= input_tokens);
-- SHA-256 of the event's canonical JSON: the same event_id with another payload is a conflict (dead-lettered),
-- not a duplicate. NULL for rows written before this migration (treated as duplicates).
ALTER TABLE cost_ledger ADD COLUMN payload_sha256 text;

-- One stream batch, every tenant, one transaction, one round trip. Row-level security stays in force: the
-- function is SECURITY INVOKER (it runs as the app role, which has no BYPASSRLS), and before touching a
-- tenant's rows it sets app.current_tenant_id to that tenant (transaction-local), exactly as
-- frugal.common.db.tenant_transaction does; every INSERT is checked by the tables' policies against it.
-- The arrays are parallel, sorted by (tenant, event_id): one lock order for every writer.
-- Result rows: (tenant, event_id, status, budget inputs). status:
--   'inserted'        written now;
--   'seen'            the event_id is visible to this tenant after the insert (payload_sha256 returned in
--                     r_detail: the caller tells duplicates from conflicts, ignoring rows it just inserted);
--   'unknown_tenant'  the tenant is not registered (nothing written for it);
--   'budget'          the tenant's month-to-date budget inputs after the batch.
-- An event_id neither inserted nor seen belongs to another tenant (invisible under RLS): a collision.
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
DECLARE
    n  int := coalesce(cardinality(p_tenant), 0);
    lo int := 1;
    hi int;
    t  text;
BEGIN
    WHILE lo <= n LOOP
        t := p_tenant[lo];
        hi := lo;
        WHILE hi < n AND p_tenant[hi + 1] = t LOOP
            hi := hi + 1;
        END LOOP;
        PERFORM set_config('app.current_tenant_id', t, true);
        IF NOT EXISTS (SELECT 1 FROM public.tenants x WHERE x.tenant_id = t) THEN
            RETURN QUERY SELECT t, NULL::text, 'unknown_tenant'::text, NULL::text, NULL::float8, NULL::float8,
                                NULL::float8, NULL::float8, NULL::float8;
        ELSE
            RETURN QUERY
            WITH ins AS (
                INSERT INTO public.cost_ledger AS l (
                    event_id, tenant_id, session_id, request_id, service, kind, provider, model, tier,
                    input_tokens, cached_input_tokens, output_tokens, audio_seconds, characters, images, requests,
                    estimated, offline, cost_usd, baseline_cost_usd, covered_seconds, frames_considered,
                    occurred_at, stream_id, catalog_version, attributes, payload_sha256)
                SELECT u.event_id, t, u.session_id, u.request_id, u.service, u.kind, u.provider, u.model, u.tier,
                       u.input_tokens, u.cached_input_tokens, u.output_tokens, u.audio_seconds, u.characters,
                       u.images, u.requests, u.estimated, u.offline, u.cost_usd, u.baseline_cost_usd,
                       u.covered_seconds, u.frames_considered, u.occurred_at, u.stream_id, p_catalog_version,
                       u.attributes::jsonb, u.payload_sha256
                  FROM unnest(p_event_id[lo:hi], p_session_id[lo:hi], p_request_id[lo:hi], p_service[lo:hi],
                              p_kind[lo:hi], p_provider[lo:hi], p_model[lo:hi], p_tier[lo:hi],
                              p_input_tokens[lo:hi], p_cached_input_tokens[lo:hi], p_output_tokens[lo:hi],
                              p_audio_seconds[lo:hi], p_characters[lo:hi], p_images[lo:hi], p_requests[lo:hi],
                              p_estimated[lo:hi], p_offline[lo:hi], p_cost_usd[lo:hi], p_baseline_cost_usd[lo:hi],
                              p_covered_seconds[lo:hi], p_frames_considered[lo:hi], p_occurred_at[lo:hi],
                              p_stream_id[lo:hi], p_attributes[lo:hi], p_payload_sha256[lo:hi])
                       AS u(event_id, session_id, request_id, service, kind, provider, model, tier,
                            input_tokens, cached_input_tokens, output_tokens, audio_seconds, characters, images,
                            requests, estimated, offline, cost_usd, baseline_cost_usd, covered_seconds,
                            frames_considered, occurred_at, stream_id, attributes, payload_sha256)
                 ORDER BY u.event_id
                ON CONFLICT (event_id) DO NOTHING
                RETURNING l.event_id, l.cost_usd, l.offline, l.occurred_at
            ), per_month AS (
                SELECT date_trunc('month', i.occurred_at AT TIME ZONE 'UTC')::date AS month,
                       coalesce(sum(i.cost_usd) FILTER (WHERE NOT i.offline), 0) AS online_usd,
                       coalesce(sum(i.cost_usd) FILTER (WHERE i.offline), 0) AS offline_usd,
                       count(*) AS events
                  FROM ins i GROUP BY 1
            ), rollup AS (
                INSERT INTO public.tenant_monthly_spend AS s (tenant_id, month, online_usd, offline_usd, events)
                SELECT t, pm.month, pm.online_usd, pm.offline_usd, pm.events FROM per_month pm ORDER BY pm.month
                ON CONFLICT (tenant_id, month) DO UPDATE SET
                    online_usd = s.online_usd + EXCLUDED.online_usd,
                    offline_usd = s.offline_usd + EXCLUDED.offline_usd,
                    events = s.events + EXCLUDED.events,
                    updated_at = now()
            )
            SELECT t, i.event_id, 'inserted'::text, NULL::text, NULL::float8, NULL::float8, NULL::float8,
                   NULL::float8, NULL::float8
              FROM ins i;
            -- A new statement, a new snapshot: sees rows committed meanwhile by a concurrent consumer.
            RETURN QUERY
            SELECT t, l.event_id, 'seen'::text, l.payload_sha256, NULL::float8, NULL::float8, NULL::float8,
                   NULL::float8, NULL::float8
              FROM public.cost_ledger l
             WHERE l.event_id = ANY (p_event_id[lo:hi]);
            RETURN QUERY
            SELECT t, NULL::text, 'budget'::text, NULL::text, x.monthly_budget_usd, x.downgrade_at, x.refuse_at,
                   coalesce(s.online_usd, 0)::float8, coalesce(s.offline_usd, 0)::float8
              FROM public.tenants x
              LEFT JOIN public.tenant_monthly_spend s
                     ON s.tenant_id = x.tenant_id
                    AND s.month = date_trunc('month', p_now AT TIME ZONE 'UTC')::date
             WHERE x.tenant_id = t;
        END IF;
        lo := hi + 1;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION billing_ingest_batch(text, timestamptz, text[], text[], text[], text[], text[], text[],
    text[], text[], text[], int8[], int8[], int8[], float8[], int8[], int8[], int8[], bool[], bool[], numeric[],
    numeric[], float8[], int8[], timestamptz[], text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing_ingest_batch(text, timestamptz, text[], text[], text[], text[], text[], text[],
    text[], text[], text[], int8[], int8[], int8[], float8[], int8[], int8[], int8[], bool[], bool[], numeric[],
    numeric[], float8[], int8[], timestamptz[], text[], text[], text[]) TO @app_role@;
