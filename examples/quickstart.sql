-- examples/quickstart.sql — the story of a multi-tenant SaaS on nile_tenancy, from the first customer to the admin
-- report. `make run` runs it against a fresh database; run it yourself with psql -f (as a superuser).
--
-- Each step echoes what it is about to show. Errors are expected where the text says so: they are the isolation at
-- work. (ON_ERROR_STOP is off on purpose.)

\set ON_ERROR_STOP off
\set VERBOSITY default
\pset footer off

\echo '== 1. Install the extension (make run preloads the library; isolation works without preloading too)'
SET client_min_messages = warning;   -- quiet clean-up of a previous run
DROP EXTENSION IF EXISTS nile_tenancy CASCADE;
DROP TABLE IF EXISTS users, projects CASCADE;
DROP ROLE IF EXISTS quickstart_app, quickstart_admin;
RESET client_min_messages;
CREATE EXTENSION nile_tenancy;

\echo '== 2. Roles: the application connects as quickstart_app (a plain role), the back office as quickstart_admin'
CREATE ROLE quickstart_app LOGIN;
CREATE ROLE quickstart_admin LOGIN;
GRANT nile_app TO quickstart_app;      -- may call nile.set_tenant()
GRANT nile_admin TO quickstart_admin;  -- manages tenants, may enter nile.admin_context()

\echo '== 3. The shared schema: tables as you would write them, then one call per table'
CREATE TABLE users (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    username   text NOT NULL,
    email      text NOT NULL,
    is_active  boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE projects (
    tenant_id  uuid NOT NULL,
    id         bigint GENERATED ALWAYS AS IDENTITY,
    name       text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
SELECT nile.enable_tenancy('users');      -- adds tenant_id uuid NOT NULL DEFAULT nile.current_tenant(), FK, index
SELECT nile.enable_tenancy('projects');   -- keeps the existing tenant_id and its primary key
GRANT SELECT, INSERT, UPDATE, DELETE ON users, projects TO quickstart_app, quickstart_admin;
SELECT relid, tenant_column FROM nile.tenant_tables ORDER BY relid::text;

\echo '== 4. Two customers sign up (the back office provisions their tenants)'
SET ROLE quickstart_admin;
SELECT nile.create_tenant('Acme Corp',  id => '0a0a0a0a-0000-7000-8000-00000000acec') \gset
SELECT nile.create_tenant('Globex Inc', metadata => '{"plan": "pro"}') AS globex \gset
RESET ROLE;

\echo '== 5. The application works for Acme: set the tenant once per transaction, then plain SQL'
SET ROLE quickstart_app;
BEGIN;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000acec');
INSERT INTO users (username, email) VALUES ('wile', 'wile@acme.test'), ('road', 'road@acme.test');
INSERT INTO projects (name) VALUES ('Rocket skates');
SELECT username, email FROM users ORDER BY username;
COMMIT;

\echo '== 6. ... and for Globex, on the same connection: Acme''s rows are simply not there'
BEGIN;
SELECT nile.set_tenant(:'globex');
INSERT INTO users (username, email) VALUES ('hank', 'hank@globex.test');
SELECT username, email FROM users ORDER BY username;
SELECT count(*) AS projects_visible_to_globex FROM projects;
COMMIT;

\echo '== 7. Cross-tenant access is blocked: a Globex session writing a row for Acme (expect an ERROR)'
BEGIN;
SELECT nile.set_tenant(:'globex');
INSERT INTO users (tenant_id, username, email) VALUES ('0a0a0a0a-0000-7000-8000-00000000acec', 'mallory', 'm@evil.test');
ROLLBACK;

\echo '== 8. ... and so is forging the context with a plain SET (expect an ERROR)'
SET nile.tenant_id = '0a0a0a0a-0000-7000-8000-00000000acec';

\echo '== 9. No tenant context, no rows: the statement fails closed (expect an ERROR)'
SELECT count(*) FROM users;
RESET ROLE;

\echo '== 10. A schema change applies to every tenant at once; backfill tenant by tenant'
ALTER TABLE users ADD COLUMN last_login_at timestamptz DEFAULT NULL;
SET ROLE quickstart_app;
BEGIN;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000acec');
UPDATE users SET last_login_at = created_at WHERE last_login_at IS NULL;   -- touches Acme's 2 rows only
COMMIT;
RESET ROLE;

\echo '== 11. Soft delete: an inactive tenant can read but not write (expect an ERROR on the INSERT)'
SET ROLE quickstart_admin;
SELECT name, status FROM nile.deactivate_tenant(:'globex');
RESET ROLE;
SET ROLE quickstart_app;
BEGIN;
SELECT nile.set_tenant(:'globex');
SELECT count(*) AS globex_users_still_readable FROM users;
INSERT INTO users (username, email) VALUES ('late', 'late@globex.test');
ROLLBACK;
RESET ROLE;

\echo '== 12. Cross-tenant reporting: the admin context, recorded in nile.admin_audit'
SET ROLE quickstart_admin;
BEGIN;
SELECT nile.admin_context('quickstart: total active users');
SELECT t.name AS tenant, count(u.*) AS active_users
FROM nile.tenants t LEFT JOIN users u ON u.tenant_id = t.id AND u.is_active
GROUP BY t.name ORDER BY t.name;
COMMIT;
SELECT session_role, reason FROM nile.admin_audit ORDER BY id;
RESET ROLE;

\echo '== Done. Try it yourself: BEGIN; SELECT nile.set_tenant(''0a0a0a0a-0000-7000-8000-00000000acec''); SELECT * FROM users;'
