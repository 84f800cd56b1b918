#!/usr/bin/env bash
# scripts/run.sh MAJOR RUN_DIR — `make run`: build and install nile_tenancy into PostgreSQL MAJOR, (re)start a
# throwaway cluster in RUN_DIR with the extension preloaded, run examples/quickstart.sql and leave the server running.
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:-15}
run_dir=${2:-$PWD/.run}

pg_config=$(scripts/setup.sh "$major" | awk -v m="pg$major" '$1 == m {print $2}')
echo "[run] building and installing nile_tenancy into PostgreSQL $major"
cargo pgrx install --release --pg-config "$pg_config" >/dev/null
# A preloaded library is only re-read when the server starts.
scripts/cluster.sh stop "$run_dir"
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
