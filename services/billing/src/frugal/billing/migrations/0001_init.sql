-- Billing: the tenant registry, tenant policies, the cost ledger and the month-to-date spend roll-up.
--
-- Row-level security design (see services/billing/README.md, "RLS design"):
-- * tenants, cost_ledger, tenant_monthly_spend: one tenant per row, ENABLE + FORCE RLS, the policy compares
--   tenant_id with current_setting('app.current_tenant_id') as text. The app role reads and writes them only
--   through frugal.common.db.tenant_transaction.
-- * tenant_registry holds ids only (no names, budgets or instructions). Resolving a room name and refusing
--   conflicting ids are cross-tenant by nature, so the app role gets NO privilege on this table; it calls three
--   narrow SECURITY DEFINER functions instead: register the current tenant's id (conflict-checked under an
--   advisory lock), resolve a list of candidate ids, list the ids (for re-publishing state to Redis).

CREATE TABLE tenant_registry (
    tenant_id     text COLLATE "C" PRIMARY KEY
                  CHECK (tenant_id ~ '^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9-])?$' AND strpos(tenant_id, '__') = 0),
    registered_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenant_registry ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_registry FORCE ROW LEVEL SECURITY;
-- Only the owner (the role running this migration, which also owns the SECURITY DEFINER functions) has a
-- policy; the app role has neither a policy nor a grant.
DO $$
BEGIN
    EXECUTE format('CREATE POLICY registry_owner_only ON tenant_registry TO %I USING (true) WITH CHECK (true)',
                   current_user);
END
$$;

CREATE TABLE tenants (
    tenant_id              text COLLATE "C" PRIMARY KEY REFERENCES tenant_registry (tenant_id),
    display_name           text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    plan                   text NOT NULL CHECK (plan ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    monthly_budget_usd     double precision NOT NULL DEFAULT 0 CHECK (monthly_budget_usd >= 0),
    requests_per_minute    integer NOT NULL DEFAULT 0 CHECK (requests_per_minute >= 0),
    tokens_per_minute      integer NOT NULL DEFAULT 0 CHECK (tokens_per_minute >= 0),
    -- Target tier mix: all three NULL (router default) or all set, each in [0, 1], summing to 1.
    mix_lite               double precision CHECK (mix_lite BETWEEN 0 AND 1),
    mix_standard           double precision CHECK (mix_standard BETWEEN 0 AND 1),
    mix_premium            double precision CHECK (mix_premium BETWEEN 0 AND 1),
    -- frugal.api.common.v1.Tier numbers: 0 unspecified, 1 lite, 2 standard, 3 premium.
    max_tier               smallint NOT NULL DEFAULT 0 CHECK (max_tier BETWEEN 0 AND 3),
    pinned_tier            smallint NOT NULL DEFAULT 0 CHECK (pinned_tier BETWEEN 0 AND 3),
    instructions           text NOT NULL DEFAULT '',
    knowledge_base_enabled boolean NOT NULL DEFAULT false,
    downgrade_at           double precision NOT NULL DEFAULT 0 CHECK (downgrade_at BETWEEN 0 AND 10),
    refuse_at              double precision NOT NULL DEFAULT 0 CHECK (refuse_at BETWEEN 0 AND 10),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK ((mix_lite IS NULL) = (mix_standard IS NULL) AND (mix_standard IS NULL) = (mix_premium IS NULL)),
    CHECK (mix_lite IS NULL OR abs(mix_lite + mix_standard + mix_premium - 1) <= 1e-6)
);
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));

-- The ledger: one row per cost event, ever. event_id is the producer's idempotency key; the primary key
-- makes a second write of the same event a no-op (INSERT ... ON CONFLICT DO NOTHING). Append-only for the
-- app role: it has no UPDATE or DELETE privilege.
CREATE TABLE cost_ledger (
    event_id          text COLLATE "C" PRIMARY KEY,
    tenant_id         text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    session_id        text,
    request_id        text,
    service           text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('llm', 'vision', 'embedding', 'rerank', 'stt', 'tts')),
    provider          text NOT NULL,
    model             text NOT NULL,
    tier              text CHECK (tier IN ('lite', 'standard', 'premium')),
    input_tokens      bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens     bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    audio_seconds     double precision NOT NULL DEFAULT 0 CHECK (audio_seconds >= 0),
    characters        bigint NOT NULL DEFAULT 0 CHECK (characters >= 0),
    images            bigint NOT NULL DEFAULT 0 CHECK (images >= 0),
    requests          bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    estimated         boolean NOT NULL DEFAULT false,
    offline           boolean NOT NULL DEFAULT false,
    cost_usd          numeric(24, 12) NOT NULL CHECK (cost_usd >= 0),
    -- What the same traffic would have cost without the optimisation (frugal.common.cost_events.baseline_cost),
    -- priced at ingestion with the catalog named in catalog_version.
    baseline_cost_usd numeric(24, 12) NOT NULL CHECK (baseline_cost_usd >= 0),
    covered_seconds   double precision CHECK (covered_seconds >= 0),
    frames_considered bigint CHECK (frames_considered >= 0),
    occurred_at       timestamptz NOT NULL,
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    stream_id         text NOT NULL,
    catalog_version   text NOT NULL,
    attributes        jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX cost_ledger_tenant_time ON cost_ledger (tenant_id, occurred_at);
ALTER TABLE cost_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE cost_ledger FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON cost_ledger
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));

-- Month-to-date spend per tenant, maintained in the same transaction as the ledger rows it sums, so the
-- budget state costs one primary-key read. online_usd: events served by real providers; offline_usd: events
-- of offline stand-ins (no money moved; counted toward budgets only when BUDGET_COUNT_OFFLINE=true).
CREATE TABLE tenant_monthly_spend (
    tenant_id   text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    month       date NOT NULL CHECK (extract(day FROM month) = 1),
    online_usd  numeric(24, 12) NOT NULL DEFAULT 0,
    offline_usd numeric(24, 12) NOT NULL DEFAULT 0,
    events      bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, month)
);
ALTER TABLE tenant_monthly_spend ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_monthly_spend FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_monthly_spend
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));

-- Registers the CURRENT tenant's id (app.current_tenant_id must equal p_tenant_id). Returns NULL when the id
-- is registered (now or before), or the registered id it conflicts with: one is an underscore-delimited
-- prefix of the other ('org' vs 'org_abc'), which would make room names ambiguous. A transaction-scoped
-- advisory lock serialises registrations, and the conflict query runs after the lock is granted (a fresh
-- READ COMMITTED snapshot), so two concurrent registrations of 'org' and 'org_abc' cannot both succeed.
CREATE FUNCTION billing_register_tenant(p_tenant_id text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_parts    text[];
    v_prefixes text[] := '{}';
    v_conflict text;
BEGIN
    IF p_tenant_id IS NULL OR p_tenant_id IS DISTINCT FROM current_setting('app.current_tenant_id', true) THEN
        RAISE EXCEPTION 'billing_register_tenant: % is not the current tenant', p_tenant_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'billing_register_tenant needs READ COMMITTED (a fresh snapshot after the lock)'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    PERFORM pg_advisory_xact_lock(1112100940);  -- 'BILL'
    IF EXISTS (SELECT 1 FROM public.tenant_registry r WHERE r.tenant_id = p_tenant_id) THEN
        RETURN NULL;
    END IF;
    v_parts := string_to_array(p_tenant_id, '_');
    FOR i IN 1 .. cardinality(v_parts) - 1 LOOP
        v_prefixes := v_prefixes || array_to_string(v_parts[1:i], '_');
    END LOOP;
    SELECT r.tenant_id INTO v_conflict
      FROM public.tenant_registry r
     WHERE r.tenant_id = ANY (v_prefixes)
        -- ids starting with p_tenant_id || '_' ('`' is the code point after '_'; byte order in COLLATE "C")
        OR (r.tenant_id >= (p_tenant_id || '_') AND r.tenant_id < (p_tenant_id || '`'))
     ORDER BY r.tenant_id
     LIMIT 1;
    IF v_conflict IS NOT NULL THEN
        RETURN v_conflict;
    END IF;
    INSERT INTO public.tenant_registry (tenant_id) VALUES (p_tenant_id);
    RETURN NULL;
END
$$;

-- Which of these candidate ids are registered (at most one can be: the registry never holds conflicting
-- ids). Membership only: no enumeration, no policy data.
CREATE FUNCTION billing_resolve_tenant(p_candidates text[]) RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.tenant_id FROM public.tenant_registry r
     WHERE cardinality(p_candidates) <= 64 AND r.tenant_id = ANY (p_candidates)
$$;

-- Every registered id, for the periodic re-publication of policies and budget states to Redis.
CREATE FUNCTION billing_list_tenant_ids() RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.tenant_id FROM public.tenant_registry r ORDER BY r.tenant_id
$$;

REVOKE ALL ON FUNCTION billing_register_tenant(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION billing_resolve_tenant(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION billing_list_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing_register_tenant(text) TO @app_role@;
GRANT EXECUTE ON FUNCTION billing_resolve_tenant(text[]) TO @app_role@;
GRANT EXECUTE ON FUNCTION billing_list_tenant_ids() TO @app_role@;

GRANT SELECT, INSERT, UPDATE ON tenants TO @app_role@;
GRANT SELECT, INSERT ON cost_ledger TO @app_role@;
GRANT SELECT, INSERT, UPDATE ON tenant_monthly_spend TO @app_role@;
