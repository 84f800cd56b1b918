-- Plans for a big tenant (issue 21): the generated policy's InitPlan hides the tenant from the planner, which would
-- plan every tenant as an average one; for a tenant that holds much of a table, the planner is given that tenant's
-- share instead, so a whole-tenant report gets the plan the same query gets with the tenant's id as a literal (a
-- sequential scan), at 30 % and at 90 % of the table. Ordinary tenants keep their index plans, and a prepared
-- statement planned for the big tenant is planned again when the session switches to another one.
SET client_min_messages = warning;
CREATE ROLE regress_big_app LOGIN IN ROLE nile_app;
SELECT count(nile.create_tenant('Big ' || n, ('0b160000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid))
    FROM generate_series(1, 71) n;
CREATE FUNCTION big_tid(n int) RETURNS uuid LANGUAGE sql IMMUTABLE
    AS $$ SELECT ('0b160000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid $$;
-- The scans of a statement's plan (EXPLAIN's other lines differ between majors).
CREATE FUNCTION scans_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
    scans text[] := '{}';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || statement LOOP
        IF line ~ 'Scan (using \S+ )?on ' THEN
            scans := scans || regexp_replace(line, '^\s*(->\s*)?', '');
        END IF;
    END LOOP;
    RETURN array_to_string(scans, ' / ');
END $$;
-- Two layouts of 20 000 rows: tenant 1 holds 90 % (the others 200 rows each), or 30 % (the others 200 each).
CREATE TABLE big90 (tenant_id uuid NOT NULL, id int NOT NULL, payload text NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO big90 SELECT big_tid(1), i, md5(i::text) FROM generate_series(1, 18000) i;
INSERT INTO big90 SELECT big_tid(t), i, md5(t || ':' || i) FROM generate_series(2, 11) t, generate_series(1, 200) i;
CREATE TABLE big30 (LIKE big90 INCLUDING ALL);
INSERT INTO big30 SELECT big_tid(1), i, md5(i::text) FROM generate_series(1, 6000) i;
INSERT INTO big30 SELECT big_tid(t), i, md5(t || ':' || i) FROM generate_series(2, 71) t, generate_series(1, 200) i;
-- The same rows without row-level security, for the literal's plan.
CREATE TABLE big90_plain (LIKE big90 INCLUDING ALL);
SELECT nile.disable_tenancy('big90_plain');
INSERT INTO big90_plain SELECT * FROM big90;
CREATE TABLE big30_plain (LIKE big90 INCLUDING ALL);
SELECT nile.disable_tenancy('big30_plain');
INSERT INTO big30_plain SELECT * FROM big30;
GRANT SELECT ON big90, big30, big90_plain, big30_plain TO regress_big_app;
ANALYZE big90, big30, big90_plain, big30_plain;
SET max_parallel_workers_per_gather = 0;

\c - regress_big_app
SET max_parallel_workers_per_gather = 0;
-- The literal's plans: a sequential scan for tenant 1 at 90 % and at 30 %, an index for a small tenant.
SELECT scans_of($q$SELECT count(*), max(payload) FROM big90_plain WHERE tenant_id = big_tid(1)$q$);
SELECT scans_of($q$SELECT count(*), max(payload) FROM big30_plain WHERE tenant_id = big_tid(1)$q$);
SELECT scans_of($q$SELECT count(*), max(payload) FROM big90_plain WHERE tenant_id = big_tid(2)$q$);
-- The same shapes under the tenant policies.
BEGIN;
SELECT nile.set_tenant(big_tid(1)) IS NOT NULL AS big_tenant;
SELECT scans_of($q$SELECT count(*), max(payload) FROM big90$q$);
SELECT scans_of($q$SELECT count(*), max(payload) FROM big30$q$);
SELECT count(*) FROM big90;
SELECT nile.set_tenant(big_tid(2)) IS NOT NULL AS small_tenant;
SELECT scans_of($q$SELECT count(*), max(payload) FROM big90$q$);
SELECT count(*) FROM big90;
COMMIT;
-- A prepared statement (planned once, then reused) is planned for the big tenant, and again when the session works
-- for another tenant; its rows are always the current tenant's, whatever the plan.
PREPARE report AS SELECT count(*), max(payload) FROM big90;
BEGIN;
SELECT nile.set_tenant(big_tid(1)) IS NOT NULL AS big_tenant;
SELECT scans_of($q$EXECUTE report$q$);
EXECUTE report;
COMMIT;
BEGIN;
SELECT nile.set_tenant(big_tid(1)) IS NOT NULL AS big_tenant_again;
SELECT scans_of($q$EXECUTE report$q$);
SELECT nile.set_tenant(big_tid(3)) IS NOT NULL AS small_tenant;
SELECT scans_of($q$EXECUTE report$q$);
EXECUTE report;
COMMIT;
DEALLOCATE report;

-- A statement with parameters: its generic plan (one plan for any values, which the plan cache keeps once it costs
-- no more than the custom plans made for the values) is made for an average tenant, as Postgres plans
-- `WHERE tenant_id = $1`, and so is kept for the big tenant too; its custom plans see the big tenant. Made for the
-- big tenant, the generic plan's estimate for an unknown key (rows of the big tenant, where an average tenant has
-- at most one) cost it above the custom plans' estimate for a key that is not a common one, and the plan cache
-- planned the statement again at every execution. The keys: 1 to 50 in every tenant, up to 3 000 in the big one.
\c - postgres
CREATE TABLE keys (LIKE big90 INCLUDING ALL);
INSERT INTO keys SELECT big_tid(1), i, md5(i::text) FROM generate_series(1, 3000) i;
INSERT INTO keys SELECT big_tid(t), i, md5(t || ':' || i) FROM generate_series(2, 71) t, generate_series(1, 50) i;
ALTER TABLE keys ALTER COLUMN id SET (n_distinct = 300);
ANALYZE keys;
GRANT SELECT ON keys TO regress_big_app;
\c - regress_big_app
SET max_parallel_workers_per_gather = 0;
PREPARE point(int) AS SELECT payload FROM keys WHERE id = $1;
BEGIN;
SELECT nile.set_tenant(big_tid(1)) IS NOT NULL AS big_tenant;
EXECUTE point(2001) \gset
EXECUTE point(2002) \gset
EXECUTE point(2003) \gset
EXECUTE point(2004) \gset
EXECUTE point(2005) \gset
EXECUTE point(2006) \gset
EXECUTE point(2007) \gset
EXECUTE point(2008) \gset
EXECUTE point(2009) \gset
EXECUTE point(2010) \gset
SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'point';
EXECUTE point(2011);
COMMIT;
DEALLOCATE point;
-- A report with a parameter: a custom plan is made for the big tenant (the sequential scan), the generic plan for an
-- average one.
PREPARE report_from(int) AS SELECT count(*), max(payload) FROM big90 WHERE id >= $1;
BEGIN;
SELECT nile.set_tenant(big_tid(1)) IS NOT NULL AS big_tenant;
SET LOCAL plan_cache_mode = force_custom_plan;
SELECT scans_of($q$EXECUTE report_from(1)$q$);
EXECUTE report_from(1);
SET LOCAL plan_cache_mode = force_generic_plan;
SELECT scans_of($q$EXECUTE report_from(1)$q$);
EXECUTE report_from(1);
COMMIT;
DEALLOCATE report_from;

-- A policy merely named like a generated one, on a column that is not a uuid, is not a tenant policy: the estimate
-- never reads its statistics as tenant ids (it did, and crashed the server).
CREATE TEMP TABLE big_numbers (n bigint);
INSERT INTO big_numbers SELECT g % 10 FROM generate_series(1, 10000) g;
ANALYZE big_numbers;
ALTER TABLE big_numbers ENABLE ROW LEVEL SECURITY;
CREATE POLICY nile_tenant_select ON big_numbers USING (n = 5);
CREATE POLICY nile_tenant_x ON big_numbers USING (n = 5);
BEGIN;
SELECT nile.set_tenant(big_tid(1)) IS NOT NULL AS big_tenant;
SELECT count(*) FROM big_numbers WHERE n = 3;
SELECT count(*) FROM big_numbers;
COMMIT;
DROP TABLE big_numbers;

-- Clean up.
\c - postgres
DROP TABLE big90, big30, big90_plain, big30_plain, keys;
DROP FUNCTION big_tid(int), scans_of(text);
SELECT count(nile.delete_tenant(id, purge => true)) FROM nile.tenants WHERE name LIKE 'Big %';
DROP ROLE regress_big_app;
