#!/usr/bin/env bash
# tests/clients/node/run.sh — the node client suite (issue 18): node-postgres with the tenant middleware, Knex
# migrations and queries, drizzle-kit push / generate + drizzle-orm's migrator, against a real server, run twice:
# directly, and through PgBouncer in transaction mode.
#   env NILE_TEST_PORT            the server (superuser `postgres`, trust authentication, host 127.0.0.1)
#       NILE_TEST_PGBOUNCER_PORT  PgBouncer in transaction mode in front of it (its userlist has app_migrator, app_user)
#       NILE_TEST_BINDIR          the server's bin directory (psql)
# Each pass gets fresh databases (clients_node, clients_node_knex, clients_node_drizzle: dropped first), with the
# extension and examples/role_layout.sql. Ends with one line `clients-node: N passed, M failed`; exit status 0 only if
# every test passed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
: "${NILE_TEST_PORT:?NILE_TEST_PORT (the server port) is required}"
bindir=${NILE_TEST_BINDIR:-}
psql=${bindir:+$bindir/}psql
bouncer=${NILE_TEST_PGBOUNCER_PORT:-}
started=$(date +%s)

"$here/setup.sh" || { echo "clients-node: 0 passed, 1 failed"; exit 1; }

dbs=(clients_node clients_node_knex clients_node_drizzle clients_node_drizzle_push)
su_psql() { PGOPTIONS="-c client_min_messages=warning" "$psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NILE_TEST_PORT" -U postgres "$@"; }

prepare_databases() {
  local db
  for db in "${dbs[@]}"; do
    # FORCE: PgBouncer may still hold server connections to the previous pass's database.
    su_psql -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" || return 1
    su_psql -d "$db" -c 'SET client_min_messages = warning' -c 'CREATE EXTENSION nile_tenancy' || return 1
    # The layout is the subject under test: a failure here is reported, and the tests then show what it breaks.
    su_psql -d "$db" -v ON_ERROR_STOP=0 -f "$repo/examples/role_layout.sql" >/dev/null \
      || echo "[clients-node] examples/role_layout.sql failed on $db" >&2
  done
  # Tokens need a key: the throwaway server gets one if it has none (scripts/test.sh's integration tests set one too).
  if [ -z "$(su_psql -d postgres -Atc "SELECT current_setting('nile.token_key', true)")" ]; then
    su_psql -d postgres -c "ALTER SYSTEM SET nile.token_key = 'clients-node-suite-token-key-0123456789'" \
      -c "SELECT pg_reload_conf()" >/dev/null || return 1
    sleep 0.5
  fi
  # A role under nile.require_token in the first database only (for NT010; PgBouncer's userlist has it too).
  su_psql -d clients_node <<'SQL' || return 1
SET client_min_messages = warning;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'clients_node_token') THEN
    CREATE ROLE clients_node_token LOGIN;
  END IF;
END $$;
GRANT nile_app TO clients_node_token;
ALTER ROLE clients_node_token IN DATABASE clients_node SET nile.require_token = on;
SQL
}

out="$here/.out"
rm -rf "$out" && mkdir -p "$out"
total_pass=0
total_fail=0
run_pass() { # run_pass NAME PORT
  local name=$1 port=$2 tap="$out/$1.tap"
  echo "[clients-node] pass '$name' (port $port)"
  if ! prepare_databases; then
    echo "[clients-node] could not prepare the databases for pass '$name'"
    total_fail=$((total_fail + 1))
    return
  fi
  (
    cd "$here" && NILE_CLIENT_PORT=$port NILE_CLIENT_VIA=$name NILE_CLIENT_OUT="$out/$name" \
      node --test --test-concurrency=3 --test-timeout=90000 \
        --test-reporter=spec --test-reporter-destination=stdout \
        --test-reporter=tap --test-reporter-destination="$tap" \
        test/*.test.js
  )
  local p f c
  p=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$tap" | tail -1)
  f=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$tap" | tail -1)
  c=$(sed -n 's/^# cancelled \([0-9]*\)$/\1/p' "$tap" | tail -1)
  if [ -z "$p" ]; then
    echo "[clients-node] pass '$name': the test runner reported nothing"
    total_fail=$((total_fail + 1))
    return
  fi
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + ${f:-0} + ${c:-0}))
}

run_pass direct "$NILE_TEST_PORT"
if [ -n "$bouncer" ]; then
  run_pass pgbouncer "$bouncer"
else
  echo "[clients-node] NILE_TEST_PGBOUNCER_PORT is not set: the PgBouncer pass cannot run"
  total_fail=$((total_fail + 1))
fi
echo "[clients-node] $(($(date +%s) - started)) s"
echo "clients-node: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
