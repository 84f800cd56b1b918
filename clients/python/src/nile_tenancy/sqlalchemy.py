"""nile_tenancy.sqlalchemy — SQLAlchemy 2 and Alembic with the nile_tenancy extension.

- :func:`tenant_session`: a :class:`~sqlalchemy.orm.Session` whose every transaction inside the ``with`` block is in
  one tenant's context. An ``after_begin`` listener enters the context first in each transaction, with the id (or
  token) bound as a parameter; the block ends with COMMIT, or ROLLBACK when it raises, so the connection goes back to
  the pool with no transaction and no context.
- :func:`include_object`: the Alembic autogenerate filter that leaves out what the extension generates (the
  ``nile_tenant_fk`` foreign key, the ``nile_<table>_<column>_idx`` index, the tables of schema ``nile``), so
  ``alembic check`` and ``alembic revision --autogenerate`` never propose to drop them; :func:`include_name`, with
  ``include_schemas=True``, keeps Alembic from reflecting schema ``nile`` at all.

Server errors raised through SQLAlchemy are wrapped as SQLAlchemy wraps every driver error: the
:mod:`nile_tenancy.errors` class is the wrapper's ``.orig`` (``except DBAPIError as e: isinstance(e.orig,
errors.TenantNotFound)``). There is no variant for ``AsyncSession``: SQLAlchemy's asyncio layer needs greenlet.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import uuid
from typing import Any, Callable, Iterator, Union

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction, scoped_session, sessionmaker

from . import _common as c
from . import errors

#: What :func:`tenant_session` accepts: a session factory, an engine or a connection to open a session on, or a session
#: of the caller's with no transaction open (a ``scoped_session``: its current session).
SessionSource = Union["sessionmaker[Session]", Engine, Connection, Session, "scoped_session[Session]"]

__all__ = ["tenant_session", "include_object", "include_name", "SessionSource"]


@dataclasses.dataclass(frozen=True)
class _Active:
    """The tenant session open in this thread or asyncio task."""

    tenant: str | None  # the tenant id (read from the token for a token context; None if it cannot be read)
    source: object  # what tenant_session() was given
    session: Session


_active: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("nile_tenancy_sqlalchemy", default=None)


@contextlib.contextmanager
def tenant_session(
    source: SessionSource, tenant_id: uuid.UUID | str | None = None, *, token: str | None = None
) -> Iterator[Session]:
    """``with tenant_session(Session, tenant_id) as session:`` (or ``token=``, a signed tenant token): every
    transaction of ``session`` inside the block is in the tenant's context, the last one is committed at the end of
    the block (rolled back if the block raises), and a session the block opened is closed.

    ``source`` is a ``sessionmaker``, an ``Engine``, a ``Connection``, or a ``Session`` or ``scoped_session`` of
    yours (left open at the end); a session or connection with a transaction open is refused
    (:class:`~nile_tenancy.errors.TransactionInProgress`). When the session has a single bind the context is entered
    at once, so an unknown tenant or a bad token fails at the ``with``. Inside the block of a tenant, the same tenant
    and ``source`` gives back the same session (a nested token is verified by the server first, in a savepoint; the
    same tenant from another ``source`` opens a session of its own); another tenant raises
    :class:`~nile_tenancy.errors.NestedContextError`. A session of yours is emptied at the end (``expunge_all()``):
    the tenant's objects do not stay in its identity map for whatever it does next. The engine must use the
    psycopg (3) driver (``postgresql+psycopg://``); any other is refused with TypeError.
    """
    if (tenant_id is None) == (token is None):
        raise TypeError("give either a tenant_id or token=")
    tenant = c.tenant_id_text(tenant_id) if tenant_id is not None else c.token_tenant(token or "")
    current = _active.get()
    if current is not None:
        if tenant is None or tenant != current.tenant:
            raise errors.NestedContextError(
                f"a tenant session for {tenant or 'a token'} cannot start inside the tenant session of "
                f"{current.tenant or 'a token'}"
            )
        if current.source is source:
            if token is not None:
                _verify_nested_token(current.session, token, current.tenant)
            yield current.session
            return
    enter_sql, argument = (c.SET_TENANT_TOKEN, token) if token is not None else (c.SET_TENANT, tenant)
    session, opened = _session_of(source)
    try:
        _refuse_open_transaction(session)
        _require_psycopg(session.bind)
        listener = _entering(enter_sql, argument)
        event.listen(session, "after_begin", listener)
        reset = None
        try:
            reset = _active.set(_Active(tenant, source, session))
            session.begin()
            if session.bind is not None:
                session.connection()  # enters the context now (after_begin)
            yield session
            session.commit()
        except BaseException:
            with contextlib.suppress(Exception):  # the block's own error is the one to report
                session.rollback()
            raise
        finally:
            # The listener first: once it is gone, no later transaction of the session can enter the context.
            try:
                event.remove(session, "after_begin", listener)
            finally:
                if reset is not None:
                    with contextlib.suppress(ValueError):  # ended in another context (an abandoned generator)
                        _active.reset(reset)
                if not opened:
                    # The tenant's objects leave a session that outlives the block: session.get() answers from the
                    # identity map without a query, so a later block of another tenant would get them.
                    session.expunge_all()
    finally:
        if opened:
            session.close()


def _session_of(source: SessionSource) -> tuple[Session, bool]:
    """The session to work in, and whether it was opened here (and so is closed here)."""
    if isinstance(source, Session):
        return source, False
    if isinstance(source, scoped_session):
        return source(), False
    if isinstance(source, sessionmaker):
        return source(), True
    if isinstance(source, (Engine, Connection)):
        return Session(bind=source), True
    raise TypeError(
        "tenant_session() needs a sessionmaker, Engine, Connection, Session or scoped_session, "
        f"not {type(source).__name__}"
    )


def _require_psycopg(bind: object) -> None:
    """The context's id or token must reach the server as a bound parameter, which only psycopg (3) does among
    SQLAlchemy's PostgreSQL drivers: psycopg2 spells it into the SQL text, where ``pg_stat_activity`` shows it to other
    sessions of the role."""
    dialect = getattr(bind, "dialect", None)
    if dialect is not None and (dialect.name, dialect.driver) != ("postgresql", "psycopg"):
        raise TypeError(
            f"tenant_session() needs SQLAlchemy's psycopg (3) driver (postgresql+psycopg://), not "
            f"{dialect.name}+{dialect.driver}"
        )


def _verify_nested_token(session: Session, token: str, tenant: str | None) -> None:
    """A token nested in the session of the tenant it names joins it once the server has verified it, in a savepoint
    rolled back at once (the outer context and its user id stay as they were)."""
    savepoint = session.begin_nested()
    try:
        row = session.connection().exec_driver_sql(c.SET_TENANT_TOKEN, (token,)).fetchone()
    finally:
        savepoint.rollback()
    c.check_verified_tenant(row, tenant)


def _refuse_open_transaction(session: Session) -> None:
    bind = session.bind
    if session.in_transaction() or (isinstance(bind, Connection) and bind.in_transaction()):
        raise errors.TransactionInProgress(
            "a tenant session starts its own transaction and cannot join one that is open: commit or roll back "
            "the session (or connection) first (joined, the context would outlive the with block)"
        )


def _entering(enter_sql: str, argument: str | None) -> Callable[[Session, SessionTransaction, Connection], None]:
    """The ``after_begin`` listener: the context first in each transaction of the session (not in a SAVEPOINT, which
    is inside a transaction already in the context)."""

    def enter(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
        _require_psycopg(connection)  # a session with several binds: checked on each connection it begins on
        if not transaction.nested:
            connection.exec_driver_sql(enter_sql, (argument,))

    return enter


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's ``include_object`` hook (``context.configure(..., include_object=include_object)``): False for the
    objects the extension generates and the models do not declare, which autogenerate would otherwise propose to
    drop (and the extension would refuse with 2BP01): a reflected index or constraint named ``nile_*`` with no
    counterpart in the models (``nile_tenant_fk``, ``nile_<table>_<column>_idx``), and anything of schema ``nile``
    (``nile.tenants``, declared in the models only so that ``ForeignKey("nile.tenants.id")`` resolves). Tables and
    columns named ``nile_*`` are yours, and compared as usual."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    if getattr(table, "schema", None) == "nile":
        return False
    generated = type_ not in ("table", "column") and (name or "").startswith("nile_")
    return not (generated and reflected and compare_to is None)


def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    """Alembic's ``include_name`` hook, for ``include_schemas=True``: False for schema ``nile``, the extension's, so
    that autogenerate does not reflect its tables (use it with :func:`include_object`, which leaves out the stub of
    ``nile.tenants`` in the models)."""
    return not (type_ == "schema" and name == "nile")
