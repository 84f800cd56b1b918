#!/usr/bin/env bash
# bench/usage.sh [MAJOR] — what usage metering costs: the same pgbench workloads through the tenant path with
# nile.track_usage off and on, alternating in ABBA order (off on, on off, off on ...) so that machine drift cancels out.
#
# Workloads (pgbench -M prepared, as a non-owner application role, 1 000 tenants, a random tenant per transaction):
#   select: BEGIN; set_tenant; SELECT one row by key; COMMIT
#   update: BEGIN; set_tenant; UPDATE one row by key; SELECT it; INSERT a history row; COMMIT (pgbench's simple-update)
# each with BENCH_CLIENT_COUNTS clients (default "2 8"). Prints per-round TPS and the machine's busy CPU time per
# transaction (from /proc/stat: server and pgbench together), the medians, and the medians of the per-round ratios
# on / off (for CPU, above 1 means tracking costs CPU).
#
# Environment: BENCH_ROUNDS (default 8, even for ABBA), BENCH_SECONDS per run (default 10), BENCH_CLIENT_COUNTS (default "2 8"),
#              BENCH_TENANTS (default 1000), BENCH_ROWS_PER_TENANT (default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:-18}
rounds=${BENCH_ROUNDS:-8}
seconds=${BENCH_SECONDS:-10}
client_counts=${BENCH_CLIENT_COUNTS:-2 8}
tenants=${BENCH_TENANTS:-1000}
rows=${BENCH_ROWS_PER_TENANT:-100}
dir=${BENCH_DIR:-/tmp/nile-tenancy-bench-usage}/pg$major

. bench/lib.sh
bench_cluster "$major" "$dir"
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -d bench)

echo "[bench] loading $tenants tenants x $rows rows"
"${psql[@]}" -U postgres >/dev/null <<SQL
$(bench_tenants_sql $tenants)
CREATE TABLE bench.items (tenant_id uuid NOT NULL, id bigint NOT NULL, balance bigint NOT NULL DEFAULT 0,
                          PRIMARY KEY (tenant_id, id));
CREATE TABLE bench.history (tenant_id uuid NOT NULL, id bigint NOT NULL, delta bigint NOT NULL,
                            at timestamptz NOT NULL DEFAULT now());
INSERT INTO bench.items (tenant_id, id) SELECT bench.tid(t), i FROM generate_series(1, $tenants) t, generate_series(1, $rows) i;
SELECT nile.enable_tenancy('bench.items'), nile.enable_tenancy('bench.history');
VACUUM ANALYZE bench.items;
GRANT SELECT, UPDATE ON bench.items TO bench_app;
GRANT INSERT ON bench.history TO bench_app;
SQL

cat >"$dir/select.sql" <<SQL
\set t random(1, $tenants)
\set k random(1, $rows)
BEGIN;
SELECT nile.set_tenant(bench.tid(:t));
SELECT balance FROM bench.items WHERE id = :k;
COMMIT;
SQL
cat >"$dir/update.sql" <<SQL
\set t random(1, $tenants)
\set k random(1, $rows)
\set d random(-5000, 5000)
BEGIN;
SELECT nile.set_tenant(bench.tid(:t));
UPDATE bench.items SET balance = balance + :d WHERE id = :k;
SELECT balance FROM bench.items WHERE id = :k;
INSERT INTO bench.history (id, delta) VALUES (:k, :d);
COMMIT;
SQL

set_tracking() { # on | off: for every new session, through the configuration file
  "${psql[@]}" -U postgres -c "ALTER SYSTEM SET nile.track_usage = $1" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 0.5
  [ "$("${psql[@]}" -U bench_app -At -c 'SHOW nile.track_usage')" = "$1" ] \
    || { echo "[bench] nile.track_usage did not become $1" >&2; exit 1; }
}

busy_jiffies() { # the whole machine's busy CPU time so far (user, nice, system, irq, softirq, steal), in jiffies
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

run() { # run WORKLOAD CLIENTS -> prints "tps busy-CPU-microseconds-per-transaction"
  local before after out
  before=$(busy_jiffies)
  out=$("$bindir/pgbench" -n -M prepared -c "$2" -j "$2" -T "$seconds" -h 127.0.0.1 -p "$port" -U bench_app \
    -f "$dir/$1.sql" bench 2>/dev/null)
  after=$(busy_jiffies)
  awk -v busy=$((after - before)) -v hz="$(getconf CLK_TCK)" '
    /^number of transactions actually processed: / {txns = $6}
    /^tps = / {tps = $3}
    END {printf "%.2f %.2f\n", tps, busy / hz * 1e6 / txns}' <<<"$out"
}

# Sanity: with tracking on, the tenants' rows count the statements.
set_tracking on
"$bindir/pgbench" -n -M prepared -c 1 -t 100 -h 127.0.0.1 -p "$port" -U bench_app -f "$dir/select.sql" bench >/dev/null 2>&1
counted=$("${psql[@]}" -U postgres -At -c "SELECT sum(statements) FROM nile.tenant_usage WHERE kind = 'tenant'")
[ "$counted" -ge 100 ] || { echo "[bench] sanity check failed: $counted statements counted" >&2; exit 1; }

results=()
for workload in select update; do
  for clients in $client_counts; do
    echo "[bench] $workload, $clients clients: warm-up"
    set_tracking off; run "$workload" "$clients" >/dev/null
    declare -a off_tps=() on_tps=() ratios=() off_cpu=() on_cpu=() cpu_ratios=()
    for r in $(seq 1 "$rounds"); do
      # ABBA: off first in odd rounds, on first in even ones, so that a drift over the run (table bloat in the update
      # shape, a checkpoint) does not always fall on the same variant.
      if [ $((r % 2)) -eq 1 ]; then
        set_tracking off; read -r off offc < <(run "$workload" "$clients")
        set_tracking on; read -r on onc < <(run "$workload" "$clients")
      else
        set_tracking on; read -r on onc < <(run "$workload" "$clients")
        set_tracking off; read -r off offc < <(run "$workload" "$clients")
      fi
      off_tps+=("$off"); on_tps+=("$on"); off_cpu+=("$offc"); on_cpu+=("$onc")
      ratios+=("$(awk -v a="$off" -v b="$on" 'BEGIN {printf "%.4f", b / a}')")
      cpu_ratios+=("$(awk -v a="$offc" -v b="$onc" 'BEGIN {printf "%.4f", b / a}')")
      awk -v r="$r" -v a="$off" -v b="$on" -v ac="$offc" -v bc="$onc" 'BEGIN {
        printf "[bench]   round %d: off %s tps %s us/txn, on %s tps %s us/txn, tps ratio %.3f, CPU ratio %.3f\n",
               r, a, ac, b, bc, b / a, bc / ac}'
    done
    results+=("| $workload | $clients | $(median "${off_tps[@]}") | $(median "${on_tps[@]}") | **$(printf '%.3f' "$(median "${ratios[@]}")")** | $(printf '%s\n' "${ratios[@]}" | sort -n | head -1) – $(printf '%s\n' "${ratios[@]}" | sort -n | tail -1) | $(median "${off_cpu[@]}") | $(median "${on_cpu[@]}") | **$(printf '%.3f' "$(median "${cpu_ratios[@]}")")** |")
  done
done

echo
echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}'), $(nproc) cores, $tenants tenants, $rounds rounds x ${seconds}s per variant"
echo
echo "| workload | clients | tracking off, median tps | tracking on, median tps | median of the per-round tps ratios on / off | range | busy CPU per transaction off, µs | on, µs | median of the per-round CPU ratios on / off |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${results[@]}"
