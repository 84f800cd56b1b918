#!/usr/bin/env bash
# bench/isolation.sh [MAJOR] — `make bench`: what tenant isolation costs, side by side against hand-written alternatives.
#
# Starts its own throwaway cluster (bench/lib.sh: release build, preloaded, as for `make run`), loads one
# dataset into four identical tables and runs pgbench (-M prepared, as the non-owner role bench_app) custom scripts
# for each variant, alternating the variants run by run in ABBA order (a b1 b2 c d, then d c b2 b1 a, ...) so that
# machine drift cancels out:
#   a   no row-level security: the explicit `WHERE tenant_id = $1` of a hand-written query (the baseline)
#   b1  hand-written policy  USING (tenant_id = current_setting('app.tenant_id')::uuid)
#   b2  the same, wrapped:   USING (tenant_id = (SELECT current_setting('app.tenant_id')::uuid))
#   c   nile_tenancy (nile.enable_tenancy), usage tracking off
#   d   nile_tenancy, usage tracking on (the role bench_metered, which has nile.track_usage = on)
# Every transaction has the same shape: BEGIN; <enter the tenant>; <the statement>; COMMIT. Variants a, b1 and b2
# enter with set_config('app.tenant_id', ..., true) (what SET LOCAL does), c and d with nile.set_tenant(...).
#
# The dataset: BENCH_TENANTS tenants and BENCH_ROWS rows; tenant 1 holds 30 % of the rows, the others share the rest
# equally. Workloads (see docs/performance.md): point, range, insert, update, mixed (80/15/5), switching (a random
# tenant of all in every transaction), zipf (tenants drawn from a Zipf distribution, tenant 1 the most frequent),
# pipelined (the point read as one round trip: \startpipeline, the four statements, \endpipeline; a b2 c d only),
# scan (a report over all of tenant 1's rows, one client), scan90 (the same report over a second dataset, 1.1 ×
# BENCH_ROWS rows of which tenant 1 holds 90 %: bench.big90_a, _b2 and _nile; a b2 c only; variant a names the
# tenant as a literal, so that it gets the plan a literal gets, a sequential scan) and noisy (one client scans
# tenant 1 in a loop while the others run point reads for the other tenants; their p99 latency is what counts).
#
# It also times nile.set_tenant() against set_config(..., true) / SET LOCAL: server-side per call (a PL/pgSQL loop)
# and per round trip (pgbench).
#
# Writes bench/results.md and bench/results.png (bench/report.py); raw figures stay in $BENCH_DIR.
#
# Besides the run-by-run rounds, each workload but noisy is also measured interleaved (see interleave()): all the
# variants in the same connections, transaction by transaction. There tracking is set per transaction, by a second
# call in the enter statement: c_off and d_on, and a_off and b2_off (a and b2 with the same second call, d_on's
# baselines), so that the variants compared enter with statements of the same shape.
# The machine's speed moves by ±10-20 % from one run to the next here; interleaving cancels that out.
#
# Client scaling (scale_run, scale_mix, scale_sliced): the point read and mixed with BENCH_SCALING_CLIENTS clients
# (16, 32, 64; pgbench threads: at most one per core), for a, b2, c and d run by run in ABBA order (tps, p99 from the
# per-transaction logs), all four mixed transaction by transaction as interleave() does, and c against d
# time-sliced: one script whose enter statement turns tracking off or on by the server's clock (even / odd slices of
# BENCH_SLICE_MS), so that all clients run the same variant at the same moment. At these client counts the CPU is
# saturated and a transaction mostly waits for the CPU, which every variant shares: a transaction-by-transaction mix
# shows only a fraction of a variant's cost, while the slices' throughput shows all of it, and the slices alternate
# too fast for the machine's drift to matter; the on/off goal is judged on them. A sampler (bench.sample_waits(),
# one backend) reads pg_stat_activity every BENCH_SAMPLE_MS ms during each of these runs and counts the pgbench
# backends by state and wait event; the goal's figure is the share of the active ones' samples that wait on the usage
# store's LWLock (tranche `nile_tenancy usage`).
#
# Run time: BENCH_QUICK=1 about 3 minutes once built; the full run about 48 minutes (25-30 for the workloads at 2
# clients, about 13 for scaling, 5 for pipelined, scan90 and their dataset; the interleaved rounds of scan and scan90
# run four times as long as the others).
#
# Environment: BENCH_QUICK=1 (small datasets, 2 rounds of 1 s, 1 interleaved, scaling of point at 16 and 64 clients),
#   BENCH_ROUNDS (default 6), BENCH_INTERLEAVED_ROUNDS (default 6), BENCH_SECONDS per run (default 4), BENCH_WARMUP
#   seconds per variant and workload (default 2),
#   BENCH_CLIENTS (default 2), BENCH_TENANTS (default 10000), BENCH_ROWS (default 1000000),
#   BENCH_WORKLOADS (default: all, in the order above), BENCH_OUT (default bench/),
#   BENCH_SCALING_CLIENTS (default "16 32 64"; "" skips scaling), BENCH_SCALING_WORKLOADS (default "point mixed"),
#   BENCH_SCALING_ROUNDS (default 4), BENCH_SLICE_MS (default 100), BENCH_SAMPLE_MS (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:-18}
if [ -n "${BENCH_QUICK:-}" ]; then
  rounds=${BENCH_ROUNDS:-2} interleaved_rounds=${BENCH_INTERLEAVED_ROUNDS:-1} seconds=${BENCH_SECONDS:-1}
  warmup=${BENCH_WARMUP:-0} tenants=${BENCH_TENANTS:-1000} rows=${BENCH_ROWS:-100000} loop_calls=20000
  scaling_clients=(${BENCH_SCALING_CLIENTS-16 64}) scaling_workloads=(${BENCH_SCALING_WORKLOADS:-point})
  scaling_rounds=${BENCH_SCALING_ROUNDS:-2}
else
  rounds=${BENCH_ROUNDS:-6} interleaved_rounds=${BENCH_INTERLEAVED_ROUNDS:-6} seconds=${BENCH_SECONDS:-4}
  warmup=${BENCH_WARMUP:-2} tenants=${BENCH_TENANTS:-10000} rows=${BENCH_ROWS:-1000000} loop_calls=200000
  scaling_clients=(${BENCH_SCALING_CLIENTS-16 32 64}) scaling_workloads=(${BENCH_SCALING_WORKLOADS:-point mixed})
  scaling_rounds=${BENCH_SCALING_ROUNDS:-4}
fi
clients=${BENCH_CLIENTS:-2}
workloads=(${BENCH_WORKLOADS:-point range insert update mixed switching zipf pipelined scan scan90 noisy})
slice_ms=${BENCH_SLICE_MS:-100} sample_ms=${BENCH_SAMPLE_MS:-10}
cores=$(nproc)
variants=(a b1 b2 c d)
out=${BENCH_OUT:-bench}
dir=${BENCH_DIR:-/tmp/nile-tenancy-bench-all}/pg$major
big_rows=$((rows * 3 / 10))
small_rows=$(((rows - big_rows) / (tenants - 1)))
[ "$tenants" -ge 2 ] && [ "$small_rows" -ge 20 ] \
  || { echo "[bench] need at least 2 tenants and 20 rows per small tenant ($tenants tenants, $rows rows)" >&2; exit 1; }
# The scan90 dataset: 1.1 × BENCH_ROWS rows, 90 % of them tenant 1's, the rest shared by tenants 2..100.
big90_rows=$((rows * 11 / 10))
big90_big=$((big90_rows * 9 / 10))
big90_tenants=$((tenants < 100 ? tenants : 100))
big90_small=$(((big90_rows - big90_big) / (big90_tenants - 1)))
max_scaling=0
for c in "${scaling_clients[@]}"; do [ "$c" -le "$max_scaling" ] || max_scaling=$c; done
started=$(date +%s)

. bench/lib.sh
bench_cluster "$major" "$dir"
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -d bench)
# Every table fits in shared memory, so that no variant reads from the OS cache what another finds in its buffers
# (the two datasets take about 1.1 GB at the default size). max_connections: the scaling runs' clients, the wait
# sampler and psql (scripts/cluster.sh sets 200).
"${psql[@]}" -U postgres -c "ALTER SYSTEM SET shared_buffers = '2GB'" -c "ALTER SYSTEM SET nile.track_usage = off" \
  -c "ALTER SYSTEM SET max_wal_size = '4GB'" -c "ALTER SYSTEM SET checkpoint_timeout = '1h'" \
  -c "ALTER SYSTEM SET max_connections = $((max_scaling + 20 > 200 ? max_scaling + 20 : 200))" >/dev/null
scripts/cluster.sh stop "$dir" >/dev/null 2>&1
port=$(scripts/cluster.sh start "$pg_config" "$dir" bench)
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -d bench)

echo "[bench] loading $tenants tenants, $rows rows (tenant 1: $big_rows rows, the others $small_rows each) into 4" \
  "tables; $big90_rows rows (tenant 1: $big90_big, $((big90_tenants - 1)) others $big90_small each) into 3"
"${psql[@]}" -U postgres >/dev/null <<SQL
$(bench_tenants_sql "$tenants")
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_metered') THEN CREATE ROLE bench_metered LOGIN; END IF;
END \$\$;
GRANT bench_app TO bench_metered;
ALTER ROLE bench_metered SET nile.track_usage = on;
-- The tables of variants a, b1 and b2 must stay plain: only bench.items_nile is enrolled, explicitly, below.
SET nile.auto_enable = off;
SET client_min_messages = error;
CREATE TABLE bench.items_a (tenant_id uuid NOT NULL REFERENCES nile.tenants (id), id bigint NOT NULL,
                            balance bigint NOT NULL DEFAULT 0, payload text NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO bench.items_a (tenant_id, id, payload)
    SELECT bench.tid(1), i, md5('1:' || i) FROM generate_series(1, $big_rows) i;
INSERT INTO bench.items_a (tenant_id, id, payload)
    SELECT bench.tid(t), i, md5(t || ':' || i) FROM generate_series(2, $tenants) t, generate_series(1, $small_rows) i;
CREATE TABLE bench.items_b1 (LIKE bench.items_a INCLUDING ALL, FOREIGN KEY (tenant_id) REFERENCES nile.tenants (id));
CREATE TABLE bench.items_b2 (LIKE bench.items_a INCLUDING ALL, FOREIGN KEY (tenant_id) REFERENCES nile.tenants (id));
CREATE TABLE bench.items_nile (LIKE bench.items_a INCLUDING ALL);
INSERT INTO bench.items_b1 SELECT * FROM bench.items_a;
INSERT INTO bench.items_b2 SELECT * FROM bench.items_a;
INSERT INTO bench.items_nile SELECT * FROM bench.items_a;
-- Inserted rows take ids from a sequence per table, above every loaded id.
CREATE SEQUENCE bench.ids_a START 1000000000; CREATE SEQUENCE bench.ids_b1 START 1000000000;
CREATE SEQUENCE bench.ids_b2 START 1000000000; CREATE SEQUENCE bench.ids_nile START 1000000000;
ALTER TABLE bench.items_b1 ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON bench.items_b1
    USING (tenant_id = current_setting('app.tenant_id')::uuid)
    WITH CHECK (tenant_id = current_setting('app.tenant_id')::uuid);
ALTER TABLE bench.items_b2 ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON bench.items_b2
    USING (tenant_id = (SELECT current_setting('app.tenant_id')::uuid))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id')::uuid));
SELECT nile.enable_tenancy('bench.items_nile');
GRANT SELECT, INSERT, UPDATE ON bench.items_a, bench.items_b1, bench.items_b2, bench.items_nile TO bench_app;
GRANT USAGE ON SEQUENCE bench.ids_a, bench.ids_b1, bench.ids_b2, bench.ids_nile TO bench_app;
GRANT SET ON PARAMETER nile.track_usage TO bench_app;
-- No autovacuum or autoanalyze in the middle of a run (the runs are short; HOT pruning keeps the updates cheap).
ALTER TABLE bench.items_a SET (autovacuum_enabled = off); ALTER TABLE bench.items_b1 SET (autovacuum_enabled = off);
ALTER TABLE bench.items_b2 SET (autovacuum_enabled = off); ALTER TABLE bench.items_nile SET (autovacuum_enabled = off);
VACUUM ANALYZE bench.items_a, bench.items_b1, bench.items_b2, bench.items_nile;
-- scan90: tenant 1 holds 90 % of the rows (a, b2 and nile only).
CREATE TABLE bench.big90_a (LIKE bench.items_a INCLUDING ALL, FOREIGN KEY (tenant_id) REFERENCES nile.tenants (id));
INSERT INTO bench.big90_a (tenant_id, id, payload)
    SELECT bench.tid(1), i, md5('1:' || i) FROM generate_series(1, $big90_big) i;
INSERT INTO bench.big90_a (tenant_id, id, payload)
    SELECT bench.tid(t), i, md5(t || ':' || i)
      FROM generate_series(2, $big90_tenants) t, generate_series(1, $big90_small) i;
CREATE TABLE bench.big90_b2 (LIKE bench.big90_a INCLUDING ALL, FOREIGN KEY (tenant_id) REFERENCES nile.tenants (id));
CREATE TABLE bench.big90_nile (LIKE bench.big90_a INCLUDING ALL);
INSERT INTO bench.big90_b2 SELECT * FROM bench.big90_a;
INSERT INTO bench.big90_nile SELECT * FROM bench.big90_a;
ALTER TABLE bench.big90_b2 ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON bench.big90_b2
    USING (tenant_id = (SELECT current_setting('app.tenant_id')::uuid))
    WITH CHECK (tenant_id = (SELECT current_setting('app.tenant_id')::uuid));
SELECT nile.enable_tenancy('bench.big90_nile');
GRANT SELECT ON bench.big90_a, bench.big90_b2, bench.big90_nile TO bench_app;
ALTER TABLE bench.big90_a SET (autovacuum_enabled = off); ALTER TABLE bench.big90_b2 SET (autovacuum_enabled = off);
ALTER TABLE bench.big90_nile SET (autovacuum_enabled = off);
VACUUM ANALYZE bench.big90_a, bench.big90_b2, bench.big90_nile;
CHECKPOINT;
SQL

table_of() { case ${1%_off} in a) echo bench.items_a ;; b1) echo bench.items_b1 ;; b2) echo bench.items_b2 ;; *) echo bench.items_nile ;; esac; }
big90_of() { case $1 in a) echo bench.big90_a ;; b1 | b2) echo bench.big90_b2 ;; *) echo bench.big90_nile ;; esac; }
# The variants a workload runs (run by run), and those its interleaved runs mix.
variants_of() { case $1 in pipelined) echo a b2 c d ;; scan90) echo a b2 c ;; *) echo "${variants[@]}" ;; esac; }
mix_of() {
  case $1 in
    pipelined) echo a b2 c c_off d_on a_off b2_off ;;
    scan90) echo a b2 c ;;
    *) echo a b1 b2 c c_off d_on a_off b2_off ;;
  esac
}
seq_of() { case ${1%_off} in a | b1 | b2) echo "bench.ids_${1%_off}" ;; *) echo bench.ids_nile ;; esac; }
role_of() { if [ "$1" = d ]; then echo bench_metered; else echo bench_app; fi; }
enter_of() { # the statement that enters tenant :t
  case $1 in
    a | b1 | b2) echo "SELECT set_config('app.tenant_id', bench.tid(:t)::text, true);" ;;
    # a and b2 with d_on's shape (interleaved runs only): the same second call, leaving tracking off, so that d_on is
    # compared with statements of the same shape (d / a and d / b2 in the report).
    a_off | b2_off) echo "SELECT set_config('app.tenant_id', bench.tid(:t)::text, true)," \
                         "set_config('nile.track_usage', 'off', true);" ;;
    # c and d in one connection (interleaved runs only): the same statement turns tracking off or on for the
    # transaction (bench_app may, through GRANT SET ON PARAMETER), so the two cost the same but for the tracking.
    c_off) echo "SELECT nile.set_tenant(bench.tid(:t)), set_config('nile.track_usage', 'off', true);" ;;
    d_on) echo "SELECT nile.set_tenant(bench.tid(:t)), set_config('nile.track_usage', 'on', true);" ;;
    # c and d time-sliced (scaling only): tracking off in the even slices of $slice_ms ms since the epoch, on in the
    # odd ones, by the transaction's start on the server's clock (now()), the one pgbench's log shares.
    cd) echo "SELECT nile.set_tenant(bench.tid(:t)), set_config('nile.track_usage', CASE WHEN" \
             "floor(extract(epoch FROM now()) * 1000 / $slice_ms)::bigint % 2 = 0 THEN 'off' ELSE 'on' END, true);" ;;
    *) echo "SELECT nile.set_tenant(bench.tid(:t));" ;;
  esac
}
pred_of() { if [ "${1%_off}" = a ]; then echo "tenant_id = bench.tid(:t) AND "; fi; }

# Tenant choices: one tenant per connection (of the small ones), any tenant, or Zipf-distributed (1 the most frequent).
own_tenant="\\set t 2 + (:client_id * 7919) % $((tenants - 1))"
any_tenant="\\set t random(1, $tenants)"
zipf_tenant="\\set t random_zipfian(1, $tenants, 1.1)"
small_key="\\set k random(1, $small_rows)"
any_key="\\set k random(1, CASE WHEN :t = 1 THEN $big_rows ELSE $small_rows END)"

# script VARIANT KIND TENANT-CHOICE [KEY-CHOICE] -> a pgbench script on stdout; the pipelined kind is the point read
# with its four statements in one pipeline (one round trip).
script() {
  local v=$1 kind=$2 choice=$3 t p body pipeline=
  t=$(table_of "$v") p=$(pred_of "$v")
  [ "$kind" = pipelined ] && kind=point pipeline=1
  echo "$choice"
  case $kind in
    point) echo "${4:-$small_key}"; body="SELECT payload FROM $t WHERE ${p}id = :k;" ;;
    range) echo "\\set k random(1, $((small_rows - 19)))"; body="SELECT id, payload FROM $t WHERE ${p}id BETWEEN :k AND :k + 19;" ;;
    insert) body="INSERT INTO $t (tenant_id, id, payload) VALUES (bench.tid(:t), nextval('$(seq_of "$v")'), md5(random()::text));" ;;
    update) echo "$small_key"; body="UPDATE $t SET balance = balance + 1 WHERE ${p}id = :k;" ;;
    scan) body="SELECT count(*), sum(length(payload)), sum(balance) FROM $t WHERE ${p}true;" ;;
    # Variant a names tenant 1 as a literal: with a parameter, -M prepared would switch to the generic plan (the
    # estimate for an average tenant) after five executions.
    scan90) p=${p//:t/1}
            body="SELECT count(*), sum(length(payload)), sum(balance) FROM $(big90_of "$v") WHERE ${p}true;" ;;
  esac
  [ -z "$pipeline" ] || echo '\startpipeline'
  printf 'BEGIN;\n%s\n%s\nCOMMIT;\n' "$(enter_of "$v")" "$body"
  [ -z "$pipeline" ] || echo '\endpipeline'
}

for v in "${variants[@]}" c_off d_on cd a_off b2_off; do
  script "$v" point "$own_tenant" >"$dir/point_$v.sql"
  script "$v" pipelined "$own_tenant" >"$dir/pipelined_$v.sql"
  script "$v" scan90 "\\set t 1" >"$dir/scan90_$v.sql"
  script "$v" range "$own_tenant" >"$dir/range_$v.sql"
  script "$v" insert "$own_tenant" >"$dir/insert_$v.sql"
  script "$v" update "$own_tenant" >"$dir/update_$v.sql"
  script "$v" point "$any_tenant" "$any_key" >"$dir/switching_$v.sql"
  script "$v" point "$zipf_tenant" "$any_key" >"$dir/zipf_$v.sql"
  script "$v" scan "\\set t 1" >"$dir/scan_$v.sql"
  script "$v" point "\\set t random(2, $tenants)" >"$dir/victim_$v.sql"
done

# Sanity: under every variant, tenant 2 sees exactly its own rows, and the plans are the ones we mean to compare.
: >"$dir/plans.txt"
for v in "${variants[@]}"; do
  t=$(table_of "$v")
  where_t=""; [ "$v" = a ] && where_t=" WHERE tenant_id = bench.tid(2)"
  seen=$("${psql[@]}" -U "$(role_of "$v")" -At -c "BEGIN" -c "$(enter_of "$v" | sed 's/:t/2/')" -c "SELECT count(*) FROM $t$where_t" -c "COMMIT" | tail -n1)
  [ "$seen" = "$small_rows" ] || { echo "[bench] sanity check failed: variant $v sees $seen rows of tenant 2, not $small_rows" >&2; exit 1; }
  for w in point scan; do
    # The script's statement (third line after the \set lines) for tenant 1 and key 42.
    statement=$(grep -v '^\\' "$dir/${w}_$v.sql" | sed -n 3p | sed 's/:t/1/g; s/:k/42/g')
    {
      echo "== $v $w: $statement"
      "${psql[@]}" -U "$(role_of "$v")" -At -c "BEGIN" -c "$(enter_of "$v" | sed 's/:t/1/')" \
        -c "EXPLAIN (COSTS OFF) $statement" -c "COMMIT" | tail -n +2 | sed 's/^/    /'
    } >>"$dir/plans.txt"
  done
done
# The same for scan90: tenant 1's rows under a, b2 and c, and the plan of the report in the variant's context (what
# psql plans for it; pgbench's prepared statement is planned in the same context at its first execution).
: >"$dir/plans90.txt"
for v in $(variants_of scan90); do
  statement=$(grep -v '^\\' "$dir/scan90_$v.sql" | sed -n 3p)
  seen=$("${psql[@]}" -U "$(role_of "$v")" -At -c "BEGIN" -c "$(enter_of "$v" | sed 's/:t/1/')" -c "$statement" \
    -c "COMMIT" | tail -n1 | cut -d'|' -f1)
  [ "$seen" = "$big90_big" ] \
    || { echo "[bench] sanity check failed: variant $v sees $seen of tenant 1's rows (scan90)" >&2; exit 1; }
  {
    echo "== $v scan90: $statement"
    "${psql[@]}" -U "$(role_of "$v")" -At -c "BEGIN" -c "$(enter_of "$v" | sed 's/:t/1/')" \
      -c "EXPLAIN (COSTS OFF) $statement" -c "COMMIT" | tail -n +2 | sed 's/^/    /'
  } >>"$dir/plans90.txt"
done

# abba ROUND ITEM... -> the items in order for odd rounds and reversed for even ones (ABBA: drift over the run does
# not always fall on the same item).
abba() {
  local r=$1 i; shift
  local items=("$@")
  if [ $((r % 2)) -eq 1 ]; then printf '%s\n' "${items[@]}"; else for ((i = ${#items[@]} - 1; i >= 0; i--)); do echo "${items[i]}"; done; fi
}

# pgbench_as ROLE CLIENTS LOG PGBENCH-ARGS... — one pgbench run of $seconds against the bench database, output in LOG;
# fails loudly if pgbench failed or a client aborted. One pgbench thread per client, at most one per core.
pgbench_as() {
  local role=$1 c=$2 log=$3; shift 3
  if ! "$bindir/pgbench" -n -M prepared -c "$c" -j $((c < cores ? c : cores)) -T "$seconds" -h 127.0.0.1 -p "$port" \
       -U "$role" "$@" bench \
       >"$log" 2>&1 || grep -q 'aborted' "$log"; then
    echo "[bench] pgbench failed ($log):" >&2; tail -n 20 "$log" >&2; exit 1
  fi
}

# workload_files ARRAY WORKLOAD VARIANT — append the pgbench -f arguments of one variant's workload to ARRAY: the
# weighted point, update and insert scripts for mixed, else the workload's one script.
workload_files() {
  local -n into=$1
  if [ "$2" = mixed ]; then
    into+=(-f "$dir/point_$3.sql@80" -f "$dir/update_$3.sql@15" -f "$dir/insert_$3.sql@5")
  else
    into+=(-f "$dir/${2}_$3.sql")
  fi
}

# run SCRIPT-BASE VARIANT CLIENTS [extra pgbench args] -> prints tps
run() {
  local base=$1 v=$2 c=$3 files=(); shift 3
  workload_files files "$base" "$v"
  pgbench_as "$(role_of "$v")" "$c" "$dir/pgbench.log" "${files[@]}" "$@"
  awk '/^tps = / {printf "%.2f\n", $3}' "$dir/pgbench.log"
}

# noisy VARIANT -> p99 latency in ms of the point reads that run beside one client scanning tenant 1 in a loop
noisy() {
  local v=$1 heavy_pid
  rm -f "$dir"/victim_log*
  pgbench_as "$(role_of "$v")" 1 "$dir/heavy.log" -f "$dir/scan_$v.sql" &
  heavy_pid=$!
  run victim "$v" "$clients" -l --log-prefix="$dir/victim_log" >/dev/null
  wait "$heavy_pid" || exit 1
  cat "$dir"/victim_log* | awk '{print $3}' | sort -n \
    | awk '{a[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f\n", a[i] / 1000}'
}

measure() { # measure WORKLOAD VARIANT -> the run's figure
  case $1 in
    scan | scan90) run "$1" "$2" 1 ;;
    noisy) noisy "$2" ;;
    *) run "$1" "$2" "$clients" ;;
  esac
}

# mean_latencies LOG-PREFIX SCRIPTS-PER-VARIANT VARIANT... -> "variant mean-latency-µs" per variant, from pgbench's
# per-transaction logs (field 3: latency in µs, field 4: the script's number; scripts are given in variant order).
mean_latencies() {
  local prefix=$1 per=$2; shift 2
  cat "$prefix"* | awk -v per="$per" -v names="$*" '
    BEGIN {n = split(names, v, " ")}
    {i = int($4 / per) + 1; sum[i] += $3; count[i]++}
    END {for (i = 1; i <= n; i++) printf "%s %.3f\n", v[i], sum[i] / count[i]}'
}

# interleave WORKLOAD ROUND: the variants in the same connections, pgbench choosing one of their scripts at random for
# every transaction, so that all meet the same machine at the same moments. a, b1, b2 and c as in the rounds, and
# c_off / d_on: c and d whose first statement also sets nile.track_usage for the transaction, and a_off / b2_off: a and
# b2 whose first statement has the same second call (leaving tracking off), d_on's baselines in the report (mix_of:
# no b1 for pipelined, only a, b2 and c for scan90). Appends the mean latency of each to interleaved.tsv.
interleave() {
  local w=$1 r=$2 c=$clients files=() v mixed=($(mix_of "$1"))
  # The reports take 60-200 ms each and run on one client: four times as long a run, so that each variant gets a few
  # dozen of them per round rather than a dozen (or, once, none: 2026-12-06's full run), which pgbench_as reads
  # through bash's dynamic scope.
  local seconds=$seconds
  case $w in scan | scan90) c=1 seconds=$((seconds * 4)) ;; esac
  for v in "${mixed[@]}"; do workload_files files "$w" "$v"; done
  rm -f "$dir"/il_*
  pgbench_as bench_app "$c" "$dir/pgbench.log" "${files[@]}" -l --log-prefix="$dir/il_mix"
  # Each script is two arguments (-f PATH); every variant has the same number of scripts.
  mean_latencies "$dir/il_mix" $(( ${#files[@]} / 2 / ${#mixed[@]} )) "${mixed[@]}" | while read -r v us; do printf '%s\tmix\t%s\t%s\t%s\n' "$w" "$v" "$r" "$us"; done >>"$il"
}

# same_size: the write workloads insert rows (ids from 1 000 000 000) into the four tables, about twice as many into
# bench.items_nile (c and d both write there, c, c_off and d_on in the interleaved runs), and updates move rows to
# the tables' ends: before a workload that reads all of a tenant, the inserted rows are deleted and the tables
# rewritten (VACUUM FULL keeps the order of the rows: tenant 1's stay together), so that every variant scans a table
# of the same size; then read once, back into shared memory (the rewrite bypasses it).
same_size() {
  local v
  echo "[bench] deleting the inserted rows and rewriting the tables, so that all are the same size again"
  for v in a b1 b2 nile; do
    "${psql[@]}" -U postgres -c "DELETE FROM bench.items_$v WHERE id >= 1000000000" -c "VACUUM FULL bench.items_$v" \
      -c "SELECT count(*) FROM bench.items_$v" >/dev/null
  done
  "${psql[@]}" -U postgres -c "CHECKPOINT"
}

raw=$dir/raw.tsv il=$dir/interleaved.tsv written=
printf 'workload\tvariant\tround\tvalue\n' >"$raw"
printf 'workload\tmeasure\tvariant\tround\tmean_us\n' >"$il"
for w in "${workloads[@]}"; do
  case $w in
    insert | update | mixed) written=1 ;;
    scan | noisy) if [ -n "$written" ]; then same_size; written=; fi ;;
  esac
  if [ "$warmup" -gt 0 ]; then
    echo "[bench] $w: warm-up"
    for v in $(variants_of "$w"); do (seconds=$warmup; measure "$w" "$v" >/dev/null); done
  fi
  for r in $(seq 1 "$rounds"); do
    line="[bench] $w round $r:"
    for v in $(abba "$r" $(variants_of "$w")); do
      value=$(measure "$w" "$v")
      printf '%s\t%s\t%s\t%s\n' "$w" "$v" "$r" "$value" >>"$raw"
      line+=" $v $value"
    done
    echo "$line"
    if [ "$w" != noisy ] && [ "$r" -le "$interleaved_rounds" ]; then
      interleave "$w" "$r"
      echo "[bench] $w round $r, interleaved (mean µs): $(awk -v w="$w" -v r="$r" '$1 == w && $4 == r {printf "%s %s %s ", $2, $3, $5}' "$il")"
    fi
  done
done

# Client scaling (see the header). The wait sampler: one backend (postgres, which may read every backend's wait
# event) reads pg_stat_activity every $sample_ms ms until the pgbench run it watches has ended, and counts the
# pgbench backends by state and wait event ('running' when there is none: on a CPU or waiting for one), by time slice
# in the time-sliced runs, and the sampling instants (state '-', wait '(instants)'); one transaction per sample, so
# that it holds back no horizon; the counts stay in its variables until the end.
"${psql[@]}" -U postgres >/dev/null <<'SQL'
CREATE UNLOGGED TABLE bench.wait_samples (workload text, clients int, kind text, variant text, round int, state text,
                                          wait text, samples bigint);
CREATE PROCEDURE bench.sample_waits(workload text, clients int, kind text, variant text, round int, every_ms int,
                                    slice_ms int, give_up_s int) LANGUAGE plpgsql AS $$
DECLARE
    counts jsonb := '{}';
    give_up timestamptz := clock_timestamp() + give_up_s * interval '1 second';
    seen boolean := false;
    present bigint;
    slice text;
    k text;
    r record;
BEGIN
    LOOP
        PERFORM pg_stat_clear_snapshot();
        slice := CASE WHEN slice_ms = 0 THEN variant
                      WHEN floor(extract(epoch FROM clock_timestamp()) * 1000 / slice_ms)::bigint % 2 = 0 THEN 'c_off'
                      ELSE 'd_on' END;
        SELECT count(*) INTO present FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND application_name = 'pgbench' AND datname = current_database();
        EXIT WHEN (seen AND present = 0) OR clock_timestamp() > give_up;
        seen := seen OR present > 0;
        FOR r IN SELECT coalesce(state, 'starting') || E'\t'
                        || coalesce(wait_event_type || ':' || wait_event, 'running') AS wait, count(*) AS n
                   FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND application_name = 'pgbench'
                    AND datname = current_database()
                  GROUP BY 1
                  UNION ALL SELECT E'-\t(instants)', 1 WHERE seen LOOP
            k := slice || E'\t' || r.wait;
            counts := counts || jsonb_build_object(k, coalesce((counts ->> k)::bigint, 0) + r.n);
        END LOOP;
        COMMIT;
        PERFORM pg_sleep(every_ms / 1000.0);
    END LOOP;
    INSERT INTO bench.wait_samples
        SELECT workload, clients, kind, split_part(key, E'\t', 1), round, split_part(key, E'\t', 2),
               split_part(key, E'\t', 3), value::bigint
          FROM jsonb_each_text(counts);
    COMMIT;
END $$;
SQL

# sampled WORKLOAD CLIENTS KIND VARIANT ROUND SLICE-MS -- COMMAND...: COMMAND (one pgbench run) while
# bench.sample_waits() samples the wait events of its backends.
sampled() {
  local args="'$1', $2, '$3', '$4', $5, $sample_ms, $6, $((seconds + 10))" sampler; shift 7
  "${psql[@]}" -U postgres -c "CALL bench.sample_waits($args)" >/dev/null &
  sampler=$!
  "$@"
  wait "$sampler" || { echo "[bench] the wait sampler failed" >&2; exit 1; }
}

# latency_stats: "GROUP LATENCY-µs" lines on stdin -> "GROUP COUNT MEAN-µs P99-ms" per group.
latency_stats() {
  sort -k1,1 -k2,2n | awk '
    function flush() {
      if (n) { i = int(n * 0.99); if (i < 1) i = 1; printf "%s %d %.3f %.3f\n", g, n, sum / n, a[i] / 1000 }
    }
    $1 != g {flush(); g = $1; n = 0; sum = 0}
    {a[++n] = $2; sum += $2}
    END {flush()}'
}

# scaled WORKLOAD CLIENTS ROUND KIND VARIANT SECONDS: append the figures of the per-transaction logs $dir/sc_log*,
# grouped as "GROUP LATENCY-µs" lines on stdin, to scaling.tsv (tps: the group's transactions / SECONDS, or pgbench's
# own figure for a run by run).
scaled() {
  local w=$1 c=$2 r=$3 kind=$4 variant=$5 secs=$6 tps
  tps=$(awk '/^tps = / {print $3}' "$dir/pgbench.log")
  latency_stats | while read -r v n mean p99; do
    [ "$kind" = run ] || tps=$(awk -v n="$n" -v s="$secs" 'BEGIN {printf "%.2f", n / s}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$c" "$kind" "$v" "$r" "$tps" "$n" "$mean" "$p99"
  done >>"$sc"
}

# scale_run WORKLOAD CLIENTS ROUND VARIANT -> tps: one run by run, its per-transaction log in scaling.tsv.
scale_run() {
  local w=$1 c=$2 r=$3 v=$4 files=()
  workload_files files "$w" "$v"
  rm -f "$dir"/sc_log*
  sampled "$w" "$c" run "$v" "$r" 0 -- \
    pgbench_as "$(role_of "$v")" "$c" "$dir/pgbench.log" "${files[@]}" -l --log-prefix="$dir/sc_log"
  cat "$dir"/sc_log* | awk -v v="$v" '{print v, $3}' | scaled "$w" "$c" "$r" run "$v" "$seconds"
  awk '/^tps = / {printf "%.0f\n", $3}' "$dir/pgbench.log"
}

# scale_mix WORKLOAD CLIENTS ROUND: a, b2, c_off and d_on in the same connections, transaction by transaction (as
# interleave() does); the figures per variant from the per-transaction log (field 4: the script's number).
scale_mix() {
  local w=$1 c=$2 r=$3 files=() v mixed=(a b2 c_off d_on)
  for v in "${mixed[@]}"; do workload_files files "$w" "$v"; done
  rm -f "$dir"/sc_log*
  sampled "$w" "$c" mix mix "$r" 0 -- pgbench_as bench_app "$c" "$dir/pgbench.log" "${files[@]}" -l \
    --log-prefix="$dir/sc_log"
  cat "$dir"/sc_log* \
    | awk -v per=$(( ${#files[@]} / 2 / ${#mixed[@]} )) -v names="${mixed[*]}" '
        BEGIN {split(names, v, " ")}
        {print v[int($4 / per) + 1], $3}' \
    | scaled "$w" "$c" "$r" mix - "$seconds"
}

# scale_sliced WORKLOAD CLIENTS ROUND: c and d time-sliced (the cd scripts: tracking off in even slices of $slice_ms
# ms, on in odd ones), twice as long as a run by run (the goal's figure: more slices). A transaction belongs to the
# slice it started in (its end in the log minus its latency); only whole slices count, as many of each kind, so that
# each kind's transactions / its time is its throughput.
scale_sliced() {
  local w=$1 c=$2 r=$3 files=() slices
  workload_files files "$w" cd
  rm -f "$dir"/sc_log*
  (seconds=$((seconds * 2))
   sampled "$w" "$c" sliced sliced "$r" "$slice_ms" -- pgbench_as bench_app "$c" "$dir/pgbench.log" "${files[@]}" \
     -l --log-prefix="$dir/sc_log")
  cat "$dir"/sc_log* | awk -v us=$((slice_ms * 1000)) -v out="$dir/slices" '
    {end = $5 * 1000000 + $6; p = int((end - $3) / us); slice[NR] = p; lat[NR] = $3
     if (NR == 1 || p < lo) lo = p; e = int(end / us); if (e > hi) hi = e}
    END {first = lo + 1; last = hi - 1; if ((last - first + 1) % 2) last--
         for (i = 1; i <= NR; i++)
           if (slice[i] >= first && slice[i] <= last) print (slice[i] % 2 ? "d_on" : "c_off"), lat[i]
         print last - first + 1 > out}' >"$dir/sliced.txt"
  slices=$(cat "$dir/slices")
  [ "$slices" -ge 2 ] \
    || { echo "[bench] a time-sliced run has fewer than 2 whole slices of $slice_ms ms" >&2; exit 1; }
  scaled "$w" "$c" "$r" sliced - "$(awk -v n="$slices" -v ms="$slice_ms" 'BEGIN {print n / 2 * ms / 1000}')" \
    <"$dir/sliced.txt"
}

sc=$dir/scaling.tsv
printf 'workload\tclients\tkind\tvariant\tround\ttps\ttransactions\tmean_us\tp99_ms\n' >"$sc"
for w in "${scaling_workloads[@]}"; do
  [ "${#scaling_clients[@]}" -gt 0 ] || break
  if [ "$warmup" -gt 0 ]; then
    echo "[bench] scaling $w: warm-up"
    files=(); workload_files files "$w" cd
    (seconds=$warmup; pgbench_as bench_app "${scaling_clients[0]}" "$dir/pgbench.log" "${files[@]}")
  fi
  for c in "${scaling_clients[@]}"; do
    for r in $(seq 1 "$scaling_rounds"); do
      line="[bench] scaling $w, $c clients, round $r: tps"
      for v in $(abba "$r" a b2 c d); do
        value=$(scale_run "$w" "$c" "$r" "$v")
        line+=" $v $value"
      done
      scale_mix "$w" "$c" "$r"
      scale_sliced "$w" "$c" "$r"
      echo "$line; $(awk -v w="$w" -v c="$c" -v r="$r" '
        $1 == w && $2 == c && $5 == r && $3 == "mix" {m = m sprintf(" %s %.0f", $4, $8)}
        $1 == w && $2 == c && $5 == r && $3 == "sliced" {s = s sprintf(" %s %.0f", $4, $6)}
        END {printf "mixed, mean µs:%s; time-sliced, tps:%s", m, s}' "$sc")"
    done
  done
done
"${psql[@]}" -U postgres -c "COPY (SELECT * FROM bench.wait_samples ORDER BY 1, 2, 3, 4, 5, 6, 7) TO STDOUT
                             WITH (FORMAT csv, DELIMITER E'\t', HEADER)" >"$dir/waits.tsv"

# nile.set_tenant() against set_config(..., true), the function behind SET LOCAL.
echo "[bench] set_tenant: server-side cost per call ($loop_calls calls per run) and per round trip"
"${psql[@]}" -U postgres >/dev/null <<'SQL'
CREATE FUNCTION bench.time_calls(kind text, calls int, tenants int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    ids uuid[] := ARRAY(SELECT bench.tid(n) FROM generate_series(1, tenants) n);
    texts text[] := ARRAY(SELECT bench.tid(n)::text FROM generate_series(1, tenants) n);
    started timestamptz;
BEGIN
    started := clock_timestamp();
    IF kind = 'nothing' THEN
        FOR i IN 1..calls LOOP PERFORM texts[1 + i % tenants]; END LOOP;
    ELSIF kind = 'set_config' THEN
        FOR i IN 1..calls LOOP PERFORM set_config('app.tenant_id', texts[1 + i % tenants], true); END LOOP;
    ELSE
        FOR i IN 1..calls LOOP PERFORM nile.set_tenant(ids[1 + i % tenants]); END LOOP;
    END IF;
    RETURN extract(epoch FROM clock_timestamp() - started) * 1e6 / calls;
END $$;
GRANT EXECUTE ON FUNCTION bench.time_calls(text, int, int) TO bench_app;
SQL
uuid7=$("${psql[@]}" -U postgres -At -c "SELECT bench.tid(7)")
printf 'BEGIN;\nSET LOCAL app.tenant_id = %s;\nCOMMIT;\n' "'$uuid7'" >"$dir/rt_set_local.sql"
printf 'BEGIN;\nSELECT nile.set_tenant(%s);\nCOMMIT;\n' "'$uuid7'" >"$dir/rt_set_tenant.sql"
printf 'BEGIN;\nCOMMIT;\n' >"$dir/rt_nothing.sql"
st=$dir/set_tenant.tsv
printf 'measure\tkind\tround\tvalue\n' >"$st"
for r in $(seq 1 "$rounds"); do
  for k in $(abba "$r" nothing set_config set_tenant); do
    us=$("${psql[@]}" -U bench_app -At -c "BEGIN" -c "SELECT bench.time_calls('$k', $loop_calls, $tenants)" -c "COMMIT" | sed -n 1p)
    printf 'per_call\t%s\t%s\t%s\n' "$k" "$r" "$us" >>"$st"
  done
  for k in $(abba "$r" nothing set_local set_tenant); do
    pgbench_as bench_app 1 "$dir/pgbench.log" -f "$dir/rt_$k.sql"
    printf 'round_trip\t%s\t%s\t%s\n' "$k" "$r" "$(awk '/^latency average = / {printf "%.2f", $4 * 1000}' "$dir/pgbench.log")" >>"$st"
  done
done

cat >"$dir/meta.env" <<EOF
postgres=$("$bindir/postgres" --version | awk '{print $3}')
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cores=$(nproc)
memory_gib=$(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)
tenants=$tenants
rows=$rows
big_rows=$big_rows
small_rows=$small_rows
rounds=$rounds
interleaved_rounds=$interleaved_rounds
seconds=$seconds
clients=$clients
quick=${BENCH_QUICK:-}
loop_calls=$loop_calls
big90_rows=$big90_rows
big90_big=$big90_big
big90_tenants=$big90_tenants
big90_small=$big90_small
scaling_clients=${scaling_clients[*]}
scaling_workloads=${scaling_workloads[*]}
scaling_rounds=$scaling_rounds
slice_ms=$slice_ms
sample_ms=$sample_ms
minutes=$(( ($(date +%s) - started + 59) / 60 ))
EOF
mkdir -p "$out"
"$(chart_python)" bench/report.py "$dir" "$out"
echo "[bench] done in $(( $(date +%s) - started )) s: $out/results.md, $out/results.png"
