#!/usr/bin/env bash
# bench/writes.sh [MAJOR] — what issue 18 costs on the write path, each side by side with its baseline in one
# run, in alternating rounds so that machine drift cancels out; prints every round, the medians and the ratios:
#   a. inserts through the generated policies, whose WITH CHECK now ends in `OR nile.policy_foreign_row(tenant_id)`
#      (evaluated only for a row of another tenant, to raise NT005), against a twin table whose policies have the
#      0.2.0 WITH CHECK: pgbench, BENCH_CLIENTS clients, transactions of set_tenant() + a 100-row INSERT;
#   b. ADD FOREIGN KEY between two tenant tables of BENCH_ROWS rows each: run by the tables' owner, for whom the
#      validation goes row by row (src/tables/fk_validation.rs), against the same statement run by a superuser, for whom
#      Postgres keeps its one-query check.
#
# Environment: BENCH_ROUNDS (default 5), BENCH_SECONDS per pgbench run (default 10), BENCH_CLIENTS (default 2),
#              BENCH_ROWS (default 200000), BENCH_KEEP (set: leave the cluster running afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:-18}
rounds=${BENCH_ROUNDS:-5}
seconds=${BENCH_SECONDS:-10}
clients=${BENCH_CLIENTS:-2}
rows=${BENCH_ROWS:-200000}
dir=${BENCH_DIR:-/tmp/nile-tenancy-bench-writes}/pg$major

. bench/lib.sh
bench_cluster "$major" "$dir"
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d bench)

"${psql[@]}" >/dev/null <<SQL
ALTER SYSTEM SET synchronous_commit = off;
ALTER SYSTEM SET max_wal_size = '8GB';
ALTER SYSTEM SET checkpoint_timeout = '1h';
SELECT pg_reload_conf();
$(bench_tenants_sql 10)
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_owner') THEN CREATE ROLE bench_owner LOGIN; END IF;
END \$\$;
GRANT nile_table_owner TO bench_owner;
GRANT USAGE, CREATE ON SCHEMA bench TO bench_owner;
SET ROLE bench_owner;
CREATE TABLE bench.w_new (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, payload text,
                          PRIMARY KEY (tenant_id, id));
CREATE TABLE bench.w_old (LIKE bench.w_new INCLUDING ALL);
CREATE TABLE bench.parents (tenant_id uuid NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE bench.children (tenant_id uuid NOT NULL, id bigint NOT NULL, parent_id bigint NOT NULL,
                             PRIMARY KEY (tenant_id, id));
GRANT SELECT, INSERT ON bench.w_new, bench.w_old TO bench_app;
RESET ROLE;
-- The baseline: the 0.2.0 WITH CHECK, put back behind the event trigger's back (it refuses ALTER POLICY otherwise).
ALTER EVENT TRIGGER nile_ddl_command_end DISABLE;
ALTER POLICY nile_tenant_insert ON bench.w_old WITH CHECK (tenant_id = (SELECT nile.policy_write_tenant()));
ALTER POLICY nile_tenant_update ON bench.w_old WITH CHECK (tenant_id = (SELECT nile.policy_write_tenant()));
ALTER EVENT TRIGGER nile_ddl_command_end ENABLE;
-- Rows for the foreign key, written past the policies as the superuser.
INSERT INTO bench.parents SELECT bench.tid(1 + n % 10), n FROM generate_series(1, $rows) n;
INSERT INTO bench.children SELECT bench.tid(1 + n % 10), n, n FROM generate_series(1, $rows) n;
VACUUM ANALYZE bench.parents, bench.children;
SQL
echo "[bench] WITH CHECK of bench.w_new: $("${psql[@]}" -At -c "SELECT pg_get_expr(polwithcheck, polrelid) FROM pg_policy WHERE polrelid = 'bench.w_new'::regclass AND polname = 'nile_tenant_insert'")"
echo "[bench] WITH CHECK of bench.w_old: $("${psql[@]}" -At -c "SELECT pg_get_expr(polwithcheck, polrelid) FROM pg_policy WHERE polrelid = 'bench.w_old'::regclass AND polname = 'nile_tenant_insert'")"

work=$(mktemp -d)
trap 'rm -rf "$work"; [ -n "${BENCH_KEEP:-}" ] || scripts/cluster.sh stop "$dir" >/dev/null 2>&1 || true' EXIT
for t in new old; do
  cat >"$work/insert_$t.sql" <<SQL
\set n random(1, 10)
BEGIN;
SELECT nile.set_tenant(bench.tid(:n));
INSERT INTO bench.w_$t (payload) SELECT 'payload' FROM generate_series(1, 100);
COMMIT;
SQL
done
tps() { # tps new|old
  "$bindir/pgbench" -n -h 127.0.0.1 -p "$port" -U bench_app -c "$clients" -j "$clients" -T "$seconds" \
    -f "$work/insert_$1.sql" bench 2>/dev/null | awk '/^tps = / {printf "%.1f", $3}'
}
echo "[bench] a. $rounds alternating rounds of ${seconds}s, $clients clients, 100-row inserts (transactions per second)"
new=() old=()
for r in $(seq "$rounds"); do
  o=$(tps old); n=$(tps new)
  old+=("$o"); new+=("$n")
  echo "  round $r: 0.2.0 WITH CHECK $o tps, with the NT005 half $n tps"
done
m_old=$(median "${old[@]}"); m_new=$(median "${new[@]}")
echo "[bench] a. medians: 0.2.0 $m_old tps, 0.3.0 $m_new tps; ratio 0.3.0 / 0.2.0 = $(awk -v a="$m_new" -v b="$m_old" 'BEGIN {printf "%.3f", a / b}')"

add_fk() { # add_fk ROLE: seconds for ADD FOREIGN KEY run by ROLE, then the constraint is dropped again
  local start end
  start=$(date +%s.%N)
  "${psql[@]}" -c "SET ROLE $1; ALTER TABLE bench.children ADD CONSTRAINT children_parent_fk
                     FOREIGN KEY (tenant_id, parent_id) REFERENCES bench.parents (tenant_id, id)" >/dev/null
  end=$(date +%s.%N)
  "${psql[@]}" -c "ALTER TABLE bench.children DROP CONSTRAINT children_parent_fk" >/dev/null
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.3f", b - a}'
}
echo "[bench] b. $rounds alternating rounds of ADD FOREIGN KEY over $rows child rows (seconds)"
owner=() su=()
for r in $(seq "$rounds"); do
  s=$(add_fk postgres); o=$(add_fk bench_owner)
  su+=("$s"); owner+=("$o")
  echo "  round $r: superuser (one query) ${s}s, table owner (row by row) ${o}s"
done
m_su=$(median "${su[@]}"); m_owner=$(median "${owner[@]}")
echo "[bench] b. medians: superuser ${m_su}s, owner ${m_owner}s; ratio owner / superuser = $(awk -v a="$m_owner" -v b="$m_su" 'BEGIN {printf "%.2f", a / b}')"
