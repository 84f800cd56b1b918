#!/usr/bin/env bash
# bench/ddl.sh [MAJOR] — what nile_tenancy's DDL event triggers cost a DDL statement on a table that has
# nothing to do with tenancy: CREATE TABLE, ALTER TABLE ... ADD COLUMN, CREATE INDEX, DROP TABLE, with the triggers
# enabled vs the same statements with them disabled (ALTER EVENT TRIGGER ... DISABLE), in a database that already
# has BENCH_PARTITIONS enrolled partitions (the registry the triggers consult). Alternating rounds, so that machine
# drift cancels out; prints the per-round times, the medians and the ratio enabled / disabled. Then, for scale, the
# rate of creating a tenant table (which the triggers enroll: column default, foreign key, index, RLS, 4 policies).
#
# Environment: BENCH_ROUNDS (default 7), BENCH_ITERATIONS per run (default 500),
#              BENCH_PARTITIONS (default 1000), BENCH_KEEP (set: leave the cluster running afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:-18}
rounds=${BENCH_ROUNDS:-7}
iterations=${BENCH_ITERATIONS:-500}
partitions=${BENCH_PARTITIONS:-1000}
dir=${BENCH_DIR:-/tmp/nile-tenancy-bench-ddl}/pg$major

. bench/lib.sh
bench_cluster "$major" "$dir"
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d bench)

echo "[bench] a tenant table with $partitions enrolled partitions"
"${psql[@]}" >/dev/null <<SQL
-- Measure CPU, not the disk: no waiting for WAL flushes, no checkpoint in the middle of a run.
ALTER SYSTEM SET synchronous_commit = off;
ALTER SYSTEM SET max_wal_size = '8GB';
ALTER SYSTEM SET checkpoint_timeout = '1h';
SELECT pg_reload_conf();
CREATE EXTENSION nile_tenancy;
CREATE TABLE events (tenant_id uuid NOT NULL, n int NOT NULL) PARTITION BY RANGE (n);
SQL
"${psql[@]}" -At -c "SELECT format('CREATE TABLE events_%s PARTITION OF events FOR VALUES FROM (%s) TO (%s);', n, n, n + 1) FROM generate_series(1, $partitions) n" \
  | "${psql[@]}" >/dev/null
enrolled=$("${psql[@]}" -At -c "SELECT count(*) FROM nile.tenant_tables")
echo "[bench] registry: $enrolled enrolled tables"

triggers() { # triggers ENABLE|DISABLE
  "${psql[@]}" -c "ALTER EVENT TRIGGER nile_ddl_command_end $1; ALTER EVENT TRIGGER nile_sql_drop $1;"
}
# One run: $iterations times (CREATE TABLE, ALTER TABLE ... ADD COLUMN, CREATE INDEX, DROP TABLE) of an unrelated
# table in one transaction (so that commit flushes do not drown the difference), after a VACUUM of the catalogs and
# a CHECKPOINT. Prints microseconds per iteration, measured by the server. Every iteration uses a new table name:
# re-creating one name in one transaction leaves a growing chain of dead catalog rows under that name, which every
# name lookup (Postgres' own and the trigger's) would walk.
run() { # run unrelated|tenant
  local body
  if [ "$1" = unrelated ]; then
    body="EXECUTE format('CREATE TABLE bench_plain_%s (a int, b text)', i);
          EXECUTE format('ALTER TABLE bench_plain_%s ADD COLUMN c int', i);
          EXECUTE format('CREATE INDEX ON bench_plain_%s (a)', i); EXECUTE format('DROP TABLE bench_plain_%s', i);"
  else
    body="EXECUTE format('CREATE TABLE bench_tenant_%s (tenant_id uuid, a int)', i);
          EXECUTE format('DROP TABLE bench_tenant_%s', i);"
  fi
  "${psql[@]}" -c "VACUUM pg_class, pg_attribute, pg_type, pg_depend, pg_index, pg_constraint, pg_attrdef, pg_policy, pg_inherits, pg_shdepend, nile.tenant_tables" -c CHECKPOINT
  "${psql[@]}" -At <<SQL
DO \$\$ DECLARE started timestamptz := clock_timestamp(); BEGIN
    FOR i IN 1..$iterations LOOP $body END LOOP;
    RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - started) * 1e6 / $iterations);
END \$\$;
SQL
}

echo "[bench] warm-up"
triggers DISABLE; run unrelated >/dev/null 2>&1; triggers ENABLE; run unrelated >/dev/null 2>&1
declare -a on off ratios
for r in $(seq 1 "$rounds"); do
  # Odd rounds run the disabled variant first, even rounds the enabled one, so that neither always goes first.
  if [ $((r % 2)) = 1 ]; then
    triggers DISABLE; d=$(run unrelated 2>&1 | sed -n 's/^NOTICE: *//p')
    triggers ENABLE; e=$(run unrelated 2>&1 | sed -n 's/^NOTICE: *//p')
  else
    triggers ENABLE; e=$(run unrelated 2>&1 | sed -n 's/^NOTICE: *//p')
    triggers DISABLE; d=$(run unrelated 2>&1 | sed -n 's/^NOTICE: *//p')
    triggers ENABLE
  fi
  off+=("$d"); on+=("$e")
  ratios+=("$(awk -v d="$d" -v e="$e" 'BEGIN {printf "%.4f", e / d}')")
  echo "[bench] round $r: triggers disabled $d us, enabled $e us per iteration, ratio $(awk -v d="$d" -v e="$e" 'BEGIN {printf "%.3f", e / d}')"
done
tenant=$(run tenant 2>&1 | sed -n 's/^NOTICE: *//p')
echo
echo "| PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') | $(nproc) cores | $rounds rounds x $iterations iterations | $enrolled enrolled tables |"
echo "| --- | --- |"
echo "| CREATE TABLE + ADD COLUMN + CREATE INDEX + DROP TABLE of an unrelated table, event triggers disabled | $(median "${off[@]}") us |"
echo "| the same, event triggers enabled | $(median "${on[@]}") us |"
printf '| **median of the per-round ratios, enabled / disabled** | **%.3f** |\n' "$(median "${ratios[@]}")"
echo "| for scale: CREATE TABLE with a tenant column (enrolled by the trigger) + DROP TABLE | $tenant us |"
