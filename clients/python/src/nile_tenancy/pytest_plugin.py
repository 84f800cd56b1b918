"""nile_tenancy.pytest_plugin — pytest fixtures on the sandbox: one server per test session, a fresh database per test

Installed with the package (entry point ``pytest11``), so the fixtures are there in any project that depends on
nile_tenancy; ``-p nile_tenancy.pytest_plugin`` loads it explicitly, ``-p no:nile_tenancy`` turns it off. Nothing
starts until a test asks for a fixture. The server is :class:`nile_tenancy.sandbox.Sandbox` (which PostgreSQL build it
uses, running as root: see that module).

Fixtures:

``nile_sandbox`` (function) — a :class:`SandboxNile`, i.e. a :class:`~nile_tenancy.Nile` connected as the role
``nile_sandbox`` (not a superuser; a member of ``nile_admin``, ``nile_app`` and ``nile_table_owner``; may create tables
in ``public``) to a database of its own, cloned from the session's template, closed after the test and dropped.
Besides the client's API it has ``.dsn`` (libpq conninfo of that database as ``nile_sandbox``),
``.superuser_dsn`` (the same as ``postgres``), ``.dbname``, ``.server`` (the session's :class:`Sandbox`, also
``.sandbox``), ``.token_key`` (the server's ``nile.token_key``, also the client's, so ``nile.tokens.sign()`` makes
tokens the server accepts) and ``.setup_seconds`` (how long the clone and the first query took).

``nile_sandbox_database`` (function) — the same fresh database without a client, a :class:`SandboxDatabase`
(``name``, ``dsn``, ``superuser_dsn``, ``token_key``): for ``AsyncNile``, SQLAlchemy, Django or plain psycopg.

``nile_sandbox_server`` (session) — the :class:`Sandbox`: ``dsn``, ``superuser_dsn``, ``dsn_for(db, user)``,
``create_database()``, ``drop_database()``.

``nile_sandbox_clones`` (session) — the supply of fresh databases (:class:`Clones`): ``take(template)`` and
``release(database)`` for fixtures of your own, ``wait()`` for the drops still under way.

``nile_sandbox_template`` (session) — the name of the database each test's database is cloned from:
``nile_template`` (the extension and nothing else). Override it to run your migrations once per session::

    @pytest.fixture(scope="session")
    def nile_sandbox_template(nile_sandbox_server):
        name = nile_sandbox_server.create_database("app_template")
        run_migrations(nile_sandbox_server.dsn_for(name))      # then close every connection to it
        return name

A template must have no open session when it is cloned (PostgreSQL's rule): close what the migrations opened.

Speed: a clone takes tens of milliseconds; a worker thread clones the next test's database while the current test
runs (one spare per template) and drops the databases of finished tests, so a test usually waits only for its
client's first connection.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Iterator

import pytest

from ._sync import Nile
from .sandbox import SUPERUSER, TEMPLATE_DB, Sandbox

__all__ = [
    "Clones",
    "SandboxDatabase",
    "SandboxNile",
    "nile_sandbox",
    "nile_sandbox_clones",
    "nile_sandbox_database",
    "nile_sandbox_server",
    "nile_sandbox_template",
]


@dataclasses.dataclass(frozen=True)
class SandboxDatabase:
    """A test's own database on the session's sandbox server."""

    name: str
    dsn: str  # as nile_sandbox
    superuser_dsn: str  # as postgres
    token_key: str  # the server's nile.token_key
    server: Sandbox = dataclasses.field(repr=False)


class SandboxNile(Nile):
    """The client the ``nile_sandbox`` fixture yields: a :class:`Nile` on a test's own database, with the database's
    coordinates. Closing it leaves the session's server running (the fixture drops the database afterwards)."""

    def __init__(self, database: SandboxDatabase, **kwargs: Any) -> None:
        kwargs.setdefault("token_key", database.token_key)
        super().__init__(database.dsn, **kwargs)
        self.database = database
        self.dsn = database.dsn
        self.superuser_dsn = database.superuser_dsn
        self.dbname = database.name
        self.server = database.server
        self.token_key = database.token_key
        self.setup_seconds = 0.0

    @property
    def sandbox(self) -> Sandbox:
        """The session's sandbox server (``Nile(sandbox=True)`` has its own here; this one is shared)."""
        return self.server


def _database(server: Sandbox, name: str) -> SandboxDatabase:
    return SandboxDatabase(
        name=name,
        dsn=server.dsn_for(name),
        superuser_dsn=server.dsn_for(name, SUPERUSER),
        token_key=server.token_key,
        server=server,
    )


def new_database(server: Sandbox, template: str = TEMPLATE_DB) -> SandboxDatabase:
    """A fresh database cloned from ``template`` on ``server`` now, without a spare (Clones.take() has one)."""
    return _database(server, server.create_database(template=template))


class Clones:
    """Fresh databases for the tests of a session. One worker thread does the slow part in the background: it clones
    a spare for the next test as soon as one is taken (one spare per template) and drops the databases tests are
    done with, so a test waits for a clone only when the tests before it were shorter than one. ``wait()`` waits for
    the pending drops (and reports a failed one)."""

    def __init__(self, server: Sandbox) -> None:
        self.server = server
        self._spares: dict[str, concurrent.futures.Future[str]] = {}
        self._drops: list[concurrent.futures.Future[None]] = []
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nile-sandbox-clone")

    def take(self, template: str = TEMPLATE_DB) -> SandboxDatabase:
        """A database cloned from ``template`` that no test had; a spare for the next test is cloned meanwhile."""
        with self._lock:
            spare = self._spares.pop(template, None)
        # A spare that failed (the template was busy) raises here, in the test that needed it.
        name = spare.result() if spare is not None else self.server.create_database(template=template)
        with self._lock:
            self._spares[template] = self._executor.submit(self.server.create_database, template=template)
        return _database(self.server, name)

    def release(self, database: SandboxDatabase) -> None:
        """Drop a database a test is done with (in the background, sessions ended with ``WITH (FORCE)``)."""
        with self._lock:
            self._drops = [f for f in self._drops if not f.done() or f.exception() is not None]
            self._drops.append(self._executor.submit(self.server.drop_database, database.name))

    def wait(self) -> None:
        """Wait until every released database is dropped; raises the first drop that failed."""
        with self._lock:
            drops, self._drops = self._drops, []
        for drop in drops:
            drop.result()

    def close(self) -> None:
        """Wait for the background work (the server stops after this, and deletes the spares with it)."""
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)
            self._spares.clear()


@pytest.fixture(scope="session")
def nile_sandbox_server() -> Iterator[Sandbox]:
    """One sandbox server for the whole test session (per xdist worker), stopped at its end."""
    server = Sandbox.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nile_sandbox_template(nile_sandbox_server: Sandbox) -> str:
    """The database each test's database is cloned from; override it to migrate once per session."""
    return TEMPLATE_DB


@pytest.fixture(scope="session")
def nile_sandbox_clones(nile_sandbox_server: Sandbox) -> Iterator[Clones]:
    """The session's supply of fresh databases (:class:`Clones`), for fixtures of your own."""
    clones = Clones(nile_sandbox_server)
    try:
        yield clones
    finally:
        clones.close()


@pytest.fixture
def nile_sandbox_database(nile_sandbox_clones: Clones, nile_sandbox_template: str) -> Iterator[SandboxDatabase]:
    """A database of this test's own, cloned from ``nile_sandbox_template``; dropped after the test."""
    database = nile_sandbox_clones.take(nile_sandbox_template)
    try:
        yield database
    finally:
        nile_sandbox_clones.release(database)


@pytest.fixture
def nile_sandbox(nile_sandbox_clones: Clones, nile_sandbox_template: str) -> Iterator[SandboxNile]:
    """A Nile client on a database of this test's own (see the module's docstring for what else it carries)."""
    began = time.perf_counter()
    database = nile_sandbox_clones.take(nile_sandbox_template)
    try:
        client = SandboxNile(database, max_size=4)
        try:
            client.sql.fetch_one("SELECT 1")  # the pool's first connection: part of the set-up, not of the test
            client.setup_seconds = time.perf_counter() - began
            yield client
        finally:
            client.close()
    finally:
        nile_sandbox_clones.release(database)
