"""nile_tenancy.django.context — a tenant's context on a Django database connection: one ``transaction.atomic()``
block that enters the context first, with the id or token bound as a parameter, and the tenant of the active context
for Python-side defaults.

Django's psycopg cursors bind parameters on the client (the id would be spelled into the SQL text, which
``pg_stat_activity`` shows other sessions of the role): the context is entered with a server-binding psycopg cursor on
Django's connection instead, never prepared by name (PgBouncer in transaction mode). Its errors are the
:mod:`nile_tenancy.errors` classes themselves; errors of the ORM inside the block are Django's, with the
:mod:`nile_tenancy.errors` class as their ``__cause__``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import uuid
from typing import Iterator

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .. import _common as c
from .. import errors
from .._sync import require_idle

__all__ = ["tenant_context", "current_tenant_id"]


@dataclasses.dataclass(frozen=True)
class _Active:
    using: str
    tenant: uuid.UUID


# The contexts open in this thread or asyncio task, outermost first: all of one tenant, at most one per alias.
_active: contextvars.ContextVar[tuple[_Active, ...]] = contextvars.ContextVar("nile_tenancy_django", default=())


def current_tenant_id() -> uuid.UUID | None:
    """The tenant of the active :func:`tenant_context`, or None outside one: a Python-side default for the tenant
    column (``models.UUIDField(default=current_tenant_id)``) where ``db_default=CurrentTenant()`` is not available."""
    active = _active.get()
    return active[-1].tenant if active else None


@contextlib.contextmanager
def tenant_context(
    tenant_id: uuid.UUID | str | None = None, *, token: str | None = None, using: str = DEFAULT_DB_ALIAS
) -> Iterator[uuid.UUID]:
    """``with tenant_context(tenant_id):`` (or ``token=``, a signed tenant token): the block is one
    ``transaction.atomic(using=using)`` in the tenant's context; yields the tenant's id (the token's, as the server
    verified it). It commits at the end and rolls back if the block raises.

    It starts only on an idle connection: inside ``transaction.atomic()``, with autocommit off or with a transaction
    open it raises :class:`~nile_tenancy.errors.TransactionInProgress`. Inside a context of the same tenant it does
    nothing (a nested token is verified by the server first, in a savepoint; on another alias it opens that alias's
    own context); another tenant raises
    :class:`~nile_tenancy.errors.NestedContextError`.
    """
    if (tenant_id is None) == (token is None):
        raise TypeError("give either a tenant_id or token=")
    key = c.tenant_id_text(tenant_id) if tenant_id is not None else c.token_tenant(token or "")
    active = _active.get()
    if active:
        outer = str(active[0].tenant)
        if key != outer:
            raise errors.NestedContextError(
                f"a tenant context for {key or 'a token'} cannot start inside the context of tenant {outer}"
            )
        if any(a.using == using for a in active):
            if token is not None:
                _verify_nested_token(connections[using], token, active[0].tenant)
            yield active[0].tenant
            return
    connection = connections[using]
    _require_idle(connection)
    with transaction.atomic(using=using):
        tenant = _enter(connection, c.SET_TENANT_TOKEN if token is not None else c.SET_TENANT, token or key)
        reset = _active.set(active + (_Active(using, tenant),))
        try:
            yield tenant
        finally:
            _active.reset(reset)


def _verify_nested_token(connection: BaseDatabaseWrapper, token: str, tenant: uuid.UUID) -> None:
    """A token nested in the context of the tenant it names joins it once the server has verified it, in a savepoint
    rolled back at once (the outer context and its user id stay as they were)."""
    savepoint = transaction.savepoint(using=connection.alias)
    try:
        entered = _enter(connection, c.SET_TENANT_TOKEN, token)
    finally:
        transaction.savepoint_rollback(savepoint, using=connection.alias)
    c.check_verified_tenant((entered,), str(tenant))


def _require_idle(connection: BaseDatabaseWrapper) -> None:
    if connection.in_atomic_block or not connection.get_autocommit():
        raise errors.TransactionInProgress(
            f"tenant_context(using={connection.alias!r}) is a transaction of its own and cannot start inside "
            "transaction.atomic() or with autocommit off (entered inside it, the context would outlive the with "
            "block); with ATOMIC_REQUESTS, enter it in a middleware (TenantMiddleware), not in the view"
        )
    connection.ensure_connection()
    require_idle(connection.connection)


def _enter(connection: BaseDatabaseWrapper, enter_sql: str, argument: str | None) -> uuid.UUID:
    """Enter the context in the transaction atomic() opened; returns the tenant the server entered."""
    try:
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(enter_sql, [argument], prepare=False)
            row = cursor.fetchone()
    except psycopg.Error:
        connection.errors_occurred = True  # Django checks such a connection before reusing it
        raise
    if row is None or row[0] is None:  # set_tenant() and set_tenant_token() return the tenant they entered
        raise errors.NileError(f"{enter_sql} returned no tenant")
    return row[0] if isinstance(row[0], uuid.UUID) else uuid.UUID(str(row[0]))
