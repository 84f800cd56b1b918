"""The asynchronous client, :class:`AsyncNile`: the same API as :class:`~nile_tenancy.Nile` with ``async with`` and
``await`` (psycopg's AsyncConnection and psycopg_pool's AsyncConnectionPool). The design notes of _sync.py apply:
a context's first statement goes with the context in one round trip (a read before any write in a read-only
transaction of its own), and the context is kept per asyncio task in a ContextVar. The block is a class, as the sync
one, with the same fast paths where they apply (the pool is psycopg_pool's): it is its own scope, a statement's text is
classified once, ``nile.sql``'s statements in a context take no context manager, and its end is decided under the
scope's lock, so a task started inside the block cannot run a statement once the block has begun to end."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as _dt
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool

from . import _common as c
from . import _pipeline, errors
from .tokens import Tokens

Params = Sequence[Any] | dict[str, Any] | None


_IDLE = pq.TransactionStatus.IDLE


class _Block(contextlib.AsyncContextDecorator):
    """``async with nile.tenant_context(...)`` or ``async with nile.admin_context(...)``: the block and its scope, as
    :class:`nile_tenancy._sync._Block` (the same rules and the same fast paths), with psycopg_pool's
    AsyncConnectionPool (``pool.connection()``) and an asyncio lock shared by the tasks created inside the block."""

    __slots__ = ("client", "kind", "tenant_id", "token", "reason", "joined", "conn", "lease", "var_token",
                 "was_autocommit", "key", "enter_sql", "argument", "read_only_sql", "opened", "used", "closed",
                 "needs_reset", "lock")
    conn: psycopg.AsyncConnection[Any]  # None until __aenter__ takes it
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
    lock: asyncio.Lock

    def __init__(
        self, client: "AsyncNile", kind: str, tenant_id: uuid.UUID | str | None, token: str | None,
        reason: str | None,
    ) -> None:
        self.client = client
        self.kind = kind  # see _sync._Block
        self.tenant_id = tenant_id
        self.token = token
        self.reason = reason
        self.joined = False
        self.conn = None  # type: ignore[assignment]  # taken by __enter__
        self.lease: Any = None  # the pool's connection() context manager, once entered

    def _recreate_cm(self) -> "_Block":
        return _Block(self.client, self.kind, self.tenant_id, self.token, self.reason)

    # --- the block ----------------------------------------------------------------------------------------------------

    async def __aenter__(self) -> "AsyncNile":
        if self.conn is not None or self.lease is not None:
            raise RuntimeError("this context is in use already: call tenant_context() or admin_context() again")
        client = self.client
        kind = self.kind
        token = self.token
        key = c.tenant_key(self.tenant_id, token) if kind == "tenant" else None
        current = client._scope.get()
        if (current is not None and not current.closed
                and c.joins_active_context(current.kind, current.key, kind, key)):
            if token is not None:
                await _verify_nested_token(current, token)
            self.joined = True
            return client
        self.joined = False
        enter, read_only, argument = c.context_statements(kind, key, token, self.reason)
        self.key = key
        self.enter_sql = enter
        self.argument = argument
        self.opened = self.used = self.closed = self.needs_reset = False
        self.lock = asyncio.Lock()
        self.var_token = None
        self.was_autocommit = True
        pool = client._pool if client._opened else await client._opened_pool()
        lease = self.lease = pool.connection()
        conn = self.conn = await lease.__aenter__()
        try:
            self.read_only_sql = read_only if conn.isolation_level in c.READ_COMMITTED_OR_BELOW else None
            if conn.pgconn.transaction_status != _IDLE:
                require_idle(conn)  # raises
            if not conn.autocommit:
                self.was_autocommit = False
                await conn.set_autocommit(True)
            self.var_token = client._scope.set(self)
        except BaseException as error:
            await self._release(error)
            raise
        return client

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.joined or self.conn is None or self.closed:
            return  # joined the active context (that one ends it), or ended already
        async with self.lock:
            # From now on no task sharing the scope can start a statement (run() checks under the lock); one that is
            # running has finished.
            self.closed = True
        error = exc
        if exc is None and self.used and not self.opened and not self.needs_reset:
            pass  # the usual end of a block that only read: nothing to commit (what _end() would find)
        else:
            try:
                if error is None:
                    try:
                        await self._end()
                    except BaseException as e:
                        error = e
                        await self._undo()
                        raise
                else:
                    await self._undo()
            finally:
                await self._release(error)
            return
        await self._release(None)

    async def _end(self) -> None:
        """See :meth:`nile_tenancy._sync._Block._end`."""
        conn = self.conn
        if not self.used:
            self.opened = True
            await together(conn, (*self.begin_and_enter(), (_pipeline.fixed("COMMIT"), None)))
        elif not self.opened:
            pass  # only reads, each in a read-only transaction of its own that has ended
        elif conn.pgconn.transaction_status == pq.TransactionStatus.INERROR:
            await conn.rollback()
            raise errors.TransactionAborted(c.TRANSACTION_ABORTED)
        else:
            await conn.commit()
        if self.needs_reset:
            await conn.execute(c.RESET_SESSION_CONTEXT)

    async def _undo(self) -> None:
        """See :meth:`nile_tenancy._sync._Block._undo`."""
        conn = self.conn
        with contextlib.suppress(Exception):
            await conn.rollback()
        if self.needs_reset:
            with contextlib.suppress(Exception):
                await conn.execute(c.RESET_SESSION_CONTEXT)

    async def _release(self, error: BaseException | None) -> None:
        """Close the scope and give the connection back through the pool's ``connection()`` block (with the error,
        if any)."""
        conn = self.conn
        try:
            self.closed = True
            if self.var_token is not None:
                try:
                    self.client._scope.reset(self.var_token)
                except ValueError:
                    pass  # ended in another context (an abandoned generator): the scope is closed
            if not self.was_autocommit and not conn.closed:
                try:
                    await conn.set_autocommit(False)
                except Exception:
                    await conn.close()
        finally:
            if error is None:
                await self.lease.__aexit__(None, None, None)
            else:
                await self.lease.__aexit__(type(error), error, error.__traceback__)

    # --- the scope: the block's statements ----------------------------------------------------------------------------

    def begin_and_enter(self) -> tuple[tuple[Any, Params], tuple[Any, Params]]:
        """BEGIN (with the characteristics the connection asks psycopg for) and the context, as statements."""
        return (_pipeline.fixed(c.begin_sql(self.conn)), None), (_pipeline.fixed(self.enter_sql), [self.argument])

    async def open(self) -> None:
        """See :meth:`nile_tenancy._sync._Block.open`."""
        async with self.lock:
            await self._open()

    async def _open(self) -> None:
        if self.closed:  # checked under the lock (see _sync._Block.run)
            raise errors.ContextEnded(c.CONTEXT_ENDED)
        if not self.opened:
            self.opened = self.used = True
            await together(self.conn, self.begin_and_enter())

    async def run(self, query: Any, params: Params) -> Any:
        """See :meth:`nile_tenancy._sync._Block.run` (an :class:`~nile_tenancy._pipeline.AsyncResult` or an
        AsyncCursor: their fetches are awaited)."""
        async with self.lock:
            if self.closed:  # checked under the lock (see _sync._Block.run)
                raise errors.ContextEnded(c.CONTEXT_ENDED)
            enters, several, reads_only = (c.classify_text(query) if query.__class__ is str
                                           else c.classify(query))
            if enters:
                self.needs_reset = True  # see RESET_SESSION_CONTEXT
            conn = self.conn
            if self.opened:
                return await c.tuples(conn).execute(query, params)
            if several:
                await self._open()
                return await c.tuples(conn).execute(query, params)
            reads = self.client._reads
            if (reads_only and self.read_only_sql is not None and reads.enabled is not False
                    and (query not in reads.refused if query.__class__ is str else reads.wants(query))):
                if reads.enabled is None:
                    row = await (await c.tuples(conn).execute(c.HAS_READ_ONLY_CONTEXT)).fetchone()
                    reads.enabled = bool(row[0])  # type: ignore[index]
                if reads.enabled:
                    statements = ((self.read_only_sql, (self.argument,)), (query, params))
                    try:
                        answer = (await (_pipeline.run_async(conn, statements) if _pipeline.usable(conn)
                                         else together(conn, statements)))[1]
                        self.used = True
                        return answer
                    except c.RUN_IN_TRANSACTION as e:
                        reads.refused_by_server(query, e)
            self.opened = self.used = True
            return (await together(conn, (*self.begin_and_enter(), (query, params))))[2]


async def together(conn: psycopg.AsyncConnection[Any], statements: Sequence[tuple[Any, Params]]) -> list[Any]:
    """:func:`nile_tenancy._sync.together` for an AsyncConnection."""
    if _pipeline.usable(conn):
        return await _pipeline.run_async(conn, statements)
    try:
        async with conn.pipeline():
            cursors = [await c.tuples(conn).execute(query.text if isinstance(query, _pipeline.Fixed) else query, params)
                       for query, params in statements]
    except BaseException:
        if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            await _pipeline.abandon_async(conn)  # stuck in pipeline mode (a COPY): never back to the pool
        raise
    return cursors


async def enter_tenant(
    conn: psycopg.AsyncConnection[Any], tenant_id: uuid.UUID | str | None = None, *, token: str | None = None
) -> None:
    """Enter a tenant's context for the transaction open on ``conn`` (see :func:`nile_tenancy.enter_tenant`)."""
    if token is not None:
        await c.tuples(conn).execute(c.SET_TENANT_TOKEN, [token])
    elif tenant_id is not None:
        await c.tuples(conn).execute(c.SET_TENANT, [c.tenant_id_text(tenant_id)])
    else:
        raise TypeError("give a tenant_id or a token")


def require_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    if conn.pgconn.transaction_status != _IDLE:
        raise errors.TransactionInProgress(c.TRANSACTION_IN_PROGRESS)


async def _verify_nested_token(scope: _Block, token: str) -> None:
    """See :func:`nile_tenancy._sync._verify_nested_token` (under the scope's lock, too)."""
    async with scope.lock:
        await scope._open()
        async with scope.conn.transaction(force_rollback=True):
            row = await (await c.tuples(scope.conn).execute(c.SET_TENANT_TOKEN, [token])).fetchone()
    c.check_verified_tenant(row, scope.key)


class AsyncSql:
    """``nile.sql`` of :class:`AsyncNile`."""

    def __init__(self, client: "AsyncNile") -> None:
        self._client = client

    @contextlib.asynccontextmanager
    async def _cursor(self, query: Any, params: Params) -> AsyncIterator[Any]:
        """The statement's answer, for a caller that reads it inside (outside any context: while the statement's
        connection is out of the pool)."""
        scope = self._client._scope.get()
        if scope is not None:
            yield await scope.run(query, params)  # ContextEnded if it has ended (checked under its lock)
            return
        async with self._alone(query, params) as cur:
            yield cur

    @contextlib.asynccontextmanager
    async def _alone(self, query: Any, params: Params) -> AsyncIterator[Any]:
        """The statement outside any context: a transaction of its own (see _sync.Sql)."""
        pool = await self._client._opened_pool()
        async with pool.connection() as conn:
            # A session-wide context the statement set is cleared (see _sync.Sql).
            if c.classify(query)[1]:
                cur = await c.tuples(conn).execute(query, params)
                await conn.execute(c.RESET_SESSION_CONTEXT)
            else:
                cur = (await together(conn, ((query, params), (_pipeline.fixed(c.RESET_SESSION_CONTEXT), None))))[0]
            yield cur

    # In the active context (the usual case), without a context manager: a statement's answer is read already.

    async def execute(self, query: Any, params: Params = None) -> int:
        scope = self._client._scope.get()
        if scope is not None:
            return (await scope.run(query, params)).rowcount  # type: ignore[no-any-return]
        async with self._alone(query, params) as cur:
            return cur.rowcount  # type: ignore[no-any-return]

    async def fetch_one(self, query: Any, params: Params = None) -> tuple[Any, ...] | None:
        scope = self._client._scope.get()
        if scope is not None:
            return await (await scope.run(query, params)).fetchone()  # type: ignore[no-any-return]
        async with self._alone(query, params) as cur:
            return await cur.fetchone()  # type: ignore[no-any-return]

    async def fetch_all(self, query: Any, params: Params = None) -> list[tuple[Any, ...]]:
        scope = self._client._scope.get()
        if scope is not None:
            return await (await scope.run(query, params)).fetchall()  # type: ignore[no-any-return]
        async with self._alone(query, params) as cur:
            return await cur.fetchall()  # type: ignore[no-any-return]

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The active context's connection (``await nile.sql.connection()``), only inside a context."""
        scope = self._client._live_scope()
        if scope is None:
            raise errors.NoActiveContext("nile.sql.connection() is only available inside a tenant or admin context")
        await scope.open()
        scope.needs_reset = True
        return scope.conn


class AsyncTenants:
    """``nile.tenants`` of :class:`AsyncNile`."""

    def __init__(self, client: "AsyncNile") -> None:
        self._client = client

    async def create(
        self, name: str, tenant_id: uuid.UUID | str | None = None, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        tid = None if tenant_id is None else c.tenant_id_text(tenant_id)
        async with self._client._admin("nile_tenancy: tenants.create") as conn:
            cur = await c.tuples(conn).execute(c.CREATE_TENANT, [name, tid, c.metadata_json(metadata)])
            created = await cur.fetchone()
            row = await (await c.tuples(conn).execute(c.GET_TENANT, [created[0] if created else None])).fetchone()
        return c.tenant_row(row)  # type: ignore[return-value]

    async def get(self, tenant_id: uuid.UUID | str) -> dict[str, Any] | None:
        tid = c.tenant_id_text(tenant_id)
        async with self._client._admin("nile_tenancy: tenants.get") as conn:
            return c.tenant_row(await (await c.tuples(conn).execute(c.GET_TENANT, [tid])).fetchone())

    async def list(self) -> list[dict[str, Any]]:
        async with self._client._admin("nile_tenancy: tenants.list") as conn:
            rows = await (await c.tuples(conn).execute(c.LIST_TENANTS)).fetchall()
        return [c.tenant_row(r) for r in rows]  # type: ignore[misc]

    async def update(self, tenant_id: uuid.UUID | str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self._returning_row(c.UPDATE_TENANT, [c.tenant_id_text(tenant_id), c.changes_json(changes)])

    async def deactivate(self, tenant_id: uuid.UUID | str) -> dict[str, Any]:
        return await self._returning_row(c.DEACTIVATE_TENANT, [c.tenant_id_text(tenant_id)])

    async def reactivate(self, tenant_id: uuid.UUID | str) -> dict[str, Any]:
        return await self._returning_row(c.REACTIVATE_TENANT, [c.tenant_id_text(tenant_id)])

    async def delete(self, tenant_id: uuid.UUID | str, purge: bool = False) -> None:
        await self._client.sql.execute(c.DELETE_TENANT, [c.tenant_id_text(tenant_id), bool(purge)])

    async def _returning_row(self, query: str, params: list[Any]) -> dict[str, Any]:
        return c.tenant_row(await self._client.sql.fetch_one(query, params))  # type: ignore[return-value]


class AsyncUsage:
    """``nile.usage`` of :class:`AsyncNile`."""

    def __init__(self, client: "AsyncNile") -> None:
        self._client = client

    async def tenant(self, tenant_id: uuid.UUID | str) -> dict[str, Any] | None:
        rows = await self._rows(c.USAGE_OF_TENANT, [c.tenant_id_text(tenant_id)])
        return rows[0] if rows else None

    async def history(
        self, since: _dt.datetime, until: _dt.datetime | None = None, tenant_id: uuid.UUID | str | None = None
    ) -> list[dict[str, Any]]:
        tid = None if tenant_id is None else c.tenant_id_text(tenant_id)
        return await self._rows(c.USAGE_HISTORY, [since, until, until, tid, tid])

    async def noisy_neighbours(self, recent: str | _dt.timedelta = "15 minutes") -> list[dict[str, Any]]:
        return await self._rows(c.NOISY_NEIGHBOURS, [c.interval_text(recent)])

    async def _rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        async with self._client.sql._cursor(query, params) as cur:
            return c.as_dicts(cur.description, await cur.fetchall())


class AsyncNile:
    """The asynchronous client: ``async with AsyncNile(dsn) as nile:`` (or ``pool=``, ``sandbox=True``); the
    arguments are those of :class:`~nile_tenancy.Nile`. A pool the client opens is opened on first use."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: AsyncConnectionPool[Any] | None = None,
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
            pool = AsyncConnectionPool(dsn or "", min_size=min_size, max_size=max_size, kwargs=kwargs, open=False,
                                       name="nile_tenancy")
        self._pool: AsyncConnectionPool[Any] = pool
        self._reads = c.ReadPath(one_round_trip_reads)
        self._opened = not self._own_pool
        self._scope: contextvars.ContextVar[_Block | None] = contextvars.ContextVar(
            f"nile_tenancy_async_scope_{id(self)}", default=None
        )
        self.sql = AsyncSql(self)
        self.tenants = AsyncTenants(self)
        self.usage = AsyncUsage(self)
        self.tokens = Tokens(token_key)

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._pool

    @property
    def sandbox(self) -> Any:
        return self._sandbox

    async def _opened_pool(self) -> AsyncConnectionPool[Any]:
        if not self._opened:
            await self._pool.open()
            self._opened = True
        return self._pool

    async def open(self) -> "AsyncNile":
        await self._opened_pool()
        return self

    async def close(self) -> None:
        if self._own_pool and self._opened:
            await self._pool.close()
        if self._sandbox is not None:
            self._sandbox.stop()
            self._sandbox = None

    async def __aenter__(self) -> "AsyncNile":
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def tenant_context(self, tenant_id: uuid.UUID | str | None = None, *, token: str | None = None) -> "_Block":
        """``async with nile.tenant_context(tenant_id):`` (or ``token=``): see
        :meth:`nile_tenancy.Nile.tenant_context`."""
        return _Block(self, "tenant", tenant_id, token, None)

    def admin_context(self, reason: str | None = None) -> "_Block":
        """``async with nile.admin_context():`` see :meth:`nile_tenancy.Nile.admin_context`."""
        return _Block(self, "admin", None, None, reason)

    def _live_scope(self) -> _Block | None:
        """See :meth:`nile_tenancy.Nile._live_scope`."""
        scope = self._scope.get()
        if scope is not None and scope.closed:
            raise errors.ContextEnded(c.CONTEXT_ENDED)
        return scope

    @contextlib.asynccontextmanager
    async def _admin(self, reason: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        current = self._live_scope()
        if current is not None and current.kind == "admin":
            await current.open()
            yield current.conn
            return
        async with self.admin_context(reason):
            scope = self._live_scope()
            assert scope is not None
            await scope.open()
            yield scope.conn

    async def active_tenants(self, batch_size: int = 100) -> list[str]:
        tenants: list[str] = []
        after: str | None = None
        while True:
            async with self._admin("nile_tenancy: for_each_tenant") as conn:
                cur = await c.tuples(conn).execute(c.ACTIVE_TENANTS_PAGE, [after, after, batch_size])
                rows = await cur.fetchall()
            page = [str(r[0]) for r in rows]
            tenants += page
            if len(page) < batch_size:
                return tenants
            after = page[-1]

    async def for_each_tenant(
        self,
        fn: Callable[[str], Awaitable[Any]],
        batch_size: int = 100,
        concurrency: int = 4,
        *,
        resume: c.ForEachTenantResult | None = None,
        progress: bool | None = None,
    ) -> c.ForEachTenantResult:
        """``await fn(tenant_id)`` in each active tenant's context, ``concurrency`` at a time (see
        :meth:`nile_tenancy.Nile.for_each_tenant`). Cancelling the call cancels the tenants in progress (each rolls
        back) and re-raises the ``CancelledError``, whose ``for_each_tenant_result`` attribute is the result so far
        (pass it as ``resume=``); a KeyboardInterrupt returns that result with ``interrupted`` set."""
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        tenants = resume.to_resume() if resume is not None else await self.active_tenants(batch_size)
        result = c.ForEachTenantResult()
        bar = c.Progress(len(tenants), progress)
        gate = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()

        async def run(tenant: str) -> None:
            async with gate:
                try:
                    async with self.tenant_context(tenant):
                        await fn(tenant)
                except Exception as error:  # collected; BaseException (cancellation) propagates
                    result.failed[tenant] = error
                    bar.step(True)
                else:
                    result.done.append(tenant)
                    bar.step(False)

        # Each task starts from an empty context: no scope of the caller's leaks into it.
        tasks = [contextvars.Context().run(loop.create_task, run(t)) for t in tenants]
        try:
            await asyncio.gather(*tasks)
        except (asyncio.CancelledError, KeyboardInterrupt) as stop:
            result.interrupted = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._finish(result, tenants)
            if isinstance(stop, asyncio.CancelledError):  # a cancellation is never swallowed
                stop.for_each_tenant_result = result  # type: ignore[attr-defined]
                raise
        finally:
            bar.close()
        return self._finish(result, tenants)

    @staticmethod
    def _finish(result: c.ForEachTenantResult, tenants: list[str]) -> c.ForEachTenantResult:
        finished_or_failed = set(result.done) | set(result.failed)
        result.remaining = [t for t in tenants if t not in finished_or_failed]
        return result
