# scripts/common.sh — shell functions shared by the scripts (sourced, not run).

# Run a command as the OS user `postgres` when we are root (initdb and PgBouncer refuse root), else as ourselves.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi
}

# A TCP port on 127.0.0.1 that is free right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# copy_tree SOURCE DEST: make DEST a copy of the PostgreSQL tree SOURCE (marked by SOURCE/.complete), unless it already
# is one of that build (DEST/.source). Copied beside DEST and renamed into place, so an interrupted copy leaves no half
# tree behind a marker; removing the old tree never disturbs a server still running from it (it keeps its mapped files).
copy_tree() {
  local source=$1 dest=$2 tmp
  if [ "$(cat "$dest/.source" 2>/dev/null)" != "$(cat "$source/.complete")" ]; then
    tmp="$dest.copy.$$"
    rm -rf "$tmp" && mkdir -p "$(dirname "$dest")"
    cp -a "$source" "$tmp"
    cp "$source/.complete" "$tmp/.source"
    chmod -R a+rX "$tmp"
    rm -rf "$dest" && mv "$tmp" "$dest"
  fi
}
