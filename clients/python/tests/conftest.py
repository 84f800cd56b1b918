"""Fixtures of the SDK suite (issue 20): real servers, real connections, no mocks.

Environment (set by run.sh):
  NILE_TEST_PORT     the PostgreSQL server; set-up that needs a superuser connects here as `postgres`
  NILE_CLIENT_PORT   where the SDK connects: the server itself, or PgBouncer in transaction mode in front of it
  NILE_CLIENT_VIA    `direct` or `pgbouncer`
  NILE_SDK_DB        the database run.sh made: the extension, examples/role_layout.sql (app_migrator owns the tables,
                     app_user is the application), sdk_admin (nile_admin, pg_monitor), sdk_token (nile_app with
                     nile.require_token on), and the seed's table `users`
  NILE_SDK_TOKEN_KEY the server's nile.token_key
"""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import psycopg
import pytest

from nile_tenancy import Nile

HOST = "127.0.0.1"
SERVER_PORT = int(os.environ.get("NILE_TEST_PORT", "5432"))
CLIENT_PORT = int(os.environ.get("NILE_CLIENT_PORT", str(SERVER_PORT)))
VIA_PGBOUNCER = os.environ.get("NILE_CLIENT_VIA", "direct") == "pgbouncer"
DB = os.environ.get("NILE_SDK_DB", "clients_sdk")
TOKEN_KEY = os.environ.get("NILE_SDK_TOKEN_KEY", "")


def dsn(user: str, *, server: bool = False) -> str:
    port = SERVER_PORT if server else CLIENT_PORT
    return f"host={HOST} port={port} dbname={DB} user={user} application_name=nile-sdk-tests"


def superuser() -> psycopg.Connection:
    """Set-up and checks behind the SDK's back: straight to the server, as `postgres`, autocommit."""
    return psycopg.connect(dsn("postgres", server=True), autocommit=True)


@pytest.fixture
def nile() -> Iterator[Nile]:
    """The application's client: app_user, no privileges beyond nile_app and the tables."""
    with Nile(dsn("app_user"), max_size=4) as client:
        yield client


@pytest.fixture
def admin() -> Iterator[Nile]:
    """The operator's client: sdk_admin (nile_admin, pg_monitor), not a superuser."""
    with Nile(dsn("sdk_admin"), max_size=4, token_key=TOKEN_KEY) as client:
        yield client


@pytest.fixture
def two_tenants(admin: Nile) -> tuple[str, str]:
    """Two fresh tenants, acme and globex, each with one user row."""
    acme = admin.tenants.create(name=f"acme-{uuid.uuid4().hex[:8]}")["tenant_id"]
    globex = admin.tenants.create(name=f"globex-{uuid.uuid4().hex[:8]}")["tenant_id"]
    with superuser() as su:
        for tenant, name in ((acme, "ada"), (globex, "grace")):
            su.execute(
                "INSERT INTO public.users (tenant_id, username, email) VALUES (%s, %s, %s)",
                (tenant, name, f"{name}@example.test"),
            )
    return acme, globex
