"""Shared fixtures of the Python client suite (issue 18): real connections to a real server, no mocks.

Environment (set by run.sh):
  NILE_TEST_PORT     the PostgreSQL server; the suite's own set-up (tenants, role layout checks) connects here as the
                     superuser `postgres`
  NILE_CLIENT_PORT   where the application roles (app_user, app_migrator) connect: the server itself, or PgBouncer in
                     transaction mode in front of it
  NILE_CLIENT_VIA    `direct` or `pgbouncer`; behind PgBouncer 1.18 psycopg must not prepare statements by name
                     (prepare_threshold=None), exactly as an application would have to
  NILE_PY_DB         database of the psycopg tests (run.sh creates it, with the extension and examples/role_layout.sql);
                     NILE_PY_DB_ALEMBIC and NILE_PY_DB_DJANGO those of the Alembic and Django tests
"""

from __future__ import annotations

import contextlib
import os
import uuid

import psycopg
import pytest

HOST = "127.0.0.1"
SERVER_PORT = int(os.environ.get("NILE_TEST_PORT", "5432"))
CLIENT_PORT = int(os.environ.get("NILE_CLIENT_PORT", str(SERVER_PORT)))
VIA = os.environ.get("NILE_CLIENT_VIA", "direct")
VIA_PGBOUNCER = VIA == "pgbouncer"
DB = os.environ.get("NILE_PY_DB", "clients_py")
DB_ALEMBIC = os.environ.get("NILE_PY_DB_ALEMBIC", "clients_py_alembic")
DB_DJANGO = os.environ.get("NILE_PY_DB_DJANGO", "clients_py_django")

# The SQLSTATEs an application handles (README, "Errors"; class NT is the extension's own).
NO_TENANT_CONTEXT = "NT001"
TENANT_NOT_FOUND = "NT002"
TENANT_INACTIVE = "NT003"
TENANT_DELETED = "NT004"
ROW_OF_ANOTHER_TENANT = "NT005"
CONTEXT_FORGERY = "NT006"
SESSION_SCOPE_REFUSED = "NT007"
NOT_IN_TRANSACTION = "25P01"
FEATURE_NOT_SUPPORTED = "0A000"
INSUFFICIENT_PRIVILEGE = "42501"
FOREIGN_KEY_VIOLATION = "23503"
DEPENDENT_OBJECTS_STILL_EXIST = "2BP01"


def client_kwargs() -> dict:
    """What an application passes to psycopg.connect() here: behind PgBouncer < 1.21 no named prepared statements."""
    return {"prepare_threshold": None} if VIA_PGBOUNCER else {}


def conninfo(user: str, dbname: str = DB, *, admin: bool = False) -> str:
    port = SERVER_PORT if admin else CLIENT_PORT
    return f"host={HOST} port={port} dbname={dbname} user={user} application_name=clients-python"


def connect(user: str, dbname: str = DB, **kwargs) -> psycopg.Connection:
    """An application connection (through PgBouncer in the second pass)."""
    return psycopg.connect(conninfo(user, dbname), **client_kwargs(), **kwargs)


def admin_connect(dbname: str = DB) -> psycopg.Connection:
    """The superuser, directly on the server, autocommit: the test's own set-up and inspection."""
    return psycopg.connect(conninfo("postgres", dbname, admin=True), autocommit=True)


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error, also when a library (SQLAlchemy, Django) wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "sqlstate", None)
        if code:
            return code
        orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError
        exc = orig if orig is not None else (exc.__cause__ or exc.__context__)
    return None


@contextlib.contextmanager
def raises_sqlstate(expected: str):
    """Asserts that the block fails with exactly this SQLSTATE; the message names the one seen otherwise."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any library's wrapper of a server error
        got = sqlstate_of(exc)
        assert got == expected, f"expected SQLSTATE {expected}, got {got}: {type(exc).__name__}: {exc}"
    else:
        raise AssertionError(f"expected SQLSTATE {expected}, but the statement succeeded")


@pytest.fixture(scope="session")
def admin():
    with admin_connect() as conn:
        yield conn


def create_tenant(admin_conn: psycopg.Connection, label: str) -> str:
    name = f"{label}-{uuid.uuid4().hex[:8]}"
    return str(admin_conn.execute("SELECT nile.create_tenant(%s)", (name,)).fetchone()[0])


@pytest.fixture
def tenant_a(admin) -> str:
    return create_tenant(admin, "py-a")


@pytest.fixture
def tenant_b(admin) -> str:
    return create_tenant(admin, "py-b")


def migrator_ddl(sql: str, dbname: str = DB) -> None:
    """DDL as the migration role app_migrator: its own transaction, no tenant or admin context."""
    with connect("app_migrator", dbname) as conn:
        conn.execute(sql)


@pytest.fixture
def items(request) -> str:
    """A fresh tenant table `items_<hex>` (tenant_id, id identity, body), created and dropped by app_migrator."""
    name = f"items_{uuid.uuid4().hex[:10]}"
    migrator_ddl(
        f"CREATE TABLE {name} (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, "
        f"body text NOT NULL, PRIMARY KEY (tenant_id, id))"
    )
    yield name
    migrator_ddl(f"DROP TABLE IF EXISTS {name}")


def insert_as(tenant: str, table: str, *bodies: str) -> None:
    """app_user writes rows in the tenant's context, one transaction."""
    with connect("app_user") as conn, conn.transaction():
        conn.execute("SELECT nile.set_tenant(%s)", (tenant,))
        for body in bodies:
            conn.execute(f"INSERT INTO {table} (body) VALUES (%s)", (body,))


def bodies_as(tenant: str, table: str) -> list[tuple[str, str]]:
    with connect("app_user") as conn, conn.transaction():
        conn.execute("SELECT nile.set_tenant(%s)", (tenant,))
        return [(str(t), b) for t, b in conn.execute(f"SELECT tenant_id, body FROM {table} ORDER BY id")]
