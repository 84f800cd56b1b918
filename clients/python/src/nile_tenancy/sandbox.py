"""nile_tenancy.sandbox — a throwaway PostgreSQL with the nile_tenancy extension, for development and tests.

    from nile_tenancy import Nile

    with Nile(sandbox=True) as nile:        # starts a server, connects to it; close() stops it and deletes it
        tenant = nile.tenants.create(name="dev")

or, without the client, ``sandbox = Sandbox.start()`` … ``sandbox.stop()``. The pytest fixtures built on it (one
server per session, a fresh database per test) are in :mod:`nile_tenancy.pytest_plugin`. ``python -m
nile_tenancy.sandbox`` says which PostgreSQL build it would use, then runs a sandbox until Ctrl-C.

Which PostgreSQL build (the first that exists):

1. the bundled build: the self-contained wheel (``make sdk-wheel``) ships the pinned PostgreSQL build with the
   extension installed, and the shared libraries it needs, in ``nile_tenancy/_bundled/pg``;
2. the PostgreSQL whose ``pg_config`` is named by ``NILE_PG_CONFIG``;
3. the ``pg_config`` on ``PATH``.

The build must have the extension installed (``nile_tenancy.control`` in ``$(pg_config --sharedir)/extension``, the
library in ``$(pg_config --pkglibdir)``); :class:`~nile_tenancy.errors.SandboxUnavailable` says exactly what is
missing when it has not.

The server: a copy of a cached template data directory in a new temporary directory (under TMPDIR if it is set, else
in /dev/shm when it is a tmpfs with 1 GiB free, else in the system's temporary directory), ``shared_preload_libraries =
nile_tenancy``, listening on a free port of 127.0.0.1 and on a Unix socket in the temporary directory, ``fsync``,
``synchronous_commit`` and ``full_page_writes`` off (it is thrown away), a random ``nile.token_key`` per server
(:attr:`Sandbox.token_key`). Nobody else on the machine gets in: TCP needs a password, random per server
(:attr:`Sandbox.password`, in :attr:`Sandbox.dsn`), set for ``nile_sandbox`` and ``postgres``; the Unix socket trusts
whoever reaches it, and its directory is the temporary directory, which only the server's OS user (and root) can
enter. :meth:`Sandbox.stop` (and, for any
sandbox still running, the end of the interpreter) stops it and deletes the directory; a later start removes what a
killed process left behind (its server stopped, its directory deleted).

The template (``NILE_SANDBOX_CACHE``, default ``~/.cache/nile-tenancy/sandbox``), made on the first start on a
machine and kept per PostgreSQL version and SHA-256 of the extension's library, control and SQL files: ``initdb``,
then, as the superuser ``postgres``, ``CREATE EXTENSION nile_tenancy`` in ``template1``, the login role
``nile_sandbox`` (neither a superuser, whom row-level security does not isolate, nor ``BYPASSRLS``, which
``nile.set_tenant()`` refuses; a member of ``nile_admin``, ``nile_app`` and ``nile_table_owner``, with ``CREATEDB`` and
``CREATE`` on schema ``public``), the template database ``nile_template`` and the database ``nile``, both owned by
``nile_sandbox``. :attr:`Sandbox.dsn` connects to ``nile`` as ``nile_sandbox``; :attr:`Sandbox.superuser_dsn` as
``postgres``. A template made by an older recipe or for another build is never used; the 4 most recently used stay.

As root: ``initdb`` and ``postgres`` refuse to run as root, so they run as the OS user ``postgres`` (or
``NILE_SANDBOX_USER``; ignored when not root), the temporary directory and the template are owned by that user, and a
bundled build that user cannot reach (a virtualenv under ``/root``) is copied once into the temporary directory root
(``nile-tenancy-pg<version>-<digest>``, removed when no sandbox used it for a day). Any other build must be reachable
by that user: the error says so. Linux and macOS; running as root, and reaping what killed processes left, on Linux.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .errors import SandboxUnavailable

#: The environment: the pg_config of a build with the extension; the template cache; the OS user (as root).
ENV_PG_CONFIG = "NILE_PG_CONFIG"
ENV_CACHE = "NILE_SANDBOX_CACHE"
ENV_USER = "NILE_SANDBOX_USER"

ROLE = "nile_sandbox"  # the DSN's role: not a superuser, nile_admin + nile_app + nile_table_owner
SUPERUSER = "postgres"
DBNAME = "nile"  # the database of Sandbox.dsn
TEMPLATE_DB = "nile_template"  # what create_database() clones
HOST = "127.0.0.1"
EXTENSION = "nile_tenancy"
#: Bumped whenever the template's recipe changes, so older cached templates are not used.
RECIPE = "2"
_TMP_PREFIX = "nile-sandbox-"
_BUNDLED = Path(__file__).resolve().parent / "_bundled"
_KEEP_TEMPLATES = 4  # templates kept in the cache (most recently used)
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0

_SERVER_SETTINGS = f"""
# --- nile_tenancy sandbox (nile_tenancy.sandbox): a throwaway server ---
shared_preload_libraries = '{EXTENSION}'
fsync = off
synchronous_commit = off
full_page_writes = off
min_wal_size = 4MB
max_wal_size = 256MB
max_connections = 100
log_min_messages = warning
log_checkpoints = off
log_line_prefix = '%m [%p] %q%u@%d '
"""

#: Who may connect how: the Unix socket (its directory is the server's own, mode 0700) trusts, TCP needs the password
#: set at each start. (initdb's --auth=trust would let any local user in over TCP, as any role, the superuser too.)
_PG_HBA = """# nile_tenancy sandbox (nile_tenancy.sandbox)
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""

#: Run as the superuser in template1 when the template is made; {ext}, {role}, {template}, {db} are identifiers.
_TEMPLATE_SQL = (
    "SET client_min_messages = warning",
    "CREATE EXTENSION {ext}",
    "CREATE ROLE {role} LOGIN CREATEDB",
    "GRANT nile_admin, nile_app TO {role}",
    # nile_table_owner (0.3.0 on): may reference nile.tenants (id) and enroll its own tables
    "DO $$ BEGIN IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'nile_table_owner') THEN"
    " GRANT nile_table_owner TO {role}; END IF; END $$",
    "GRANT USAGE, CREATE ON SCHEMA public TO {role}",
    "CREATE DATABASE {template} OWNER {role}",
    "ALTER DATABASE {template} IS_TEMPLATE true",
    "CREATE DATABASE {db} TEMPLATE {template} OWNER {role}",
    "CHECKPOINT",
)


# --- the PostgreSQL build ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Build:
    """A PostgreSQL build with the extension installed: where its programs, modules and shared files are."""

    bindir: Path
    pkglibdir: Path
    sharedir: Path
    version: str  # "18.6"
    origin: str  # how it was found: "bundled", "NILE_PG_CONFIG=...", "pg_config on PATH (...)"
    library_path: Path | None = None  # the bundled shared libraries (LD_LIBRARY_PATH of its programs)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def program(self, name: str) -> Path:
        return self.bindir / name

    def env(self) -> dict[str, str]:
        """The environment of the build's programs: only what they need (the process's own environment may hold
        secrets, and PG* variables would change what they do), TZ UTC (initdb's time zone), messages in English,
        and a bundled build finds its own shared libraries."""
        env = {k: os.environ[k] for k in ("PATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH") if k in os.environ}
        env.update({"TZ": "UTC", "LC_ALL": "C", "LANG": "C"})
        if self.library_path is not None:
            previous = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = str(self.library_path) + (os.pathsep + previous if previous else "")
        return env

    def extension_files(self) -> list[Path]:
        """What identifies the installed extension: its library, control file and SQL scripts."""
        scripts = sorted((self.sharedir / "extension").glob(f"{EXTENSION}--*.sql"))
        return [self.library(), self.sharedir / "extension" / f"{EXTENSION}.control", *scripts]

    def library(self) -> Path:
        for suffix in (".so", ".dylib"):
            candidate = self.pkglibdir / f"{EXTENSION}{suffix}"
            if candidate.exists():
                return candidate
        return self.pkglibdir / f"{EXTENSION}.so"

    def key(self) -> str:
        """The template cache's key: the recipe, the PostgreSQL version, and the SHA-256 of the extension's files."""
        digest = hashlib.sha256(f"recipe {RECIPE}\nversion {self.version}\n".encode())
        for path in self.extension_files():
            digest.update(path.name.encode() + b"\0" + _file_sha256(path).encode() + b"\n")
        return f"pg{self.version}-{digest.hexdigest()[:16]}"


_digests: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _digests[memo] = digest.hexdigest()
    return _digests[memo]


def _check_build(build: Build, *, what: str) -> Build:
    """``build`` if it has the programs and the extension; SandboxUnavailable naming what is missing otherwise."""
    for name in ("postgres", "initdb"):
        if not build.program(name).is_file():
            raise SandboxUnavailable(f"{what}: {build.program(name)} does not exist: this is not a PostgreSQL build")
    control = build.sharedir / "extension" / f"{EXTENSION}.control"
    install_hint = (
        "install the extension into this PostgreSQL (cargo pgrx install --pg-config <its pg_config>, or "
        "scripts/install.sh 18 TREE release in the nile_tenancy repository, which prints its pg_config), or use "
        "the self-contained sandbox wheel (make sdk-wheel)"
    )
    if not control.is_file():
        raise SandboxUnavailable(
            f"{what} (PostgreSQL {build.version}) has no nile_tenancy extension: {control} does not exist; "
            + install_hint
        )
    if not build.library().is_file():
        raise SandboxUnavailable(
            f"{what} (PostgreSQL {build.version}) has {control} but not the extension's library "
            f"{build.library()}; " + install_hint
        )
    default = re.search(r"^\s*default_version\s*=\s*'([^']*)'", control.read_text(), re.M)
    if default and not (build.sharedir / "extension" / f"{EXTENSION}--{default.group(1)}.sql").is_file():
        raise SandboxUnavailable(
            f"{what}: {control} names version {default.group(1)}, but its install script "
            f"{build.sharedir / 'extension' / f'{EXTENSION}--{default.group(1)}.sql'} does not exist; " + install_hint
        )
    return build


def bundled_build() -> Build | None:
    """The build shipped in the self-contained wheel (``nile_tenancy/_bundled``), or None when it is not there."""
    info_file = _BUNDLED / "build.json"
    if not info_file.is_file():
        return None
    info = json.loads(info_file.read_text())
    pg = _BUNDLED / "pg"
    build = Build(
        bindir=pg / "bin",
        pkglibdir=pg / "lib",
        sharedir=pg / "share",
        version=str(info["version"]),
        origin=f"bundled ({pg})",
        library_path=pg / "lib",
    )
    return _check_build(build, what=f"the bundled PostgreSQL {pg}")


def build_from_pg_config(pg_config: str | os.PathLike[str], origin: str) -> Build:
    """The build of ``pg_config``, checked (SandboxUnavailable naming what is missing)."""
    path = Path(pg_config)
    if not path.is_file():
        raise SandboxUnavailable(f"{origin}: {path} does not exist")
    try:
        out = subprocess.run(
            [str(path), "--bindir", "--pkglibdir", "--sharedir", "--version"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as e:
        raise SandboxUnavailable(f"{origin}: running {path} failed: {e}") from e
    if len(out) < 4 or not out[3].startswith("PostgreSQL "):
        raise SandboxUnavailable(f"{origin}: {path} printed {out!r}, not the paths of a PostgreSQL build")
    version = out[3].split()[1]
    build = Build(Path(out[0]), Path(out[1]), Path(out[2]), version, origin)
    return _check_build(build, what=f"{origin}: {path}")


def find_build(pg_config: str | os.PathLike[str] | None = None) -> Build:
    """The build the sandbox uses: ``pg_config`` if given, else the bundled one, else ``$NILE_PG_CONFIG``, else the
    ``pg_config`` on ``PATH``. SandboxUnavailable says what is missing when none will do."""
    if pg_config is not None:
        return build_from_pg_config(pg_config, "pg_config=")
    bundled = bundled_build()
    if bundled is not None:
        return bundled
    named = os.environ.get(ENV_PG_CONFIG)
    if named:
        return build_from_pg_config(named, f"{ENV_PG_CONFIG}={named}")
    on_path = shutil.which("pg_config")
    if on_path:
        return build_from_pg_config(on_path, f"the pg_config on PATH ({on_path})")
    raise SandboxUnavailable(
        "the sandbox needs a PostgreSQL build with the nile_tenancy extension, and there is none: the self-contained "
        f"sandbox wheel is not installed (no {_BUNDLED / 'build.json'}), {ENV_PG_CONFIG} is not set, and there is no "
        "pg_config on PATH. Install the sandbox wheel (make sdk-wheel builds it), or set "
        f"{ENV_PG_CONFIG} to the pg_config of a PostgreSQL with the extension installed"
    )


# --- running as root: the OS user of the server -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunAs:
    """The unprivileged OS user the server runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    def popen_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": sorted(self.groups - {self.gid})}

    def chown_tree(self, root: Path) -> None:
        """Give a tree root made to this user, from the bottom up: a directory changes hands only after everything
        in it, so the user never controls a directory root still walks (and could swap an entry for a link)."""
        for parent, dirs, files in os.walk(root, topdown=False):
            for name in dirs + files:
                os.lchown(os.path.join(parent, name), self.uid, self.gid)
        os.lchown(root, self.uid, self.gid)

    def can_reach(self, path: Path, *, execute: bool = False) -> bool:
        """Whether this user can reach ``path`` (search every directory above it, and above what a symbolic link
        points to) and read (or run) it."""
        path = Path(os.path.abspath(path))
        for directory in {*path.parents, *path.resolve().parents}:
            if not self._allowed(directory, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return False
        path = path.resolve()
        if execute:
            return self._allowed(path, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
        return self._allowed(path, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)

    def _allowed(self, path: Path, user_bit: int, group_bit: int, other_bit: int) -> bool:
        st = path.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & user_bit)
        if st.st_gid in self.groups:
            return bool(st.st_mode & group_bit)
        return bool(st.st_mode & other_bit)


def run_as() -> RunAs | None:
    """None when we are not root; else the OS user to run PostgreSQL as (``NILE_SANDBOX_USER``, else ``postgres``)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(ENV_USER) or "postgres"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        how = f"{ENV_USER}={name}" if os.environ.get(ENV_USER) else "the default"
        raise SandboxUnavailable(
            f"running as root: PostgreSQL refuses to run as root, so the sandbox runs it as an unprivileged OS user, "
            f"and there is no OS user {name!r} ({how}); create one (useradd --system postgres) or set {ENV_USER} to "
            "an existing unprivileged user"
        ) from None
    if entry.pw_uid == 0:
        raise SandboxUnavailable(f"{ENV_USER}={name} is root: PostgreSQL refuses to run as root; name another user")
    return RunAs(name, entry.pw_uid, entry.pw_gid, frozenset(os.getgrouplist(name, entry.pw_gid)))


def _reachable_build(build: Build, user: RunAs | None) -> Build:
    """``build``, or when the server's user cannot reach a bundled build (a virtualenv under /root), a copy of it in
    the temporary directory root (made once per build)."""
    if user is None or user.can_reach(build.program("postgres"), execute=True):
        return build
    if build.library_path is None:
        raise SandboxUnavailable(
            f"running as root, the sandbox runs PostgreSQL as the OS user {user.name!r}, who cannot reach "
            f"{build.program('postgres')} ({build.origin}): make its directories searchable by that user, or set "
            f"{ENV_USER} to a user who can"
        )
    pg = build.bindir.parent
    ident = hashlib.sha256((pg.parent / "build.json").read_bytes() + build.key().encode()).hexdigest()[:16]
    copy = Path(tempfile.gettempdir()) / f"nile-tenancy-pg{build.version}-{ident}"
    if not (copy / ".complete").exists():
        for old in copy.parent.glob("nile-tenancy-pg*"):  # copies of other builds, unused for a day
            try:
                if (old != copy and os.lstat(old).st_uid == 0
                        and time.time() - os.lstat(old / ".complete").st_mtime > 86400):
                    shutil.rmtree(old)
            except OSError:
                continue
        staging = Path(tempfile.mkdtemp(prefix="nile-tenancy-pg-copy-", dir=copy.parent))
        shutil.copytree(pg, staging / "pg", symlinks=True)
        for parent, dirs, files in os.walk(staging):
            for name in dirs + files:
                path = os.path.join(parent, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                             | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if name in dirs else 0))
        os.chmod(staging, 0o755)
        (staging / ".complete").write_text(build.origin + "\n")
        try:
            os.rename(staging, copy)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    _check_root_copy(copy)
    os.utime(copy / ".complete", follow_symlinks=False)
    if not user.can_reach(copy / "pg" / "bin" / "postgres", execute=True):
        raise SandboxUnavailable(
            f"running as root, the sandbox runs PostgreSQL as the OS user {user.name!r}, who can reach neither "
            f"{build.program('postgres')} nor its copy {copy}; set TMPDIR to a directory that user can search"
        )
    return dataclasses.replace(
        build, bindir=copy / "pg" / "bin", pkglibdir=copy / "pg" / "lib", sharedir=copy / "pg" / "share",
        library_path=copy / "pg" / "lib",
    )


# --- files in directories the server's user owns --------------------------------------------------------------------
# As root, the temporary directory and the data directory belong to the server's OS user, who could put a symbolic
# (or hard) link where we write: every file root writes there is opened without following links and must be a
# regular file with one link, and the trees root would otherwise copy are copied by the server's user.


def _open_private(path: Path, flags: int) -> int:
    """``os.open`` of a regular file in a directory someone else may own: no symbolic link followed, no other link."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise SandboxUnavailable(f"{path} is not a plain file of its own (a link?): refusing to write to it")
    return fd


def _append(path: Path, text: str, *, truncate: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    with os.fdopen(_open_private(path, flags), "w") as f:
        f.write(text)


def _open_log(path: Path) -> Any:
    return os.fdopen(_open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")


def _seize(top: Path) -> None:
    """Make a tree the server's user wrote (as root) root's, from the top down, before root reads it: once a directory
    is root's, nobody else can change its entries, so nothing in it can be swapped for a link while it is read."""
    os.lchown(top, 0, 0)
    directories = [top]
    while directories:
        with os.scandir(directories.pop()) as entries:
            for entry in entries:
                mode = os.lstat(entry.path).st_mode
                os.lchown(entry.path, 0, 0)
                if stat.S_ISDIR(mode):
                    directories.append(Path(entry.path))


def _check_root_copy(copy: Path) -> None:
    """The copy's name is predictable (it is shared by every sandbox of the build): run the programs in it only if
    root made it, complete, and nobody else can write it; another user could have made it first."""
    try:
        top, done = os.lstat(copy), os.lstat(copy / ".complete")
    except OSError as e:
        raise SandboxUnavailable(f"the copy of the PostgreSQL build {copy} is not complete: {e}") from e
    if (not stat.S_ISDIR(top.st_mode) or top.st_uid != 0 or top.st_mode & 0o022
            or not stat.S_ISREG(done.st_mode) or done.st_uid != 0):
        raise SandboxUnavailable(
            f"{copy} was not made by this package as root (owner uid {top.st_uid}, mode {stat.filemode(top.st_mode)}):"
            " not running the programs in it; remove it"
        )


# --- processes ----------------------------------------------------------------------------------------------------


def _run(build: Build, user: RunAs | None, args: list[str], cwd: Path, log: Path, what: str) -> None:
    with _open_log(log) as out:
        try:
            rc = subprocess.run(
                args, cwd=cwd, env=build.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                umask=0o077, **(user.popen_kwargs() if user else {}),
            ).returncode
        except OSError as e:
            raise SandboxUnavailable(f"{what}: cannot run {args[0]}: {e}") from e
    if rc != 0:
        raise SandboxUnavailable(f"{what} failed (exit code {rc}, {build.origin}): {_explain(log)}")


def _explain(log: Path, lines: int = 25) -> str:
    """The end of a log, with a plain sentence first when a shared library is missing."""
    try:
        with os.fdopen(os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {log})"
    tail = "\n".join(text.splitlines()[-lines:])
    missing = re.search(r"error while loading shared libraries: ([^:]+):", text)
    if missing:
        return (f"the shared library {missing.group(1)} is missing on this machine (install it, or use the "
                f"self-contained sandbox wheel, which bundles it); log {log}:\n{tail}")
    return f"log {log}:\n{tail}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _start_postgres(
    build: Build, user: RunAs | None, data: Path, log: Path, settings: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``postgres`` on ``data`` (in a session of its own, so a terminal's Ctrl-C reaches us, not it) and
    return once it accepts connections (line 8 of postmaster.pid is "ready")."""
    args = [str(build.program("postgres")), "-D", str(data)]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    out = _open_log(log)
    try:
        proc = subprocess.Popen(
            args, cwd=data.parent, env=build.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, umask=0o077, **(user.popen_kwargs() if user else {}),
        )
    except OSError as e:
        raise SandboxUnavailable(f"cannot run {args[0]}: {e}") from e
    finally:
        out.close()
    pid_file = data / "postmaster.pid"
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise _StartFailed(f"postgres exited with code {proc.returncode} at start ({build.origin}): "
                               + _explain(log), log)
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return proc
        if time.monotonic() > deadline:
            _terminate(proc)
            raise SandboxUnavailable(f"postgres did not become ready in {_START_TIMEOUT:.0f} s: " + _explain(log))
        time.sleep(0.004)


class _StartFailed(SandboxUnavailable):
    def __init__(self, message: str, log: Path) -> None:
        super().__init__(message)
        self.log = log

    def port_taken(self) -> bool:
        try:
            return "Address already in use" in self.log.read_text(errors="replace")
        except OSError:
            return False


def _terminate(proc: subprocess.Popen[bytes], timeout: float = _STOP_TIMEOUT) -> None:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _copy_data(source: Path, dest: Path) -> None:
    """Copy a data directory (root's or ours, never the server's user's: see _seize)."""
    shutil.copytree(source, dest, symlinks=True, copy_function=shutil.copyfile)
    os.chmod(dest, 0o700)


# --- the template cache -------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where templates are kept: ``NILE_SANDBOX_CACHE``, else ``~/.cache/nile-tenancy/sandbox``."""
    named = os.environ.get(ENV_CACHE)
    return Path(named).expanduser() if named else Path.home() / ".cache" / "nile-tenancy" / "sandbox"


def _template(build: Build, user: RunAs | None, cache: Path) -> Path:
    """The cached template data directory of ``build`` (made now if there is none; one maker at a time)."""
    key = build.key()
    entry = cache / key
    if (entry / "complete").exists():
        _check_ours(entry)
        os.utime(entry / "complete", follow_symlinks=False)  # most recently used: kept by the pruning
        return entry / "data"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SandboxUnavailable(f"cannot create the sandbox cache {cache} ({ENV_CACHE}): {e}") from e
    _check_ours(cache)
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (entry / "complete").exists():
            _make_template(build, user, cache, entry)
    _check_ours(entry)
    _prune(cache, keep=_KEEP_TEMPLATES)
    return entry / "data"


def _check_ours(path: Path) -> None:
    """A template (or the cache) is used only if it is a directory of ours that nobody else may write: a template
    planted in a shared cache could carry anything into every sandbox (roles, functions, settings)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxUnavailable(
            f"the sandbox cache {path} is not a directory of this user's that only it can write (owner uid "
            f"{st.st_uid}, mode {stat.filemode(st.st_mode)}): remove it, or set {ENV_CACHE} to a directory of yours"
        )


def _make_template(build: Build, user: RunAs | None, cache: Path, entry: Path) -> None:
    work = _new_tempdir(user)
    try:
        data, log = work / "data", work / "template.log"
        _run(build, user, [str(build.program("initdb")), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                           "--encoding=UTF8", "--no-locale", "--no-sync", "--wal-segsize=1"],
             cwd=work, log=log, what=f"initdb of the sandbox template ({build.origin})")
        _append(data / "postgresql.conf", _SERVER_SETTINGS)
        _append(data / "pg_hba.conf", _PG_HBA, truncate=True)
        proc = _start_postgres(build, user, data, log, {
            "listen_addresses": "", "unix_socket_directories": str(work), "port": "5432",
        })
        try:
            names = {"ext": sql.Identifier(EXTENSION), "role": sql.Identifier(ROLE),
                     "template": sql.Identifier(TEMPLATE_DB), "db": sql.Identifier(DBNAME)}
            try:
                conninfo = make_conninfo(host=str(work), port=5432, user=SUPERUSER, dbname="template1")
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    for statement in _TEMPLATE_SQL:
                        conn.execute(sql.SQL(statement).format(**names))
            except psycopg.Error as e:
                raise SandboxUnavailable(
                    f"making the sandbox template failed ({build.origin}): {e}; " + _explain(log)
                ) from e
        finally:
            _terminate(proc)
        if proc.returncode not in (0, None):
            raise SandboxUnavailable(f"the template server did not stop cleanly: {_explain(log)}")
        if user is not None:
            _seize(work)  # the template is root's from now on: copied from here, and into every sandbox's directory
        for leftover in ("postmaster.opts", "postmaster.pid"):
            (data / leftover).unlink(missing_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=cache))
        _copy_data(data, staging / "data")
        (staging / "build.txt").write_text(f"{build.origin}\nPostgreSQL {build.version}\n")
        (staging / "complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        shutil.rmtree(entry, ignore_errors=True)
        os.rename(staging, entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prune(cache: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used templates (and staging directories older than an hour)."""
    used: list[tuple[float, Path]] = []
    for child in cache.iterdir():
        if child.name.startswith(".new-") and time.time() - child.stat().st_mtime > 3600:
            shutil.rmtree(child, ignore_errors=True)
        elif (child / "complete").exists():
            used.append(((child / "complete").stat().st_mtime, child))
    for _, child in sorted(used, reverse=True)[keep:]:
        shutil.rmtree(child, ignore_errors=True)


# --- temporary directories, and what killed processes left behind ---------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux), to tell it from a later process with the same id; None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


#: A sandbox's directory goes to this tmpfs, when TMPDIR is not set and it has this much room: a sandbox is thrown away,
#: and a database cloned in memory took about 10 ms, against 240 ms on ext4, on the 2-core test machine (README).
_SHM, _SHM_ROOM = Path("/dev/shm"), 1 << 30


def _temp_roots() -> list[Path]:
    """Where sandboxes' directories go (the first) and may be found (all): TMPDIR if it is set; else /dev/shm when it
    is a tmpfs with room that anyone may create in (mode 1777, as /tmp), then the system's temporary directory."""
    system = Path(tempfile.gettempdir())
    if os.environ.get("TMPDIR"):
        return [system]
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
        on_tmpfs = any(line.split()[1:3] == [str(_SHM), "tmpfs"] for line in mounts if len(line.split()) > 2)
        st, room = os.stat(_SHM), os.statvfs(_SHM)
        if on_tmpfs and stat.S_IMODE(st.st_mode) == 0o1777 and room.f_bavail * room.f_frsize >= _SHM_ROOM:
            return [_SHM, system]
    except OSError:
        pass
    return [system]


def _new_tempdir(user: RunAs | None, *, give: bool = True) -> Path:
    """A new temporary directory with an ``owner`` file naming this process; given to the server's user now, or (with
    ``give=False``) by the caller once it has written what it writes as root."""
    root = _temp_roots()[0]
    if user is not None and not user.can_reach(root):
        raise SandboxUnavailable(f"running as root, the sandbox runs PostgreSQL as {user.name!r}, who cannot search "
                                 f"the temporary directory {root}: set TMPDIR to a directory that user can search")
    work = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    (work / "owner").write_text(f"{os.getpid()} {_process_start(os.getpid()) or ''}\n")
    if user is not None and give:
        user.chown_tree(work)
    return work


def _reap_orphans() -> None:
    """Stop the servers and delete the directories of sandboxes whose process is gone (killed, so no atexit ran).
    Linux only (it tells a live owner from a dead one by /proc); a directory it cannot read is left alone."""
    if not Path("/proc/self/stat").exists():
        return
    candidates = []
    for root in _temp_roots():
        try:
            candidates += [p for p in root.iterdir() if p.name.startswith(_TMP_PREFIX)]
        except OSError:
            continue
    for work in candidates:
        try:
            owner_pid, _, owner_start = (work / "owner").read_text().strip().partition(" ")
            now = _process_start(int(owner_pid))
            if now is not None and (not owner_start or now == owner_start):
                continue  # its process is alive
            pid_file = work / "data" / "postmaster.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().splitlines()[0])
                proc = Path(f"/proc/{pid}")
                # Only a postgres of that directory, run by the directory's owner: not whatever process (of another
                # PID namespace, or a later one with the same id) a pid file names.
                if (proc.exists() and proc.stat().st_uid == pid_file.stat().st_uid
                        and str(work / "data").encode() in (proc / "cmdline").read_bytes()):
                    os.kill(pid, signal.SIGQUIT)
                    for _ in range(300):
                        if not proc.exists():
                            break
                        time.sleep(0.01)
            shutil.rmtree(work)
        except (OSError, ValueError, IndexError):
            continue  # another user's, or half-written: leave it


# --- the sandbox ----------------------------------------------------------------------------------------------------

_running: set["Sandbox"] = set()
_running_lock = threading.Lock()
_reaped = False


@atexit.register
def _stop_all() -> None:
    with _running_lock:
        sandboxes = list(_running)
    for sandbox in sandboxes:
        sandbox.stop()


class Sandbox:
    """A running throwaway PostgreSQL with the extension. Make one with :meth:`start`; :meth:`stop` ends it.

    Attributes: ``dsn`` (libpq conninfo: database ``nile`` as the role ``nile_sandbox``, over TCP with the password),
    ``superuser_dsn`` (the same database as ``postgres``), ``host``, ``port``, ``dbname``, ``user``, ``password``
    (this server's, for ``nile_sandbox`` and ``postgres`` over TCP), ``token_key`` (the server's ``nile.token_key``),
    ``directory`` (the temporary directory: ``data/``, ``server.log``, the Unix socket),
    ``build`` (:class:`Build`), ``start_seconds`` (how long :meth:`start` took).
    """

    def __init__(self, *, build: Build, directory: Path, port: int, token_key: str, password: str,
                 process: subprocess.Popen[bytes], start_seconds: float) -> None:
        self.build = build
        self.directory = directory
        self.host = HOST
        self.port = port
        self.dbname = DBNAME
        self.user = ROLE
        self.token_key = token_key
        self.password = password
        self.start_seconds = start_seconds
        self._process = process
        self._owner_pid = os.getpid()
        self._admin: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    # --- life ---------------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, *, pg_config: str | os.PathLike[str] | None = None,
              cache: str | os.PathLike[str] | None = None) -> "Sandbox":
        """Start a sandbox and return it once it accepts connections. ``pg_config`` and ``cache`` override the
        build's discovery and ``NILE_SANDBOX_CACHE``. SandboxUnavailable says what is missing."""
        global _reaped
        began = time.monotonic()
        if not _reaped:
            _reaped = True
            _reap_orphans()
        user = run_as()
        build = _reachable_build(find_build(pg_config), user)
        template = _template(build, user, Path(cache).expanduser() if cache is not None else cache_dir())
        work = _new_tempdir(user, give=False)  # root's (when root) until everything root writes there is written
        admin: psycopg.Connection[Any] | None = None
        proc: subprocess.Popen[bytes] | None = None
        try:
            data, log = work / "data", work / "server.log"
            _copy_data(template, data)
            token_key = secrets.token_urlsafe(48)
            password = secrets.token_urlsafe(24)
            _append(data / "postgresql.auto.conf", f"nile.token_key = '{token_key}'\n")  # ps would show -c
            if user is not None:
                user.chown_tree(work)
            for attempt in range(5):
                port = _free_port()
                if log.exists():  # a failed attempt's log, kept beside
                    log.rename(work / f"server.{attempt}.log")
                try:
                    proc = _start_postgres(build, user, data, log, {
                        "listen_addresses": HOST, "port": str(port), "unix_socket_directories": str(work),
                    })
                    break
                except _StartFailed as e:
                    if attempt == 4 or not e.port_taken():
                        raise
            # TCP logins need this server's password (pg_hba.conf); set over the Unix socket, which trusts.
            admin = psycopg.connect(make_conninfo(host=str(work), port=port, user=SUPERUSER, dbname="postgres"),
                                    autocommit=True)
            for role in (SUPERUSER, ROLE):
                admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        except BaseException:
            if admin is not None:
                admin.close()
            if proc is not None:
                _terminate(proc)
            shutil.rmtree(work, ignore_errors=True)
            raise
        sandbox = cls(build=build, directory=work, port=port, token_key=token_key, password=password, process=proc,
                      start_seconds=time.monotonic() - began)
        sandbox._admin = admin
        with _running_lock:
            _running.add(sandbox)
        return sandbox

    def stop(self) -> None:
        """Stop the server and delete its directory. Idempotent; does nothing in a forked child process."""
        if os.getpid() != self._owner_pid:
            return
        with self._lock:
            if self._admin is not None:
                try:
                    self._admin.close()
                except psycopg.Error:
                    pass
                self._admin = None
            _terminate(self._process)
            shutil.rmtree(self.directory, ignore_errors=True)
        with _running_lock:
            _running.discard(self)

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def pid(self) -> int:
        """The process id of the postmaster."""
        return self._process.pid

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Sandbox {state} PostgreSQL {self.build.version} on {self.host}:{self.port} ({self.directory})>"

    # --- connecting -----------------------------------------------------------------------------------------------

    def dsn_for(self, dbname: str = DBNAME, user: str = ROLE) -> str:
        """The libpq conninfo of ``dbname`` as ``user``: TCP on 127.0.0.1 with this server's password for
        ``nile_sandbox`` and ``postgres``; the Unix socket (no password) for any other role, which has none."""
        if user in (ROLE, SUPERUSER):
            return make_conninfo(host=self.host, port=self.port, dbname=dbname, user=user, password=self.password)
        return self.socket_dsn_for(dbname, user)

    def socket_dsn_for(self, dbname: str = DBNAME, user: str = ROLE) -> str:
        """The libpq conninfo of ``dbname`` as ``user`` over the Unix socket in :attr:`directory` (trusted: only this
        OS user, or root, can reach it)."""
        return make_conninfo(host=str(self.directory), port=self.port, dbname=dbname, user=user)

    @property
    def dsn(self) -> str:
        return self.dsn_for(DBNAME, ROLE)

    @property
    def superuser_dsn(self) -> str:
        return self.dsn_for(DBNAME, SUPERUSER)

    @property
    def data_directory(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def _superuser(self) -> psycopg.Connection[Any]:
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.socket_dsn_for("postgres", SUPERUSER), autocommit=True)
        return self._admin

    def create_database(
        self, name: str | None = None, *, template: str = TEMPLATE_DB, owner: str = ROLE, wait: float = 5.0
    ) -> str:
        """Create a database cloned from ``template`` (default ``nile_template``: the extension, nothing else), owned
        by ``owner``; returns its name (a fresh ``test_<hex>`` by default). The template must have no other session:
        a busy template is retried for ``wait`` seconds, then SandboxUnavailable names the sessions."""
        name = name or f"test_{uuid.uuid4().hex[:16]}"
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(template), sql.Identifier(owner))
        if self.build.major >= 15:
            statement = sql.SQL("{} STRATEGY FILE_COPY").format(statement)
        deadline = time.monotonic() + wait
        with self._lock:
            conn = self._superuser()
            while True:
                try:
                    conn.execute(statement)
                    return name
                except psycopg.errors.ObjectInUse as e:
                    if time.monotonic() > deadline:
                        sessions = conn.execute(
                            "SELECT pid, usename, application_name, state, left(query, 80) FROM pg_stat_activity"
                            " WHERE datname = %s", [template]).fetchall()
                        raise SandboxUnavailable(
                            f"cannot clone the database {template!r}: other sessions are connected to it "
                            f"(close them; a template must be idle): {sessions}") from e
                    time.sleep(0.05)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its sessions (``WITH (FORCE)``). Sessions that are already closing are waited for
        first (up to a second): PostgreSQL itself would wait for them in steps of 100 ms."""
        with self._lock:
            conn = self._superuser()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = %s", [name])
                if row.fetchone() == (0,):
                    break
                time.sleep(0.002)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _main(argv: Iterable[str]) -> int:
    args = list(argv)
    if args and args[0] in ("-h", "--help"):
        print("python -m nile_tenancy.sandbox [--check]: says which PostgreSQL build the sandbox uses; without "
              "--check, runs a sandbox until Ctrl-C and prints its DSN")
        return 0
    try:
        build = find_build()
    except SandboxUnavailable as e:
        print(f"nile_tenancy sandbox: {e}", file=sys.stderr)
        return 1
    print(f"PostgreSQL {build.version}: {build.origin}; template cache {cache_dir() / build.key()}")
    if args[:1] == ["--check"]:
        return 0
    with Sandbox.start() as sandbox:
        print(f"ready in {sandbox.start_seconds:.2f} s\n  dsn:           {sandbox.dsn}\n"
              f"  superuser_dsn: {sandbox.superuser_dsn}\n  directory:     {sandbox.directory}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
