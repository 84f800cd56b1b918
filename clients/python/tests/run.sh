#!/usr/bin/env bash
# clients/python/tests/run.sh — the SDK suite (issue 20) against a running server, first directly, then through
# PgBouncer in transaction mode. Same environment and summary as tests/clients/python/run.sh, whose pinned venv it
# uses (psycopg, psycopg_pool, SQLAlchemy, Django, pytest): NILE_TEST_PORT, NILE_TEST_PGBOUNCER_PORT, NILE_TEST_BINDIR.
# Before each pass it (re)creates the database clients_sdk: the extension, examples/role_layout.sql, the operator role
# sdk_admin (nile_admin, pg_monitor, app_user), sdk_token (nile_app, nile.require_token on) and the seed's table users
# made by app_migrator. NILE_SDK_TESTS (default: every file) names the test files to run. Ends with exactly one line
# `clients-sdk: N passed, M failed` (both passes; a skip is a failure).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
: "${NILE_TEST_PORT:?NILE_TEST_PORT: the server's port}"
: "${NILE_TEST_PGBOUNCER_PORT:?NILE_TEST_PGBOUNCER_PORT: the port of PgBouncer in front of it}"
: "${NILE_TEST_BINDIR:?NILE_TEST_BINDIR: the server's bin directory (psql)}"

venv=$("$repo/tests/clients/python/setup.sh" --print-venv)
psql=("$NILE_TEST_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NILE_TEST_PORT" -U postgres)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The token key: the one the server has, else a fresh one for this throwaway server.
key=$("${psql[@]}" -d postgres -Atc "SELECT current_setting('nile.token_key', true)")
if [ -z "$key" ]; then
  key="clients-sdk-suite-token-key-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  "${psql[@]}" -d postgres -c "ALTER SYSTEM SET nile.token_key = '$key'" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 0.5
fi

fresh_database() {
  "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS clients_sdk WITH (FORCE)" -c "CREATE DATABASE clients_sdk" >/dev/null
  "${psql[@]}" -d clients_sdk -c "SET client_min_messages = warning" -c "CREATE EXTENSION nile_tenancy" \
    -f "$repo/examples/role_layout.sql" >/dev/null
  "${psql[@]}" -d clients_sdk >/dev/null <<'SQL'
SET client_min_messages = warning;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'sdk_admin') THEN CREATE ROLE sdk_admin LOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'sdk_token') THEN CREATE ROLE sdk_token LOGIN; END IF;
END
$$;
GRANT nile_admin, pg_monitor, app_user TO sdk_admin;
GRANT nile_app TO sdk_token;
GRANT USAGE ON SCHEMA public TO sdk_token;
ALTER ROLE sdk_token IN DATABASE clients_sdk SET nile.require_token = on;
SET ROLE app_migrator;
CREATE TABLE public.users (
    tenant_id uuid NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    username text NOT NULL,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz,
    is_active boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant_id, id)
);
GRANT SELECT ON public.users TO sdk_token;
SQL
}

passed=0 failed=0
for via in direct pgbouncer; do
  if [ "$via" = direct ]; then port=$NILE_TEST_PORT; else port=$NILE_TEST_PGBOUNCER_PORT; fi
  echo "[clients-sdk] pass '$via': port $port"
  fresh_database
  # The sandbox and the wheel start servers of their own: once per major (the direct pass), the wheel on 18 only.
  extra=()
  [ "$via" = direct ] || extra+=(--ignore=test_sandbox.py --ignore=test_wheel.py)
  [ "$("$NILE_TEST_BINDIR/pg_config" --version | awk '{print int($2)}')" = 18 ] || extra+=(--ignore=test_wheel.py)
  set +e
  (
    cd "$here"
    NILE_CLIENT_PORT=$port NILE_CLIENT_VIA=$via NILE_SDK_DB=clients_sdk NILE_SDK_TOKEN_KEY=$key \
      PYTHONPATH="$repo/clients/python/src" PYTHONDONTWRITEBYTECODE=1 \
      "$venv/bin/python" -m pytest -q --tb=short -rfEs -p no:cacheprovider -p no:nile_tenancy \
      --junitxml="$work/$via.xml" -o junit_family=xunit2 "${extra[@]}" ${NILE_SDK_TESTS:-.}
  )
  set -e
  read -r p f <<<"$("$venv/bin/python" "$repo/tests/clients/python/junit_counts.py" "$work/$via.xml")"
  passed=$((passed + p)) failed=$((failed + f))
done
echo "clients-sdk: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
