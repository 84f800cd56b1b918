-- nile.set_tenant()'s fast path (issue 21): a SET LOCAL to the value a setting already has is skipped (the user id
-- when there was no token and is none, the tenant when it is the same), and the BYPASSRLS check is cached per role
-- until a role changes. None of it may change what the session sees: savepoints, session-wide contexts, token user
-- ids and role changes behave exactly as without the shortcuts. Sessions are real logins (\c), so this file commits
-- and cleans up at the end.
SET client_min_messages = notice;
CREATE ROLE regress_fast_app LOGIN IN ROLE nile_app;
CREATE ROLE regress_fast_other LOGIN IN ROLE nile_app;
SELECT nile.create_tenant('Fast A', '0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS created;
SELECT nile.create_tenant('Fast B', '0b0b0b0b-0000-7000-8000-00000000fb02') IS NOT NULL AS created;
CREATE TABLE fast_notes (tenant_id uuid NOT NULL, body text);
GRANT SELECT ON fast_notes TO regress_fast_app, regress_fast_other;
-- A superuser bypasses row-level security: the fixture rows go in directly.
INSERT INTO fast_notes VALUES ('0a0a0a0a-0000-7000-8000-00000000fa01', 'note of A'),
                              ('0b0b0b0b-0000-7000-8000-00000000fb02', 'note of B');
ALTER SYSTEM SET nile.token_key = 'regress-key-fast-0123456789abcdef0123456789';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SELECT nile.sign_tenant_token('0a0a0a0a-0000-7000-8000-00000000fa01', '5 minutes', 'user-fa') AS token_a \gset

\c - regress_fast_app
-- The same tenant twice: the second call changes nothing, and a savepoint rolled back after it restores the context
-- the transaction had before the savepoint, not "no context".
BEGIN;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS entered;
SAVEPOINT s;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS entered_again;
ROLLBACK TO SAVEPOINT s;
SELECT nile.current_tenant(), body FROM fast_notes;
-- Another tenant inside a savepoint, then the same one again, rolled back: back to A.
SAVEPOINT t;
SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-00000000fb02') IS NOT NULL AS switched;
SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-00000000fb02') IS NOT NULL AS same_again;
SELECT body FROM fast_notes;
ROLLBACK TO SAVEPOINT t;
SELECT nile.current_tenant(), body FROM fast_notes;
COMMIT;
SELECT nile.current_tenant() IS NULL AS context_ended;

-- A token's user id: entering another tenant without a token clears it (the write is not skipped while a user id is
-- set), and rolling back to a savepoint brings the token's context back, user id included.
BEGIN;
SELECT nile.set_tenant_token(:'token_a') IS NOT NULL AS entered;
SELECT nile.current_user_id();
SAVEPOINT s;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS same_tenant_no_token;
SELECT nile.current_user_id() IS NULL AS user_id_cleared;
SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-00000000fb02') IS NOT NULL AS other_tenant;
SELECT nile.current_user_id() IS NULL AS still_cleared;
ROLLBACK TO SAVEPOINT s;
SELECT nile.current_tenant(), nile.current_user_id();
COMMIT;
SELECT nile.current_tenant() IS NULL AS context_ended, nile.current_user_id() IS NULL AS user_ended;

-- A session-wide context (a superuser may): a transaction-local entry of the same tenant, or of another, ends with
-- its transaction and leaves the session-wide one as it was; so does a transaction-local entry without a token over a
-- session-wide token context.
\c - postgres
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01', false) IS NOT NULL AS session_wide;
BEGIN;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS same_local;
COMMIT;
SELECT nile.current_tenant() AS after_same_local;
BEGIN;
SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-00000000fb02') IS NOT NULL AS other_local;
SELECT nile.current_tenant() AS inside;
COMMIT;
SELECT nile.current_tenant() AS after_other_local;
SELECT nile.set_tenant_token(:'token_a', false) IS NOT NULL AS session_wide_token;
BEGIN;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS same_tenant_local;
SELECT nile.current_user_id() IS NULL AS user_id_cleared_locally;
COMMIT;
SELECT nile.current_tenant(), nile.current_user_id() AS user_id_back;
-- A session-wide entry over a transaction-local one of the same tenant is kept after COMMIT (never skipped).
SELECT nile.clear_tenant();
BEGIN;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS local_first;
SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01', false) IS NOT NULL AS then_session_wide;
COMMIT;
SELECT nile.current_tenant() AS kept_after_commit;
SELECT nile.clear_tenant();

-- The BYPASSRLS refusal is cached per role: a role given BYPASSRLS after a successful entry is refused at its next
-- one, in the same session; and another role is never answered from the first one's entry.
SET ROLE regress_fast_app;
BEGIN; SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS entered; COMMIT;
RESET ROLE;
ALTER ROLE regress_fast_app BYPASSRLS;
SET ROLE regress_fast_app;
BEGIN; SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01'); ROLLBACK;
RESET ROLE;
ALTER ROLE regress_fast_other BYPASSRLS;
ALTER ROLE regress_fast_app NOBYPASSRLS;
SET ROLE regress_fast_app;
BEGIN; SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01') IS NOT NULL AS entered_again; COMMIT;
RESET ROLE;
SET ROLE regress_fast_other;
BEGIN; SELECT nile.set_tenant('0a0a0a0a-0000-7000-8000-00000000fa01'); ROLLBACK;
RESET ROLE;

-- Clean up.
ALTER SYSTEM RESET nile.token_key;
SELECT pg_reload_conf();
DROP TABLE fast_notes;
SELECT nile.delete_tenant(id, purge => true) FROM nile.tenants WHERE name IN ('Fast A', 'Fast B') ORDER BY name;
DROP ROLE regress_fast_app, regress_fast_other;
