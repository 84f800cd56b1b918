-- The user-visible behaviour of nile_tenancy, statement by statement, with its exact messages.
SET client_min_messages = notice;
-- Everything runs in one transaction that is rolled back, so the test can be re-run on the same database.
BEGIN;
CREATE ROLE regress_app NOLOGIN;
CREATE ROLE regress_admin NOLOGIN;
GRANT nile_app TO regress_app;
GRANT nile_admin TO regress_admin;

-- Tenants
SELECT nile.create_tenant('Acme', '0a0a0a0a-0000-7000-8000-000000000001');
SELECT nile.create_tenant('Globex', '0b0b0b0b-0000-7000-8000-000000000002', '{"plan": "pro"}');
SELECT nile.create_tenant('Acme', '0a0a0a0a-0000-7000-8000-000000000001');  -- same again: returns the id
SELECT id, name, status, metadata, deleted_at FROM nile.tenants ORDER BY name;
SAVEPOINT s; SELECT nile.create_tenant('');                           ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.create_tenant('Other', '0a0a0a0a-0000-7000-8000-000000000001'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.update_tenant('0b0b0b0b-0000-7000-8000-000000000002', '{"plan": "free"}'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.update_tenant('0b0b0b0b-0000-7000-8000-000000000002', '{"status": "paused"}'); ROLLBACK TO SAVEPOINT s;
SELECT name, status, metadata FROM nile.update_tenant('0b0b0b0b-0000-7000-8000-000000000002', '{"metadata": {"plan": "enterprise"}}');

-- A tenant table
CREATE TABLE projects (id bigint GENERATED ALWAYS AS IDENTITY, name text NOT NULL);
SELECT nile.enable_tenancy('projects');
\d projects
GRANT SELECT, INSERT, UPDATE, DELETE ON projects TO regress_app;
GRANT SELECT ON projects TO regress_admin;
SAVEPOINT s; SELECT nile.enable_tenancy('pg_catalog.pg_class'); ROLLBACK TO SAVEPOINT s;
CREATE VIEW projects_view AS SELECT * FROM projects;
SAVEPOINT s; SELECT nile.enable_tenancy('projects_view'); ROLLBACK TO SAVEPOINT s;
CREATE TABLE legacy (x int); INSERT INTO legacy VALUES (1);
SAVEPOINT s; SELECT nile.enable_tenancy('legacy'); ROLLBACK TO SAVEPOINT s;
SELECT nile.enable_tenancy('legacy', backfill_tenant => '0a0a0a0a-0000-7000-8000-000000000001');
SELECT * FROM legacy;
SELECT relid, tenant_column, parent FROM nile.tenant_tables ORDER BY relid::text;

-- Working as a tenant
SET LOCAL ROLE regress_app;
SAVEPOINT s; SELECT count(*) FROM projects; ROLLBACK TO SAVEPOINT s;  -- no context: error
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-000000000001');
INSERT INTO projects (name) VALUES ('acme-1'), ('acme-2');
SELECT name, tenant_id FROM projects ORDER BY name;
SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-000000000002');
INSERT INTO projects (name) VALUES ('globex-1');
SELECT name FROM projects ORDER BY name;
SAVEPOINT s; INSERT INTO projects (tenant_id, name) VALUES ('0a0a0a0a-0000-7000-8000-000000000001', 'planted'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; UPDATE projects SET tenant_id = '0a0a0a0a-0000-7000-8000-000000000001'; ROLLBACK TO SAVEPOINT s;
UPDATE projects SET name = 'hijacked' WHERE name LIKE 'acme%';       -- UPDATE 0
SELECT id, name, status FROM nile.tenants;                           -- its own tenant only
SAVEPOINT s; SET nile.tenant_id = '0a0a0a0a-0000-7000-8000-000000000001'; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT set_config('nile.tenant_id', '0a0a0a0a-0000-7000-8000-000000000001', true); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.set_tenant('00000000-0000-0000-0000-000000000000'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.admin_context('curious'); ROLLBACK TO SAVEPOINT s;
RESET ROLE;

-- Inactive and deleted tenants
SELECT name, status FROM nile.deactivate_tenant('0b0b0b0b-0000-7000-8000-000000000002');
SET LOCAL ROLE regress_app;
SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-000000000002');
SELECT name FROM projects;
SAVEPOINT s; INSERT INTO projects (name) VALUES ('globex-2'); ROLLBACK TO SAVEPOINT s;
RESET ROLE;
SELECT nile.delete_tenant('0b0b0b0b-0000-7000-8000-000000000002');
SET LOCAL ROLE regress_app;
SAVEPOINT s; SELECT name FROM projects; ROLLBACK TO SAVEPOINT s;
SELECT nile.clear_tenant();
SAVEPOINT s; SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-000000000002'); ROLLBACK TO SAVEPOINT s;
RESET ROLE;

-- The admin context
SET LOCAL ROLE regress_admin;
SELECT nile.admin_context('regression report');
SHOW nile.admin_active;
SELECT t.name, t.status, count(p.*) AS projects
FROM nile.tenants t LEFT JOIN projects p ON p.tenant_id = t.id
GROUP BY t.name, t.status ORDER BY t.name;
SELECT acting_role, reason FROM nile.admin_audit;
RESET ROLE;

-- Purge and the deliberate way out
SELECT nile.delete_tenant('0b0b0b0b-0000-7000-8000-000000000002', purge => true);
SELECT name FROM nile.tenants;
SELECT nile.disable_tenancy('legacy');
SELECT nile.disable_tenancy('legacy');
SELECT relid FROM nile.tenant_tables ORDER BY relid::text;
ROLLBACK;
