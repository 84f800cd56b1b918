"""The synchronous client, :class:`Nile` (psycopg 3 underneath; the client's own pool, _pool.py, or a psycopg_pool of
the caller's).

Design:
- A context (``tenant_context``, ``admin_context``) is one unit of work on one connection taken from the pool. It
  starts only on an idle connection, enters the context with the id bound as a parameter, and the transaction it
  opens always ends with COMMIT (or ROLLBACK when the block raises) before the connection goes back: nothing of it
  outlives the ``with`` block.
- Nothing is sent when the block starts. The statement that opens the block's transaction goes to the server with
  BEGIN and the context in one round trip (libpq's pipeline mode: _pipeline.py); the rest of the block is plain psycopg
  in that transaction. A read (a statement that starts with SELECT, VALUES or TABLE and names no call whose effect
  lasts until the end of the transaction) in a tenant context that has no transaction open yet goes without BEGIN:
  ``nile.set_tenant_read_only()`` and the read, in an implicit transaction that ends with the pipeline (the server
  keeps it read-only and refuses, as the read's own error, one that wrote or hid an error, so there is nothing to
  commit: one round trip for the whole unit of work). If the server refuses it (25006; 25000 for an isolation level
  above READ COMMITTED, after which the client stops trying), nothing of it remains and it runs in the block's
  transaction instead, as does that statement from then on. A client asks the database once whether it has these
  functions (an extension not yet updated to 0.3.0 does not).
- Which context is active is kept in a ``contextvars.ContextVar`` of the client: per thread and per asyncio task, so
  ``nile.sql`` inside the block uses the block's connection and nothing else can.
- Nesting the same context does nothing; a different one raises :class:`~nile_tenancy.errors.NestedContextError`.
- A context and its statements are on the path of every unit of work: classes rather than generator-based context
  managers, and each statement's text classified once (_common.classify), because the SDK's own bookkeeping is what
  stands between a point read and the latency of raw psycopg (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import threading
import uuid
from typing import Any, Callable, Iterator, Sequence

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

from . import _common as c
from . import _pipeline, errors
from ._pool import Pool
from .tokens import Tokens

Params = Sequence[Any] | dict[str, Any] | None

_IDLE = pq.TransactionStatus.IDLE


def together(conn: psycopg.Connection[Any], statements: Sequence[tuple[Any, Params]]) -> list[Any]:
    """Send ``statements`` in one round trip (see _pipeline.py; psycopg's pipeline where that cannot be used); their
    answers (see :meth:`_Block.run`; None for a Fixed statement on _pipeline.py's path), or the first error."""
    if _pipeline.usable(conn):
        return _pipeline.run(conn, statements)
    try:
        with conn.pipeline():
            cursors = [c.tuples(conn).execute(query.text if isinstance(query, _pipeline.Fixed) else query, params)
                       for query, params in statements]
    except BaseException:
        if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            _pipeline.abandon(conn)  # stuck in pipeline mode (a COPY): never back to the pool
        raise
    return cursors


def enter_tenant(
    conn: psycopg.Connection[Any], tenant_id: uuid.UUID | str | None = None, *, token: str | None = None
) -> None:
    """Enter a tenant's context for the transaction open on ``conn`` (``nile.set_tenant()`` or, with ``token``,
    ``nile.set_tenant_token()``). For integrations that run their own transactions (SQLAlchemy, Django)."""
    if token is not None:
        c.tuples(conn).execute(c.SET_TENANT_TOKEN, [token])
    elif tenant_id is not None:
        c.tuples(conn).execute(c.SET_TENANT, [c.tenant_id_text(tenant_id)])
    else:
        raise TypeError("give a tenant_id or a token")


def require_idle(conn: psycopg.Connection[Any]) -> None:
    """Raise TransactionInProgress unless ``conn`` is idle (no transaction open)."""
    if conn.pgconn.transaction_status != _IDLE:
        raise errors.TransactionInProgress(c.TRANSACTION_IN_PROGRESS)


@contextlib.contextmanager
def tenant_transaction(
    conn: psycopg.Connection[Any], tenant_id: uuid.UUID | str | None = None, *, token: str | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """One transaction on ``conn`` in a tenant's context: BEGIN, the context, the block, then COMMIT (ROLLBACK if the
    block raises). ``conn`` must be idle. The building block of :meth:`Nile.tenant_context`, for connections that are
    not the client's (an application's own psycopg connection)."""
    require_idle(conn)
    with conn.transaction():
        enter_tenant(conn, tenant_id, token=token)
        yield conn


def _verify_nested_token(scope: "_Block", token: str) -> None:
    """A token context nested in the context of the tenant the token names joins it only once the server has
    verified the token: in a savepoint rolled back at once, so the outer context (and its user id) stays as it was.
    Nothing is trusted from the token's unverified payload. Under the scope's lock: a statement of a thread sharing the
    scope must not run inside that savepoint (it would be rolled back with it)."""
    with scope.lock:
        scope._open()
        with scope.conn.transaction(force_rollback=True):
            row = c.tuples(scope.conn).execute(c.SET_TENANT_TOKEN, [token]).fetchone()
    c.check_verified_tenant(row, scope.key)


class _Block(contextlib.ContextDecorator):
    """``with nile.tenant_context(...)`` or ``with nile.admin_context(...)``: takes a connection from the pool and
    becomes the active context (the scope of this thread or task: its kind and key, and its connection); at the end,
    COMMIT (ROLLBACK if the block raised), and the connection goes back with no transaction open and no session-wide
    context. Checks its arguments when the block starts. Also a decorator (each call a block of its own).

    It is on the path of every unit of work, so it is one object (the block is its own scope), a class rather than a
    generator, and takes the usual case with as few calls as it can: the client's own pool without a lease object, a
    statement's text classified once, a block that only read ends without :meth:`_end`."""

    __slots__ = ("client", "kind", "tenant_id", "token", "reason", "joined", "conn", "lease", "var_token",
                 "was_autocommit", "key", "enter_sql", "argument", "read_only_sql", "opened", "used", "closed",
                 "needs_reset", "lock")
    conn: psycopg.Connection[Any]  # None until __enter__ takes it
    var_token: contextvars.Token[_Block | None] | None
    was_autocommit: bool
    key: str | None
    enter_sql: str
    argument: Any
    read_only_sql: _pipeline.Fixed | None
    opened: bool
    used: bool
    closed: bool
    needs_reset: bool
    lock: threading.Lock

    def __init__(
        self, client: "Nile", kind: str, tenant_id: uuid.UUID | str | None, token: str | None, reason: str | None
    ) -> None:
        self.client = client
        self.kind = kind  # "tenant" or "admin"
        self.tenant_id = tenant_id
        self.token = token
        self.reason = reason
        self.joined = False  # the block joined the active context (the same one), which ends it
        self.conn = None  # type: ignore[assignment]  # taken by __enter__  # the block's connection, once taken
        self.lease: Any = None  # the pool's context manager, for a pool that is not the client's own (Pool)
        # The rest is set by __enter__ before the block becomes the active context: key (the tenant id, a token's
        # tenant for a token context; None for admin), enter_sql (enters the context inside the block's transaction)
        # and argument (its one parameter: the id, the token or the reason), read_only_sql (enters it for one
        # read-only implicit transaction; None: every statement in the block's transaction), and the flags below.

    def _recreate_cm(self) -> "_Block":
        return _Block(self.client, self.kind, self.tenant_id, self.token, self.reason)

    # --- the block ----------------------------------------------------------------------------------------------------

    def __enter__(self) -> "Nile":
        if self.conn is not None or self.lease is not None:
            raise RuntimeError("this context is in use already: call tenant_context() or admin_context() again")
        client = self.client
        kind = self.kind
        token = self.token
        tenant_id = self.tenant_id
        if kind != "tenant":
            key = None
        elif token is None and tenant_id.__class__ is str and (known := c.CANONICAL_TEXTS.get(tenant_id)) is not None:
            key = known  # the usual case, a tenant seen before, without a call
        else:
            key = c.tenant_key(tenant_id, token)
        current = client._scope.get()
        # The active context, for nesting: one that has ended counts as none (a thread or task that outlived its block
        # may enter a context of its own).
        if (current is not None and not current.closed
                and c.joins_active_context(current.kind, current.key, kind, key)):
            if token is not None:
                _verify_nested_token(current, token)
            self.joined = True
            return client
        self.joined = False
        enter, read_only, argument = c.context_statements(kind, key, token, self.reason)
        self.key = key
        self.enter_sql = enter
        self.argument = argument
        self.opened = False  # BEGIN and the context have been sent: the block's transaction is open
        self.used = False  # a statement ran (in the block's transaction or in one of its own)
        self.closed = False  # the block has ended: a thread or task that kept the scope gets ContextEnded
        self.needs_reset = False  # the block had the raw connection: clear any session-wide context at the end
        # Held while a statement goes out with what it needs (a pipeline) and the flags change: threads that share
        # the scope (contextvars.copy_context()) must not interleave their pipelines.
        self.lock = threading.Lock()
        self.var_token = None
        # BEGIN is sent as a statement of a pipeline: psycopg's own implicit BEGIN (autocommit off) is synchronised
        # alone, a round trip of its own; and a read is sent without BEGIN (autocommit on). The connection's
        # autocommit setting is restored at the end (outside pipeline mode, where it costs nothing).
        self.was_autocommit = True
        pool = client._fast_pool
        if pool is not None:
            conn = self.conn = pool.getconn()
        else:
            lease = self.lease = client._pool.connection()
            conn = self.conn = lease.__enter__()
        try:
            # A read in a transaction of its own only where the connection's transactions may be READ COMMITTED
            # (c.reads_may_run_alone).
            self.read_only_sql = read_only if conn.isolation_level in c.READ_COMMITTED_OR_BELOW else None
            if conn.pgconn.transaction_status != _IDLE:
                require_idle(conn)  # raises
            if not conn.autocommit:
                self.was_autocommit = False
                conn.set_autocommit(True)
            self.var_token = client._scope.set(self)
        except BaseException as error:
            self._release(error)
            raise
        return client

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.joined or self.conn is None or self.closed:
            return  # joined the active context (that one ends it), or ended already
        with self.lock:
            # From now on no thread sharing the scope can start a statement (run() checks under the lock); one that is
            # running has finished.
            self.closed = True
        if exc is None and self.used and not self.opened and not self.needs_reset:
            # The usual end of a block that only read: each read was a read-only transaction of its own that has
            # ended, so there is nothing to commit (what _end() would find).
            pool = self.client._fast_pool
            if pool is not None and self.was_autocommit and self.var_token is not None:
                # _release() in short, for the client's own pool: the connection has no transaction open (were it
                # otherwise, putconn() would close it rather than keep it).
                try:
                    self.client._scope.reset(self.var_token)
                except ValueError:
                    pass  # see _release()
                finally:
                    pool.putconn(self.conn)
                return
            self._release(None)
            return
        error = exc
        try:
            if error is None:
                try:
                    self._end()
                except BaseException as e:
                    error = e
                    self._undo()
                    raise
            else:
                self._undo()
        finally:
            self._release(error)

    def _end(self) -> None:
        """The block ended without an error: its transaction, if any, is committed."""
        conn = self.conn
        if not self.used:
            # No statement in the block: the context is still entered (an unknown tenant raises), BEGIN, the
            # context and COMMIT in one round trip.
            self.opened = True
            together(conn, (*self.begin_and_enter(), (_pipeline.fixed("COMMIT"), None)))
        elif not self.opened:
            pass  # only reads, each in a read-only transaction of its own that has ended
        elif conn.pgconn.transaction_status == pq.TransactionStatus.INERROR:
            # COMMIT would answer ROLLBACK without an error: the block's writes would be lost silently.
            conn.rollback()
            raise errors.TransactionAborted(c.TRANSACTION_ABORTED)
        else:
            conn.commit()
        if self.needs_reset:
            conn.execute(c.RESET_SESSION_CONTEXT)

    def _undo(self) -> None:
        """Whatever happened (an error of the block, of entering the context, of COMMIT, or an interrupt), the
        connection goes back with no transaction open."""
        conn = self.conn
        with contextlib.suppress(Exception):
            conn.rollback()
        if self.needs_reset:
            with contextlib.suppress(Exception):
                conn.execute(c.RESET_SESSION_CONTEXT)

    def _release(self, error: BaseException | None) -> None:
        """Close the scope and give the connection back to its pool, as the end of the pool's ``connection()`` block
        would (with the error, if any): a transaction still open is committed, or rolled back after an error (the
        block has ended it already)."""
        conn = self.conn
        try:
            self.closed = True
            if self.var_token is not None:
                try:
                    self.client._scope.reset(self.var_token)
                except ValueError:
                    pass  # the block ended in another context (a generator closed by the garbage collector); the
                    # scope is closed, which is what every holder of it checks
            if not self.was_autocommit and not conn.closed:
                try:
                    conn.set_autocommit(False)
                except Exception:
                    conn.close()  # never back to the pool in a state it does not expect: the pool drops it
        finally:
            lease = self.lease
            if lease is None:
                self.client._fast_pool.give_back(conn, error is not None)  # type: ignore[union-attr]
            elif error is None:
                lease.__exit__(None, None, None)
            else:
                lease.__exit__(type(error), error, error.__traceback__)

    # --- the scope: the block's statements ----------------------------------------------------------------------------

    def begin_and_enter(self) -> tuple[tuple[Any, Params], tuple[Any, Params]]:
        """BEGIN (with the characteristics the connection asks psycopg for) and the context, as statements."""
        return (_pipeline.fixed(c.begin_sql(self.conn)), None), (_pipeline.fixed(self.enter_sql), [self.argument])

    def open(self) -> None:
        """Open the block's transaction (BEGIN and the context, one round trip) unless it is open."""
        with self.lock:
            self._open()

    def _open(self) -> None:
        if self.closed:  # checked under the lock: the block may have ended since the caller looked
            raise errors.ContextEnded(c.CONTEXT_ENDED)
        if not self.opened:
            self.opened = self.used = True  # set first: if entering fails, the end of the block rolls back
            together(self.conn, self.begin_and_enter())

    def run(self, query: Any, params: Params) -> Any:
        """Run one statement of the block, in one round trip with whatever it still needs (see the module's notes).
        Its answer: a :class:`~nile_tenancy._pipeline.Result` or a psycopg cursor of tuples (``fetchone()``,
        ``fetchall()``, ``rowcount``, ``description``), its rows read already."""
        with self.lock:
            if self.closed:
                # Checked again under the lock: a thread that found the scope live (or kept it) may have waited here
                # while the block ended and its connection went to another tenant's block.
                raise errors.ContextEnded(c.CONTEXT_ENDED)
            # A statement's text is classified once (a str, the usual case, without a call of classify()).
            enters, several, reads_only = (c.classify_text(query) if query.__class__ is str
                                           else c.classify(query))
            if enters:
                self.needs_reset = True  # see RESET_SESSION_CONTEXT
            conn = self.conn
            if self.opened:
                return c.tuples(conn).execute(query, params)
            if several:
                self._open()  # BEGIN and the context, then the statements on their own
                return c.tuples(conn).execute(query, params)
            reads = self.client._reads
            if (reads_only and self.read_only_sql is not None and reads.enabled is not False
                    and (query not in reads.refused if query.__class__ is str else reads.wants(query))):
                if reads.enabled is None:
                    row = c.tuples(conn).execute(c.HAS_READ_ONLY_CONTEXT).fetchone()
                    reads.enabled = bool(row[0])  # type: ignore[index]
                if reads.enabled:
                    statements = ((self.read_only_sql, (self.argument,)), (query, params))
                    try:
                        answer = (_pipeline.run(conn, statements) if _pipeline.usable(conn)
                                  else together(conn, statements))[1]
                        self.used = True
                        return answer
                    except c.RUN_IN_TRANSACTION as e:
                        reads.refused_by_server(query, e)  # nothing of it stayed: run it in the block's transaction
            self.opened = self.used = True
            return together(conn, (*self.begin_and_enter(), (query, params)))[2]


class Sql:
    """``nile.sql``: statements in the active context, or, outside any, each in a transaction of its own."""

    def __init__(self, client: "Nile") -> None:
        self._client = client

    def _run(self, query: Any, params: Params) -> Any:
        """The statement's answer (see :meth:`_Block.run`): in the active context, or outside any in a transaction of
        its own. (:meth:`execute`, :meth:`fetch_one` and :meth:`fetch_all` take the active context's path themselves,
        a call fewer per statement.)"""
        scope = self._client._scope.get()
        if scope is not None:
            return scope.run(query, params)  # ContextEnded if it has ended (checked under its lock)
        return self._run_alone(query, params)

    def _run_alone(self, query: Any, params: Params) -> Any:
        """The statement's answer outside any context: a transaction of its own."""
        with self._client._pool.connection() as conn:  # commits at the end of the block, rolls back on error
            # Outside a context the statement is a transaction of its own (autocommit), so whatever session state it
            # sets stays: a session-wide tenant context is cleared in the same round trip.
            if c.classify(query)[1]:
                # Several statements: psycopg's simple protocol, on their own.
                cur = c.tuples(conn).execute(query, params)
                conn.execute(c.RESET_SESSION_CONTEXT)
                return cur
            cur = together(conn, ((query, params), (_pipeline.fixed(c.RESET_SESSION_CONTEXT), None)))[0]
            return cur  # type: ignore[no-any-return]

    def execute(self, query: Any, params: Params = None) -> int:
        """Run one statement; returns the number of rows it affected (-1 when not applicable)."""
        scope = self._client._scope.get()
        cur = self._run_alone(query, params) if scope is None else scope.run(query, params)
        return cur.rowcount  # type: ignore[no-any-return]

    def fetch_one(self, query: Any, params: Params = None) -> tuple[Any, ...] | None:
        """The first row of a query, as a tuple, or None."""
        scope = self._client._scope.get()
        cur = self._run_alone(query, params) if scope is None else scope.run(query, params)
        return cur.fetchone()  # type: ignore[no-any-return]

    def fetch_all(self, query: Any, params: Params = None) -> list[tuple[Any, ...]]:
        """Every row of a query, as tuples."""
        scope = self._client._scope.get()
        cur = self._run_alone(query, params) if scope is None else scope.run(query, params)
        return cur.fetchall()  # type: ignore[no-any-return]

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The active context's connection, for code that needs a psycopg connection (a cursor, COPY, another
        library). Only inside a context; the context still ends the transaction."""
        scope = self._client._live_scope()
        if scope is None:
            raise errors.NoActiveContext("nile.sql.connection is only available inside a tenant or admin context")
        scope.open()
        scope.needs_reset = True  # the caller may do anything with it: check the session at the end
        return scope.conn


class Tenants:
    """``nile.tenants``: the tenant lifecycle (the caller's role must be a member of ``nile_admin``)."""

    def __init__(self, client: "Nile") -> None:
        self._client = client

    def create(
        self, name: str, tenant_id: uuid.UUID | str | None = None, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create a tenant; returns ``{"tenant_id", "name", "status", "created_at", "metadata"}``."""
        tid = None if tenant_id is None else c.tenant_id_text(tenant_id)
        with self._client._admin("nile_tenancy: tenants.create") as conn:
            created = c.tuples(conn).execute(c.CREATE_TENANT, [name, tid, c.metadata_json(metadata)]).fetchone()
            row = c.tuples(conn).execute(c.GET_TENANT, [created[0] if created else None]).fetchone()
        return c.tenant_row(row)  # type: ignore[return-value]

    def get(self, tenant_id: uuid.UUID | str) -> dict[str, Any] | None:
        """The tenant, or None if there is none with this id."""
        tid = c.tenant_id_text(tenant_id)
        with self._client._admin("nile_tenancy: tenants.get") as conn:
            return c.tenant_row(c.tuples(conn).execute(c.GET_TENANT, [tid]).fetchone())

    def list(self) -> list[dict[str, Any]]:
        """Every tenant (deleted ones included, with their status), oldest first."""
        with self._client._admin("nile_tenancy: tenants.list") as conn:
            return [c.tenant_row(r) for r in c.tuples(conn).execute(c.LIST_TENANTS).fetchall()]  # type: ignore[misc]

    def update(self, tenant_id: uuid.UUID | str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``{"name": ..., "status": ..., "metadata": ...}``; returns the tenant as it is now."""
        return self._returning_row(c.UPDATE_TENANT, [c.tenant_id_text(tenant_id), c.changes_json(changes)])

    def deactivate(self, tenant_id: uuid.UUID | str) -> dict[str, Any]:
        """Reads keep working, writes are refused (NT003)."""
        return self._returning_row(c.DEACTIVATE_TENANT, [c.tenant_id_text(tenant_id)])

    def reactivate(self, tenant_id: uuid.UUID | str) -> dict[str, Any]:
        """Back to active, from inactive or from a soft delete."""
        return self._returning_row(c.REACTIVATE_TENANT, [c.tenant_id_text(tenant_id)])

    def delete(self, tenant_id: uuid.UUID | str, purge: bool = False) -> None:
        """Soft delete (``purge=False``: the rows stay, every access is refused with NT004), or purge: the tenant and
        every row of it, in one transaction."""
        self._client.sql.execute(c.DELETE_TENANT, [c.tenant_id_text(tenant_id), bool(purge)])

    def _returning_row(self, query: str, params: list[Any]) -> dict[str, Any]:
        return c.tenant_row(self._client.sql.fetch_one(query, params))  # type: ignore[return-value]


class Usage:
    """``nile.usage``: per-tenant usage for billing and noisy neighbours (``nile_admin`` or ``pg_monitor``)."""

    def __init__(self, client: "Nile") -> None:
        self._client = client

    def tenant(self, tenant_id: uuid.UUID | str) -> dict[str, Any] | None:
        """The tenant's live counters since they were last reset (``nile.tenant_usage``), or None if it has none."""
        rows = self._rows(c.USAGE_OF_TENANT, [c.tenant_id_text(tenant_id)])
        return rows[0] if rows else None

    def history(
        self, since: _dt.datetime, until: _dt.datetime | None = None, tenant_id: uuid.UUID | str | None = None
    ) -> list[dict[str, Any]]:
        """The flushed periods (``nile.usage_history``) that overlap ``since`` .. ``until``, of one tenant or all."""
        tid = None if tenant_id is None else c.tenant_id_text(tenant_id)
        return self._rows(c.USAGE_HISTORY, [since, until, until, tid, tid])

    def noisy_neighbours(self, recent: str | _dt.timedelta = "15 minutes") -> list[dict[str, Any]]:
        """Tenants ranked by their share of execution time over ``recent`` (``nile.noisy_neighbours()``)."""
        return self._rows(c.NOISY_NEIGHBOURS, [c.interval_text(recent)])

    def _rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        cur = self._client.sql._run(query, params)
        return c.as_dicts(cur.description, cur.fetchall())


class Nile:
    """A client of a database with the nile_tenancy extension.

    ``Nile(dsn)`` opens a connection pool of its own; ``Nile(pool=ConnectionPool(...))`` uses yours;
    ``Nile(sandbox=True)`` starts a throwaway PostgreSQL with the extension (see :mod:`nile_tenancy.sandbox`).
    ``token_key`` is the default key of ``nile.tokens.sign()``. ``prepared_statements=False`` (the default) keeps
    psycopg from preparing statements on the server, which PgBouncer 1.18 in transaction mode cannot follow; set it
    True for direct connections. ``one_round_trip_reads=True`` (the default) sends a tenant context's reads that come
    before its first write each in a read-only transaction of its own, with the context, in one round trip (see the
    README); False runs every statement of a block in one transaction. Other keyword arguments go to
    ``psycopg.connect()``. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        sandbox: bool = False,
        token_key: str | bytes | None = None,
        prepared_statements: bool = False,
        one_round_trip_reads: bool = True,
        min_size: int = 1,
        max_size: int = 10,
        **connect_kwargs: Any,
    ) -> None:
        c.check_sources(dsn, pool, sandbox)
        self._sandbox = None
        if sandbox:
            from .sandbox import Sandbox

            self._sandbox = Sandbox.start()
            dsn = self._sandbox.dsn
            token_key = token_key if token_key is not None else self._sandbox.token_key
        self._own_pool = pool is None
        if pool is None:
            kwargs = c.pool_kwargs(prepared_statements, connect_kwargs)
            pool = Pool(dsn or "", min_size=min_size, max_size=max_size, kwargs=kwargs)
        self._pool: ConnectionPool[Any] | Pool = pool
        # The client's own kind of pool: blocks take and give back its connections without a lease object.
        self._fast_pool: Pool | None = pool if isinstance(pool, Pool) else None
        self._reads = c.ReadPath(one_round_trip_reads)
        self._scope: contextvars.ContextVar[_Block | None] = contextvars.ContextVar(
            f"nile_tenancy_scope_{id(self)}", default=None
        )
        self.sql = Sql(self)
        self.tenants = Tenants(self)
        self.usage = Usage(self)
        self.tokens = Tokens(token_key)

    # --- lifetime -----------------------------------------------------------------------------------------------------

    @property
    def pool(self) -> ConnectionPool[Any] | Pool:
        return self._pool

    @property
    def sandbox(self) -> Any:
        """The sandbox server (``Nile(sandbox=True)``), with its ``dsn``; None otherwise."""
        return self._sandbox

    def close(self) -> None:
        """Close the pool (if the client opened it) and stop the sandbox (if any)."""
        if self._own_pool:
            self._pool.close()
        if self._sandbox is not None:
            self._sandbox.stop()
            self._sandbox = None

    def __enter__(self) -> "Nile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- contexts -----------------------------------------------------------------------------------------------------

    def tenant_context(self, tenant_id: uuid.UUID | str | None = None, *, token: str | None = None) -> "_Block":
        """``with nile.tenant_context(tenant_id):`` (or ``token=``, a signed tenant token): the block is one unit of
        work in the tenant's context (one transaction from its first write on; reads before it each in a read-only
        transaction of their own unless ``one_round_trip_reads=False``); ``nile.sql`` runs in it."""
        return _Block(self, "tenant", tenant_id, token, None)

    def admin_context(self, reason: str | None = None) -> "_Block":
        """``with nile.admin_context():`` the block is one transaction in the audited admin context (the role must be
        a member of ``nile_admin``). Without a reason, the caller's qualified function name is recorded."""
        return _Block(self, "admin", None, None, reason)

    def _live_scope(self) -> _Block | None:
        """The context this code runs in, or None outside any; ContextEnded when that context has ended (a thread or
        task started inside the block that outlived it must not use a connection that is back in the pool)."""
        scope = self._scope.get()
        if scope is not None and scope.closed:
            raise errors.ContextEnded(c.CONTEXT_ENDED)
        return scope

    @contextlib.contextmanager
    def _admin(self, reason: str) -> Iterator[psycopg.Connection[Any]]:
        """The connection of the active admin context, or of a new one for this call."""
        current = self._live_scope()
        if current is not None and current.kind == "admin":
            current.open()
            yield current.conn
            return
        with self.admin_context(reason) as _:
            scope = self._live_scope()
            assert scope is not None
            scope.open()
            yield scope.conn

    # --- batch work ---------------------------------------------------------------------------------------------------

    def active_tenants(self, batch_size: int = 100) -> Iterator[str]:
        """The ids of the active tenants, in id order, read ``batch_size`` at a time (each page in an admin context)."""
        after: str | None = None
        while True:
            with self._admin("nile_tenancy: for_each_tenant") as conn:
                rows = c.tuples(conn).execute(c.ACTIVE_TENANTS_PAGE, [after, after, batch_size]).fetchall()
                page = [str(r[0]) for r in rows]
            yield from page
            if len(page) < batch_size:
                return
            after = page[-1]

    def _run_in_context(self, tenant: str, fn: Callable[[str], Any]) -> None:
        with self.tenant_context(tenant):
            fn(tenant)

    def for_each_tenant(
        self,
        fn: Callable[[str], Any],
        batch_size: int = 100,
        concurrency: int = 4,
        *,
        resume: c.ForEachTenantResult | None = None,
        progress: bool | None = None,
    ) -> c.ForEachTenantResult:
        """Run ``fn(tenant_id)`` in each active tenant's context (one context per tenant; ``nile.sql`` inside
        ``fn`` works for that tenant), ``concurrency`` tenants at a time, listing tenants ``batch_size`` at a time.
        A failure rolls back that tenant only and is collected; Ctrl-C stops starting new tenants. Returns what was
        done, what failed and what remains; pass the result as ``resume=`` to run the failed and remaining ones."""
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        tenants: list[str] = resume.to_resume() if resume is not None else list(self.active_tenants(batch_size))
        result = c.ForEachTenantResult()
        bar = c.Progress(len(tenants), progress)

        # Each worker thread takes the next tenant itself and records what became of it, so the outcome of a tenant
        # never depends on the main thread: a Ctrl-C can land anywhere in it, even while it is starting a thread.
        # Under ``state``: ``active`` counts the tenants taken and not yet recorded, ``alive`` the workers not yet
        # finished; once ``stopped`` is set no tenant is taken.
        left = iter(tenants)
        state = threading.Condition()
        threads = min(concurrency, len(tenants))
        active, alive, stopped = 0, threads, False

        def take() -> str | None:
            nonlocal active
            with state:
                tenant = None if stopped else next(left, None)
                active += tenant is not None
                return tenant

        def work() -> None:
            nonlocal active, alive
            try:
                while (tenant := take()) is not None:
                    error: BaseException | None = None
                    try:
                        contextvars.Context().run(self._run_in_context, tenant, fn)  # no scope of the caller leaks in
                    except BaseException as raised:  # collected, as an executor would
                        error = raised
                    with state:
                        try:
                            if error is None:
                                result.done.append(tenant)
                            else:
                                result.failed[tenant] = error
                            bar.step(error is not None)
                        finally:
                            active -= 1
                            state.notify_all()
            finally:
                with state:
                    alive -= 1
                    state.notify_all()

        def stop_and_wait() -> None:
            """No tenant is started any more; wait for the ones taken (each commits or rolls back and is recorded)."""
            nonlocal stopped
            with state:
                stopped = True
                while active:
                    state.wait()

        try:
            for n in range(threads):
                threading.Thread(target=work, name=f"nile-for-each-tenant-{n}").start()
            with state:
                while alive:
                    state.wait()
        except KeyboardInterrupt:
            result.interrupted = True
            stop_and_wait()
        except BaseException:  # a thread that could not start, say: the tenants taken still finish first
            stop_and_wait()
            raise
        finally:
            bar.close()
        finished_or_failed = set(result.done) | set(result.failed)
        result.remaining = [t for t in tenants if t not in finished_or_failed]
        return result
