#!/usr/bin/env bash
# tests/clients/node/setup.sh — installs the node client suite's pinned packages (package-lock.json: exact versions
# with integrity hashes) into tests/clients/node/node_modules with `npm ci`, only when the lock file changed since the
# last install (the stamp node_modules/.nile-lock-stamp holds its digest); otherwise a no-op. npm's download cache
# lives outside the repo, under ${NILE_CACHE:-/var/cache/nile-tenancy}/npm; without it npm downloads again.
# Prints nothing but errors on success.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
command -v node >/dev/null || { echo "clients-node setup: node is not installed (Node.js 18 or later)" >&2; exit 1; }
command -v npm >/dev/null || { echo "clients-node setup: npm is not installed" >&2; exit 1; }
stamp=node_modules/.nile-lock-stamp
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
cache=${NILE_CACHE:-/var/cache/nile-tenancy}/npm
mkdir -p "$cache" 2>/dev/null || cache=$(mktemp -d)   # no cache (read-only): download into a throwaway one
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --ignore-scripts: no package here needs an install script (esbuild's only checks the binary that its
# platform package, installed from the lock file, already ships).
if ! npm ci --cache "$cache" --prefer-offline --no-audit --no-fund --ignore-scripts --loglevel=error >"$log" 2>&1; then
  cat "$log" >&2
  echo "clients-node setup: npm ci failed" >&2
  exit 1
fi
echo "$want" > "$stamp"
