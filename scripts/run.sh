#!/usr/bin/env bash
# scripts/run.sh MAJOR RUN_DIR — `make run`: build nile_tenancy and install it into RUN_DIR/pgMAJOR, an install tree
# of this server's own (scripts/install.sh: atomic, and no test or bench installs there), (re)start a throwaway cluster
# in RUN_DIR with the extension preloaded, run examples/quickstart.sql and leave the server running.
#
# NILE_RUN_PROFILE=debug builds a debug build instead of the release build (the `make test` survival check uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:-18}
run_dir=${2:-$PWD/.run}
profile=${NILE_RUN_PROFILE:-release}
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)

echo "[run] building nile_tenancy ($profile) and installing it into $run_dir/pg$major"
pg_config=$(scripts/install.sh "$major" "$run_dir/pg$major" "$profile")
# A preloaded library is only re-read when the server starts.
scripts/cluster.sh stop "$run_dir"
# The cluster is throwaway: one of another major (an earlier `PG_MAJOR=... make run`) is replaced.
if [ -f "$run_dir/data/PG_VERSION" ] && [ "$(cat "$run_dir/data/PG_VERSION")" != "$major" ]; then
  echo "[run] replacing the PostgreSQL $(cat "$run_dir/data/PG_VERSION") cluster in $run_dir with a PostgreSQL $major one"
  rm -rf "$run_dir/data"
fi
port=$(scripts/cluster.sh start "$pg_config" "$run_dir" nile)
psql_bin="$("$pg_config" --bindir)/psql"
echo "[run] running examples/quickstart.sql on port $port"
echo
"$psql_bin" -X -h 127.0.0.1 -p "$port" -U postgres -d nile -f examples/quickstart.sql
cat <<MSG

[run] The server is still running (PostgreSQL $major, data in $run_dir/data, log in $run_dir/data/server.log).
      Connect as the superuser:        $psql_bin -h 127.0.0.1 -p $port -U postgres nile
      ... or as the application role:  $psql_bin -h 127.0.0.1 -p $port -U quickstart_app nile
      Stop it with:                    make stop
MSG
