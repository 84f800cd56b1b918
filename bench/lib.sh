# bench/lib.sh — sourced by the scripts of bench/: a fresh cluster with a release build, and a median.
#
# bench_cluster MAJOR DIR sets pg_config, bindir and port: it installs a release build of nile_tenancy into DIR.pginstall,
# the benches' own PostgreSQL MAJOR install tree (scripts/install.sh: atomic, shared with no test and no `make run`), and
# starts a throwaway cluster (database "bench") in DIR, stopped on exit unless BENCH_KEEP is set.
bench_cluster() {
  local major=$1 dir=$2
  echo "[bench] release build of nile_tenancy into PostgreSQL $major"
  pg_config=$(scripts/install.sh "$major" "$dir.pginstall" release)
  bindir=$("$pg_config" --bindir)
  scripts/cluster.sh stop "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
  port=$(scripts/cluster.sh start "$pg_config" "$dir" bench)
  [ -n "${BENCH_KEEP:-}" ] || trap "scripts/cluster.sh stop '$dir' >/dev/null 2>&1 || true" EXIT
}

# median N... — the median of the numbers.
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# bench_tenants_sql N — the SQL every benchmark database starts with: the extension, schema bench, bench.tid(n)
# (tenant number -> uuid; IMMUTABLE SQL, so every variant computes the id the same way), tenants 1..N, and the
# non-owner application role bench_app (nile_app, USAGE on bench; each script grants its own table privileges).
bench_tenants_sql() {
  cat <<SQL
CREATE EXTENSION nile_tenancy;
CREATE SCHEMA bench;
CREATE FUNCTION bench.tid(n int) RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS \$\$ SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid \$\$;
SELECT count(nile.create_tenant('tenant ' || n, bench.tid(n))) AS tenants FROM generate_series(1, $1) n;
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_app') THEN CREATE ROLE bench_app LOGIN; END IF;
END \$\$;
GRANT nile_app TO bench_app;
GRANT USAGE ON SCHEMA bench TO bench_app;
SQL
}

# chart_python — a Python with matplotlib for the benchmark charts: a virtualenv in $NILE_CACHE, created on first use
# (only `make bench` needs it, so scripts/setup.sh does not install it), from bench/requirements.txt: exact versions
# and wheel digests, made again when that file changes.
chart_python() {
  local venv=${NILE_CACHE:-/var/cache/nile-tenancy}/bench-venv want
  want=$(sha256sum bench/requirements.txt | awk '{print $1}')
  if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    echo "[bench] installing matplotlib into $venv (bench/requirements.txt)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || return 1
    "$venv/bin/pip" install --quiet --require-hashes --only-binary=:all: --no-deps -r bench/requirements.txt >&2 \
      || return 1
    echo "$want" >"$venv/.requirements"
  fi
  echo "$venv/bin/python"
}
