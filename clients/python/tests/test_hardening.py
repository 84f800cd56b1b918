"""Attacks on the client's guarantees (the SDK's security review): a context used after its block, a forged token
nested in a real context, session state left on a pooled connection, a caught error committed as if nothing failed,
Ctrl-C and cancellation in for_each_tenant, and what tokens.sign() must refuse. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import datetime as dt
import os
import signal
import threading
import time
import uuid

import psycopg
import pytest

from conftest import TOKEN_KEY, dsn
from nile_tenancy import AsyncNile, Nile, errors
from nile_tenancy._common import ForEachTenantResult
from nile_tenancy.tokens import sign

WRONG_KEY = "a-key-the-server-has-never-seen-" + "x" * 16


def usernames(nile: Nile) -> list[str]:
    return [r[0] for r in nile.sql.fetch_all("SELECT username FROM public.users ORDER BY username")]


# --- a context used after its block -----------------------------------------------------------------------------------


def test_code_started_inside_a_block_cannot_use_it_after_the_block(nile: Nile, two_tenants: tuple[str, str]) -> None:
    """A thread or callback started inside the block carries a copy of its context: after the block, the connection
    is back in the pool (maybe in another tenant's request), so using the ended context must fail, not run."""
    acme, globex = two_tenants
    with nile.tenant_context(acme):
        kept = contextvars.copy_context()  # what threading/executors/asyncio copy for code started here
    with pytest.raises(errors.ContextEnded):
        kept.run(nile.sql.fetch_all, "SELECT username FROM public.users")
    with pytest.raises(errors.ContextEnded):
        kept.run(lambda: nile.sql.connection)
    assert issubclass(errors.ContextEnded, errors.NoActiveContext)

    def another_tenant() -> list[str]:  # an ended context does not block a context of its own
        with nile.tenant_context(globex):
            return usernames(nile)

    assert kept.run(another_tenant) == ["grace"]


def test_a_block_closed_in_another_context_leaves_nothing_usable(two_tenants: tuple[str, str]) -> None:
    """A generator holding a context, finished from another contextvars context (as the garbage collector or an
    event loop's async-generator hook does): the end of the block must neither raise nor leave the scope live."""
    acme, globex = two_tenants
    with Nile(dsn("app_user"), max_size=1) as nile:

        def rows_of(tenant: str):
            with nile.tenant_context(tenant):
                yield usernames(nile)

        gen = rows_of(acme)
        assert next(gen) == ["ada"]
        contextvars.Context().run(gen.close)  # the block ends, in a context that is not the one that entered it
        with pytest.raises(errors.ContextEnded):
            nile.sql.fetch_all("SELECT username FROM public.users")
        with nile.tenant_context(globex):
            assert usernames(nile) == ["grace"]


def test_an_asyncio_task_that_outlives_the_block(two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants

    async def main() -> None:
        async with AsyncNile(dsn("app_user"), max_size=1) as nile:
            later = asyncio.Event()

            async def straggler() -> object:
                await later.wait()
                return await nile.sql.fetch_all("SELECT username FROM public.users")

            async with nile.tenant_context(acme):
                task = asyncio.create_task(straggler())  # copies the block's context
            later.set()
            with pytest.raises(errors.ContextEnded):
                await task

    asyncio.run(main())


# --- nested token contexts --------------------------------------------------------------------------------------------


def test_a_nested_token_is_verified_by_the_server(nile: Nile, admin: Nile, two_tenants: tuple[str, str]) -> None:
    """A token names its tenant in a payload anyone can write: nested in that tenant's context it is verified
    (in a savepoint) before the block joins the context, and leaves the outer context's user as it was."""
    acme, globex = two_tenants
    forged = sign(acme, 300, "mallory", key=WRONG_KEY)
    with nile.tenant_context(acme):
        with pytest.raises(errors.InvalidToken):
            with nile.tenant_context(token=forged):
                pass
        assert usernames(nile) == ["ada"]  # the outer context goes on
    outer = admin.tokens.sign(acme, 300, user_id="outer-user")
    inner = admin.tokens.sign(acme, 300, user_id="inner-user")
    with nile.tenant_context(token=outer):
        with nile.tenant_context(token=inner):
            assert nile.sql.fetch_one("SELECT nile.current_user_id()") == ("outer-user",)
        with pytest.raises(errors.NestedContextError):
            with nile.tenant_context(token=admin.tokens.sign(globex, 300)):
                pass

    async def main() -> None:
        async with AsyncNile(dsn("app_user")) as app:
            async with app.tenant_context(acme):
                with pytest.raises(errors.InvalidToken):
                    async with app.tenant_context(token=forged):
                        pass

    asyncio.run(main())


def test_a_token_that_cannot_be_parsed_is_refused_by_the_server(nile: Nile) -> None:
    deep = "e30." + base64.urlsafe_b64encode(b"[" * 100_000).decode().rstrip("=") + ".sig"
    with pytest.raises(errors.InvalidToken):  # not a RecursionError on the client
        with nile.tenant_context(token=deep):
            pass


# --- session state on a pooled connection -----------------------------------------------------------------------------


def test_a_session_wide_context_does_not_reach_the_pools_next_user(two_tenants: tuple[str, str]) -> None:
    """sdk_admin may enter a context for the whole session (app_user may not: allow_session_scope = off). Through the
    raw connection of a block, or as a statement outside any block, it must not outlive the SDK's use. Straight to the
    server in both passes: the pool's one connection must be one server session (PgBouncer would spread them)."""
    acme, _ = two_tenants
    with Nile(dsn("sdk_admin", server=True), max_size=1) as nile:
        with nile.tenant_context(acme):
            nile.sql.connection.execute("SELECT nile.set_tenant(%s, false)", [acme])
        assert nile.sql.fetch_one("SELECT nile.current_tenant()") == (None,)
        nile.sql.execute("SELECT nile.set_tenant(%s, false)", [acme])
        assert nile.sql.fetch_one("SELECT nile.current_tenant()") == (None,)
        with nile.pool.connection() as conn:
            assert conn.execute("SELECT nile.current_tenant()").fetchone() == (None,)


# --- a caught error inside the block ----------------------------------------------------------------------------------


def test_a_caught_error_does_not_pass_for_a_commit(nile: Nile, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with pytest.raises(errors.TransactionAborted) as raised:
        with nile.tenant_context(acme):
            nile.sql.execute("INSERT INTO public.users (username, email) VALUES ('lost', 'x')")
            try:
                nile.sql.execute("SELECT 1 / 0")
            except psycopg.errors.DivisionByZero:
                pass  # swallowed: PostgreSQL aborted the transaction all the same
    assert isinstance(raised.value, psycopg.errors.InFailedSqlTransaction)
    with nile.tenant_context(acme):
        assert usernames(nile) == ["ada"]
        with nile.sql.connection.transaction():  # a savepoint is the way to go on after an error
            nile.sql.execute("INSERT INTO public.users (username, email) VALUES ('kept', 'x')")
        try:
            with nile.sql.connection.transaction():
                nile.sql.execute("SELECT 1 / 0")
        except psycopg.errors.DivisionByZero:
            pass
    with nile.tenant_context(acme):
        assert usernames(nile) == ["ada", "kept"]

    async def main() -> None:
        async with AsyncNile(dsn("app_user")) as app:
            with pytest.raises(errors.TransactionAborted):
                async with app.tenant_context(acme):
                    await app.sql.execute("INSERT INTO public.users (username, email) VALUES ('lost', 'x')")
                    try:
                        await app.sql.execute("SELECT 1 / 0")
                    except psycopg.errors.DivisionByZero:
                        pass

    asyncio.run(main())


# --- for_each_tenant interrupted --------------------------------------------------------------------------------------


def test_ctrl_c_reports_the_tenants_that_finished(admin: Nile, two_tenants: tuple[str, str]) -> None:
    """Ctrl-C while a tenant is being worked on: that tenant still commits (the executor waits for it), so it must be
    reported done, not remaining (a resume would run it twice)."""
    acme, globex = two_tenants
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:

        def work(tenant: str) -> None:
            admin.sql.execute("UPDATE public.users SET last_login_at = now()")
            if tenant == acme:
                os.kill(os.getpid(), signal.SIGINT)  # the main thread is waiting: it gets the KeyboardInterrupt
                time.sleep(0.5)

        plan = ForEachTenantResult(remaining=[acme, globex])
        result = admin.for_each_tenant(work, concurrency=1, resume=plan, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.interrupted
    assert result.done == [acme]
    assert result.remaining == [globex]


def test_ctrl_c_as_soon_as_a_tenant_starts_still_reports_it(admin: Nile, two_tenants: tuple[str, str]) -> None:
    """Ctrl-C from the first tenant's thread before it sends anything: the main thread can still be starting that
    thread when the KeyboardInterrupt lands. The tenant commits all the same, so it must be reported done, never
    remaining, and the call must not return before it ends (CI caught this once; repeated to catch it)."""
    acme, globex = two_tenants
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for attempt in range(10):
            written: list[str] = []

            def work(tenant: str) -> None:
                if tenant == acme:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.2)  # the main thread gets the interrupt before this tenant ends, so no other starts
                admin.sql.execute("UPDATE public.users SET last_login_at = now()")
                written.append(tenant)

            plan = ForEachTenantResult(remaining=[acme, globex])
            result = admin.for_each_tenant(work, concurrency=1, resume=plan, progress=False)
            assert result.interrupted, attempt
            assert written == [acme], attempt
            assert (result.done, result.remaining) == ([acme], [globex]), attempt
    finally:
        signal.signal(signal.SIGINT, previous)


def test_cancelling_the_async_for_each_tenant_is_not_swallowed(two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants

    async def main() -> None:
        async with AsyncNile(dsn("sdk_admin")) as admin:
            started = asyncio.Event()

            async def work(tenant: str) -> None:
                started.set()
                await asyncio.sleep(30)

            plan = ForEachTenantResult(remaining=[acme, globex])
            task = asyncio.create_task(admin.for_each_tenant(work, concurrency=1, resume=plan, progress=False))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError) as raised:
                await task
            result = raised.value.for_each_tenant_result  # type: ignore[attr-defined]
            assert result.interrupted and result.done == [] and result.remaining == [acme, globex]

    asyncio.run(main())


# --- tokens.sign() ----------------------------------------------------------------------------------------------------


def test_sign_refuses_tokens_the_server_would_not_take() -> None:
    with pytest.raises(ValueError):
        sign(uuid.uuid4(), 0.5, key=TOKEN_KEY or "k" * 32)  # would be expired when issued
    with pytest.raises(ValueError):
        sign(uuid.uuid4(), dt.timedelta(milliseconds=900), key="k" * 32)
    with pytest.raises(ValueError):
        sign(uuid.uuid4(), float("nan"), key="k" * 32)
    with pytest.raises(ValueError):
        sign(uuid.uuid4(), 60, user_id="bad\x00id", key="k" * 32)
    with pytest.raises(TypeError):
        sign(uuid.uuid4(), 60, key=32)  # type: ignore[arg-type]  # bytes(32) would be a key of 32 zero bytes
    with pytest.raises(TypeError):
        sign(uuid.uuid4(), 60, user_id=42, key="k" * 32)  # type: ignore[arg-type]
    assert sign(uuid.uuid4(), 1, key="k" * 32).count(".") == 2


def test_contexts_in_threads_still_work_side_by_side(nile: Nile, two_tenants: tuple[str, str]) -> None:
    """The scope checks do not get in the way of a thread that enters its own context."""
    acme, globex = two_tenants
    seen: dict[str, list[str]] = {}

    def work(tenant: str) -> None:
        with nile.tenant_context(tenant):
            seen[tenant] = usernames(nile)

    with nile.tenant_context(acme):
        thread = threading.Thread(target=work, args=(globex,))  # a new thread: an empty context
        thread.start()
        thread.join()
        seen[acme] = usernames(nile)
    assert seen == {acme: ["ada"], globex: ["grace"]}


def test_an_asyncio_task_that_runs_while_the_block_ends_cannot_run_after_it(two_tenants: tuple[str, str]) -> None:
    """A task started inside the block that runs a statement while the block is ending (awaiting its COMMIT) must get
    ContextEnded, as a thread sharing a sync block does: not run after the COMMIT, outside the block's transaction,
    on a connection that goes back to the pool (and to the next block, another tenant's)."""
    acme, globex = two_tenants

    async def main() -> None:
        async with AsyncNile(dsn("app_user"), max_size=1) as nile:
            out: list[object] = []

            async def late() -> None:
                try:
                    out.append(await nile.sql.fetch_one("SELECT nile.current_tenant()::text"))
                except errors.ContextEnded as e:
                    out.append(e)

            async with nile.tenant_context(acme):
                await nile.sql.execute("UPDATE public.users SET email = email")
                task = asyncio.create_task(late())  # runs once the block awaits its COMMIT
            async with nile.tenant_context(globex):
                await nile.sql.execute("UPDATE public.users SET email = email")
                await task
            assert len(out) == 1 and isinstance(out[0], errors.ContextEnded), out

    asyncio.run(main())


def test_a_str_subclass_cannot_make_a_tenants_text_enter_another_tenant(
    nile: Nile, two_tenants: tuple[str, str]
) -> None:
    """The canonical text of a tenant id is remembered per text (_common.CANONICAL_TEXTS, shared by every client). A
    str subclass equal to one tenant's text that parses as another tenant's (uuid.UUID calls its replace()) must not be
    remembered for that text: the next context for the plain text would enter the other tenant. (Found by the review
    of the dictionary that replaced an lru_cache, which kept a subclass's entries apart; failed before the fix.)"""
    acme, globex = two_tenants
    text = "{" + acme.upper() + "}"  # a spelling of acme's id not seen before

    class Disguised(str):
        def replace(self, old: str, new: str, count: int = -1) -> str:  # type: ignore[override]
            return str.replace(globex, old, new, count)

    with nile.tenant_context(acme):
        expected = usernames(nile)
    with nile.tenant_context(globex):
        assert usernames(nile) != expected
    with nile.tenant_context(Disguised(text)):  # the caller's own object, parsed as it says
        pass
    with nile.tenant_context(text):
        assert usernames(nile) == expected

