"""The asynchronous client, :class:`AsyncNile`: the same API as :class:`~nile_tenancy.Nile` with ``async with`` and
``await`` (psycopg's AsyncConnection and psycopg_pool's AsyncConnectionPool). The design notes of _sync.py apply:
a context's first statement goes with the context in one round trip (a read before any write in a read-only
transaction of its own), and the context is kept per asyncio task in a ContextVar."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
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


@dataclasses.dataclass
class _Scope:
    kind: str
    key: str | None
    conn: psycopg.AsyncConnection[Any]
    client: "AsyncNile"
    enter_sql: str  # see _sync._Scope
    argument: Any
    read_only_sql: str | None
    begin_sql: str
    opened: bool = False
    used: bool = False
    closed: bool = False
    needs_reset: bool = False
    # Tasks created inside the block share the scope: their pipelines must not interleave (see _sync._Scope).
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    async def open(self) -> None:
        """See :meth:`nile_tenancy._sync._Scope.open`."""
        async with self.lock:
            await self._open()

    async def _open(self) -> None:
        if self.closed:  # checked under the lock (see _sync._Scope.run)
            raise errors.ContextEnded(c.CONTEXT_ENDED)
        if not self.opened:
            self.opened = self.used = True
            await together(self.conn, ((_pipeline.fixed(self.begin_sql), None),
                                       (_pipeline.fixed(self.enter_sql), [self.argument])))

    async def run(self, query: Any, params: Params) -> Any:
        """See :meth:`nile_tenancy._sync._Scope.run` (an :class:`~nile_tenancy._pipeline.AsyncResult` or an
        AsyncCursor: their fetches are awaited)."""
        async with self.lock:
            if self.closed:  # checked under the lock (see _sync._Scope.run)
                raise errors.ContextEnded(c.CONTEXT_ENDED)
            enters, several, reads_only = c.classify(query)
            if enters:
                self.needs_reset = True  # see RESET_SESSION_CONTEXT
            if self.opened:
                return await c.tuples(self.conn).execute(query, params)
            if several:
                await self._open()
                return await c.tuples(self.conn).execute(query, params)
            reads = self.client._reads
            if reads_only and self.read_only_sql is not None and reads.wants(query):
                if reads.enabled is None:
                    row = await (await c.tuples(self.conn).execute(c.HAS_READ_ONLY_CONTEXT)).fetchone()
                    reads.enabled = bool(row[0])  # type: ignore[index]
                if reads.enabled:
                    try:
                        cur = (await together(self.conn, ((_pipeline.fixed(self.read_only_sql), (self.argument,)),
                                                          (query, params))))[1]
                        self.used = True
                        return cur  # type: ignore[no-any-return]
                    except c.RUN_IN_TRANSACTION as e:
                        reads.refused_by_server(query, e)
            self.opened = self.used = True
            return (await together(self.conn, ((_pipeline.fixed(self.begin_sql), None),  # type: ignore[no-any-return]
                                               (_pipeline.fixed(self.enter_sql), [self.argument]), (query, params))))[2]


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
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise errors.TransactionInProgress(
            "a tenant or admin context is a transaction of its own and cannot start inside an open transaction: "
            "commit or roll back first (entered inside it, the context would outlive the with block)"
        )


async def _verify_nested_token(scope: _Scope, token: str) -> None:
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
        scope = self._client._live_scope()
        if scope is not None:
            yield await scope.run(query, params)
            return
        pool = await self._client._opened_pool()
        async with pool.connection() as conn:
            # A session-wide context the statement set is cleared (see _sync.Sql).
            if c.classify(query)[1]:
                cur = await c.tuples(conn).execute(query, params)
                await conn.execute(c.RESET_SESSION_CONTEXT)
            else:
                cur = (await together(conn, ((query, params), (_pipeline.fixed(c.RESET_SESSION_CONTEXT), None))))[0]
            yield cur

    async def execute(self, query: Any, params: Params = None) -> int:
        async with self._cursor(query, params) as cur:
            return cur.rowcount

    async def fetch_one(self, query: Any, params: Params = None) -> tuple[Any, ...] | None:
        async with self._cursor(query, params) as cur:
            return await cur.fetchone()

    async def fetch_all(self, query: Any, params: Params = None) -> list[tuple[Any, ...]]:
        async with self._cursor(query, params) as cur:
            return await cur.fetchall()

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
        self._scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
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

    @contextlib.asynccontextmanager
    async def tenant_context(
        self, tenant_id: uuid.UUID | str | None = None, *, token: str | None = None
    ) -> AsyncIterator["AsyncNile"]:
        key = c.tenant_key(tenant_id, token)
        current = self._open_scope()
        if c.joins_active_context(current and current.kind, current and current.key, "tenant", key):
            if token is not None and current is not None:
                await _verify_nested_token(current, token)
            yield self
            return
        enter, read_only = (c.SET_TENANT_TOKEN, c.SET_TENANT_TOKEN_READ_ONLY) if token else (c.SET_TENANT,
                                                                                        c.SET_TENANT_READ_ONLY)
        async with self._scoped("tenant", key, enter, read_only, token or key):
            yield self

    @contextlib.asynccontextmanager
    async def admin_context(self, reason: str | None = None) -> AsyncIterator["AsyncNile"]:
        current = self._open_scope()
        if c.joins_active_context(current and current.kind, current and current.key, "admin", None):
            yield self
            return
        async with self._scoped("admin", None, c.ADMIN_CONTEXT, None, reason or c.caller_name()):
            yield self

    def _live_scope(self) -> _Scope | None:
        """See :meth:`nile_tenancy.Nile._live_scope`."""
        scope = self._scope.get()
        if scope is not None and scope.closed:
            raise errors.ContextEnded(c.CONTEXT_ENDED)
        return scope

    def _open_scope(self) -> _Scope | None:
        scope = self._scope.get()
        return None if scope is None or scope.closed else scope

    @contextlib.asynccontextmanager
    async def _scoped(
        self, kind: str, key: str | None, enter_sql: str, read_only_sql: str | None, argument: Any
    ) -> AsyncIterator[_Scope]:
        pool = await self._opened_pool()
        async with pool.connection() as conn:
            require_idle(conn)
            # See _sync.Nile._scoped: nothing sent until the first statement, autocommit restored, the scope closed at
            # the end.
            was_autocommit = conn.autocommit
            scope = _Scope(kind, key, conn, self, enter_sql, argument,
                           read_only_sql if c.reads_may_run_alone(conn) else None, c.begin_sql(conn))
            token: contextvars.Token[_Scope | None] | None = None
            try:
                if not was_autocommit:
                    await conn.set_autocommit(True)
                token = self._scope.set(scope)
                yield scope
                if not scope.used:
                    scope.opened = True
                    await together(conn, ((_pipeline.fixed(scope.begin_sql), None),
                                          (_pipeline.fixed(enter_sql), [argument]), (_pipeline.fixed("COMMIT"), None)))
                elif not scope.opened:
                    pass  # only reads, each in a read-only transaction of its own that has ended
                elif conn.info.transaction_status == pq.TransactionStatus.INERROR:
                    await conn.rollback()
                    raise errors.TransactionAborted(c.TRANSACTION_ABORTED)
                else:
                    await conn.commit()
                if scope.needs_reset:
                    await conn.execute(c.RESET_SESSION_CONTEXT)
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                if scope.needs_reset:
                    with contextlib.suppress(Exception):
                        await conn.execute(c.RESET_SESSION_CONTEXT)
                raise
            finally:
                scope.closed = True
                if token is not None:
                    with contextlib.suppress(ValueError):  # ended in another context (an abandoned generator)
                        self._scope.reset(token)
                if not was_autocommit and not conn.closed:
                    try:
                        await conn.set_autocommit(False)
                    except Exception:
                        await conn.close()

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
