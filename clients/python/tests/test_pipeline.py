"""The one-round-trip path below psycopg's public API (_pipeline.py) and the client's own pool (_pool.py): what they
answer when a statement fails, is interrupted or is something a pipeline cannot take; that psycopg's prepared-statement
cache stays true; that the connection always leaves pipeline mode, or the pool; and that the public-API fallback gives
the same answers."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import psycopg.rows
import pytest
from psycopg_pool import PoolClosed, PoolTimeout

from conftest import dsn, superuser
from nile_tenancy import AsyncNile, Nile, _pipeline, errors
from nile_tenancy._pool import Pool

READ = "SELECT username FROM public.users WHERE username <> %s"


def usernames(nile: Nile) -> list[str]:
    return [r[0] for r in nile.sql.fetch_all("SELECT username FROM public.users ORDER BY username")]


@pytest.fixture(params=["below-psycopg", "psycopg-pipeline"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test of this module runs on both paths: the one of _pipeline.py, and psycopg's Connection.pipeline(),
    which the clients use where psycopg's internals are not those _pipeline.py knows."""
    if request.param == "psycopg-pipeline":
        monkeypatch.setattr(_pipeline, "ENABLED", False)
    yield request.param


def test_the_pinned_psycopg_takes_the_fast_path() -> None:
    """The suite's psycopg is one whose internals _pipeline.py knows: otherwise every other test here would only
    exercise the fallback, and the benchmark would measure it."""
    assert _pipeline.ENABLED, "psycopg's internals changed: update _pipeline.py (see its notes)"


def test_answers_are_those_of_psycopg(path: str, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    with Nile(dsn("app_user"), max_size=1) as nile:
        with nile.tenant_context(acme):
            cur_rows = nile.sql.fetch_all(READ, ("nobody",))
            assert cur_rows == [("ada",)]
            assert nile.sql.fetch_one("SELECT %s::int + 1, %s::text", (41, "é")) == (42, "é")
            assert nile.sql.fetch_one("SELECT 1 WHERE false") is None
            assert nile.sql.execute("UPDATE public.users SET email = email") == 1
        with nile.tenant_context(globex):
            assert usernames(nile) == ["grace"]


def test_the_first_error_is_raised_with_its_class_and_the_connection_stays_usable(
    path: str, two_tenants: tuple[str, str]
) -> None:
    acme, _ = two_tenants
    with Nile(dsn("app_user"), max_size=1) as nile:
        for _ in range(3):
            with pytest.raises(errors.TenantNotFound):  # the context (the first statement) fails: the read is not run
                with nile.tenant_context(uuid.uuid4()):
                    nile.sql.fetch_one(READ, ("nobody",))
            with pytest.raises(psycopg.errors.UndefinedTable):  # the read (the second) fails
                with nile.tenant_context(acme):
                    nile.sql.fetch_one("SELECT * FROM public.no_such_table")
            with pytest.raises(psycopg.errors.SyntaxError):  # a write, after BEGIN and the context
                with nile.tenant_context(acme):
                    nile.sql.execute("UPDATE public.users SET")
            with nile.tenant_context(acme):  # the pool's only connection: out of pipeline mode, idle, no tenant
                assert usernames(nile) == ["ada"]
        with nile.pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
            assert conn.execute("SELECT nile.current_tenant()").fetchone() == (None,)


def test_a_statement_aborted_while_it_was_being_prepared_is_not_taken_for_prepared(
    two_tenants: tuple[str, str]
) -> None:
    """psycopg prepares a statement the sixth time it runs. If that time the context before it fails, the server
    never saw the statement's Parse: psycopg must not believe it is prepared, or every later run of it fails with
    'prepared statement does not exist'. psycopg's own Connection.pipeline() has this flaw (3.3.9), so only the path
    of _pipeline.py is tested. Straight to the server: PgBouncer 1.18 cannot follow prepared statements."""
    acme, _ = two_tenants
    with Nile(dsn("app_user", server=True), max_size=1, prepared_statements=True) as nile:
        for _ in range(5):
            with nile.tenant_context(acme):
                assert nile.sql.fetch_all(READ, ("nobody",)) == [("ada",)]
        with pytest.raises(errors.TenantNotFound):
            with nile.tenant_context(uuid.uuid4()):
                nile.sql.fetch_all(READ, ("nobody",))  # the sixth run: sent with its Parse, aborted
        for _ in range(3):
            with nile.tenant_context(acme):
                assert nile.sql.fetch_all(READ, ("nobody",)) == [("ada",)]


def test_prepared_statements_are_used_when_asked(two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with Nile(dsn("app_user", server=True), max_size=1, prepared_statements=True) as nile:
        for _ in range(8):
            with nile.tenant_context(acme):
                assert nile.sql.fetch_all(READ, ("nobody",)) == [("ada",)]
        with nile.pool.connection() as conn:
            prepared = [r[0] for r in conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
    assert any("set_tenant_read_only" in s for s in prepared), prepared
    assert any("username <> $1" in s for s in prepared), prepared


def test_statements_prepared_already_keep_psycopgs_cache_true(two_tenants: tuple[str, str]) -> None:
    """A statement prepared on the connection already goes out without psycopg's calls (_pipeline.Batch.start does
    what they would: its name, and the statement moved to the recent end of psycopg's cache). With a cache of one
    statement and three statements in turn, psycopg evicts and deallocates prepared statements all the time: every
    read still answers, and every name psycopg keeps is prepared on the server (a stale one fails with 'prepared
    statement does not exist'). With room, a statement sent again moves to the recent end: the context, sent with a
    third statement, passes the read it was prepared with."""
    acme, _ = two_tenants
    count = "SELECT count(*) FROM public.users WHERE username <> %s"

    def server_has_psycopgs_names(nile: Nile) -> list[bytes]:
        with nile.pool.connection() as conn:
            names = conn._prepared._names
            prepared = {r[0] for r in conn.execute("SELECT name FROM pg_prepared_statements").fetchall()}
            assert {n.decode() for n in names.values()} <= prepared, (names, prepared)
            return [key[0] for key in names]

    with Nile(dsn("app_user", server=True), max_size=1, prepared_statements=True) as nile:
        with nile.pool.connection() as conn:
            conn._prepared.prepared_max = 1
        for _ in range(12):
            with nile.tenant_context(acme):
                assert nile.sql.fetch_all(READ, ("nobody",)) == [("ada",)]
            with nile.tenant_context(acme):
                assert nile.sql.fetch_one(count, ("x",)) == (1,)
            server_has_psycopgs_names(nile)
    with Nile(dsn("app_user", server=True), max_size=1, prepared_statements=True) as nile:
        for _ in range(8):  # the context and the read prepared, in that order
            with nile.tenant_context(acme):
                assert nile.sql.fetch_all(READ, ("nobody",)) == [("ada",)]
        for _ in range(8):
            with nile.tenant_context(acme):
                assert nile.sql.fetch_one(count, ("x",)) == (1,)
        queries = server_has_psycopgs_names(nile)
        assert [b"username <> $1" in queries[0], b"set_tenant_read_only" in queries[1], b"count(*)" in queries[2]] \
            == [True, True, True], queries


def test_copy_is_refused_and_leaves_nothing_behind(path: str, two_tenants: tuple[str, str]) -> None:
    """COPY needs the connection to itself (COPY mode), which a statement sent with BEGIN and the context cannot
    have: refused by the client (not by the server), and the connection, left in COPY mode inside a pipeline, is
    closed, not given back. (psycopg's pipeline raised 'cannot exit pipeline mode while in COPY' and left the
    connection stuck: the pool's next user failed.)"""
    acme, _ = two_tenants
    copy_out = "COPY (SELECT username FROM public.users ORDER BY username) TO STDOUT"
    with Nile(dsn("app_user"), max_size=1) as nile:
        for _ in range(2):
            with pytest.raises(psycopg.Error) as refused:
                with nile.tenant_context(acme):
                    nile.sql.execute(copy_out)
            if path == "below-psycopg":  # the client's refusal, not a server's SQLSTATE
                assert type(refused.value) is psycopg.NotSupportedError, refused.value
            with nile.tenant_context(acme):
                assert usernames(nile) == ["ada"]
        with nile.tenant_context(acme):  # COPY through the block's connection works, as the error says
            with nile.sql.connection.cursor().copy(copy_out) as copy:
                assert [row for row in copy.rows()] == [("ada",)]


def test_an_interrupted_round_trip_closes_the_connection(path: str, two_tenants: tuple[str, str]) -> None:
    """Ctrl-C while the server runs the read: the connection may be anywhere in the pipeline, so it is closed, the
    pool opens another, and nothing of the block stays."""
    acme, _ = two_tenants
    with Nile(dsn("app_user"), max_size=1) as nile:
        with nile.tenant_context(acme):
            nile.sql.fetch_one("SELECT 1")
        with nile.pool.connection() as conn:
            first = conn.info.backend_pid
        # Python's own SIGINT handler, whatever the suite was started with: a shell runs a background job with SIGINT
        # ignored, and then no KeyboardInterrupt would come (this test failed so under `nohup make test &`).
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        timer = threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                with nile.tenant_context(acme):
                    nile.sql.fetch_one("SELECT pg_sleep(5)")
        finally:
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
        with nile.tenant_context(acme):
            assert usernames(nile) == ["ada"]
        with nile.pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.execute("SELECT nile.current_tenant()").fetchone() == (None,)
            if path == "below-psycopg":  # closed, not given back half-way through a pipeline
                assert conn.info.backend_pid != first


def test_a_connection_lost_mid_block_is_dropped_and_replaced(path: str, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with Nile(dsn("app_user", server=True), max_size=1) as nile:
        with nile.pool.connection() as conn:
            pid = conn.info.backend_pid
        with superuser() as su:
            su.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)
        with pytest.raises(psycopg.OperationalError):
            with nile.tenant_context(acme):
                nile.sql.fetch_one(READ, ("nobody",))
        with nile.tenant_context(acme):  # a new connection: the broken one was not given back
            assert usernames(nile) == ["ada"]
        with nile.pool.connection() as conn:
            assert conn.info.backend_pid != pid


def test_one_round_trip_on_both_paths(path: str, two_tenants: tuple[str, str], tmp_path: Path) -> None:
    from test_round_trips import round_trips, traced

    acme, _ = two_tenants

    def block(nile: Nile) -> None:
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one("SELECT username FROM public.users") == ("ada",)

    assert round_trips(traced(tmp_path, block)) == 1


# --- the client's own pool --------------------------------------------------------------------------------------------


def test_the_pool_keeps_to_max_size_and_times_out() -> None:
    pool = Pool(dsn("app_user"), min_size=1, max_size=2, kwargs={"autocommit": True}, timeout=0.3)
    try:
        a = pool.getconn()
        b = pool.getconn()
        assert a is not b
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn()
        assert 0.25 <= time.monotonic() - started < 2
        got: list[psycopg.Connection] = []
        waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=5)))
        waiter.start()
        time.sleep(0.1)
        pool.putconn(a)  # the waiting caller gets it
        waiter.join(5)
        assert got == [a]
        pool.putconn(b)
        pool.putconn(a)
    finally:
        pool.close()
    with pytest.raises(PoolClosed):
        pool.getconn()
    assert a.closed and b.closed


def test_the_pool_ends_a_transaction_left_open_and_drops_a_broken_connection() -> None:
    pool = Pool(dsn("app_user"), min_size=1, max_size=1, kwargs={"autocommit": False})
    try:
        with pool.connection() as conn:
            conn.execute("CREATE TEMP TABLE kept (x int)")  # committed at the end of the block, as psycopg_pool does
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
            conn.execute("INSERT INTO kept VALUES (1)")
            conn.rollback()
        with pytest.raises(RuntimeError):
            with pool.connection() as conn:
                conn.execute("INSERT INTO kept VALUES (2)")
                raise RuntimeError("rolled back")
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
            conn.commit()
            first = conn
            conn.close()  # broken, as far as the pool can tell: not kept
        with pool.connection() as conn:
            assert conn is not first and not conn.closed
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        pool.close()


def test_a_broken_connection_given_back_twice_is_refused_and_counted_once() -> None:
    """Each connection given back counts once: a closed one given back a second time (or one this pool never gave
    out) is refused, and the pool can still open max_size connections (the second return used to lower the count of
    open connections once more, so the pool opened one more than max_size)."""
    pool = Pool(dsn("app_user"), min_size=0, max_size=2, kwargs={"autocommit": True}, timeout=0.2)
    stranger = psycopg.Connection.connect(dsn("app_user"), autocommit=True)
    try:
        a = pool.getconn()
        a.close()
        pool.putconn(a)  # dropped, and no longer counted
        with pytest.raises(ValueError):
            pool.putconn(a)
        with pytest.raises(ValueError):
            pool.putconn(stranger)
        assert not stranger.closed  # not the pool's to close
        held = [pool.getconn(), pool.getconn()]
        with pytest.raises(PoolTimeout):
            pool.getconn()  # still at most max_size open
        for conn in held:
            pool.putconn(conn)
    finally:
        pool.close()
        stranger.close()


def test_a_wrong_dsn_fails_when_the_client_is_made() -> None:
    with pytest.raises(psycopg.OperationalError):
        Nile(dsn("no_such_role_here"))


def test_the_async_client_takes_the_same_path(path: str, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants

    async def main() -> None:
        async with AsyncNile(dsn("app_user"), max_size=1) as nile:
            for _ in range(2):
                with pytest.raises(errors.TenantNotFound):
                    async with nile.tenant_context(uuid.uuid4()):
                        await nile.sql.fetch_one(READ, ("nobody",))
                with pytest.raises(psycopg.errors.UndefinedTable):
                    async with nile.tenant_context(acme):
                        await nile.sql.fetch_one("SELECT * FROM public.no_such_table")
                with pytest.raises(psycopg.Error):
                    async with nile.tenant_context(acme):
                        await nile.sql.execute("COPY (SELECT 1) TO STDOUT")
                async with nile.tenant_context(globex):
                    assert await nile.sql.fetch_all(READ, ("nobody",)) == [("grace",)]
                    assert await nile.sql.execute("UPDATE public.users SET email = email") == 1

    asyncio.run(main())


# --- found by review (each failed before its fix) ---------------------------------------------------------------------


def test_a_statement_that_clears_psycopgs_cache_does_not_strand_prepared_statements(
    two_tenants: tuple[str, str]
) -> None:
    """DROP (like ALTER, DISCARD ALL, DEALLOCATE ALL) makes psycopg forget its prepared statements and queue a
    DEALLOCATE ALL: sent at once, not at some later statement that would wipe what was prepared meanwhile (every read
    then failed with 'prepared statement does not exist', for good)."""
    acme, _ = two_tenants
    with Nile(dsn("app_user", server=True), max_size=1, prepared_statements=True) as nile:
        for _ in range(7):
            with nile.tenant_context(acme):
                assert nile.sql.fetch_all(READ, ("nobody",)) == [("ada",)]
        nile.sql.execute("DROP TABLE IF EXISTS public.no_such_table_here")
        for _ in range(7):
            with nile.tenant_context(acme):
                nile.sql.fetch_all(READ, ("nobody",))
        with nile.tenant_context(acme):
            nile.sql.execute("UPDATE public.users SET email = email")
            nile.sql.execute("UPDATE public.users SET email = email")
        for _ in range(3):
            with nile.tenant_context(acme):
                assert nile.sql.fetch_all(READ, ("nobody",)) == [("ada",)]


def test_ending_a_block_twice_does_not_give_its_connection_out_twice(two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with Nile(dsn("app_user"), max_size=2) as nile:
        block = nile.tenant_context(acme)
        block.__enter__()
        nile.sql.execute("UPDATE public.users SET email = email")
        block.__exit__(None, None, None)
        block.__exit__(None, None, None)  # nothing: the block has ended
        first, second = nile.pool.getconn(), nile.pool.getconn()
        assert first is not second
        nile.pool.putconn(first)
        with pytest.raises(ValueError):
            nile.pool.putconn(first)  # a connection given back twice is refused
        nile.pool.putconn(second)


def test_a_thread_of_an_ended_block_cannot_run_in_the_next_block(
    monkeypatch: pytest.MonkeyPatch, two_tenants: tuple[str, str]
) -> None:
    """A thread that found the block live, then waited (here: forced to) while the block ended and the pool gave its
    connection to another tenant's block, must get ContextEnded, not run in that tenant's transaction."""
    import contextvars

    acme, globex = two_tenants
    with Nile(dsn("app_user"), max_size=1) as nile:
        real = nile._scope

        class SlowScopeVar:
            """The client's ContextVar, whose get() in the thread "late" waits after finding the scope."""

            def get(self):  # type: ignore[no-untyped-def]
                scope = real.get()
                if threading.current_thread().name == "late":
                    time.sleep(0.3)
                return scope

            def set(self, value):  # type: ignore[no-untyped-def]
                return real.set(value)

            def reset(self, token):  # type: ignore[no-untyped-def]
                real.reset(token)

        monkeypatch.setattr(nile, "_scope", SlowScopeVar())
        out: list[object] = []

        def late() -> None:
            try:
                out.append(nile.sql.fetch_one("SELECT nile.current_tenant()::text"))
            except errors.ContextEnded as e:
                out.append(e)

        with nile.tenant_context(acme):
            nile.sql.execute("UPDATE public.users SET email = email")
            worker = threading.Thread(name="late", target=contextvars.copy_context().run, args=(late,))
            worker.start()
        with nile.tenant_context(globex):
            nile.sql.execute("UPDATE public.users SET email = email")
            worker.join()
        assert len(out) == 1 and isinstance(out[0], errors.ContextEnded), out


def test_a_nul_in_a_context_argument_is_refused_on_both_paths(path: str) -> None:
    """libpq ends a text parameter at its first NUL: the admin reason would be recorded cut short. psycopg refuses
    it; so must the fast path."""
    with Nile(dsn("sdk_admin"), max_size=1) as admin:
        with pytest.raises(psycopg.DataError):
            with admin.admin_context("billing fix\x00 and the rest"):
                admin.sql.fetch_one("SELECT 1")


def test_a_connection_with_another_cursor_factory_answers_as_psycopg_does(path: str) -> None:
    with Nile(dsn("app_user"), max_size=1, cursor_factory=psycopg.RawCursor) as nile:
        assert nile.sql.fetch_one("SELECT $1::int + 1", [41]) == (42,)
    with Nile(dsn("app_user", server=True), max_size=1, cursor_factory=psycopg.ClientCursor,
              prepare_threshold=0) as nile:
        for _ in range(3):
            assert nile.sql.fetch_one("SELECT %s::int + 1", [41]) == (42,)
        with nile.pool.connection() as conn:  # a ClientCursor never prepares: neither may the client for it
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)


def test_a_statement_without_rows_is_refused_by_fetch_as_psycopg_refuses_it(
    path: str, two_tenants: tuple[str, str]
) -> None:
    """The fast path answers with its own Result, not a psycopg cursor: the same rows, rowcount and refusals, whether
    the statement went with the context (the block's first), in the block's open transaction (a psycopg cursor), or
    outside any context."""
    acme, _ = two_tenants
    with Nile(dsn("app_user"), max_size=1) as nile:
        for opened in (False, True):
            with nile.tenant_context(acme):
                if opened:
                    nile.sql.execute("UPDATE public.users SET email = email")
                refused = r"didn't produce records \(command status: UPDATE 1\)"
                with pytest.raises(psycopg.ProgrammingError, match=refused):
                    nile.sql.fetch_one("UPDATE public.users SET email = email")
                with pytest.raises(psycopg.ProgrammingError, match="didn't produce records"):
                    nile.sql.fetch_all("UPDATE public.users SET email = email")
                assert nile.sql.execute("SELECT generate_series(1, 3)") == 3
                assert nile.sql.execute("SELECT 1 WHERE false") == 0
                assert nile.sql.fetch_all("SELECT generate_series(1, 3)") == [(1,), (2,), (3,)]
        with pytest.raises(psycopg.ProgrammingError, match=r"command status: SET"):
            nile.sql.fetch_one("SET application_name = 'x'")
        assert nile.sql.execute("SELECT generate_series(1, 2)") == 2


def test_a_connection_with_another_row_factory_still_gets_tuples_from_the_client(
    path: str, two_tenants: tuple[str, str]
) -> None:
    """nile.sql answers with tuples, and the client reads its own statements' rows by position, whatever the
    connection's row_factory (which applies to psycopg's own API, nile.sql.connection): with dict_row, the client's
    own reads of the read path, of the tenants and of usage failed with KeyError: 0."""
    acme, _ = two_tenants
    with Nile(dsn("app_user"), max_size=1, row_factory=psycopg.rows.dict_row) as nile:
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one(READ, ("nobody",)) == ("ada",)
            assert nile.sql.fetch_all("SELECT %s::int AS n", [7]) == [(7,)]
            nile.sql.execute("UPDATE public.users SET email = email")
            assert nile.sql.fetch_one(READ, ("nobody",)) == ("ada",)  # in the block's open transaction
            assert nile.sql.connection.execute("SELECT 1 AS one").fetchone() == {"one": 1}
        assert nile.sql.fetch_one("SELECT 1 AS one") == (1,)
    with Nile(dsn("sdk_admin"), max_size=1, row_factory=psycopg.rows.dict_row) as admin:
        assert admin.tenants.get(acme)["tenant_id"] == acme  # type: ignore[index]
        assert acme in [t["tenant_id"] for t in admin.tenants.list()]
        assert admin.usage.tenant(acme)["statements"] >= 1  # type: ignore[index]


def test_tenant_context_is_also_a_decorator(two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with Nile(dsn("app_user"), max_size=1) as nile:

        @nile.tenant_context(acme)
        def names() -> list[str]:
            return usernames(nile)

        assert names() == ["ada"]
        assert names() == ["ada"]
