"""The connection pool of a synchronous client that opens its own (``Nile(dsn)``).

Why not psycopg_pool's ConnectionPool: a checkout and return through it costs 0.22–0.30 × a whole point read on this
project's benchmark machine (docs/performance.md), more than the tenant context itself. A client that is given a
pool (``Nile(pool=ConnectionPool(...))``) uses that one, with all its features (health checks, reconnection in the
background, ``max_lifetime``, statistics).

Design:
- Idle connections on a stack: the most recently returned one is taken first (its caches are warm).
- At most ``max_size`` connections open; ``min_size`` are opened when the pool is made, so a wrong DSN fails there.
  A caller that finds none idle opens one if it may, else waits up to ``timeout`` seconds for one to come back, then
  raises ``psycopg_pool.PoolTimeout``.
- ``connection()`` ends like psycopg_pool's: a transaction left open is committed (rolled back if the block raised).
  A connection comes back only idle and working: broken, closed, or in any other transaction state, it is closed and
  dropped (another is opened when one is needed).
- A connection given back must be one the pool gave out and has not had back since (ValueError otherwise): each
  counts once, so the pool never opens more than ``max_size``, and a caller's own connection is never closed by it.
- Locking: one lock guards the stack, the connections given out and the count of open connections (taken bare on
  the paths every unit of work takes, through its ``threading.Condition`` where a caller may wait or be woken);
  connecting and closing happen outside it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import PoolClosed, PoolTimeout

_IDLE = pq.TransactionStatus.IDLE
_OK = pq.ConnStatus.OK
_OFF = pq.PipelineStatus.OFF


class Pool:
    """``connection()`` (a context manager), ``getconn()``/``putconn()``, ``close()``; ``min_size``, ``max_size``,
    ``timeout``, ``closed``."""

    def __init__(
        self, conninfo: str, *, min_size: int, max_size: int, kwargs: dict[str, Any], timeout: float = 30.0
    ) -> None:
        if min_size < 0 or max_size < 1 or min_size > max_size:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.closed = False
        self._idle: list[psycopg.Connection[Any]] = []
        self._out: set[psycopg.Connection[Any]] = set()  # given out and not back yet (by identity)
        self._open = 0  # connections open or being opened, idle or not
        self._waiting = 0  # callers waiting for a connection to come back
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        try:
            for _ in range(min_size):
                self._open += 1
                self._idle.append(self._connect())
        except BaseException:
            self.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.Connection.connect(self.conninfo, **self.kwargs)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def connection(self, timeout: float | None = None) -> "_Lease":
        """``with pool.connection() as conn:`` a connection for the block (see the module's notes)."""
        return _Lease(self, timeout)

    def getconn(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        """A connection; give it back with :meth:`putconn`."""
        with self._lock:
            if self._idle and not self.closed:  # the usual case, without a call
                conn = self._idle.pop()
                self._out.add(conn)
                return conn
        with self._cond:
            deadline = None
            while True:
                if self.closed:
                    raise PoolClosed("the pool is closed")
                if self._idle:
                    return self._take_idle()
                if self._open < self.max_size:
                    self._open += 1
                    break
                if deadline is None:
                    deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolTimeout(f"no connection free within {self.timeout if timeout is None else timeout} s "
                                      f"({self.max_size} open, all in use): raise max_size, or hold them less long")
                self._waiting += 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiting -= 1
        conn = self._connect()
        with self._lock:
            self._out.add(conn)
        if self.closed:
            self.putconn(conn)  # closes it, and the count
            raise PoolClosed("the pool is closed")
        return conn

    def _take_idle(self) -> psycopg.Connection[Any]:
        """The most recently returned idle connection, now given out (under the lock)."""
        conn = self._idle.pop()
        self._out.add(conn)
        return conn

    def putconn(self, conn: psycopg.Connection[Any]) -> None:
        """Give back a connection of :meth:`getconn`: kept if idle and working, else closed and dropped."""
        pgconn = conn.pgconn
        working = (pgconn.status == _OK and pgconn.transaction_status == _IDLE
                   and pgconn.pipeline_status == _OFF and conn._pipeline is None)
        with self._lock:
            try:
                self._out.remove(conn)
            except KeyError:
                raise ValueError(
                    "this connection is not out of this pool: given back already, or not the pool's"
                ) from None
            if working and not self.closed:
                self._idle.append(conn)
                if self._waiting:
                    self._cond.notify()
                return
        try:
            conn.close()
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify()

    def give_back(self, conn: psycopg.Connection[Any], failed: bool) -> None:
        """The end of ``connection()``'s block (``failed``: it raised), for callers that took the connection with
        :meth:`getconn` (the clients' blocks, without a :class:`_Lease`): straight back when no transaction is open,
        else through :meth:`release`."""
        if conn.pgconn.transaction_status == _IDLE:
            self.putconn(conn)  # no transaction to end: straight back
        else:
            self.release(conn, failed)

    def release(self, conn: psycopg.Connection[Any], failed: bool) -> None:
        """The end of ``connection()``'s block (``failed``: it raised): a transaction left open is committed, or
        rolled back, then the connection is given back (:meth:`putconn`)."""
        try:
            if not conn.closed and conn.pgconn.transaction_status != _IDLE:
                try:
                    if failed:
                        conn.rollback()
                    else:
                        conn.commit()
                except Exception:
                    if not failed:
                        raise  # the block's COMMIT failed: the caller must know
        finally:
            self.putconn(conn)

    def close(self) -> None:
        """Close the idle connections, and every other one as it comes back; later ``getconn()`` raise PoolClosed."""
        with self._cond:
            self.closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lease:
    """The context manager of :meth:`Pool.connection` (a class: cheaper than a generator)."""

    __slots__ = ("pool", "timeout", "conn")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout

    def __enter__(self) -> psycopg.Connection[Any]:
        self.conn = self.pool.getconn(self.timeout)
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.pool.give_back(self.conn, exc_type is not None)
