#!/usr/bin/env bash
# scripts/install.sh MAJOR TREE debug|release — build nile_tenancy and install it into TREE, a private PostgreSQL
# install tree of one server (or one family of servers), without ever touching a shared library a server has loaded.
#
#   * TREE is a copy of the pinned, pristine PostgreSQL build of MAJOR (scripts/setup.sh); made on first use, and again
#     when the lock file pins another build. Nothing else installs into it: `make run` has $(RUN_DIR)/pg<MAJOR>, each
#     `make test` its own tree under its work directory, the benches theirs; `cargo pgrx test` installs only into the
#     pgrx tree of scripts/setup.sh, and no server of ours runs from that one.
#   * The install is atomic per file: `cargo pgrx package` writes the build into a staging directory, and each file is
#     copied next to its destination under a temporary name and renamed over it. A running server keeps the old,
#     still-mapped library until it restarts (`cargo pgrx install` writes in place, with fs::copy, which rewrites the
#     pages a running postmaster executes: that crashed a `make run` server while `make test` ran).
#   * The earlier releases' install scripts (tests/upgrade/) are installed too, for the upgrade test.
#
# Prints the pg_config of TREE.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
major=${1:?usage: scripts/install.sh MAJOR TREE debug|release}
tree=${2:?usage: scripts/install.sh MAJOR TREE debug|release}
profile=${3:?usage: scripts/install.sh MAJOR TREE debug|release}
log() { printf '[install] %s\n' "$*" >&2; }

setup_line=$(scripts/setup.sh "$major")
read -r _ _ pristine <<<"$setup_line"
mkdir -p "$(dirname "$tree")"
tree=$(cd "$(dirname "$tree")" && pwd -P)/$(basename "$tree")   # pg_config reports real paths
copy_tree "$pristine" "$tree"
pg_config="$tree/bin/pg_config"

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
flags=()
[ "$profile" = release ] || flags=(--debug)
log "building nile_tenancy ($profile) for PostgreSQL $major"
cargo pgrx package "${flags[@]}" --pg-config "$pg_config" --out-dir "$staging" >/dev/null
extdir=$("$pg_config" --sharedir)/extension
mkdir -p "$staging/${extdir#/}"
cp tests/upgrade/nile_tenancy--*.sql "$staging/${extdir#/}/"

count=0
while IFS= read -r -d '' file; do
  dest="/${file#"$staging"/}"
  case "$dest" in "$tree"/*) ;; *) log "refusing to install outside $tree: $dest"; exit 1 ;; esac
  mkdir -p "$(dirname "$dest")"
  tmp="$(dirname "$dest")/.$(basename "$dest").new.$$"
  cp "$file" "$tmp"
  chmod a+r "$tmp"
  mv -f "$tmp" "$dest"    # rename(2): atomic, the old inode lives on for whoever has it mapped
  count=$((count + 1))
done < <(find "$staging" -type f -print0)
log "installed $count files into $tree"
echo "$pg_config"
