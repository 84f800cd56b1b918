-- nile.set_tenant_read_only() (issue 20): a tenant's context for one read-only transaction, which may be an implicit
-- one (a multi-statement query, or a pipeline without BEGIN: the Python SDK's one-round-trip reads). Every check of
-- nile.set_tenant() applies but the transaction block's; nothing the transaction does can write, lock rows, or outlive
-- it. Sessions are real logins (\c), so this file commits and cleans up at the end.
SET client_min_messages = notice;
CREATE ROLE regress_ro_app LOGIN IN ROLE nile_app;
CREATE ROLE regress_ro_stranger LOGIN;
SELECT nile.create_tenant('RO Acme', '0d0d0d0d-0000-7000-8000-0000000000f1') IS NOT NULL AS created;
SELECT nile.create_tenant('RO Globex', '0e0e0e0e-0000-7000-8000-0000000000f2') IS NOT NULL AS created;
SELECT nile.create_tenant('RO Gone', '0f0f0f0f-0000-7000-8000-0000000000f3') IS NOT NULL AS created;
SELECT nile.delete_tenant('0f0f0f0f-0000-7000-8000-0000000000f3');
CREATE TABLE ro_notes (tenant_id uuid NOT NULL, body text);
GRANT SELECT, INSERT, UPDATE, DELETE ON ro_notes TO regress_ro_app, regress_ro_stranger;
-- A superuser bypasses row-level security: the fixture rows go in directly.
INSERT INTO ro_notes VALUES ('0d0d0d0d-0000-7000-8000-0000000000f1', 'acme note'),
                            ('0e0e0e0e-0000-7000-8000-0000000000f2', 'globex note');

\c - regress_ro_app
-- Outside BEGIN, in one multi-statement query: the context and the read share its implicit transaction.
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; SELECT body FROM ro_notes;
-- The context ends with that transaction: the next statement has none (fail closed, NT001).
SELECT body FROM ro_notes;
SELECT nile.current_tenant() IS NULL AS no_context, current_setting('transaction_read_only') AS read_only;
-- Inside BEGIN it lasts until COMMIT; the transaction is read-only from the call on, and stays so.
BEGIN;
SELECT nile.set_tenant_read_only('0e0e0e0e-0000-7000-8000-0000000000f2');
SELECT body FROM ro_notes;
SHOW transaction_read_only;
SAVEPOINT s;
INSERT INTO ro_notes VALUES ('0e0e0e0e-0000-7000-8000-0000000000f2', 'written');
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
SET TRANSACTION READ WRITE;
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s;
SELECT set_config('transaction_read_only', 'off', true);
ROLLBACK TO SAVEPOINT s;
-- The errors above were caught (savepoints rolled back), which could have hidden a refused write: no COMMIT (25006).
COMMIT;
-- Not at the top level either.
BEGIN;
SELECT nile.set_tenant_read_only('0e0e0e0e-0000-7000-8000-0000000000f2') IS NOT NULL AS entered;
SET TRANSACTION READ WRITE;
ROLLBACK;
-- A read that did nothing else commits; nile.assert_read_only() says so as a statement.
BEGIN;
SELECT nile.set_tenant_read_only('0e0e0e0e-0000-7000-8000-0000000000f2') IS NOT NULL AS entered;
SELECT count(*) FROM ro_notes;
SELECT nile.assert_read_only();
COMMIT;
SELECT nile.assert_read_only();  -- outside such a context: nothing to say
-- What was noted stays noted when the assertion's error is caught: the commit is still refused.
CREATE TEMP TABLE ro_scratch (i int);
BEGIN;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') IS NOT NULL AS entered;
INSERT INTO ro_scratch VALUES (1);  -- a temporary table: read-only allows it, the guard does not
SAVEPOINT a;
SELECT nile.assert_read_only();
ROLLBACK TO SAVEPOINT a;
COMMIT;
-- Entered in a savepoint that is released, the context belongs to the transaction: an error caught later is noted.
BEGIN;
SAVEPOINT a;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') IS NOT NULL AS entered;
RELEASE SAVEPOINT a;
SAVEPOINT b;
SELECT 1 / 0;
ROLLBACK TO SAVEPOINT b;
COMMIT;
-- Entered in a savepoint that is rolled back, it is gone, and so is the watch: the transaction commits.
BEGIN;
SAVEPOINT a;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') IS NOT NULL AS entered;
ROLLBACK TO SAVEPOINT a;
SHOW transaction_read_only;
INSERT INTO ro_scratch VALUES (2);
COMMIT;
SELECT i FROM ro_scratch;
-- A write whose start the guard does not see (here only a transaction id, which a write made by C code takes): the
-- backstop refuses it.
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') IS NOT NULL AS entered \; SELECT pg_current_xact_id() IS NOT NULL AS has_id, nile.assert_read_only();
-- A cursor WITH HOLD declared before the context: its rows, read in the context at the commit, are dropped even when
-- the read-only guard refuses the commit (here while the commit runs the cursor's query to keep its rows; otherwise
-- the pool guard goes first): the next client cannot FETCH them.
BEGIN;
DECLARE ro_held CURSOR WITH HOLD FOR SELECT body FROM ro_notes;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') IS NOT NULL AS entered;
SAVEPOINT s;
ROLLBACK TO SAVEPOINT s;
COMMIT;
FETCH ALL FROM ro_held;

-- Nothing that would outlive the transaction's early end: writes, row locks, a function that writes (25006).
\set VERBOSITY sqlstate
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; INSERT INTO ro_notes VALUES ('0d0d0d0d-0000-7000-8000-0000000000f1', 'x');
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; UPDATE ro_notes SET body = 'x';
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; DELETE FROM ro_notes;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; SELECT body FROM ro_notes FOR UPDATE;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; SELECT body FROM ro_notes FOR KEY SHARE;
CREATE FUNCTION pg_temp.regress_ro_write() RETURNS int LANGUAGE sql
    AS $$ UPDATE public.ro_notes SET body = body || '!' RETURNING 1 $$;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; SELECT pg_temp.regress_ro_write();
\set VERBOSITY default
-- A function that catches the refusal of its write would return as if it had written: the caught error is noted,
-- and the SELECT that called it is refused at the end of its run (so is nile.assert_read_only(), or the commit), so
-- the client runs it again with BEGIN.
CREATE FUNCTION pg_temp.regress_ro_quiet_write() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.ro_notes VALUES (nile.current_tenant(), 'quiet'); RETURN 1;
EXCEPTION WHEN OTHERS THEN RETURN 0;
END $$;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; SELECT pg_temp.regress_ro_quiet_write() \; SELECT nile.assert_read_only();
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; SELECT pg_temp.regress_ro_quiet_write();
-- An error caught without any write is refused the same way, at the end of the SELECT that hid it.
CREATE FUNCTION pg_temp.regress_ro_hidden_error() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 / 0; RETURN 1;
EXCEPTION WHEN division_by_zero THEN RETURN 0;
END $$;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; SELECT pg_temp.regress_ro_hidden_error();
\c - postgres
SELECT tenant_id, body FROM ro_notes ORDER BY body;
\c - regress_ro_app

-- READ COMMITTED (and READ UNCOMMITTED, the same in PostgreSQL) only: at a higher level the statements of a unit of
-- work must share one snapshot (25000).
BEGIN ISOLATION LEVEL READ UNCOMMITTED;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') IS NOT NULL AS entered;
COMMIT;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1');
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1');
ROLLBACK;
SET default_transaction_isolation = 'repeatable read';
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1') \; SELECT body FROM ro_notes;
RESET default_transaction_isolation;

-- Every check of nile.set_tenant(): NULL, an unknown tenant (NT002), a deleted one (NT004).
SELECT nile.set_tenant_read_only(NULL);
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-00000000ffff');
SELECT nile.set_tenant_read_only('0f0f0f0f-0000-7000-8000-0000000000f3');
-- An inactive tenant may read.
\c - postgres
SELECT status FROM nile.deactivate_tenant('0e0e0e0e-0000-7000-8000-0000000000f2');
\c - regress_ro_app
SELECT nile.set_tenant_read_only('0e0e0e0e-0000-7000-8000-0000000000f2') \; SELECT body FROM ro_notes;
-- A role that may only use tokens cannot use it with a bare id (NT010).
\c - postgres
ALTER ROLE regress_ro_app SET nile.require_token = on;
\c - regress_ro_app
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1');
SELECT nile.set_tenant_token_read_only('not-a-token');
-- Only application roles may call them.
\c - regress_ro_stranger
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1');
SELECT nile.set_tenant_token_read_only('not-a-token');
SELECT nile.assert_read_only();
-- Not a role bound to a tenant (it works for its tenant already and cannot enter another), nor one with BYPASSRLS.
\c - postgres
ALTER ROLE regress_ro_app RESET nile.require_token;
SELECT nile.bind_role('regress_ro_app', '0d0d0d0d-0000-7000-8000-0000000000f1');
\c - regress_ro_app
SELECT nile.set_tenant_read_only('0e0e0e0e-0000-7000-8000-0000000000f2');
\c - postgres
SELECT nile.unbind_role('regress_ro_app');
ALTER ROLE regress_ro_app BYPASSRLS;
\c - regress_ro_app
SELECT nile.set_tenant_read_only('0d0d0d0d-0000-7000-8000-0000000000f1');
\c - postgres
ALTER ROLE regress_ro_app NOBYPASSRLS;

-- Nothing any of this tried was written.
SELECT tenant_id, body FROM ro_notes ORDER BY body;
DROP TABLE ro_notes;
SELECT nile.delete_tenant(id, purge => true) FROM nile.tenants WHERE name LIKE 'RO %' ORDER BY name;
DROP ROLE regress_ro_app;
DROP ROLE regress_ro_stranger;
