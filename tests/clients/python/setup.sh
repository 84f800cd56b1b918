#!/usr/bin/env bash
# tests/clients/python/setup.sh — the Python client suite's virtualenv, installed from the pinned, hashed
# requirements.txt (pip --require-hashes, wheels only). It lives outside the repo, under
#   ${NILE_CACHE:-/var/cache/nile-tenancy}/clients-python-<first 12 hex digits of sha256(requirements.txt + python)>
# and is built once: a venv that finished installing has a .complete stamp, and then this script does nothing.
# Prints the venv's directory with --print-venv; otherwise nothing but errors. Python: $NILE_PYTHON, else python3.11,
# else python3 (3.10 or later).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${NILE_CACHE:-/var/cache/nile-tenancy}

python=${NILE_PYTHON:-}
if [ -z "$python" ]; then
  python=$(command -v python3.11 || command -v python3 || true)
fi
[ -n "$python" ] || { echo "clients-python setup: no python3 found" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "clients-python setup: $python is older than 3.10" >&2; exit 1; }
pyver=$("$python" -c 'import sys; print(sys.implementation.name, *sys.version_info[:3])')

key=$( { cat "$here/requirements.txt"; echo "$pyver"; } | sha256sum | cut -c1-12)
venv="$cache/clients-python-$key"

if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$cache"
  # One installer at a time (two harness runs starting together); the second finds the stamp and stops.
  exec 9>"$cache/clients-python.lock"
  flock 9
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    log=$(mktemp)
    if ! { "$python" -m venv "$venv" \
           && "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
                --require-hashes --only-binary :all: --no-deps -r "$here/requirements.txt"; } >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      rm -rf "$venv"
      echo "clients-python setup: installing $here/requirements.txt into $venv failed" >&2
      exit 1
    fi
    rm -f "$log"
    # Import check: a venv that cannot import the suite's libraries is not complete.
    "$venv/bin/python" -c 'import pytest, psycopg, psycopg_pool, sqlalchemy, alembic, django; from psycopg import pq; assert pq.__impl__ == "binary", pq.__impl__' \
      || { rm -rf "$venv"; echo "clients-python setup: the new venv cannot import the suite's libraries" >&2; exit 1; }
    touch "$venv/.complete"
    # Venvs of older requirements are of no further use.
    for old in "$cache"/clients-python-*; do
      [ "$old" = "$venv" ] || [ ! -d "$old" ] || rm -rf "$old"
    done
  fi
  exec 9>&-
fi

if [ "${1:-}" = "--print-venv" ]; then
  echo "$venv"
fi
