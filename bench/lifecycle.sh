#!/usr/bin/env bash
# bench/lifecycle.sh [MAJOR] — what the tenant-lifecycle tools cost, each against the hand-written way, in one
# run and in alternating order (A B B A) so that machine drift cancels out:
#   backfill  CALL nile.for_each_tenant(UPDATE ..., 100)  vs  a client-side loop of BEGIN; set_tenant; UPDATE; COMMIT
#             per tenant (one psql session, every statement a round trip)  [and, for scale, one UPDATE of every row in
#             the admin context: not per tenant, no batches, no progress]
#   import    nile.import_schema() of one legacy schema  vs  the same INSERT ... SELECT written by hand, in the
#             tenant's context; once with one owner for both tables (one INSERT ... SELECT, as that owner), once with
#             the legacy table of another owner (the values pass as text through a staging table, src/tenants/import.rs)
#   move      scripts/move_tenant.sh of one tenant into a second database  vs  psql \copy out of the source and
#             \copy into the target as a superuser (no verification, no tenant context, no checksums)
# Prints seconds per run and the ratios tool / hand-written (below 1: the tool is faster).
#
# Environment: BENCH_TENANTS (default 2000), BENCH_ROWS_PER_TENANT (default 50), BENCH_LEGACY_ROWS (default 100000).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
major=${1:-18}
tenants=${BENCH_TENANTS:-2000}
rows=${BENCH_ROWS_PER_TENANT:-50}
legacy_rows=${BENCH_LEGACY_ROWS:-100000}
dir=${BENCH_DIR:-/tmp/nile-tenancy-bench-lifecycle}/pg$major

. bench/lib.sh
bench_cluster "$major" "$dir"
psql_as() { local user=$1 db=$2; shift 2; "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$user" -d "$db" "$@"; }
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
# time_of CMD... — run CMD, print its wall-clock seconds.
time_of() { local t0; t0=$(now); "$@" >/dev/null; seconds "$t0" "$(now)"; }

echo "[bench] loading $tenants tenants x $rows users, and a legacy schema of $legacy_rows rows"
psql_as postgres bench >/dev/null <<SQL
$(bench_tenants_sql "$tenants")
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_admin') THEN CREATE ROLE bench_admin LOGIN; END IF;
END \$\$;
GRANT nile_admin TO bench_admin;
CREATE TABLE bench.users (tenant_id uuid NOT NULL, id int NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
                          last_login_at timestamptz, PRIMARY KEY (tenant_id, id));
INSERT INTO bench.users (tenant_id, id) SELECT bench.tid(t), i FROM generate_series(1, $tenants) t, generate_series(1, $rows) i;
CREATE TABLE bench.items (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL, price numeric NOT NULL,
                          PRIMARY KEY (tenant_id, id));
CREATE SCHEMA legacy;
CREATE TABLE legacy.items (id bigint PRIMARY KEY, name text NOT NULL, price numeric NOT NULL);
INSERT INTO legacy.items SELECT g, 'item ' || g, g / 100.0 FROM generate_series(1, $legacy_rows) g;
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_legacy') THEN CREATE ROLE bench_legacy; END IF;
END \$\$;
CREATE SCHEMA legacy2 AUTHORIZATION bench_legacy;
CREATE TABLE legacy2.items (id bigint PRIMARY KEY, name text NOT NULL, price numeric NOT NULL);
INSERT INTO legacy2.items SELECT * FROM legacy.items;
ALTER TABLE legacy2.items OWNER TO bench_legacy;
GRANT USAGE ON SCHEMA legacy2 TO bench_admin;
GRANT SELECT ON legacy2.items TO bench_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON bench.users, bench.items TO bench_app, bench_admin;
GRANT USAGE ON SCHEMA bench, legacy TO bench_admin;
GRANT SELECT ON legacy.items TO bench_admin;
SELECT nile.create_tenant('legacy ' || n, bench.tid(100000 + n)) FROM generate_series(1, 8) n;
VACUUM ANALYZE;
SQL
psql_as postgres postgres -c "CREATE DATABASE bench_target" >/dev/null
psql_as postgres bench_target >/dev/null <<SQL
CREATE EXTENSION nile_tenancy;
CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO bench_admin;
CREATE TABLE bench.users (tenant_id uuid NOT NULL, id int NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
                          last_login_at timestamptz, PRIMARY KEY (tenant_id, id));
CREATE TABLE bench.items (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL, price numeric NOT NULL,
                          PRIMARY KEY (tenant_id, id));
GRANT SELECT, INSERT, UPDATE, DELETE ON bench.users, bench.items TO bench_admin;
SQL

reset_logins() { psql_as postgres bench -c "UPDATE bench.users SET last_login_at = NULL" -c "VACUUM bench.users"; }
backfill_tool() {
  psql_as bench_admin bench -c "CALL nile.for_each_tenant('UPDATE bench.users SET last_login_at = created_at WHERE last_login_at IS NULL $1', 100)" 2>/dev/null
}
client_loop_sql="$dir/client_loop.sql"
for t in $(seq 1 "$tenants"); do
  printf "BEGIN;\nSELECT nile.set_tenant(bench.tid(%d));\nUPDATE bench.users SET last_login_at = created_at WHERE last_login_at IS NULL;\nCOMMIT;\n" "$t"
done >"$client_loop_sql"
backfill_client() { psql_as bench_admin bench -f "$client_loop_sql"; }
backfill_admin() {
  psql_as bench_admin bench -c "BEGIN" -c "SELECT nile.admin_context('bench')" \
    -c "UPDATE bench.users SET last_login_at = created_at WHERE last_login_at IS NULL" -c "COMMIT"
}

import_tool() { psql_as bench_admin bench -c "SELECT * FROM nile.import_schema('${2:-legacy}', bench.tid(100000 + $1), 'bench')"; }
import_hand() {
  psql_as bench_admin bench -c "BEGIN" -c "SELECT nile.set_tenant(bench.tid(100000 + $1))" \
    -c "INSERT INTO bench.items (id, name, price, tenant_id) SELECT id, name, price, bench.tid(100000 + $1) FROM ${2:-legacy}.items" -c "COMMIT"
}

src="host=127.0.0.1 port=$port user=bench_admin dbname=bench"
dst="host=127.0.0.1 port=$port user=bench_admin dbname=bench_target"
move_tool() { PSQL="$bindir/psql" scripts/move_tenant.sh --from "$src" --to "$dst" --tenant "$1" 2>/dev/null; }
move_hand() {
  psql_as postgres bench_target -c "SELECT nile.create_tenant('moved', '$1')"
  psql_as postgres bench -c "\\copy (SELECT * FROM bench.items WHERE tenant_id = '$1') TO '$dir/items.copy'"
  psql_as postgres bench_target -c "\\copy bench.items FROM '$dir/items.copy'"
}
clear_target() { psql_as postgres bench_target -c "DELETE FROM bench.items" -c "DELETE FROM nile.tenants"; }

declare -A took
run() { # run NAME CMD... — time CMD, append to took[NAME]
  local name=$1; shift
  local s; s=$(time_of "$@")
  took[$name]="${took[$name]:-} $s"
  printf '[bench] %-16s %6s s\n' "$name" "$s"
}

echo "[bench] backfill of $((tenants * rows)) rows over $tenants tenants (A B B A)"
for order in tool client client tool; do
  reset_logins >/dev/null
  # A different statement text per run, so that each for_each_tenant call is a new run, not a resumption.
  if [ "$order" = tool ]; then run backfill_tool backfill_tool "-- $RANDOM"; else run backfill_client backfill_client; fi
done
reset_logins >/dev/null
run backfill_admin backfill_admin

echo "[bench] import of $legacy_rows rows (A B B A, each into a tenant of its own)"
n=0
for order in tool hand hand tool; do
  n=$((n + 1))
  if [ "$order" = tool ]; then run import_tool import_tool "$n"; else run import_hand import_hand "$n"; fi
done

echo "[bench] import of $legacy_rows rows from a legacy table of another owner (A B B A)"
for order in tool hand hand tool; do
  n=$((n + 1))
  if [ "$order" = tool ]; then run import2_tool import_tool "$n" legacy2; else run import2_hand import_hand "$n" legacy2; fi
done

echo "[bench] moving a tenant of $legacy_rows rows to another database (A B B A)"
moved=$(psql_as postgres bench -Atc "SELECT bench.tid(100001)")
for order in tool hand hand tool; do
  clear_target >/dev/null
  if [ "$order" = tool ]; then run move_tool move_tool "$moved"; else run move_hand move_hand "$moved"; fi
done

total() { awk '{s = 0; for (i = 1; i <= NF; i++) s += $i; print s}' <<<"$1"; }
echo
echo "| what | the tool (s, 2 runs) | by hand (s, 2 runs) | tool / by hand |"
echo "| --- | --- | --- | --- |"
echo "| backfill, $tenants tenants | ${took[backfill_tool]} | ${took[backfill_client]} | $(ratio "$(total "${took[backfill_tool]}")" "$(total "${took[backfill_client]}")") |"
echo "| import, $legacy_rows rows | ${took[import_tool]} | ${took[import_hand]} | $(ratio "$(total "${took[import_tool]}")" "$(total "${took[import_hand]}")") |"
echo "| import, $legacy_rows rows, two owners | ${took[import2_tool]} | ${took[import2_hand]} | $(ratio "$(total "${took[import2_tool]}")" "$(total "${took[import2_hand]}")") |"
echo "| move, $legacy_rows rows | ${took[move_tool]} | ${took[move_hand]} | $(ratio "$(total "${took[move_tool]}")" "$(total "${took[move_hand]}")") |"
echo "(one UPDATE of every row in the admin context, for scale: ${took[backfill_admin]} s)"
