# scripts/common.sh — shell functions shared by cluster.sh and pgbouncer.sh (sourced, not run).

# Run a command as the OS user `postgres` when we are root (initdb and PgBouncer refuse root), else as ourselves.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi
}

# A TCP port on 127.0.0.1 that is free right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
