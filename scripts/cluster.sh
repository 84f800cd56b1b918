#!/usr/bin/env bash
# scripts/cluster.sh — throwaway local PostgreSQL clusters with nile_tenancy preloaded, for `make run` and the tests.
#
#   scripts/cluster.sh start PG_CONFIG DIR [DBNAME]   initdb DIR if needed, start it on a free port on 127.0.0.1 (and a
#                                                     Unix socket in DIR), create DBNAME (default nile), and print
#                                                     "PORT" on stdout
#   scripts/cluster.sh stop DIR                       stop it (no error if it is not running)
#   scripts/cluster.sh port DIR                       print the port of the running cluster
#
# The server runs as the OS user `postgres` when called as root (initdb refuses root), so DIR is made owned by it.
# Authentication is `trust` for local connections only: these clusters are for development and tests.
set -euo pipefail

log() { printf '[cluster] %s\n' "$*" >&2; }

. "$(dirname "$0")/common.sh"

cmd=${1:-}; shift || true
case "$cmd" in
  start)
    pg_config=$1 dir=$2 db=${3:-nile}
    bindir=$("$pg_config" --bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then
      chown postgres "$dir"
      # postgres must be able to reach DIR: open up the parent directories it has to traverse.
      d=$(dirname "$dir"); while [ "$d" != "/" ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      log "initdb $dir/data"
      as_postgres "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
      cat >>"$dir/data/postgresql.conf" <<EOF

# --- nile_tenancy development cluster ---
shared_preload_libraries = 'nile_tenancy'
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    fi
    if as_postgres "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      port=$(cat "$dir/port")
      log "already running on port $port"
    else
      port=$(free_port)
      # RUST_BACKTRACE=1, as many developers' and containers' environments have it: the extension must keep Rust
      # backtraces out of every message a client receives (tests/integration/tests/attacks/own_objects.rs checks it).
      as_postgres env RUST_BACKTRACE=1 "$bindir/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -o "-p $port" -w start >/dev/null \
        || { tail -n 30 "$dir/data/server.log" >&2; exit 1; }
      echo "$port" >"$dir/port"
      echo "$bindir" >"$dir/bindir"
    fi
    if [ "$(as_postgres "$bindir/psql" -h "$dir" -p "$port" -U postgres -d postgres -Atc "SELECT count(*) FROM pg_database WHERE datname = '$db'")" = 0 ]; then
      as_postgres "$bindir/createdb" -h "$dir" -p "$port" -U postgres "$db"
    fi
    echo "$port"
    ;;
  stop)
    dir=$1
    if [ -f "$dir/bindir" ] && [ -d "$dir/data" ]; then
      as_postgres "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 && log "stopped $dir" || true
    fi
    ;;
  port)
    cat "$1/port"
    ;;
  *)
    echo "usage: $0 start PG_CONFIG DIR [DBNAME] | stop DIR | port DIR" >&2
    exit 2
    ;;
esac
