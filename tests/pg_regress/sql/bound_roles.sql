-- Tenant-bound roles: nile.bind_role() fixes every session of a role to one tenant; nothing the session does takes it
-- elsewhere. Sessions are real logins (\c), so this file commits and cleans up at the end.
SET client_min_messages = notice;
CREATE ROLE regress_bi_acme LOGIN IN ROLE nile_app;
CREATE ROLE regress_bound_admin LOGIN IN ROLE nile_admin;
CREATE ROLE regress_binder LOGIN IN ROLE nile_admin;
CREATE ROLE regress_super_bi LOGIN SUPERUSER;
SELECT nile.create_tenant('Acme', '0a0a0a0a-0000-7000-8000-0000000000e1');
SELECT nile.create_tenant('Globex', '0b0b0b0b-0000-7000-8000-0000000000e2');
CREATE TABLE bound_docs (tenant_id uuid NOT NULL, body text);
GRANT SELECT, INSERT, UPDATE, DELETE ON bound_docs TO regress_bi_acme, regress_bound_admin, nile_app;
-- A superuser bypasses row-level security: the fixture rows go in directly.
INSERT INTO bound_docs VALUES ('0a0a0a0a-0000-7000-8000-0000000000e1', 'acme doc'), ('0b0b0b0b-0000-7000-8000-0000000000e2', 'globex doc');

-- Binding: only nile_admin, only existing roles and live tenants, never a role that bypasses row-level security.
\c - regress_bi_acme
SELECT nile.bind_role('regress_bi_acme', '0b0b0b0b-0000-7000-8000-0000000000e2');
\c - regress_binder
SELECT nile.bind_role('regress_no_such_role', '0a0a0a0a-0000-7000-8000-0000000000e1');
SELECT nile.bind_role('regress_bi_acme', '0d0d0d0d-0000-7000-8000-0000000000d4');
SELECT nile.bind_role('regress_super_bi', '0a0a0a0a-0000-7000-8000-0000000000e1');
SELECT nile.bind_role('nile_app', '0a0a0a0a-0000-7000-8000-0000000000e1');
SELECT nile.bind_role('regress_bi_acme', '0a0a0a0a-0000-7000-8000-0000000000e1');
SELECT nile.bind_role('regress_bi_acme', '0a0a0a0a-0000-7000-8000-0000000000e1');   -- idempotent
SELECT nile.bind_role('regress_bound_admin', '0a0a0a0a-0000-7000-8000-0000000000e1');
SELECT role, tenant_id FROM nile.role_bindings ORDER BY role::text;

-- A bound session works for its tenant without calling anything, even outside a transaction block.
\c - regress_bi_acme
SELECT nile.current_tenant();
SELECT body FROM bound_docs;
SELECT name FROM nile.tenants;
INSERT INTO bound_docs (body) VALUES ('written by bi');
SELECT body, tenant_id FROM bound_docs ORDER BY body;
-- ... and cannot leave it, whatever it tries.
BEGIN;
SAVEPOINT s; SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-0000000000e2'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.clear_tenant(); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SET nile.tenant_id = '0b0b0b0b-0000-7000-8000-0000000000e2'; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; INSERT INTO bound_docs VALUES ('0b0b0b0b-0000-7000-8000-0000000000e2', 'planted'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; UPDATE bound_docs SET tenant_id = '0b0b0b0b-0000-7000-8000-0000000000e2'; ROLLBACK TO SAVEPOINT s;
SET LOCAL ROLE nile_app;
SELECT nile.current_tenant();
SELECT body FROM bound_docs ORDER BY body;
SAVEPOINT s; SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-0000000000e2'); ROLLBACK TO SAVEPOINT s;
ROLLBACK;
-- A bound member of nile_admin cannot enter the admin context or release itself.
\c - regress_bound_admin
BEGIN;
SAVEPOINT s; SELECT nile.admin_context('escape'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.unbind_role('regress_bound_admin'); ROLLBACK TO SAVEPOINT s;
SELECT body FROM bound_docs ORDER BY body;
ROLLBACK;

-- A superuser who takes on a bound role is bound too (handy for checking what a BI user sees).
\c - postgres
BEGIN;
SET LOCAL ROLE regress_bi_acme;
SELECT nile.current_tenant();
ROLLBACK;

-- Rebinding moves the role; sessions follow at their next statement.
\c - regress_binder
SELECT nile.bind_role('regress_bi_acme', '0b0b0b0b-0000-7000-8000-0000000000e2');
\c - regress_bi_acme
SELECT body FROM bound_docs ORDER BY body;
-- Unbinding releases it: back to an ordinary application role without a context.
\c - regress_binder
SELECT nile.unbind_role('regress_bi_acme');
SELECT nile.unbind_role('regress_bi_acme');
\c - regress_bi_acme
SELECT nile.current_tenant() IS NULL AS unbound;
SELECT body FROM bound_docs;

-- verify() reports a binding that no longer confines its role, and the binding of a dropped role (whose OID a new
-- role could be given).
\c - postgres
CREATE ROLE regress_bound_dropped LOGIN;
SELECT nile.bind_role('regress_bound_dropped', '0a0a0a0a-0000-7000-8000-0000000000e1');
DROP ROLE regress_bound_dropped;
ALTER ROLE regress_bound_admin BYPASSRLS;
SELECT severity, regexp_replace(object, '[0-9]+', 'N') AS object,
       regexp_replace(problem, '\(OID [0-9]+\)', '(OID N)') AS problem, regexp_replace(fix, '[0-9]+', 'N') AS fix
FROM nile.verify() WHERE object LIKE 'role binding %' OR problem LIKE '%is bound to tenant%' ORDER BY object;
ALTER ROLE regress_bound_admin NOBYPASSRLS;

-- Purging a tenant removes its bindings.
SELECT nile.delete_tenant('0a0a0a0a-0000-7000-8000-0000000000e1', purge => true);
SELECT count(*) AS bindings_left FROM nile.role_bindings;
DROP TABLE bound_docs;
SELECT nile.delete_tenant('0b0b0b0b-0000-7000-8000-0000000000e2', purge => true);
DROP ROLE regress_bi_acme, regress_bound_admin, regress_binder, regress_super_bi;
