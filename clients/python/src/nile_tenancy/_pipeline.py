"""Statements that go to the server together, in one round trip, below psycopg's public API.

Why: a unit of work of the clients is two or three statements that always go together (BEGIN, the context, the
statement; or the read-only context and a read). psycopg's ``Connection.pipeline()`` sends them in one round trip but
waits on the socket once per statement and once more at its end: 0.24–0.37 × a whole point read on its own
(docs/performance.md). Here they are queued in libpq's pipeline mode with one Sync after the last, flushed once and
read back in one wait.

Design:
- psycopg does everything else as it does for any statement: its query conversion (``%s`` placeholders, dumpers), its
  prepared-statement manager (the connection's ``prepare_threshold``), its loaders (rows) and its error classes (so
  :mod:`nile_tenancy.errors`, by SQLSTATE). Only sending and waiting are done here, and a statement's answer is a
  :class:`Result` rather than a psycopg cursor: making a cursor and giving it its results cost a tenth of a whole
  point read here (docs/performance.md). Its rows are tuples, whatever the connection's ``row_factory``, as every
  answer of ``nile.sql`` is (_common.tuples).
- Those parts of psycopg are internals (``_queries.PostgresQuery``, ``Connection._prepared``,
  ``BaseCursor._raise_for_result``, ...). :data:`ENABLED` says whether they are there as this module knows them (checked
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
import re
from collections import OrderedDict
from typing import Any, Generator, Sequence

import psycopg
from psycopg import pq

try:
    from psycopg._cursor_base import BaseCursor
    from psycopg._preparing import Prepare, PrepareManager
    from psycopg._queries import PostgresQuery
    from psycopg.adapt import Transformer
    from psycopg.generators import fetch_many, send

    _INTERNALS = (
        callable(getattr(BaseCursor, "_raise_for_result", None))
        and all(callable(getattr(PrepareManager, name, None)) for name in ("get", "maybe_add_to_cache", "validate"))
        and all(callable(getattr(Transformer, name, None)) for name in ("set_pgresult", "load_row", "load_rows"))
    )
    try:  # what Batch.start reads of psycopg's cache of prepared statements: its map, and the key of a statement
        _INTERNALS = _INTERNALS and (
            isinstance(getattr(PrepareManager(), "_names", None), OrderedDict)
            and PrepareManager.key(PostgresQuery(Transformer())) == (b"", ())  # (query, types)
        )
    except Exception:  # another psycopg, whose classes are made otherwise: Connection.pipeline() instead
        _INTERNALS = False
except ImportError:  # another psycopg than those this module knows: Connection.pipeline() instead
    _INTERNALS = False

#: Whether statements go out this way at all (psycopg's internals as known here, and a libpq with pipeline mode).
#: The tests turn it off to run the clients through ``Connection.pipeline()``.
ENABLED: bool = _INTERNALS and psycopg.Pipeline.is_supported()

_OK = pq.ConnStatus.OK
_TEXT = pq.Format.TEXT
_FATAL = pq.ExecStatus.FATAL_ERROR
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_COPY = (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_BOTH)
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_ANSWERS = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)

Statement = tuple[Any, Any]  # (query, params): a query as psycopg takes it, or a Fixed one


def usable(conn: Any) -> bool:
    """Whether statements may go to ``conn`` this way now: :data:`ENABLED`, the connection is not in psycopg's own
    pipeline mode (``conn.pipeline()`` of a caller that has the raw connection), and its cursor class converts and
    prepares statements as psycopg's own do (checked once per class)."""
    if not ENABLED or getattr(conn, "_pipeline", True) is not None:
        return False
    factory = getattr(conn, "cursor_factory", None)
    try:
        return _FACTORIES[factory]
    except (KeyError, TypeError):  # TypeError: a factory that cannot be a dictionary key, asked every time
        known = (getattr(factory, "_query_cls", None) is PostgresQuery
                 and getattr(factory, "_get_prepared", None) is BaseCursor._get_prepared)
        with contextlib.suppress(TypeError):
            if len(_FACTORIES) < 64:
                _FACTORIES[factory] = known
        return known


_FACTORIES: dict[Any, bool] = {}  # cursor class -> whether usable() takes it


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

    __slots__ = ("query", "params", "types", "formats", "key")

    def __init__(self, fixed: Fixed, args: tuple[str, ...]) -> None:
        self.query = fixed.query
        self.params = [a.encode("ascii") for a in args]
        self.types = (0,) * fixed.nparams
        self.formats = [pq.Format.TEXT] * fixed.nparams
        self.key = (self.query, self.types)  # PrepareManager.key() of it, made once


_BOUND: dict[tuple[Fixed, tuple[str, ...]], _Bound] = {}
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _bound(fixed: Fixed, params: Sequence[Any] | None) -> _Bound | None:
    """``fixed`` with its arguments, or None when one is not plain text (ASCII without NUL; psycopg converts the
    statement then). Kept for arguments that are all tenant ids in their canonical text (what the clients send): never
    tokens (credentials) nor admin reasons."""
    args = () if params is None else tuple(params)
    key = (fixed, args)
    try:
        bound = _BOUND.get(key)
    except TypeError:  # an argument that cannot be a dictionary key is not plain text either
        return None
    if bound is not None:
        return bound
    keep = True
    for a in args:
        if not (isinstance(a, str) and a.isascii() and "\x00" not in a):
            return None
        keep = keep and _CANONICAL_UUID.fullmatch(a) is not None
    bound = _Bound(fixed, args)
    if keep:
        if len(_BOUND) >= 4096:
            _BOUND.clear()
        _BOUND[key] = bound
    return bound


class Column:
    """A column of a :class:`Result`: its name, as in psycopg's ``cursor.description``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Result:
    """A statement's answer, read as a psycopg cursor reads it (psycopg's loaders, the connection's adapters), with
    what the clients need of a cursor: :meth:`fetchone`, :meth:`fetchall`, ``rowcount``, ``description``. Rows are
    tuples. Sends and receives nothing: readable after the connection went back to its pool (its Transformer keeps
    the connection's adapters and encoding, as a psycopg cursor's does)."""

    __slots__ = ("_tx", "_res", "_pos", "rowcount")

    def __init__(self, tx: Any, res: Any) -> None:
        self._tx = tx
        self._res = res
        self._pos = 0
        tx.set_pgresult(res)
        if res.status == _TUPLES_OK:
            self.rowcount: int = res.ntuples
        else:
            count = res.command_tuples
            self.rowcount = -1 if count is None else count

    def _rows(self) -> Any:
        res = self._res
        if res.status != _TUPLES_OK:  # the words of psycopg's cursor
            status = res.command_status
            detail = (f"command status: {status.decode()}" if status
                      else f"result status: {pq.ExecStatus(res.status).name}")
            raise psycopg.ProgrammingError(f"the last operation didn't produce records ({detail})")
        return res

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or None when there are no more."""
        res = self._res
        if res.status != _TUPLES_OK:
            self._rows()  # raises
        pos = self._pos
        if pos < res.ntuples:
            self._pos = pos + 1
            return self._tx.load_row(pos, tuple)  # type: ignore[no-any-return]
        return None

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every row not fetched yet."""
        n = self._rows().ntuples
        rows = self._tx.load_rows(self._pos, n, tuple)
        self._pos = n
        return rows  # type: ignore[no-any-return]

    @property
    def description(self) -> list[Column] | None:
        """The columns (None for a statement that returns no rows), with their names."""
        res = self._res
        if res.status != _TUPLES_OK:
            return None
        encoding = self._tx.encoding
        return [Column((res.fname(i) or b"").decode(encoding)) for i in range(res.nfields)]


class AsyncResult(Result):
    """:class:`Result` for the async client, whose callers await the fetches as they would an AsyncCursor's."""

    __slots__ = ()

    async def fetchone(self) -> tuple[Any, ...] | None:  # type: ignore[override]
        return Result.fetchone(self)

    async def fetchall(self) -> list[tuple[Any, ...]]:  # type: ignore[override]
        return Result.fetchall(self)


#: The plan of a statement that is not prepared (see Batch.plans).
_NOT_PREPARED: tuple[Any, Any, bytes] = (None, Prepare.NO if _INTERNALS else None, b"")
_YES = Prepare.YES if _INTERNALS else None


class Batch:
    """Statements for one connection, converted as psycopg converts them; sent by :meth:`start`, read back by
    :meth:`communicate`, answered by :meth:`finish` (per statement a :class:`Result`, None for a Fixed one; or the
    first error)."""

    __slots__ = ("conn", "result_cls", "readers", "queries", "plans", "prepare_results", "bookkeeping")

    def __init__(self, conn: Any, statements: Sequence[Statement], result_cls: type[Result] = Result) -> None:
        # Converting the parameters may raise (a value psycopg cannot dump): before anything is sent.
        self.conn = conn
        self.result_cls = result_cls
        # Per statement: None (a Fixed one) or the psycopg Transformer that converts it and reads its answer.
        self.readers: list[Any] = []
        self.queries: list[Any] = []
        for query, params in statements:
            if isinstance(query, Fixed):
                bound = _bound(query, params)
                if bound is not None:
                    self.readers.append(None)
                    self.queries.append(bound)
                    continue
                query = query.text  # not ASCII (an admin context's reason): converted by psycopg
            tx = Transformer(conn)
            pgq = PostgresQuery(tx)
            pgq.convert(query, params)
            self.readers.append(tx)
            self.queries.append(pgq)
        self.plans: list[tuple[Any, Any, bytes]] = []  # per statement: (prepared-cache key or None, Prepare, name)
        self.prepare_results: list[list[Any]] = []  # per statement: the result of its Parse, if it was prepared now
        # Whether psycopg's prepared-statement cache has anything to learn from the results (a statement that was not
        # prepared on the connection already, with prepared statements on): see finish().
        self.bookkeeping = False

    def start(self) -> None:
        """Queue every statement and the Sync in libpq's pipeline mode (sent by :meth:`communicate`)."""
        conn = self.conn
        pg = conn.pgconn
        if pg.status != _OK:
            conn._check_connection_ok()  # raises
        prepared = conn._prepared
        # Without prepared statements (the clients' default), psycopg's manager would answer Prepare.NO and cache
        # nothing: asked only when it may prepare.
        preparing = prepared.prepare_threshold is not None
        names = prepared._names
        plans = self.plans
        pg.enter_pipeline_mode()
        for reader, pgq in zip(self.readers, self.queries):
            if not pgq.params and reader is None:  # BEGIN, COMMIT: nothing to gain from preparing them
                pg.send_query_params(pgq.query, None, result_format=_TEXT)
                plans.append(_NOT_PREPARED)
            elif not preparing:
                pg.send_query_params(pgq.query, pgq.params, param_formats=pgq.formats, param_types=pgq.types,
                                     result_format=_TEXT)
                plans.append(_NOT_PREPARED)
            elif (name := names.get(key := pgq.key if reader is None else (pgq.query, pgq.types))) is not None:
                # Prepared on this connection already (the usual case): what prepared.get() and
                # maybe_add_to_cache() do for it (Prepare.YES; the statement moves to the recent end of psycopg's
                # cache, which a statement that psycopg has prepared is never in the counts of), without the calls.
                names.move_to_end(key)
                pg.send_query_prepared(name, pgq.params, param_formats=pgq.formats, result_format=_TEXT)
                plans.append((None, _YES, name))
            else:
                self.bookkeeping = True
                prep, name = prepared.get(pgq, None)
                if prep is Prepare.NO:
                    pg.send_query_params(pgq.query, pgq.params, param_formats=pgq.formats, param_types=pgq.types,
                                         result_format=_TEXT)
                else:
                    if prep is Prepare.SHOULD:
                        pg.send_prepare(name, pgq.query, param_types=pgq.types)
                    pg.send_query_prepared(name, pgq.params, param_formats=pgq.formats, result_format=_TEXT)
                plans.append((prepared.maybe_add_to_cache(pgq, prep, name), prep, name))
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
        while True:  # up to the Sync (a plain loop: this runs for every unit of work)
            for r in (yield from fetch_many(pg)):
                if r.status == _SYNC:
                    return groups

    def finish(self, groups: list[list[Any]]) -> list[Any]:
        """Update psycopg's prepared-statement cache; raise the first error, else every statement's answer."""
        conn = self.conn
        if self.bookkeeping:  # else no statement has anything to tell psycopg's cache
            prepared = conn._prepared
            for pgq, (key, prep, name), parsed, results in zip(self.queries, self.plans, self.prepare_results, groups):
                if key is not None:
                    prepared.validate(key, prep, name, results)
                if prep is Prepare.SHOULD and not (parsed and parsed[0].status == _COMMAND_OK):
                    # Never prepared on the server (its Parse failed, or an earlier error aborted it): psycopg must
                    # not think it was.
                    prepared._names.pop(PrepareManager.key(pgq), None)
        first_error = _first_error(self.prepare_results, groups)
        if first_error is not None:
            conn.cursor()._raise_for_result(first_error)
        answers: list[Any] = []
        for reader, results in zip(self.readers, groups):
            if not results:
                raise psycopg.InternalError("got no result from the query")
            if results[-1].status not in _ANSWERS:
                conn.cursor()._raise_for_result(results[-1])
            answers.append(None if reader is None else self.result_cls(reader, results[0]))
        return answers


def _first_error(parse_groups: list[list[Any]], groups: list[list[Any]]) -> Any:
    """The first FATAL_ERROR result, statement by statement (its Parse's results, then its own), or None."""
    for parsed, results in zip(parse_groups, groups):
        for group in (parsed, results):
            for r in group:
                if r.status == _FATAL:
                    return r
    return None


def run(conn: psycopg.Connection[Any], statements: Sequence[Statement]) -> list[Result | None]:
    """Send ``statements`` to ``conn`` in one round trip; their answers (see :meth:`Batch.finish`), or the first error
    raised (psycopg's class for its SQLSTATE). Only when :func:`usable` says so."""
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
    """:func:`run` for an AsyncConnection (its answers are :class:`AsyncResult`)."""
    batch = Batch(conn, statements, AsyncResult)
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
