#!/usr/bin/env bash
# tests/clients/python/run.sh — the Python client suite (issue 18): psycopg 3 (sync, async, pipeline), psycopg_pool,
# SQLAlchemy 2 + Alembic, Django, against a running server, first directly, then through PgBouncer in transaction mode.
#
# Environment: NILE_TEST_PORT (the server, superuser `postgres`, trust), NILE_TEST_PGBOUNCER_PORT (PgBouncer in front
# of it), NILE_TEST_BINDIR (its psql). Optional: NILE_CACHE (setup.sh), PYTEST_ADDOPTS (e.g. -k to pick tests).
# Before each pass it (re)creates its databases clients_py, clients_py_alembic and clients_py_django with the extension
# and examples/role_layout.sql. Ends with exactly one line `clients-python: N passed, M failed` (both passes added up;
# a skipped test counts as failed: every test must run) and exits 0 only if M = 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
: "${NILE_TEST_PORT:?NILE_TEST_PORT: the server's port}"
: "${NILE_TEST_PGBOUNCER_PORT:?NILE_TEST_PGBOUNCER_PORT: the port of PgBouncer in front of it}"
: "${NILE_TEST_BINDIR:?NILE_TEST_BINDIR: the server's bin directory (psql)}"

venv=$("$here/setup.sh" --print-venv)
psql=("$NILE_TEST_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$NILE_TEST_PORT" -U postgres)
databases=(clients_py clients_py_alembic clients_py_django)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fresh_databases() {
  local db
  for db in "${databases[@]}"; do
    "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
    "${psql[@]}" -d "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION nile_tenancy" \
      -f "$repo/examples/role_layout.sql" >/dev/null
  done
}

passed=0 failed=0
for via in direct pgbouncer; do
  if [ "$via" = direct ]; then port=$NILE_TEST_PORT; else port=$NILE_TEST_PGBOUNCER_PORT; fi
  echo "[clients-python] pass '$via': port $port"
  fresh_databases
  set +e
  (
    cd "$here"
    NILE_CLIENT_PORT=$port NILE_CLIENT_VIA=$via NILE_PY_DB=clients_py NILE_PY_DB_ALEMBIC=clients_py_alembic \
      NILE_PY_DB_DJANGO=clients_py_django PYTHONDONTWRITEBYTECODE=1 \
      "$venv/bin/python" -m pytest -q --tb=short -rfEs -p no:cacheprovider --junitxml="$work/$via.xml" -o junit_family=xunit2 .
  )
  set -e
  counts=$("$venv/bin/python" "$here/junit_counts.py" "$work/$via.xml")
  read -r p f <<<"$counts"
  passed=$((passed + p)) failed=$((failed + f))
done

echo "clients-python: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
