"""Statements that go to the server together, in one round trip, below psycopg's public API.

Why: a unit of work of the clients is two or three statements that always go together (BEGIN, the context, the
statement; or the read-only context and a read). psycopg's ``Connection.pipeline()`` sends them in one round trip but
waits on the socket once per statement and once more at its end: 0.24–0.37 × a whole point read on its own
(docs/performance.md). Here they are queued in libpq's pipeline mode with one Sync after the last, flushed once and
read back in one wait.

Design:
- psycopg does everything else as it does for any statement: its query conversion (``%s`` placeholders, dumpers), its
  prepared-statement manager (the connection's ``prepare_threshold``), its cursors (rows, ``rowcount``,
  ``description``) and its error classes (so :mod:`nile_tenancy.errors`, by SQLSTATE). Only sending and waiting are
  done here.
- Those parts of psycopg are internals (``_queries.PostgresQuery``, ``Connection._prepared``,
  ``BaseCursor._set_results``, ...). :data:`ENABLED` says whether they are there as this module knows them (checked
  once, at import); where they are not, or :func:`usable` says no for a connection, the clients send the same
  statements through ``Connection.pipeline()``: the same answers and errors, one round trip, more waiting.
- The statements up to the Sync are one transaction: an implicit one, unless one of them is BEGIN. The first error
  aborts the rest (their results are PIPELINE_ABORTED) and is raised once every result has been read, so the
  connection always leaves pipeline mode with nothing pending. If reading is interrupted (Ctrl-C, a broken
  connection) or the server answers something a pipeline cannot take (COPY), the connection is closed: a pool drops
  it, and nothing half-done can reach another user.
- Locking: everything runs under the connection's own lock (``conn.lock``), as psycopg holds it for any statement.
  The sync and async clients share :class:`Batch`; only the waiting differs (:func:`run`, :func:`run_async`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Generator, Sequence

import psycopg
from psycopg import pq

try:
    from psycopg._cursor_base import BaseCursor
    from psycopg._preparing import Prepare, PrepareManager
    from psycopg._queries import PostgresQuery
    from psycopg.adapt import Transformer
    from psycopg.generators import fetch_many, send

    _INTERNALS = all(
        callable(getattr(BaseCursor, name, None)) for name in ("_set_results", "_check_results", "_raise_for_result")
    ) and callable(getattr(PrepareManager, "maybe_add_to_cache", None))
except ImportError:  # another psycopg than those this module knows: Connection.pipeline() instead
    _INTERNALS = False

#: Whether statements go out this way at all (psycopg's internals as known here, and a libpq with pipeline mode).
#: The tests turn it off to run the clients through ``Connection.pipeline()``.
ENABLED: bool = _INTERNALS and psycopg.Pipeline.is_supported()

_FATAL = pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_DONE = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
_COPY = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)

Statement = tuple[Any, Any]  # (query, params): a query as psycopg takes it, or a Fixed one


def usable(conn: Any) -> bool:
    """Whether statements may go to ``conn`` this way now: :data:`ENABLED`, and the connection is not in psycopg's own
    pipeline mode (``conn.pipeline()`` of a caller that has the raw connection)."""
    factory = getattr(conn, "cursor_factory", None)
    return (ENABLED and getattr(conn, "_pipeline", True) is None
            and getattr(factory, "_query_cls", None) is PostgresQuery
            and getattr(factory, "_get_prepared", None) is BaseCursor._get_prepared)


class Fixed:
    """A statement of the clients' own that goes with a unit of work (BEGIN, a context function, COMMIT): its
    placeholders turned into ``$n`` once, not at every use. Its arguments are text (type unknown to the server, which
    takes the one the statement gives them) and need no cursor; its result is only checked for an error."""

    __slots__ = ("text", "query", "nparams")

    def __init__(self, text: str) -> None:
        self.text = text  # with psycopg's %s placeholders, for Connection.execute() and Connection.pipeline()
        parts = text.split("%s")
        self.nparams = len(parts) - 1
        self.query = "".join(part + (f"${i + 1}" if i < self.nparams else "") for i, part in enumerate(parts)).encode()


@functools.lru_cache(maxsize=64)
def fixed(text: str) -> Fixed:
    """The Fixed statement of a text (made once per text)."""
    return Fixed(text)


class _Bound:
    """A Fixed statement with its arguments, shaped as psycopg's PostgresQuery for its prepared-statement manager.
    Made once per statement and arguments (:func:`_bound`: the same tenants come back request after request)."""

    __slots__ = ("query", "params", "types", "formats")

    def __init__(self, fixed: Fixed, args: tuple[str, ...]) -> None:
        self.query = fixed.query
        self.params = [a.encode("ascii") for a in args]
        self.types = (0,) * fixed.nparams
        self.formats = [pq.Format.TEXT] * fixed.nparams


_BOUND: dict[tuple[Fixed, tuple[str, ...]], _Bound] = {}


def _bound(fixed: Fixed, args: tuple[str, ...]) -> _Bound:
    if any(len(a) != 36 for a in args):
        return _Bound(fixed, args)  # only tenant ids are kept: not tokens (credentials) nor admin reasons
    key = (fixed, args)
    bound = _BOUND.get(key)
    if bound is None:
        if len(_BOUND) >= 4096:
            _BOUND.clear()
        bound = _BOUND[key] = _Bound(fixed, args)
    return bound


class Batch:
    """Statements for one connection, converted as psycopg converts them; sent by :meth:`start`, read back by
    :meth:`communicate`, answered by :meth:`finish` (a cursor per statement, None for a Fixed one; or the first
    error)."""

    __slots__ = ("conn", "cursors", "queries", "plans", "prepare_results")

    def __init__(self, conn: Any, statements: Sequence[Statement]) -> None:
        # Converting the parameters may raise (a value psycopg cannot dump): before anything is sent.
        self.conn = conn
        self.cursors: list[Any] = []
        self.queries: list[Any] = []
        for query, params in statements:
            if isinstance(query, Fixed):
                if params is None or all(isinstance(a, str) and a.isascii() and "\x00" not in a for a in params):
                    self.cursors.append(None)
                    self.queries.append(_bound(query, tuple(params or ())))
                    continue
                query = query.text  # not ASCII (an admin context's reason): converted by psycopg
            cur = conn.cursor()
            cur._tx = Transformer(cur)
            pgq = PostgresQuery(cur._tx)
            pgq.convert(query, params)
            cur._query = pgq
            self.cursors.append(cur)
            self.queries.append(pgq)
        self.plans: list[tuple[Any, Any, bytes]] = []  # per statement: (prepared-cache key or None, Prepare, name)
        self.prepare_results: list[list[Any]] = []  # per statement: the result of its Parse, if it was prepared now

    def start(self) -> None:
        """Queue every statement and the Sync in libpq's pipeline mode (sent by :meth:`communicate`)."""
        conn = self.conn
        conn._check_connection_ok()
        pg = conn.pgconn
        prepared = conn._prepared
        pg.enter_pipeline_mode()
        for cur, pgq in zip(self.cursors, self.queries):
            if not pgq.params and cur is None:  # BEGIN, COMMIT: nothing to gain from preparing them
                pg.send_query_params(pgq.query, None, result_format=pq.Format.TEXT)
                self.plans.append((None, Prepare.NO, b""))
                continue
            prep, name = prepared.get(pgq, None)
            fmt = pq.Format.TEXT if cur is None else cur.format
            if prep is Prepare.NO:
                pg.send_query_params(pgq.query, pgq.params, param_formats=pgq.formats, param_types=pgq.types,
                                     result_format=fmt)
            else:
                if prep is Prepare.SHOULD:
                    pg.send_prepare(name, pgq.query, param_types=pgq.types)
                pg.send_query_prepared(name, pgq.params, param_formats=pgq.formats, result_format=fmt)
            self.plans.append((prepared.maybe_add_to_cache(pgq, prep, name), prep, name))
        pg.pipeline_sync()

    def communicate(self) -> Generator[Any, Any, list[list[Any]]]:
        """psycopg's generator protocol (waited on by ``conn.wait()``): flush, then every statement's results and the
        Sync. Returns the statements' results, in order."""
        pg = self.conn.pgconn
        yield from send(pg)
        groups: list[list[Any]] = []
        for _, prep, _ in self.plans:
            if prep is Prepare.SHOULD:
                self.prepare_results.append((yield from fetch_many(pg)))
            else:
                self.prepare_results.append([])
            results = yield from fetch_many(pg)
            if results and results[-1].status in _COPY:
                raise psycopg.NotSupportedError("COPY cannot be sent with a tenant or admin context's statement: "
                                                "use nile.sql.connection.cursor().copy() inside the context")
            groups.append(results)
        while not any(r.status == _SYNC for r in (yield from fetch_many(pg))):
            pass
        return groups

    def finish(self, groups: list[list[Any]]) -> list[Any]:
        """Leave pipeline mode; update psycopg's prepared-statement cache; raise the first error, else give every
        statement's cursor its results."""
        conn = self.conn
        prepared = conn._prepared
        first_error: Any = None
        for pgq, (key, prep, name), parsed, results in zip(self.queries, self.plans, self.prepare_results, groups):
            if key is not None:
                prepared.validate(key, prep, name, results)
            if prep is Prepare.SHOULD and not (parsed and parsed[0].status == _COMMAND_OK):
                # Never prepared on the server (its Parse failed, or an earlier error aborted it): psycopg must not
                # think it was.
                prepared._names.pop(PrepareManager.key(pgq), None)
            if first_error is None:
                first_error = next((r for r in parsed + results if r.status == _FATAL), None)
        if first_error is not None:
            conn.cursor()._raise_for_result(first_error)
        for cur, results in zip(self.cursors, groups):
            if cur is None:
                if not results:
                    raise psycopg.InternalError("got no result from the query")
                if results[-1].status not in _DONE:
                    conn.cursor()._raise_for_result(results[-1])
            else:
                cur._check_results(results)
                cur._set_results(results)
        return self.cursors


def run(conn: psycopg.Connection[Any], statements: Sequence[Statement]) -> list[psycopg.Cursor[Any]]:
    """Send ``statements`` to ``conn`` in one round trip; their cursors, or the first error raised (psycopg's class
    for its SQLSTATE). Only when :func:`usable` says so."""
    batch = Batch(conn, statements)
    with conn.lock:
        try:
            batch.start()
            groups = conn.wait(batch.communicate())
            conn.pgconn.exit_pipeline_mode()
        except BaseException:
            abandon(conn)
            raise
        try:
            return batch.finish(groups)
        finally:
            if conn._prepared._to_flush:  # finish() may have cleared or rotated psycopg's cache: as psycopg does
                conn.wait(conn._prepared.maintain_gen(conn))


async def run_async(conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]) -> list[Any]:
    """:func:`run` for an AsyncConnection."""
    batch = Batch(conn, statements)
    async with conn.lock:
        try:
            batch.start()
            groups = await conn.wait(batch.communicate())
            conn.pgconn.exit_pipeline_mode()
        except BaseException:
            await abandon_async(conn)
            raise
        try:
            return batch.finish(groups)
        finally:
            if conn._prepared._to_flush:  # finish() may have cleared or rotated psycopg's cache: as psycopg does
                await conn.wait(conn._prepared.maintain_gen(conn))


def abandon(conn: Any) -> None:
    """The pipeline did not complete: the connection's state is unknown, so it is closed (a pool drops it)."""
    with contextlib.suppress(Exception):
        conn.pgconn.finish()
    with contextlib.suppress(Exception):
        conn.close()


async def abandon_async(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.pgconn.finish()
    with contextlib.suppress(Exception):
        await conn.close()
