#!/usr/bin/env bash
# scripts/test.sh MAJOR — every test suite of nile_tenancy on one PostgreSQL major:
#   1. unit tests in the server (#[pg_test], `cargo pgrx test`) and plain Rust unit tests
#   2. pg_regress SQL tests (tests/pg_regress, Postgres' own pg_regress)
#   3. multi-session integration tests over real connections (tests/integration) against a throwaway cluster, and
#      through a throwaway PgBouncer in transaction-pooling mode in front of it
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

cleanup() {
  scripts/pgbouncer.sh stop "$work/pgbouncer" >/dev/null 2>&1 || true
  scripts/cluster.sh stop "$work/integration" >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$work" && mkdir -p "$work" && chmod 777 "$work"
# Everything below is also written to $work/test.log, from which the pass/fail totals are counted at the end.
exec > >(tee "$work/test.log") 2>&1

say "unit tests (cargo pgrx test)"
RUST_TEST_THREADS=1 cargo pgrx test "pg$major" "${runas[@]}" --pgdata "$work/pgrx-test"

say "installing the extension and starting a throwaway cluster"
cargo pgrx install --pg-config "$pg_config" >/dev/null
# The earlier releases' install scripts, for the upgrade test (tests/integration/tests/upgrade.rs); cargo pgrx install
# copies only this release's script and the upgrade scripts in sql/.
cp tests/upgrade/nile_tenancy--*.sql "$("$pg_config" --sharedir)/extension/"
port=$(scripts/cluster.sh start "$pg_config" "$work/integration" postgres)

say "pg_regress tests (tests/pg_regress)"
# Postgres' own pg_regress against the cluster above (`cargo pgrx regress` cannot run its cluster as another user).
pg_regress="$("$pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress"
tests=$(cd tests/pg_regress/sql && ls *.sql | sed 's/\.sql$//' | sort | awk '$0 == "setup" {print; next} {rest = rest " " $0} END {print rest}')
if ! "$pg_regress" --host=127.0.0.1 --port="$port" --user=postgres --dbname=nile_regress \
     --inputdir=tests/pg_regress --outputdir="$work/regress" --bindir="$("$pg_config" --bindir)" $tests; then
  cat "$work/regress/regression.diffs" 2>/dev/null | head -n 200
  exit 1
fi

say "integration tests (tests/integration, multi-session; PgBouncer in transaction mode in front of the cluster)"
pgbouncer_port=$(scripts/pgbouncer.sh start "$work/pgbouncer" "$port")
NILE_TEST_PORT=$port NILE_TEST_PGBOUNCER_PORT=$pgbouncer_port NILE_TEST_BINDIR="$("$pg_config" --bindir)" cargo test --manifest-path tests/integration/Cargo.toml -- --test-threads=1

# Totals: cargo's "test result" lines plus pg_regress' summary. `make test-all` adds up the counts files.
passed=$(grep -aoE 'test result: ok\. [0-9]+ passed' "$work/test.log" | awk '{s += $4} END {print s + 0}')
regress=$(grep -aoE 'All [0-9]+ tests passed' "$work/test.log" | awk '{s += $2} END {print s + 0}')
echo "$(( passed + regress )) 0" > "$work/counts"
say "all suites passed in $(( $(date +%s) - started ))s"
echo "pg$major: $(( passed + regress )) passed, 0 failed"
