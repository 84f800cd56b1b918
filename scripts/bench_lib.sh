# scripts/bench_lib.sh — sourced by the bench_*.sh scripts: a fresh cluster with a release build, and a median.
#
# bench_cluster MAJOR DIR sets pg_config, bindir and port: it installs a release build of nile_tenancy into PostgreSQL
# MAJOR and starts a throwaway cluster (database "bench") in DIR, stopped on exit unless BENCH_KEEP is set.
bench_cluster() {
  local major=$1 dir=$2
  pg_config=$(scripts/setup.sh "$major" | awk -v m="pg$major" '$1 == m {print $2}')
  bindir=$("$pg_config" --bindir)
  echo "[bench] release build of nile_tenancy into PostgreSQL $major"
  cargo pgrx install --release --pg-config "$pg_config" >/dev/null
  scripts/cluster.sh stop "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
  port=$(scripts/cluster.sh start "$pg_config" "$dir" bench)
  [ -n "${BENCH_KEEP:-}" ] || trap "scripts/cluster.sh stop '$dir' >/dev/null 2>&1 || true" EXIT
}

# median N... — the median of the numbers.
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
