#!/usr/bin/env bash
# scripts/pgbouncer.sh — a throwaway PgBouncer in transaction-pooling mode in front of a test cluster.
#
#   scripts/pgbouncer.sh start DIR PG_PORT   write DIR/pgbouncer.ini, start PgBouncer on a free port of 127.0.0.1 in front
#                                            of the cluster listening on PG_PORT, and print that port on stdout
#   scripts/pgbouncer.sh stop DIR            stop it (no error if it is not running)
#
# Every database of the cluster is reachable through it, with at most 2 server connections per (database, user) pool:
# few enough that many clients must share them. Authentication is `trust` (the cluster trusts local connections too).
# PgBouncer refuses to run as root, so it runs as the OS user `postgres` when called as root.
set -euo pipefail

log() { printf '[pgbouncer] %s\n' "$*" >&2; }
. "$(dirname "$0")/common.sh"

cmd=${1:-}; shift || true
case "$cmd" in
  start)
    dir=$1 pg_port=$2
    command -v pgbouncer >/dev/null || { echo "pgbouncer: not installed (scripts/setup.sh installs it)" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    port=$(free_port)
    # With auth_type = trust PgBouncer still wants every user name in its auth_file: list the test roles.
    printf '"%s" ""\n' postgres it_app it_admin it_pool app_migrator app_user clients_node_token \
      sdk_admin sdk_token > "$dir/userlist.txt"
    cat > "$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 2
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
server_round_robin = 0
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir"
    as_postgres pgbouncer -d -q "$dir/pgbouncer.ini"
    for _ in $(seq 50); do
      python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" 2>/dev/null && break
      sleep 0.1
    done
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" 2>/dev/null \
      || { tail -n 20 "$dir/pgbouncer.log" >&2; exit 1; }
    log "transaction pooling on port $port in front of port $pg_port"
    echo "$port"
    ;;
  stop)
    dir=$1
    if [ -f "$dir/pgbouncer.pid" ]; then
      kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
      rm -f "$dir/pgbouncer.pid"
    fi
    ;;
  *)
    echo "usage: $0 start DIR PG_PORT | stop DIR" >&2
    exit 2
    ;;
esac
