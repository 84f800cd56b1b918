#!/usr/bin/env bash
# scripts/test.sh MAJOR — every test suite of nile_tenancy on one PostgreSQL major:
#   1. unit tests in the server (#[pg_test], `cargo pgrx test`) and plain Rust unit tests
#   2. pg_regress SQL tests (tests/pg_regress, `cargo pgrx regress`)
#   3. multi-session integration tests over real connections (tests/integration) against a throwaway cluster
# Every cluster it starts runs as the OS user `postgres` and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:?usage: scripts/test.sh MAJOR}
pg_config=$(scripts/setup.sh "$major" | awk -v m="pg$major" '$1 == m {print $2}')
work=${NILE_TEST_DIR:-/tmp/nile-tenancy-test}/pg$major
runas=()
[ "$(id -u)" -eq 0 ] && runas=(--runas postgres)
started=$(date +%s)
say() { printf '\n\033[1m[test pg%s]\033[0m %s\n' "$major" "$*"; }

cleanup() { scripts/cluster.sh stop "$work/integration" >/dev/null 2>&1 || true; }
trap cleanup EXIT

rm -rf "$work" && mkdir -p "$work" && chmod 777 "$work"

say "unit tests (cargo pgrx test)"
RUST_TEST_THREADS=1 cargo pgrx test "pg$major" "${runas[@]}" --pgdata "$work/pgrx-test"

say "pg_regress tests (cargo pgrx regress)"
cargo pgrx regress "pg$major" "${runas[@]}" --pgdata "$work/pgrx-regress" --resetdb \
  --postgresql-conf "shared_preload_libraries='nile_tenancy'"

say "integration tests (tests/integration, multi-session)"
cargo pgrx install --pg-config "$pg_config" >/dev/null
port=$(scripts/cluster.sh start "$pg_config" "$work/integration" postgres)
NILE_TEST_PORT=$port NILE_TEST_BINDIR=$("$pg_config" --bindir) \
  cargo test --manifest-path tests/integration/Cargo.toml -- --test-threads=1

say "all suites passed in $(( $(date +%s) - started ))s"
