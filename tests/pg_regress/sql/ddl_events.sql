-- The DDL event triggers: tables with a tenant column enroll themselves, partitions and children follow their parent,
-- drift is refused, dropped tables leave the registry. Everything runs in one transaction that is rolled back.
SET client_min_messages = notice;
BEGIN;
SELECT nile.create_tenant('Acme', '0a0a0a0a-0000-7000-8000-000000000001');
SELECT nile.create_tenant('Globex', '0b0b0b0b-0000-7000-8000-000000000002');
-- What the registry says, and what each registered table really has.
CREATE TEMP VIEW protection AS
    SELECT e.relid::text AS tbl, e.parent::text AS parent, e.tenant_column AS col,
           c.relrowsecurity AS rls, c.relforcerowsecurity AS forced,
           (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname LIKE 'nile\_tenant\_%') AS policies
    FROM nile.tenant_tables e JOIN pg_class c ON c.oid = e.relid::oid ORDER BY 1;

-- 1. Every way of creating a table with a tenant column enrolls it.
CREATE TABLE projects (tenant_id uuid NOT NULL, id bigint NOT NULL, name text, PRIMARY KEY (tenant_id, id));
INSERT INTO projects VALUES ('0a0a0a0a-0000-7000-8000-000000000001', 1, 'acme-1'),
                            ('0b0b0b0b-0000-7000-8000-000000000002', 1, 'globex-1');
CREATE TABLE projects_copy AS SELECT * FROM projects;
SELECT * INTO projects_into FROM projects;
CREATE TABLE projects_like (LIKE projects INCLUDING ALL);
DO $$ BEGIN EXECUTE 'CREATE TABLE made_in_do (tenant_id uuid, x int)'; END $$;
CREATE FUNCTION pg_temp.make_table() RETURNS void LANGUAGE plpgsql AS $$ BEGIN CREATE TABLE made_in_function (tenant_id uuid); END $$;
SELECT pg_temp.make_table();
CREATE SCHEMA regress_elements CREATE TABLE made_in_schema (tenant_id uuid);
SELECT * FROM protection;
SELECT count(*) AS indexes_leading_with_tenant_id FROM pg_index WHERE indrelid = 'projects_copy'::regclass AND indkey[0] = 1;
-- ... and refuses what it cannot enroll, naming the automatic enrollment in the context.
SAVEPOINT s;
CREATE TABLE orphans AS SELECT '0c0c0c0c-0000-7000-8000-000000000003'::uuid AS tenant_id;
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
CREATE TABLE texty (tenant_id text);
ROLLBACK TO SAVEPOINT s;

-- 2. Tables that are not tenant tables are left alone.
CREATE TABLE plain (a int);
CREATE TEMP TABLE scratch (tenant_id uuid);
SELECT count(*) AS registered FROM nile.tenant_tables WHERE relid::text IN ('plain', 'scratch');

-- 3. Adding the tenant column enrolls the table; existing rows need a tenant.
ALTER TABLE plain ADD COLUMN tenant_id uuid;
SELECT * FROM protection WHERE tbl = 'plain';
CREATE TABLE legacy (x int);
INSERT INTO legacy VALUES (1);
SAVEPOINT s;
ALTER TABLE legacy ADD COLUMN tenant_id uuid;
ROLLBACK TO SAVEPOINT s;
ALTER TABLE legacy ADD COLUMN tenant_id uuid NOT NULL DEFAULT '0a0a0a0a-0000-7000-8000-000000000001';
SELECT * FROM protection WHERE tbl = 'legacy';
SELECT pg_get_expr(adbin, adrelid) AS legacy_default FROM pg_attrdef WHERE adrelid = 'legacy'::regclass;

-- 4. nile.auto_enable = off: a WARNING that says how to enroll, and nothing else.
SET LOCAL nile.auto_enable = off;
CREATE TABLE manual (tenant_id uuid);
RESET nile.auto_enable;
SELECT count(*) AS manual_registered FROM nile.tenant_tables WHERE relid = 'manual'::regclass;

-- 5. Partitions: created, attached (with partitions of their own), detached.
CREATE TABLE events (tenant_id uuid NOT NULL, at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE events_2027 (LIKE events) PARTITION BY RANGE (at);
CREATE TABLE events_2027_h1 PARTITION OF events_2027 FOR VALUES FROM ('2027-01-01') TO ('2027-07-01');
ALTER TABLE events ATTACH PARTITION events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
SELECT * FROM protection WHERE tbl LIKE 'events%';
ALTER TABLE events DETACH PARTITION events_2027;
SELECT * FROM protection WHERE tbl LIKE 'events%';

-- 6. Inheritance children, at creation and later.
CREATE TABLE notes (tenant_id uuid NOT NULL, body text);
CREATE TABLE notes_archived (archived_at date) INHERITS (notes);
CREATE TABLE notes_old (tenant_id uuid NOT NULL, body text);
ALTER TABLE notes_old INHERIT notes;
SELECT * FROM protection WHERE tbl LIKE 'notes%';
SELECT count(*) AS notes_archived_fk FROM pg_constraint WHERE conrelid = 'notes_archived'::regclass AND contype = 'f';
ALTER TABLE notes_old NO INHERIT notes;
SELECT * FROM protection WHERE tbl LIKE 'notes%';
-- A foreign table cannot be protected: making one a child of a tenant table is refused.
CREATE FOREIGN DATA WRAPPER regress_fdw;
CREATE SERVER regress_server FOREIGN DATA WRAPPER regress_fdw;
SAVEPOINT s;
CREATE FOREIGN TABLE notes_remote () INHERITS (notes) SERVER regress_server;
ROLLBACK TO SAVEPOINT s;
CREATE FOREIGN TABLE notes_remote (tenant_id uuid NOT NULL, body text) SERVER regress_server;
SAVEPOINT s;
ALTER FOREIGN TABLE notes_remote INHERIT notes;
ROLLBACK TO SAVEPOINT s;

-- 7. Drift is refused, for everyone (superusers included); the error says how to leave deliberately.
SAVEPOINT s; ALTER TABLE projects DISABLE ROW LEVEL SECURITY; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; ALTER TABLE projects NO FORCE ROW LEVEL SECURITY; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; ALTER TABLE events_2026 DISABLE ROW LEVEL SECURITY; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; DROP POLICY nile_tenant_select ON projects; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; ALTER POLICY nile_tenant_select ON projects USING (true); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; ALTER POLICY nile_tenant_update ON projects WITH CHECK (true); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; ALTER POLICY nile_tenant_delete ON projects TO nile_app; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; ALTER POLICY nile_tenant_insert ON projects RENAME TO tenant_insert; ROLLBACK TO SAVEPOINT s;
SET LOCAL client_min_messages = warning;  -- (not the list of what cascades)
SAVEPOINT s; ALTER TABLE projects DROP COLUMN tenant_id CASCADE; ROLLBACK TO SAVEPOINT s;
SET LOCAL client_min_messages = notice;
DO $$ BEGIN ALTER TABLE projects DISABLE ROW LEVEL SECURITY; EXCEPTION WHEN object_not_in_prerequisite_state THEN RAISE NOTICE 'refused inside DO as well'; END $$;
-- Ending in a sound state is fine.
ALTER TABLE projects DISABLE ROW LEVEL SECURITY, ENABLE ROW LEVEL SECURITY;
-- Changing the tenant column's type is refused by Postgres itself (the policies depend on it).
SAVEPOINT s; ALTER TABLE projects ALTER COLUMN tenant_id TYPE text; ROLLBACK TO SAVEPOINT s;
-- Renaming it: the policies follow by column number, the registry follows by name, at every level.
ALTER TABLE events RENAME COLUMN tenant_id TO org_id;
SELECT * FROM protection WHERE tbl LIKE 'events%';
SELECT pg_get_expr(polqual, polrelid) AS renamed_policy FROM pg_policy WHERE polrelid = 'events_2026'::regclass AND polname = 'nile_tenant_select';
CREATE TABLE events_2028 PARTITION OF events FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
SELECT * FROM protection WHERE tbl = 'events_2028';

-- 8. The deliberate way out, and back in.
SELECT nile.disable_tenancy('notes');
ALTER TABLE notes ADD COLUMN extra int;
CREATE TABLE notes_2 () INHERITS (notes);
SELECT relid::text FROM nile.excluded_tables;
SELECT * FROM protection WHERE tbl LIKE 'notes%';
SELECT nile.enable_tenancy('notes');
SELECT count(*) AS excluded FROM nile.excluded_tables;
SELECT * FROM protection WHERE tbl LIKE 'notes%';
SELECT nile.disable_tenancy('manual');       -- not enrolled: marked as shared on purpose
SELECT relid::text FROM nile.excluded_tables;

-- 9. The extension's own DDL never trips the triggers: repair after drift made with the trigger switched off.
ALTER EVENT TRIGGER nile_sql_drop DISABLE;
ALTER EVENT TRIGGER nile_ddl_command_end DISABLE;
DROP POLICY nile_tenant_select ON projects;
ALTER TABLE projects NO FORCE ROW LEVEL SECURITY;
ALTER EVENT TRIGGER nile_ddl_command_end ENABLE;
ALTER EVENT TRIGGER nile_sql_drop ENABLE;
SELECT * FROM protection WHERE tbl = 'projects';
SELECT nile.enable_tenancy('projects');
SELECT * FROM protection WHERE tbl = 'projects';

-- ... but user code that runs during the extension's own work (a trigger fired by a backfill) is checked as usual.
SET LOCAL nile.auto_enable = off;
CREATE TABLE backfilled (x int, tenant_id uuid);
RESET nile.auto_enable;
INSERT INTO backfilled VALUES (1, NULL);
CREATE FUNCTION pg_temp.sneaky() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN ALTER TABLE public.projects DISABLE ROW LEVEL SECURITY; RETURN NEW; END $$;
CREATE TRIGGER sneaky BEFORE UPDATE ON backfilled FOR EACH ROW EXECUTE FUNCTION pg_temp.sneaky();
SAVEPOINT s;
SELECT nile.enable_tenancy('backfilled', backfill_tenant => '0a0a0a0a-0000-7000-8000-000000000001');
ROLLBACK TO SAVEPOINT s;
SELECT * FROM protection WHERE tbl = 'projects';

-- 10. Restores run with row_security = off: the dump recreates policies and registry itself, so nothing is done.
SET LOCAL row_security = off;
CREATE TABLE restored (tenant_id uuid);
RESET row_security;
SELECT count(*) AS restored_registered FROM nile.tenant_tables WHERE relid = 'restored'::regclass;

-- 11. A plain role (no nile role at all) that creates a tenant table gets it enrolled too.
CREATE ROLE regress_owner NOLOGIN;
CREATE SCHEMA regress_owned AUTHORIZATION regress_owner;
SET LOCAL ROLE regress_owner;
CREATE TABLE regress_owned.things (tenant_id uuid, x int);
SAVEPOINT s; ALTER TABLE regress_owned.things NO FORCE ROW LEVEL SECURITY; ROLLBACK TO SAVEPOINT s;
-- row_security = off (what restores use) does not switch the checks off for anyone but a superuser.
SET LOCAL row_security = off;
SAVEPOINT s; ALTER TABLE regress_owned.things DISABLE ROW LEVEL SECURITY; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; DROP POLICY nile_tenant_select ON regress_owned.things; ROLLBACK TO SAVEPOINT s;
RESET row_security;
RESET ROLE;
SELECT * FROM protection WHERE tbl = 'regress_owned.things';

-- 12. The trigger's first look (which skips unrelated tables without running SQL) misses nothing.
-- A tenant column named like an enrolled table's (events.org_id, renamed in this transaction) is one.
CREATE TABLE org_scoped (org_id uuid NOT NULL, x int);
-- A temporary table of the same name does not hide the table that was created.
CREATE TEMP TABLE shadowed (a int);
CREATE TABLE shadowed (tenant_id uuid);
-- A renamed table, then given a tenant column; ALTER ... IF EXISTS of a missing table; CREATE ... IF NOT EXISTS.
CREATE TABLE renamed_plain (a int);
ALTER TABLE renamed_plain RENAME TO renamed_later;
ALTER TABLE renamed_later ADD COLUMN tenant_id uuid;
ALTER TABLE IF EXISTS no_such_table ADD COLUMN tenant_id uuid;
CREATE TABLE IF NOT EXISTS plain (a int);
-- A tenant column name after tenant_id in sort order, enrolled by hand first.
CREATE TABLE ws_root (workspace_id uuid NOT NULL);
SELECT nile.enable_tenancy('ws_root', tenant_column => 'workspace_id');
CREATE TABLE ws_other (workspace_id uuid NOT NULL);
SELECT * FROM protection WHERE tbl IN ('org_scoped', 'public.shadowed', 'renamed_later', 'ws_root', 'ws_other');
-- Unrelated tables stay out, whatever is done to them.
CREATE TABLE unrelated (a int);
ALTER TABLE unrelated ADD COLUMN b text, ENABLE ROW LEVEL SECURITY;
CREATE TABLE unrelated_copy AS SELECT * FROM unrelated;
SELECT count(*) AS unrelated_registered FROM nile.tenant_tables WHERE relid::text LIKE 'unrelated%';

-- 13. Dropping tables and schemas empties their registry entries.
DROP TABLE projects_copy, events;
DROP SCHEMA regress_owned CASCADE;
SELECT tbl FROM protection;
SELECT count(*) AS dangling FROM nile.tenant_tables e WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = e.relid::oid);
ROLLBACK;
