#!/usr/bin/env bash
# scripts/move_tenant.sh — move one tenant to another database that has nile_tenancy (a tenant "graduating" to its own
# database), verified table by table.
#
#   scripts/move_tenant.sh --from SOURCE --to TARGET --tenant UUID [--purge] [--workdir DIR]
#
# SOURCE and TARGET are libpq connection strings or URIs (e.g. "host=db1 dbname=app user=ops"); both roles must be
# members of nile_admin and not superusers (refused: see below), and the target role needs INSERT on the tenant tables. The target database must have the
# extension and the same tenant tables (same names, the exported columns; shared tables they reference must hold the
# referenced rows). $PSQL is the psql to use (default: psql on PATH).
#
# Steps:
#   1. The tenant is set inactive on the source for the whole move (reads go on, writes are refused), so that the copy
#      is final. Its status is restored if anything fails, and at the end unless --purge.
#   2. Source, one REPEATABLE READ transaction in the tenant's context: nile.export_tenant() lists the tenant tables in
#      foreign-key order; each table's rows are copied out to DIR, and each table's row count and checksum computed.
#   3. Target, one transaction: the tenant is created (same id, name and metadata), the rows are loaded in foreign-key
#      order in its context (so the tenant policies check every row), the sequences behind serial and identity columns
#      are moved past the copied values, and the row counts and checksums are computed again and compared. Any
#      difference rolls the whole target transaction back. If the target already holds exactly the source's rows (an
#      earlier run without --purge), nothing is loaded: running again with --purge just verifies and purges.
#   4. With --purge, and only after step 3 committed: the source's rows are checksummed once more, compared with the
#      target's, and the tenant is purged from the source (nile.delete_tenant(purge => true)) in the same REPEATABLE
#      READ transaction, so that nothing written on the source after the copy can be purged unnoticed. If that fails,
#      the tenant stays inactive on the source (reactivating it would make it writable in both databases).
#
# Checksums: per table, the sum over the rows of the first 60 bits of md5(row as text), with the same session settings
# for the text of dates, times and numbers on both sides. DIR (default: a new temporary directory, removed at the end)
# holds the tenant's rows in COPY text format while the move runs.
set -euo pipefail

usage() { sed -n '4,5p' "$0" | sed 's/^# *//' >&2; exit 2; }
say() { printf '[move_tenant] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

from='' to='' tenant='' purge=false workdir=''
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from=${2:-}; shift 2 ;;
    --to) to=${2:-}; shift 2 ;;
    --tenant) tenant=${2:-}; shift 2 ;;
    --purge) purge=true; shift ;;
    --workdir) workdir=${2:-}; shift 2 ;;
    -h|--help) usage ;;
    *) say "unknown argument: $1"; usage ;;
  esac
done
[ -n "$from" ] && [ -n "$to" ] && [ -n "$tenant" ] || usage
[[ $tenant =~ ^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$ ]] \
  || die "--tenant must be a UUID, not '$tenant'"
tenant=${tenant,,}
psql_bin=${PSQL:-psql}
command -v "$psql_bin" >/dev/null || die "psql not found (set PSQL)"

# On exit: give the tenant back its status on the source if the move failed after freezing it (below), and remove the
# work directory made here, whatever stopped the script (set before anything can fail after the mktemp).
restore_status() {
  if [ "$status" = active ]; then
    source_sql <<<"SELECT nile.reactivate_tenant(:'tenant')" >/dev/null && say "tenant reactivated on the source"
  fi
}
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ "${target_committed:-false}" = true ] && [ "${frozen:-false}" = true ]; then
    # Reactivating now would leave the tenant writable in both databases.
    say "the purge failed after the target committed: the tenant stays inactive on the source; purge it there, or"
    say "reactivate it (SELECT nile.reactivate_tenant('$tenant')) and delete the target's copy"
  elif [ $rc -ne 0 ] && [ "${frozen:-false}" = true ]; then
    say "the move failed: nothing was purged; restoring the tenant's status on the source"
    restore_status || say "could not reactivate the tenant on the source: run SELECT nile.reactivate_tenant('$tenant')"
  fi
  [ "$remove_workdir" = true ] && rm -rf "$workdir"
  exit $rc
}
remove_workdir=false
trap cleanup EXIT
if [ -z "$workdir" ]; then
  workdir=$(mktemp -d -t nile_move_tenant.XXXXXX)
  remove_workdir=true
fi
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)
case "$workdir" in *"'"*) die "--workdir must not contain a quote" ;; esac

# psql on one side: no psqlrc, stop at the first error, the script on stdin.
run_psql() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 -At -d "$1" -v tenant="$tenant" "${@:2}"; }
source_sql() { run_psql "$from" "$@"; }
target_sql() { run_psql "$to" "$@"; }

# Reading and writing the tenant tables as a superuser would run their owners' code (triggers, policies, index and
# statistics expressions) with a superuser's rights: the move runs as members of nile_admin that are not superusers.
for side in from to; do
  superuser=$(run_psql "${!side}" -c "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user") \
    || die "cannot connect to the --$side database"
  [ "$superuser" = f ] || die "the --$side role is a superuser: connect as a member of nile_admin that is not one (a superuser would run the tenant tables' owners' code with a superuser's rights)"
done

# The same text for every value on both sides, so that the checksums compare (SET LOCAL: safe behind a pooler).
SESSION_SETTINGS="SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres';
SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex';"

# A checksum file (source.sums, target.sums) as a temporary table: one row per table, as the checksum_sql of
# nile.export_tenant() gives it.
SUMS_COLUMNS="(load_order integer, table_name text, row_count bigint, checksum text)"
# sums_differ A B: SQL that is true when the checksum tables A and B disagree on any table's row count or checksum.
sums_differ() {
  echo "EXISTS (SELECT 1 FROM $1 a FULL JOIN $2 b USING (load_order)
               WHERE a.row_count IS DISTINCT FROM b.row_count OR a.checksum IS DISTINCT FROM b.checksum)"
}

# The tenant's row on the source, as one line of JSON.
tenant_json=$(source_sql <<'SQL'
BEGIN;
SELECT nile.set_tenant(:'tenant') \g /dev/null
SELECT json_build_object('name', name, 'status', status, 'metadata', metadata) FROM nile.tenants WHERE id = :'tenant';
COMMIT;
SQL
) || die "cannot read tenant $tenant on the source"
[ -n "$tenant_json" ] || die "tenant $tenant is not visible on the source"
status=$(printf '%s' "$tenant_json" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
say "tenant $tenant: $tenant_json"

# 1. Freeze the tenant on the source (cleanup gives it back its status if anything below fails).
frozen=false
if [ "$status" = active ]; then
  source_sql <<<"SELECT nile.deactivate_tenant(:'tenant')" >/dev/null
  frozen=true
  say "tenant set inactive on the source for the move (writes are refused until it ends)"
fi

# 2. Export: every table's rows and checksum, from one snapshot.
source_sql <<SQL
BEGIN ISOLATION LEVEL REPEATABLE READ;
$SESSION_SETTINGS
SELECT nile.set_tenant(:'tenant') \g /dev/null
CREATE TEMP TABLE nile_move_tables ON COMMIT DROP AS SELECT * FROM nile.export_tenant(:'tenant');
-- Names travel through psql scripts, one statement a line: a line break in a name could end a line early.
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM nile_move_tables) THEN
        RAISE EXCEPTION 'the source has no tenant tables';
    END IF;
    IF EXISTS (SELECT 1 FROM nile_move_tables WHERE rows_sql ~ '[[:cntrl:]]') THEN
        RAISE EXCEPTION 'a tenant table or column name contains a control character: move_tenant.sh cannot move it safely';
    END IF;
END
\$\$;
\copy (SELECT load_order, table_name::text, column_list FROM nile_move_tables ORDER BY load_order) TO '$workdir/tables'
SELECT format(E'\\\\copy (%s) TO %L', rows_sql, '$workdir/' || load_order || '.copy') FROM nile_move_tables ORDER BY load_order \g '$workdir/export.psql'
\i '$workdir/export.psql'
-- Every table's row count and checksum, as one query: kept for the target (and the purge), and run here.
SELECT string_agg(format('SELECT %s AS load_order, %L AS table_name, * FROM (%s) s', load_order, table_name::text, checksum_sql),
                  ' UNION ALL ' ORDER BY load_order) AS checksums FROM nile_move_tables \gset
SELECT :'checksums' \g '$workdir/checksums.sql'
CREATE TEMP VIEW nile_move_source_sums AS :checksums;
\copy (SELECT * FROM nile_move_source_sums) TO '$workdir/source.sums'
COMMIT;
SQL
checksums=$(cat "$workdir/checksums.sql")
say "exported $(wc -l <"$workdir/tables") table(s) from the source"

# 3. Import into the target, verify, and commit only if every table matches.
{
  cat <<SQL
BEGIN;
$SESSION_SETTINGS
SELECT nile.create_tenant(t->>'name', id => :'tenant', metadata => (t->'metadata')::jsonb)
FROM (SELECT :'tenant_json'::json AS t) x \g /dev/null
SELECT nile.set_tenant(:'tenant') \g /dev/null
CREATE TEMP TABLE nile_move_source_sums $SUMS_COLUMNS ON COMMIT DROP;
\copy nile_move_source_sums FROM '$workdir/source.sums'
CREATE TEMP TABLE nile_move_before_sums ON COMMIT DROP AS $checksums;
SELECT NOT $(sums_differ nile_move_source_sums nile_move_before_sums) AS already_copied,
       EXISTS (SELECT 1 FROM nile_move_before_sums b WHERE b.row_count > 0) AS target_has_rows \gset
\if :already_copied
\warn '[move_tenant] the target already holds exactly these rows of the tenant: nothing to load'
\elif :target_has_rows
DO \$\$
BEGIN
    RAISE EXCEPTION 'the target already holds other rows of this tenant: nothing is loaded'
        USING HINT = 'Did the tenant change on the source since an earlier copy? Compare both sides; purge the target''s copy (nile.delete_tenant(..., purge => true) there) to copy again.';
END
\$\$;
\else
SQL
  while IFS=$'\t' read -r load_order table columns; do
    cat <<SQL
CREATE TEMP TABLE nile_move_$load_order ON COMMIT DROP AS SELECT $columns FROM $table WITH NO DATA;
\copy nile_move_$load_order FROM '$workdir/$load_order.copy'
INSERT INTO $table ($columns) OVERRIDING SYSTEM VALUE SELECT $columns FROM nile_move_$load_order;
SQL
  done <"$workdir/tables"
  cat <<SQL
SELECT nile._advance_sequences(s.table_name::regclass) FROM nile_move_source_sums s ORDER BY s.load_order \g /dev/null
\endif
CREATE TEMP TABLE nile_move_target_sums ON COMMIT DROP AS $checksums;
\copy (SELECT * FROM nile_move_target_sums ORDER BY load_order) TO '$workdir/target.sums'
\pset format aligned
\pset tuples_only off
\pset footer off
SELECT s.table_name AS "table", s.row_count AS source_rows, t.row_count AS target_rows,
       CASE WHEN s.checksum = t.checksum THEN 'match' ELSE 'DIFFERENT' END AS checksum
FROM nile_move_source_sums s LEFT JOIN nile_move_target_sums t USING (load_order) ORDER BY s.load_order;
DO \$\$
BEGIN
    IF $(sums_differ nile_move_source_sums nile_move_target_sums) THEN
        RAISE EXCEPTION 'row counts or checksums differ between source and target: the target transaction is rolled back'
            USING HINT = 'Does the target already hold rows of this tenant, or do the tables differ (triggers, defaults, types)?';
    END IF;
END
\$\$;
SQL
  [ "$status" = inactive ] && echo "SELECT nile.deactivate_tenant(:'tenant') \g /dev/null"
  echo "COMMIT;"
} >"$workdir/import.psql"
target_sql -v tenant_json="$tenant_json" -f "$workdir/import.psql" >&2
target_committed=true
say "target committed: every table's row count and checksum match the source"

# 4. Purge from the source, after checking once more that its rows are still exactly what the target holds.
if [ "$purge" = true ]; then
  source_sql >&2 <<SQL
BEGIN ISOLATION LEVEL REPEATABLE READ;
$SESSION_SETTINGS
SELECT nile.set_tenant(:'tenant') \g /dev/null
CREATE TEMP TABLE nile_move_target_sums $SUMS_COLUMNS ON COMMIT DROP;
\copy nile_move_target_sums FROM '$workdir/target.sums'
CREATE TEMP TABLE nile_move_source_sums ON COMMIT DROP AS $checksums;
DO \$\$
BEGIN
    IF $(sums_differ nile_move_target_sums nile_move_source_sums) THEN
        RAISE EXCEPTION 'the tenant''s rows on the source changed after they were copied: nothing is purged'
            USING HINT = 'The tenant exists on both sides now; compare them, then purge by hand or move again.';
    END IF;
END
\$\$;
SELECT nile.clear_tenant() \g /dev/null
SELECT nile.delete_tenant(:'tenant', purge => true) \g /dev/null
COMMIT;
SQL
  frozen=false
  say "tenant $tenant purged from the source"
else
  frozen=false
  restore_status
  say "the source keeps its copy; to purge it, run this again with --purge (it finds the copy on the target, checks it and only purges)"
fi
say "done: tenant $tenant moved"
