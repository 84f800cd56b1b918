"""Round trips of a context (issue 20): what leaves the client before the server's first answer, read from libpq's
trace of the pool's only connection; and that a read sent in a read-only transaction of its own (one round trip, no
BEGIN, no COMMIT) can never do what a unit of work would need its transaction for."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path
from typing import Callable

import psycopg
import psycopg.sql
import pytest
from psycopg_pool import ConnectionPool

from conftest import DB, dsn, superuser
import nile_tenancy._common as common
from nile_tenancy import AsyncNile, Nile, errors


def traced(
    tmp_path: Path, block: Callable[[Nile], None], configure: Callable[[psycopg.Connection], None] | None = None,
    **client_kwargs: object,
) -> list[list[str]]:
    """Run ``block`` with a client on a one-connection pool whose connection libpq traces; the trace's lines, split
    into fields (the first is F for what the client sent, B for what the server answered). The client has run one
    block before the trace starts (its first read asks the database once whether it has the one-round-trip reads)."""
    trace_file = tmp_path / "trace.txt"
    with ConnectionPool(dsn("app_user"), min_size=1, max_size=1, kwargs={"prepare_threshold": None},
                        configure=configure) as pool:
        nile = Nile(pool=pool, **client_kwargs)  # type: ignore[arg-type]
        block(nile)
        with open(trace_file, "w") as sink:
            with pool.connection() as conn:
                conn.pgconn.trace(sink.fileno())
                conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            block(nile)
            with pool.connection() as conn:
                conn.pgconn.untrace()
    return [line.split("\t") for line in trace_file.read_text().splitlines() if line.strip()]


def before_first_answer(lines: list[list[str]]) -> str:
    first_answer = next(i for i, fields in enumerate(lines) if fields[0] == "B")
    return "\n".join("\t".join(fields) for fields in lines[:first_answer])


def round_trips(lines: list[list[str]]) -> int:
    """How many times the client sent and then waited for an answer: each F...B turn."""
    return "".join(fields[0] for fields in lines).count("FB")


def test_a_read_is_one_round_trip_with_its_context(two_tenants: tuple[str, str], tmp_path: Path) -> None:
    acme, _ = two_tenants

    def block(nile: Nile) -> None:
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one("SELECT username FROM public.users") == ("ada",)

    lines = traced(tmp_path, block)
    sent_first = before_first_answer(lines)
    assert "nile.set_tenant_read_only" in sent_first and "SELECT username" in sent_first, sent_first
    # The server refuses a read that wrote as the read's own error: no third statement.
    assert "nile.assert_read_only" not in sent_first, sent_first
    everything = "\n".join("\t".join(fields) for fields in lines)
    assert "BEGIN" not in everything and "COMMIT" not in everything, everything
    assert round_trips(lines) == 1, everything


def test_a_write_is_one_round_trip_with_its_context_and_commit_another(
    two_tenants: tuple[str, str], tmp_path: Path
) -> None:
    acme, _ = two_tenants

    def block(nile: Nile) -> None:
        with nile.tenant_context(acme):
            nile.sql.execute("UPDATE public.users SET email = email WHERE username = 'nobody'")

    lines = traced(tmp_path, block)
    sent_first = before_first_answer(lines)
    assert "BEGIN" in sent_first and "nile.set_tenant(" in sent_first and "UPDATE public.users" in sent_first
    assert "COMMIT" not in sent_first and "set_tenant_read_only" not in sent_first
    assert round_trips(lines) == 2


def test_one_round_trip_reads_can_be_turned_off(two_tenants: tuple[str, str], tmp_path: Path) -> None:
    acme, _ = two_tenants

    def block(nile: Nile) -> None:
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one("SELECT username FROM public.users") == ("ada",)

    lines = traced(tmp_path, block, one_round_trip_reads=False)
    sent_first = before_first_answer(lines)
    assert "BEGIN" in sent_first and "nile.set_tenant(" in sent_first and "SELECT username" in sent_first
    assert round_trips(lines) == 2


def test_reads_then_a_write_then_an_exception_roll_the_write_back(nile: Nile, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with pytest.raises(RuntimeError):
        with nile.tenant_context(acme):
            assert nile.sql.fetch_all("SELECT username FROM public.users") == [("ada",)]
            nile.sql.execute("INSERT INTO public.users (username, email) VALUES ('late', 'late@example.test')")
            assert nile.sql.fetch_one("SELECT count(*) FROM public.users") == (2,)  # in the write's transaction
            raise RuntimeError("the request failed")
    with nile.tenant_context(acme):
        assert nile.sql.fetch_all("SELECT username FROM public.users") == [("ada",)]


def test_a_select_that_writes_is_run_in_the_blocks_transaction(nile: Nile, two_tenants: tuple[str, str]) -> None:
    """A function that writes, called by a SELECT: the server refuses it in the read-only transaction (nothing of it
    stays), the client runs it again in the block's transaction, and the block's exception rolls it back."""
    acme, _ = two_tenants
    with superuser() as su:
        su.execute(
            "CREATE OR REPLACE FUNCTION public.sdk_rename_users(new_name text) RETURNS bigint LANGUAGE sql AS"
            " $$ WITH u AS (UPDATE public.users SET username = new_name RETURNING 1) SELECT count(*) FROM u $$"
        )
    with pytest.raises(RuntimeError):
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one("SELECT public.sdk_rename_users('renamed')") == (1,)
            assert nile.sql.fetch_all("SELECT username FROM public.users") == [("renamed",)]
            raise RuntimeError("the request failed")
    with nile.tenant_context(acme):
        assert nile.sql.fetch_all("SELECT username FROM public.users") == [("ada",)]
    # Without an exception it commits once.
    with nile.tenant_context(acme):
        assert nile.sql.fetch_one("SELECT public.sdk_rename_users('ada')") == (1,)


def test_select_for_update_keeps_its_lock_until_the_block_ends(nile: Nile, two_tenants: tuple[str, str]) -> None:
    """A row lock taken by the block's first statement is held until the block ends: the read-only transaction refuses
    FOR UPDATE, so the statement runs in the block's transaction (a lock released at once would let another writer
    in: a lost update)."""
    acme, _ = two_tenants
    with nile.tenant_context(acme):
        assert nile.sql.fetch_one("SELECT username FROM public.users FOR UPDATE") == ("ada",)
        with superuser() as su:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                su.execute("SELECT 1 FROM public.users WHERE username = 'ada' FOR UPDATE NOWAIT")
    with superuser() as su:
        assert su.execute("SELECT 1 FROM public.users WHERE username = 'ada' FOR UPDATE NOWAIT").fetchone() == (1,)


def test_a_higher_isolation_level_keeps_every_statement_in_one_transaction(two_tenants: tuple[str, str]) -> None:
    """At REPEATABLE READ the block's reads share one snapshot: the server refuses the read-only transaction of its own
    (25000), the client runs the read in the block's transaction and stops trying. (Straight to the server: a session
    setting through PgBouncer in transaction mode would reach other clients.)"""
    acme, _ = two_tenants
    with Nile(dsn("app_user", server=True), max_size=1,
              options="-c default_transaction_isolation=repeatable\\ read") as nile:
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one("SELECT count(*) FROM public.users") == (1,)
            with superuser() as su:
                su.execute("INSERT INTO public.users (tenant_id, username, email) VALUES (%s, 'eve', 'eve@x.test')",
                           [acme])
            assert nile.sql.fetch_one("SELECT count(*) FROM public.users") == (1,)  # the same snapshot
            assert nile.sql.fetch_one("SHOW transaction_isolation") == ("repeatable read",)
        assert nile._reads.enabled is False
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one("SELECT count(*) FROM public.users") == (2,)


def test_psycopg_isolation_level_is_honoured(two_tenants: tuple[str, str], tmp_path: Path) -> None:
    """A pool whose connections ask psycopg for REPEATABLE READ gets it in every context: BEGIN says so, and its reads
    are never sent in a transaction of their own (the client knows without asking the server)."""
    acme, _ = two_tenants

    def configure(conn: psycopg.Connection) -> None:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ

    def block(nile: Nile) -> None:
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one("SELECT count(*) FROM public.users") == (1,)
            assert nile.sql.fetch_one("SELECT current_setting('transaction_isolation')") == ("repeatable read",)

    lines = traced(tmp_path, block, configure=configure)
    sent_first = before_first_answer(lines)
    assert "BEGIN ISOLATION LEVEL REPEATABLE READ" in sent_first and "SELECT count(*)" in sent_first, sent_first
    everything = "\n".join("\t".join(fields) for fields in lines)
    assert "set_tenant_read_only" not in everything

def test_token_reads_are_one_round_trip_too(admin: Nile, two_tenants: tuple[str, str], tmp_path: Path) -> None:
    acme, _ = two_tenants
    token = admin.tokens.sign(acme, dt.timedelta(minutes=5), user_id="reader-7")

    def block(nile: Nile) -> None:
        with nile.tenant_context(token=token):
            assert nile.sql.fetch_one("SELECT username, nile.current_user_id() FROM public.users") == ("ada",
                                                                                                        "reader-7")

    lines = traced(tmp_path, block)
    assert "nile.set_tenant_token_read_only" in before_first_answer(lines)
    assert round_trips(lines) == 1


def test_what_the_server_refuses_reaches_the_block_as_before(
    nile: Nile, admin: Nile, two_tenants: tuple[str, str]
) -> None:
    acme, globex = two_tenants
    with pytest.raises(errors.TenantNotFound):
        with nile.tenant_context("00000000-0000-7000-8000-00000000dead"):
            nile.sql.fetch_one("SELECT 1")
    admin.tenants.deactivate(globex)
    with nile.tenant_context(globex):  # an inactive tenant may read
        assert nile.sql.fetch_all("SELECT username FROM public.users") == [("grace",)]
    admin.tenants.delete(globex)
    with pytest.raises(errors.TenantDeleted):
        with nile.tenant_context(globex):
            nile.sql.fetch_one("SELECT 1")
    # A failed read leaves no transaction behind: the block goes on, and its write commits.
    with nile.tenant_context(acme):
        with pytest.raises(psycopg.errors.UndefinedTable):
            nile.sql.fetch_one("SELECT * FROM public.no_such_table")
        nile.sql.execute("UPDATE public.users SET email = 'ada@new.test'")
    with nile.tenant_context(acme):
        assert nile.sql.fetch_one("SELECT email FROM public.users") == ("ada@new.test",)


def test_reads_of_other_threads_keep_their_own_tenant(nile: Nile, two_tenants: tuple[str, str]) -> None:
    """Many one-round-trip reads on a pool shared by threads: every read sees its own tenant's row and no other."""
    acme, globex = two_tenants
    wrong: list[tuple[str, object]] = []

    def reader(tenant: str, expected: str) -> None:
        for _ in range(200):
            with nile.tenant_context(tenant):
                rows = nile.sql.fetch_all("SELECT username FROM public.users")
            if rows != [(expected,)]:
                wrong.append((tenant, rows))

    threads = [threading.Thread(target=reader, args=args) for args in ((acme, "ada"), (globex, "grace")) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    # And no connection goes back with a context or a transaction.
    with nile.pool.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT nile.current_tenant()").fetchone() == (None,)



def test_the_async_client_does_the_same(two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with superuser() as su:
        su.execute(
            "CREATE OR REPLACE FUNCTION public.sdk_rename_users(new_name text) RETURNS bigint LANGUAGE sql AS"
            " $$ WITH u AS (UPDATE public.users SET username = new_name RETURNING 1) SELECT count(*) FROM u $$"
        )

    async def main() -> None:
        async with AsyncNile(dsn("app_user"), max_size=1) as nile:
            async with nile.tenant_context(acme):
                assert await nile.sql.fetch_one("SELECT username FROM public.users") == ("ada",)
                # A read in a read-only transaction of its own; a write opens the block's transaction.
                assert await nile.sql.fetch_one("SELECT current_setting('transaction_read_only')") == ("on",)
                await nile.sql.execute("UPDATE public.users SET email = email")
                assert await nile.sql.fetch_one("SELECT current_setting('transaction_read_only')") == ("off",)
            async with nile.pool.connection() as conn:
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                assert await (await conn.execute("SELECT nile.current_tenant()")).fetchone() == (None,)

    asyncio.run(main())

    async def rename_then_fail() -> None:
        async with AsyncNile(dsn("app_user"), max_size=1) as nile:
            with pytest.raises(RuntimeError):
                async with nile.tenant_context(acme):
                    assert await nile.sql.fetch_one("SELECT public.sdk_rename_users('renamed')") == (1,)
                    assert await nile.sql.fetch_one("SELECT nile.current_tenant()::text") == (acme,)
                    raise RuntimeError("the request failed")
            async with nile.tenant_context(acme):
                assert await nile.sql.fetch_all("SELECT username FROM public.users") == [("ada",)]
                assert await nile.sql.fetch_one("SELECT current_setting('transaction_read_only')") == ("on",)
            assert nile._reads.enabled is True

    asyncio.run(rename_then_fail())
def test_a_function_that_catches_the_refusal_still_writes(nile: Nile, two_tenants: tuple[str, str]) -> None:
    """A function called by a SELECT that writes and catches its own errors: in the read-only transaction its write
    is refused and the refusal caught, so it would return as if nothing happened and the write would be lost. The
    server notes the caught error and refuses the read at the end of its run, and the client runs it in the
    block's transaction, where the write is made and committed."""
    acme, _ = two_tenants
    with superuser() as su:
        su.execute(
            "CREATE OR REPLACE FUNCTION public.sdk_add_user_quietly(name text) RETURNS int LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO public.users (username, email) VALUES (name, name || '@x.test'); RETURN 1;"
            " EXCEPTION WHEN OTHERS THEN RETURN 0; END $$"
        )
    with nile.tenant_context(acme):
        assert nile.sql.fetch_one("SELECT public.sdk_add_user_quietly('quiet')") == (1,)
    with nile.tenant_context(acme):
        assert nile.sql.fetch_all("SELECT username FROM public.users ORDER BY username") == [("ada",), ("quiet",)]
    # The statement is remembered: the next time it goes to the block's transaction at once.
    assert "SELECT public.sdk_add_user_quietly('quiet')" in nile._reads.refused


def test_a_transaction_scoped_call_is_not_ended_early(nile: Nile, two_tenants: tuple[str, str]) -> None:
    """pg_advisory_xact_lock() as the block's first statement holds the lock until the block ends, as in one
    transaction (in a read-only transaction of its own it would be released at once)."""
    acme, _ = two_tenants
    with nile.tenant_context(acme):
        nile.sql.execute("SELECT pg_catalog.pg_advisory_xact_lock(4242)")
        with superuser() as su:
            assert su.execute("SELECT pg_catalog.pg_try_advisory_xact_lock(4242)").fetchone() == (False,)
    with superuser() as su:
        assert su.execute("SELECT pg_catalog.pg_try_advisory_xact_lock(4242)").fetchone() == (True,)


def test_nothing_is_left_on_the_server_connection_after_reads(two_tenants: tuple[str, str]) -> None:
    """Straight to the server, one connection: after a block of reads, the session has no tenant, is not read-only
    and has no transaction open."""
    acme, _ = two_tenants
    with Nile(dsn("app_user", server=True), max_size=1) as nile:
        with nile.tenant_context(acme):
            assert nile.sql.fetch_one("SELECT username FROM public.users") == ("ada",)
            assert nile.sql.fetch_one("SELECT username FROM public.users") == ("ada",)
        with nile.pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            row = conn.execute(
                "SELECT current_setting('nile.tenant_id', true), current_setting('transaction_read_only')"
            ).fetchone()
            assert row in (("", "off"), (None, "off")), row


def test_tasks_sharing_a_context_do_not_interleave(two_tenants: tuple[str, str]) -> None:
    """Tasks created inside an async context share its connection: their reads, and a write among them, each go out
    whole (no task's pipeline splits another's), and the write commits with the block."""
    acme, _ = two_tenants

    async def main() -> None:
        async with AsyncNile(dsn("app_user"), max_size=2) as nile:
            async with nile.tenant_context(acme):
                rows = await asyncio.gather(*(nile.sql.fetch_all("SELECT username FROM public.users")
                                              for _ in range(20)))
                assert rows == [[("ada",)]] * 20
            async with nile.tenant_context(acme):
                await asyncio.gather(
                    *(nile.sql.fetch_all("SELECT username FROM public.users") for _ in range(5)),
                    nile.sql.execute("UPDATE public.users SET email = 'gathered@x.test'"),
                    *(nile.sql.fetch_all("SELECT username FROM public.users") for _ in range(5)),
                )
            async with nile.tenant_context(acme):
                assert await nile.sql.fetch_one("SELECT email FROM public.users") == ("gathered@x.test",)

    asyncio.run(main())


def test_a_database_not_yet_updated_gets_one_transaction_per_block(two_tenants: tuple[str, str]) -> None:
    """The library is new but the database's extension is still 0.2.0 (before ALTER EXTENSION UPDATE): there is no
    nile.set_tenant_read_only(), so the client asks once and runs every block in one transaction."""
    with superuser() as su:
        su.execute("DROP DATABASE IF EXISTS clients_sdk_old WITH (FORCE)")
        su.execute("CREATE DATABASE clients_sdk_old")
    try:
        old_dsn = dsn("postgres", server=True).replace(f"dbname={DB}", "dbname=clients_sdk_old")
        with psycopg.connect(old_dsn, autocommit=True) as su:
            su.execute("SET client_min_messages = warning")
            su.execute("CREATE EXTENSION nile_tenancy VERSION '0.2.0'")
            tenant = su.execute("SELECT nile.create_tenant('old')").fetchone()[0]  # type: ignore[index]
            su.execute("CREATE TABLE notes (tenant_id uuid NOT NULL, body text)")
            su.execute("INSERT INTO notes VALUES (%s, 'from 0.2.0')", [tenant])
            su.execute("GRANT SELECT ON notes TO app_user")
            su.execute("GRANT USAGE ON SCHEMA public TO app_user")
        with Nile(old_dsn.replace("user=postgres", "user=app_user"), max_size=1) as nile:
            with nile.tenant_context(tenant):
                assert nile.sql.fetch_all("SELECT body FROM notes") == [("from 0.2.0",)]
            assert nile._reads.enabled is False
    finally:
        with superuser() as su:
            su.execute("DROP DATABASE IF EXISTS clients_sdk_old WITH (FORCE)")


def test_a_session_wide_context_entered_in_a_block_is_cleared(two_tenants: tuple[str, str]) -> None:
    """A role allowed session scope calls set_tenant(…, false) itself inside a block, whether the statement goes to
    the block's transaction or not: the connection goes back to the pool with no context (straight to the server, one
    connection, so the check sees the very session)."""
    acme, globex = two_tenants
    with Nile(dsn("sdk_admin", server=True), max_size=1) as nile:
        for statement in ("SELECT nile.set_tenant(%s, false)", "SELECT 1 FROM nile.set_tenant(%s, false)"):
            with nile.tenant_context(acme):
                nile.sql.execute(statement, [globex])
            with nile.pool.connection() as conn:
                assert conn.execute("SELECT nile.current_tenant()").fetchone() == (None,), statement


def test_a_session_wide_context_from_bytes_or_composed_statements_is_cleared(two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    statements = (b"SELECT nile.set_tenant(%s, false)", psycopg.sql.SQL("SELECT nile.set_tenant({}, false)"))
    with Nile(dsn("sdk_admin", server=True), max_size=1) as nile:
        for statement in statements:
            with nile.tenant_context(acme):
                if isinstance(statement, psycopg.sql.SQL):
                    nile.sql.execute(statement.format(psycopg.sql.Literal(globex)))
                else:
                    nile.sql.execute(statement, [globex])
            with nile.pool.connection() as conn:
                assert conn.execute("SELECT nile.current_tenant()").fetchone() == (None,), statement


def test_several_statements_in_one_string_still_work(nile: Nile, two_tenants: tuple[str, str]) -> None:
    """A pipeline takes one statement per string; a string of several goes to the block's transaction, as before."""
    acme, _ = two_tenants
    with nile.tenant_context(acme):
        assert nile.sql.fetch_one("SELECT username FROM public.users; SELECT 2") == ("ada",)


def test_a_nested_token_check_does_not_swallow_a_sibling_tasks_write(
    admin: Nile, two_tenants: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server checks a nested token in a savepoint it rolls back at once; a task sharing the context writes at the
    same time. The write must not land inside that savepoint (it would be rolled back with it, after it said it had
    written). The check is slowed down so that the write arrives during it."""
    acme, _ = two_tenants
    token = admin.tokens.sign(acme, dt.timedelta(minutes=5))
    monkeypatch.setattr(common, "SET_TENANT_TOKEN", "SELECT nile.set_tenant_token(%s) FROM pg_catalog.pg_sleep(0.3)")

    async def main() -> None:
        async with AsyncNile(dsn("app_user"), max_size=1) as nile:
            async with nile.tenant_context(acme):
                await nile.sql.execute("UPDATE public.users SET email = email")  # the block's transaction is open

                async def nested_check() -> None:
                    async with nile.tenant_context(token=token):
                        pass

                async def write() -> None:
                    await asyncio.sleep(0.1)
                    await nile.sql.execute("INSERT INTO public.users (username, email) VALUES ('sibling', 's@x.test')")

                await asyncio.gather(nested_check(), write())
            async with nile.tenant_context(acme):
                rows = await nile.sql.fetch_all("SELECT username FROM public.users ORDER BY username")
                assert rows == [("ada",), ("sibling",)]

    asyncio.run(main())
