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

-- One stream batch, every tenant: ONE transaction, one round trip, a constant number of statements.
--
-- RLS design of this path (a billing-owned path, still RLS-correct): the tables keep ENABLE + FORCE RLS and
-- the app role still has no BYPASSRLS. Besides the per-tenant policies (app.current_tenant_id), the ledger
-- tables get an "ingest" policy: rows are visible/writable when their tenant is in app.ingest_tenant_ids, a
-- transaction-local list that billing_ingest_batch (SECURITY INVOKER: it runs as the app role) sets to the
-- tenants of the batch it writes, and clears before returning. A transaction that sets neither setting sees
-- and writes nothing, as before. This grants the app role nothing it did not have: it could already set
-- app.current_tenant_id to any tenant; RLS here guards against code that forgets the tenant, not against the
-- role itself. Every row is still checked against the batch's declared tenants by the policies, and rows of
-- tenants outside the list (another tenant's event_id) stay invisible: such ids are reported as collisions.
-- The list is read once per statement (an InitPlan: the scalar subquery), not once per row.
CREATE POLICY ledger_ingest ON cost_ledger FOR ALL TO @app_role@
    USING (tenant_id = ANY ((SELECT string_to_array(NULLIF(current_setting('app.ingest_tenant_ids', true), ''), ','))::text[]))
    WITH CHECK (tenant_id = ANY ((SELECT string_to_array(NULLIF(current_setting('app.ingest_tenant_ids', true), ''), ','))::text[]));
CREATE POLICY ledger_ingest ON tenant_monthly_spend FOR ALL TO @app_role@
    USING (tenant_id = ANY ((SELECT string_to_array(NULLIF(current_setting('app.ingest_tenant_ids', true), ''), ','))::text[]))
    WITH CHECK (tenant_id = ANY ((SELECT string_to_array(NULLIF(current_setting('app.ingest_tenant_ids', true), ''), ','))::text[]));
CREATE POLICY ledger_ingest_read ON tenants FOR SELECT TO @app_role@
    USING (tenant_id = ANY ((SELECT string_to_array(NULLIF(current_setting('app.ingest_tenant_ids', true), ''), ','))::text[]));

-- The arrays are parallel. Result rows: (tenant, event_id, status, detail, budget inputs). status:
--   'inserted'        written now;
--   'seen'            the event_id is visible in the ledger after the insert (payload_sha256 in r_detail: the
--                     caller tells duplicates from conflicts, ignoring the rows it just inserted);
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
-- A generic plan cached from small batches (one tenant) is quadratic on a 500-tenant batch: plan each call
-- for its own arrays (a few ms per batch).
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_batch  text[] := ARRAY(SELECT DISTINCT unnest(p_tenant));
    v_known  text[];
    v_ins_t  text[];
    v_ins_id text[];
BEGIN
    PERFORM set_config('app.ingest_tenant_ids', array_to_string(v_batch, ','), true);
    v_known := ARRAY(SELECT x.tenant_id FROM public.tenants x WHERE x.tenant_id = ANY (v_batch));
    RETURN QUERY SELECT b.t, NULL::text, 'unknown_tenant'::text, NULL::text, NULL::float8, NULL::float8,
                        NULL::float8, NULL::float8, NULL::float8
                   FROM unnest(v_batch) AS b(t) WHERE NOT (b.t = ANY (v_known));
    WITH u AS (
        SELECT * FROM unnest(p_tenant, p_event_id, p_session_id, p_request_id, p_service, p_kind, p_provider,
                             p_model, p_tier, p_input_tokens, p_cached_input_tokens, p_output_tokens,
                             p_audio_seconds, p_characters, p_images, p_requests, p_estimated, p_offline,
                             p_cost_usd, p_baseline_cost_usd, p_covered_seconds, p_frames_considered,
                             p_occurred_at, p_stream_id, p_attributes, p_payload_sha256)
               AS u(tenant_id, event_id, session_id, request_id, service, kind, provider, model, tier,
                    input_tokens, cached_input_tokens, output_tokens, audio_seconds, characters, images,
                    requests, estimated, offline, cost_usd, baseline_cost_usd, covered_seconds,
                    frames_considered, occurred_at, stream_id, attributes, payload_sha256)
         WHERE u.tenant_id = ANY (v_known)
    ), ins AS (
        INSERT INTO public.cost_ledger AS l (
            event_id, tenant_id, session_id, request_id, service, kind, provider, model, tier,
            input_tokens, cached_input_tokens, output_tokens, audio_seconds, characters, images, requests,
            estimated, offline, cost_usd, baseline_cost_usd, covered_seconds, frames_considered,
            occurred_at, stream_id, catalog_version, attributes, payload_sha256)
        SELECT u.event_id, u.tenant_id, u.session_id, u.request_id, u.service, u.kind, u.provider, u.model,
               u.tier, u.input_tokens, u.cached_input_tokens, u.output_tokens, u.audio_seconds, u.characters,
               u.images, u.requests, u.estimated, u.offline, u.cost_usd, u.baseline_cost_usd,
               u.covered_seconds, u.frames_considered, u.occurred_at, u.stream_id, p_catalog_version,
               u.attributes::jsonb, u.payload_sha256
          FROM u
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
        INSERT INTO public.tenant_monthly_spend AS s (tenant_id, month, online_usd, offline_usd, events)
        SELECT pm.tenant_id, pm.month, pm.online_usd, pm.offline_usd, pm.events FROM per_month pm
         ORDER BY pm.tenant_id, pm.month
        ON CONFLICT (tenant_id, month) DO UPDATE SET
            online_usd = s.online_usd + EXCLUDED.online_usd,
            offline_usd = s.offline_usd + EXCLUDED.offline_usd,
            events = s.events + EXCLUDED.events,
            updated_at = now()
    )
    SELECT array_agg(i.tenant_id), array_agg(i.event_id) INTO v_ins_t, v_ins_id FROM ins i;
    RETURN QUERY SELECT x.t, x.id, 'inserted'::text, NULL::text, NULL::float8, NULL::float8, NULL::float8,
                        NULL::float8, NULL::float8
                   FROM unnest(v_ins_t, v_ins_id) AS x(t, id);
    -- The ids not inserted (replays, conflicts, other tenants' ids), probed by primary key whatever the size
    -- of the ledger (OFFSET 0 keeps the lateral a per-id probe). A new statement, a new snapshot: it sees rows
    -- committed meanwhile by a concurrent consumer (which ON CONFLICT waited for).
    RETURN QUERY
    SELECT s.tenant_id, s.event_id, 'seen'::text, s.payload_sha256, NULL::float8, NULL::float8, NULL::float8,
           NULL::float8, NULL::float8
      FROM (SELECT unnest(p_event_id) EXCEPT SELECT unnest(v_ins_id)) AS e(id),
           LATERAL (SELECT l.tenant_id, l.event_id, l.payload_sha256 FROM public.cost_ledger l
                     WHERE l.event_id = e.id OFFSET 0) AS s;
    RETURN QUERY
    SELECT x.tenant_id, NULL::text, 'budget'::text, NULL::text, x.monthly_budget_usd, x.downgrade_at,
           x.refuse_at, coalesce(s.online_usd, 0)::float8, coalesce(s.offline_usd, 0)::float8
      FROM public.tenants x
      LEFT JOIN public.tenant_monthly_spend s
             ON s.tenant_id = x.tenant_id AND s.month = date_trunc('month', p_now AT TIME ZONE 'UTC')::date
     WHERE x.tenant_id = ANY (v_known);
    PERFORM set_config('app.ingest_tenant_ids', '', true);
END
$$;

REVOKE ALL ON FUNCTION billing_ingest_batch(text, timestamptz, text[], text[], text[], text[], text[], text[],
    text[], text[], text[], int8[], int8[], int8[], float8[], int8[], int8[], int8[], bool[], bool[], numeric[],
    numeric[], float8[], int8[], timestamptz[], text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing_ingest_batch(text, timestamptz, text[], text[], text[], text[], text[], text[],
    text[], text[], text[], int8[], int8[], int8[], float8[], int8[], int8[], int8[], bool[], bool[], numeric[],
    numeric[], float8[], int8[], timestamptz[], text[], text[], text[]) TO @app_role@;
