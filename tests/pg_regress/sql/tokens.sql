-- Signed tenant tokens: nile.set_tenant_token(), nile.sign_tenant_token(), the superuser-only keys, key changeover,
-- nile.require_token. Keys are set with ALTER SYSTEM (nile.token_key can only come from the configuration files),
-- so this file commits its changes and removes them at the end.
SET client_min_messages = notice;
CREATE ROLE regress_tok_app LOGIN IN ROLE nile_app;
CREATE ROLE regress_tok_admin LOGIN IN ROLE nile_admin;
CREATE ROLE regress_tok_monitor LOGIN IN ROLE pg_monitor;
SELECT nile.create_tenant('Acme', '0a0a0a0a-0000-7000-8000-0000000000a1');
SELECT nile.create_tenant('Globex', '0b0b0b0b-0000-7000-8000-0000000000b2');
SELECT nile.create_tenant('Gone', '0c0c0c0c-0000-7000-8000-0000000000c3');
SELECT nile.delete_tenant('0c0c0c0c-0000-7000-8000-0000000000c3');
CREATE TABLE tok_notes (tenant_id uuid NOT NULL, body text);
GRANT SELECT, INSERT ON tok_notes TO regress_tok_app;
-- A superuser bypasses row-level security: the fixture rows go in directly.
INSERT INTO tok_notes VALUES ('0a0a0a0a-0000-7000-8000-0000000000a1', 'acme note'), ('0b0b0b0b-0000-7000-8000-0000000000b2', 'globex note');

-- No key yet: nothing can be signed or verified.
SELECT nile.sign_tenant_token('0a0a0a0a-0000-7000-8000-0000000000a1', '5 minutes');
-- A key must be long enough; a short one is refused and the setting stays empty.
ALTER SYSTEM SET nile.token_key = 'too-short';
ALTER SYSTEM SET nile.token_key = 'regress-key-one-0123456789abcdef0123456789';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW nile.token_key;

-- Only superusers read the key: others are refused, pg_read_all_settings members see a mask.
\c - regress_tok_app
DO $$ BEGIN
    -- (The message differs between majors; the SQLSTATE does not.)
    BEGIN EXECUTE 'SHOW nile.token_key'; RAISE NOTICE 'SHOW allowed';
    EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'SHOW refused: %', SQLSTATE; END;
    BEGIN PERFORM current_setting('nile.token_key'); RAISE NOTICE 'current_setting allowed';
    EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'current_setting refused: %', SQLSTATE; END;
END $$;
SELECT count(*) AS visible_in_pg_settings FROM pg_settings WHERE name LIKE 'nile.token_key%';
SET nile.token_key = 'regress-key-attacker-0123456789abcdef0123456789';
\c - regress_tok_monitor
SHOW nile.token_key;

-- Signing is for nile_admin (and roles it is granted to).
\c - regress_tok_app
SELECT nile.sign_tenant_token('0a0a0a0a-0000-7000-8000-0000000000a1', '5 minutes');
\c - regress_tok_admin
SELECT nile.sign_tenant_token('0a0a0a0a-0000-7000-8000-0000000000a1', '5 minutes', 'user-17') AS acme_token \gset
SELECT nile.sign_tenant_token('0b0b0b0b-0000-7000-8000-0000000000b2', '5 minutes') AS globex_token \gset
SELECT nile.sign_tenant_token('0a0a0a0a-0000-7000-8000-0000000000a1', '1 second') AS short_token \gset
SELECT nile.sign_tenant_token('0c0c0c0c-0000-7000-8000-0000000000c3', '5 minutes');
SELECT nile.sign_tenant_token('0d0d0d0d-0000-7000-8000-0000000000d4', '5 minutes');
SELECT nile.sign_tenant_token('0a0a0a0a-0000-7000-8000-0000000000a1', '0 seconds');
SELECT nile.sign_tenant_token('0a0a0a0a-0000-7000-8000-0000000000a1', '5 minutes', '');
SELECT split_part(:'acme_token', '.', 1) AS header_is_fixed;

-- A valid token enters its tenant and carries the user id.
\c - regress_tok_app
BEGIN;
SELECT nile.set_tenant_token(:'acme_token');
SELECT nile.current_tenant(), nile.current_user_id();
SELECT body FROM tok_notes;
COMMIT;
SELECT nile.current_tenant() IS NULL AS context_ended_with_transaction, nile.current_user_id() IS NULL AS user_ended_too;
-- Outside a transaction block, is_local => true protects nothing and is refused.
SELECT nile.set_tenant_token(:'acme_token');
-- nile.set_tenant() clears the token's user id.
BEGIN;
SELECT nile.set_tenant_token(:'acme_token');
SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-0000000000b2');
SELECT nile.current_user_id() IS NULL AS user_id_cleared;
-- Nobody sets the user id by hand.
SAVEPOINT s; SET nile.user_id = 'admin'; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT set_config('nile.user_id', 'admin', true); ROLLBACK TO SAVEPOINT s;
ROLLBACK;

-- Every way a token can be wrong gets its own error.
BEGIN;
SAVEPOINT s; SELECT nile.set_tenant_token('not a token'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.set_tenant_token(NULL); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT nile.set_tenant_token(''); ROLLBACK TO SAVEPOINT s;
-- Globex's payload under Acme's signature (the classic tampering): refused as altered.
SAVEPOINT s;
SELECT nile.set_tenant_token(split_part(:'acme_token', '.', 1) || '.' || split_part(:'globex_token', '.', 2) || '.' || split_part(:'acme_token', '.', 3));
ROLLBACK TO SAVEPOINT s;
-- A flipped signature character.
SAVEPOINT s;
SELECT nile.set_tenant_token(split_part(:'acme_token', '.', 1) || '.' || split_part(:'acme_token', '.', 2) || '.'
    || CASE left(split_part(:'acme_token', '.', 3), 1) WHEN 'A' THEN 'B' ELSE 'A' END || substr(split_part(:'acme_token', '.', 3), 2));
ROLLBACK TO SAVEPOINT s;
-- "alg": "none" with the signature stripped.
SAVEPOINT s;
SELECT nile.set_tenant_token(translate(encode(convert_to('{"alg":"none","typ":"JWT"}', 'UTF8'), 'base64'), '+/=', '-_') || '.' || split_part(:'globex_token', '.', 2) || '.');
ROLLBACK TO SAVEPOINT s;
ROLLBACK;
-- An expired token (its time printed as #).
SELECT pg_sleep(1.1);
SELECT set_config('regress.short_token', :'short_token', false) IS NOT NULL AS kept;
BEGIN;
DO $$ BEGIN
    PERFORM nile.set_tenant_token(current_setting('regress.short_token'));
EXCEPTION WHEN SQLSTATE 'NT009' THEN
    RAISE NOTICE '%', regexp_replace(SQLERRM, '[0-9]', '#', 'g');
END $$;
ROLLBACK;

-- Key changeover: a new key makes tokens of the old one unknown, until the old key is kept as previous.
\c - postgres
ALTER SYSTEM SET nile.token_key = 'regress-key-two-0123456789abcdef0123456789';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\c - regress_tok_app
BEGIN;
SAVEPOINT s; SELECT nile.set_tenant_token(:'acme_token'); ROLLBACK TO SAVEPOINT s;
ROLLBACK;
\c - postgres
ALTER SYSTEM SET nile.token_key_previous = 'regress-key-one-0123456789abcdef0123456789';
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
\c - regress_tok_app
BEGIN;
SELECT nile.set_tenant_token(:'acme_token');
SELECT body FROM tok_notes;
ROLLBACK;

-- nile.require_token: a role that may only use tokens, and cannot switch that off itself.
\c - postgres
ALTER ROLE regress_tok_app SET nile.require_token = on;
\c - regress_tok_app
SHOW nile.require_token;
BEGIN;
SAVEPOINT s; SELECT nile.set_tenant('0b0b0b0b-0000-7000-8000-0000000000b2'); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SET nile.require_token = off; ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; SELECT set_config('nile.require_token', 'off', true); ROLLBACK TO SAVEPOINT s;
SAVEPOINT s; RESET nile.require_token; ROLLBACK TO SAVEPOINT s;
SELECT nile.set_tenant_token(:'globex_token');
SELECT body FROM tok_notes;
ROLLBACK;
ALTER ROLE regress_tok_app SET nile.require_token = off;   -- not by the role itself

-- Clean up.
\c - postgres
ALTER SYSTEM RESET nile.token_key;
ALTER SYSTEM RESET nile.token_key_previous;
SELECT pg_reload_conf();
DROP TABLE tok_notes;
SELECT nile.delete_tenant(id, purge => true) FROM nile.tenants WHERE name IN ('Acme', 'Globex', 'Gone') ORDER BY name;
DROP ROLE regress_tok_app, regress_tok_admin, regress_tok_monitor;
