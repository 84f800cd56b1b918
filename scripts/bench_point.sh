#!/usr/bin/env bash
# scripts/bench_point.sh [MAJOR] — point read through nile_tenancy's generated policy vs the same read with a
# hand-written `WHERE tenant_id = ...` on an identical table without row-level security; then the same comparison
# for a report that reads every row of one large tenant (the per-row cost of the policy).
#
# Both variants have the same transaction shape (BEGIN; SELECT nile.set_tenant(..); <read>; COMMIT) and run as the
# same non-owner application role, with pgbench -M prepared, alternating A B A B ... so that machine drift cancels
# out. Prints per-round TPS, the medians and the ratio policy / hand-written.
#
# Environment: BENCH_ROUNDS (default 5), BENCH_SECONDS per run (default 15), BENCH_CLIENTS (default 2),
#              BENCH_TENANTS (default 1000), BENCH_ROWS_PER_TENANT (default 100),
#              BENCH_BIG_TENANT_ROWS (default 1000000: the rows of the extra tenant the scan reads).
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:-15}
rounds=${BENCH_ROUNDS:-5}
seconds=${BENCH_SECONDS:-15}
clients=${BENCH_CLIENTS:-2}
tenants=${BENCH_TENANTS:-1000}
rows=${BENCH_ROWS_PER_TENANT:-100}
big_rows=${BENCH_BIG_TENANT_ROWS:-1000000}
big=$((tenants + 1))
dir=${BENCH_DIR:-/tmp/nile-tenancy-bench}/pg$major

. scripts/bench_lib.sh
bench_cluster "$major" "$dir"
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -d bench)

echo "[bench] loading $tenants tenants x $rows rows"
"${psql[@]}" -U postgres >/dev/null <<SQL
$(bench_tenants_sql $big)
CREATE TABLE bench.items (tenant_id uuid NOT NULL, id bigint NOT NULL, payload text NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE bench.items_plain (LIKE bench.items INCLUDING ALL);
INSERT INTO bench.items SELECT bench.tid(t), i, md5(t || ':' || i) FROM generate_series(1, $tenants) t, generate_series(1, $rows) i;
INSERT INTO bench.items SELECT bench.tid($big), i, md5('big:' || i) FROM generate_series(1, $big_rows) i;
INSERT INTO bench.items_plain SELECT * FROM bench.items;
SELECT nile.enable_tenancy('bench.items');
ALTER TABLE bench.items_plain ADD FOREIGN KEY (tenant_id) REFERENCES nile.tenants (id);
VACUUM ANALYZE bench.items, bench.items_plain;
GRANT SELECT ON bench.items, bench.items_plain TO bench_app;
SQL

cat >"$dir/policy.sql" <<SQL
\set t random(1, $tenants)
\set k random(1, $rows)
BEGIN;
SELECT nile.set_tenant(bench.tid(:t));
SELECT payload FROM bench.items WHERE id = :k;
COMMIT;
SQL
cat >"$dir/handwritten.sql" <<SQL
\set t random(1, $tenants)
\set k random(1, $rows)
BEGIN;
SELECT nile.set_tenant(bench.tid(:t));
SELECT payload FROM bench.items_plain WHERE tenant_id = bench.tid(:t) AND id = :k;
COMMIT;
SQL

cat >"$dir/scan_policy.sql" <<SQL
BEGIN;
SELECT nile.set_tenant(bench.tid($big));
SELECT count(*), sum(length(payload)) FROM bench.items;
COMMIT;
SQL
cat >"$dir/scan_handwritten.sql" <<SQL
BEGIN;
SELECT nile.set_tenant(bench.tid($big));
SELECT count(*), sum(length(payload)) FROM bench.items_plain WHERE tenant_id = bench.tid($big);
COMMIT;
SQL

# Sanity: the policy variant sees exactly one row per key, and only its tenant's.
"${psql[@]}" -U bench_app -At -c "BEGIN; SELECT nile.set_tenant(bench.tid(7)); SELECT count(*) = $rows FROM bench.items; COMMIT;" | grep -qx t \
  || { echo "[bench] sanity check failed: the policy variant does not see exactly one tenant" >&2; exit 1; }

run() { # run VARIANT [CLIENTS] -> prints tps
  local c=${2:-$clients}
  "$bindir/pgbench" -n -M prepared -c "$c" -j "$c" -T "$seconds" -h 127.0.0.1 -p "$port" -U bench_app \
    -f "$dir/$1.sql" bench 2>/dev/null | awk '/^tps = / {printf "%.2f\n", $3}'
}

echo "[bench] warm-up"
run policy >/dev/null; run handwritten >/dev/null
declare -a tps_policy tps_hand ratios
for r in $(seq 1 "$rounds"); do
  h=$(run handwritten); p=$(run policy)
  tps_hand+=("$h"); tps_policy+=("$p")
  ratios+=("$(awk -v h="$h" -v p="$p" 'BEGIN {printf "%.4f", p / h}')")
  awk -v r="$r" -v h="$h" -v p="$p" 'BEGIN {printf "[bench] round %d: hand-written %s tps, policy %s tps, ratio %.3f\n", r, h, p, p / h}'
done
mh=$(median "${tps_hand[@]}"); mp=$(median "${tps_policy[@]}")
echo
echo "| PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') | $(nproc) cores | $clients clients | $rounds x ${seconds}s per variant | median tps |"
echo "| --- | --- |"
echo "| hand-written WHERE tenant_id = ... (no RLS) | $mh |"
echo "| nile_tenancy policy | $mp |"
awk -v h="$mh" -v p="$mp" 'BEGIN {printf "| ratio of the medians, policy / hand-written | %.3f |\n", p / h}'
printf '| **median of the per-round ratios** (each round runs both back to back) | **%.3f** |\n' "$(median "${ratios[@]}")"

echo
echo "[bench] whole-tenant report: one tenant with $big_rows rows, 1 client, $rounds rounds"
for v in scan_policy scan_handwritten; do
  echo "[bench] $v plan:"
  "${psql[@]}" -U bench_app -At <<SQL | sed 's/^/    /'
BEGIN;
SELECT nile.set_tenant(bench.tid($big)) \\gset
$(sed -n 3p "$dir/$v.sql" | sed 's/^/EXPLAIN (COSTS OFF) /')
COMMIT;
SQL
done
declare -a scan_ratios
for r in $(seq 1 "$rounds"); do
  h=$(run scan_handwritten 1); p=$(run scan_policy 1)
  scan_ratios+=("$(awk -v h="$h" -v p="$p" 'BEGIN {printf "%.4f", p / h}')")
  echo "[bench] scan round $r: hand-written $h, policy $p reports/s"
done
printf "| **whole-tenant report ($big_rows rows), median of the per-round ratios** | **%.3f** |\n" "$(median "${scan_ratios[@]}")"
