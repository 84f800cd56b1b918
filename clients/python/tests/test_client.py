"""The synchronous client: every method of Nile, the contexts' transaction rules, nesting, pools, batch work."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from conftest import TOKEN_KEY, dsn, superuser
from nile_tenancy import Nile, errors, tenant_transaction
from nile_tenancy.tokens import sign


def usernames(nile: Nile) -> list[str]:
    return [r[0] for r in nile.sql.fetch_all("SELECT username FROM public.users ORDER BY username")]


# --- tenants ----------------------------------------------------------------------------------------------------------


def test_tenants_lifecycle(admin: Nile) -> None:
    name = f"lifecycle-{uuid.uuid4().hex[:8]}"
    tenant = admin.tenants.create(name=name, metadata={"plan": "pro"})
    assert set(tenant) == {"tenant_id", "name", "status", "created_at", "metadata"}
    tid = tenant["tenant_id"]
    assert uuid.UUID(tid) and tenant["name"] == name and tenant["status"] == "active"
    assert tenant["metadata"] == {"plan": "pro"} and isinstance(tenant["created_at"], dt.datetime)
    assert admin.tenants.get(tid) == tenant
    assert admin.tenants.get(uuid.uuid4()) is None
    assert tid in [t["tenant_id"] for t in admin.tenants.list()]
    assert admin.tenants.update(tid, {"name": name + "-renamed"})["name"] == name + "-renamed"
    assert admin.tenants.update(tid, {"status": "inactive"})["status"] == "inactive"
    assert admin.tenants.reactivate(tid)["status"] == "active"
    assert admin.tenants.deactivate(tid)["status"] == "inactive"
    assert admin.tenants.reactivate(uuid.UUID(tid))["status"] == "active"
    assert admin.tenants.delete(tid) is None
    assert admin.tenants.get(tid)["status"] == "deleted"
    admin.tenants.delete(tid, purge=True)
    assert admin.tenants.get(tid) is None


def test_create_with_an_id_of_your_own(admin: Nile) -> None:
    tid = uuid.uuid4()
    assert admin.tenants.create("chosen-id", tenant_id=tid)["tenant_id"] == str(tid)
    with pytest.raises(psycopg.errors.UniqueViolation):
        admin.tenants.create("taken", tenant_id=tid)


def test_tenant_functions_need_nile_admin(nile: Nile) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        nile.tenants.create(name="not-allowed")


def test_bad_arguments_fail_before_the_server(admin: Nile) -> None:
    with pytest.raises(ValueError):
        admin.tenants.get("not-a-uuid")
    with pytest.raises(TypeError):
        admin.tenants.update(str(uuid.uuid4()), "status=inactive")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        with admin.tenant_context():
            pass
    with pytest.raises(TypeError):
        with admin.tenant_context(str(uuid.uuid4()), token="a.b.c"):
            pass
    with pytest.raises(TypeError):
        Nile()


# --- tenant_context ---------------------------------------------------------------------------------------------------


def test_a_tenant_sees_and_writes_only_its_own_rows(nile: Nile, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    with nile.tenant_context(acme):
        assert usernames(nile) == ["ada"]
        assert nile.sql.execute("INSERT INTO public.users (username, email) VALUES (%s, %s)", ("alan", "a@x")) == 1
        assert nile.sql.fetch_one("SELECT nile.current_tenant()::text") == (acme,)
        assert nile.sql.execute("UPDATE public.users SET email = 'changed'") == 2
    with nile.tenant_context(globex):
        assert usernames(nile) == ["grace"]
        assert nile.sql.fetch_one("SELECT email FROM public.users") == ("grace@example.test",)
    with superuser() as su:
        written = "SELECT tenant_id::text FROM public.users WHERE username = 'alan' AND tenant_id IN (%s, %s)"
        assert su.execute(written, (acme, globex)).fetchall() == [(acme,)]


def test_the_context_ends_with_the_block(nile: Nile, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with nile.tenant_context(acme):
        nile.sql.execute("SELECT 1")
    with pytest.raises(errors.NoTenantContext):
        nile.sql.fetch_all("SELECT * FROM public.users")
    assert nile.sql.fetch_one("SELECT nile.current_tenant()") == (None,)


def test_an_exception_rolls_the_block_back(nile: Nile, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with pytest.raises(RuntimeError):
        with nile.tenant_context(acme):
            nile.sql.execute("INSERT INTO public.users (username, email) VALUES ('rolled', 'back')")
            raise RuntimeError("the request failed")
    with nile.tenant_context(acme):
        assert usernames(nile) == ["ada"]


def test_an_interrupt_rolls_back_and_the_connection_comes_back_clean(two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with ConnectionPool(dsn("app_user"), min_size=1, max_size=1, kwargs={"prepare_threshold": None}) as pool:
        nile = Nile(pool=pool)
        with pytest.raises(KeyboardInterrupt):
            with nile.tenant_context(acme):
                nile.sql.execute("INSERT INTO public.users (username, email) VALUES ('interrupted', 'x')")
                raise KeyboardInterrupt
        # The pool's only connection: idle, no tenant, no cursor, nothing of the interrupted block.
        with pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.execute("SELECT nile.current_tenant()").fetchone() == (None,)
            assert conn.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
        with nile.tenant_context(acme):
            assert usernames(nile) == ["ada"]
        nile.close()  # a pool of the caller's stays open
        assert not pool.closed


def test_a_context_never_starts_inside_an_open_transaction(two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with psycopg.connect(dsn("app_user"), prepare_threshold=None) as conn:
        conn.execute("SELECT 1")  # psycopg opened a transaction
        with pytest.raises(errors.TransactionInProgress):
            with tenant_transaction(conn, acme):
                pass
        conn.rollback()
        with tenant_transaction(conn, acme):
            assert conn.execute("SELECT username FROM public.users").fetchall() == [("ada",)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT nile.current_tenant()").fetchone() == (None,)


def test_nesting(nile: Nile, admin: Nile, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    with nile.tenant_context(acme):
        with nile.tenant_context(uuid.UUID(acme)):  # the same tenant: nothing happens
            assert usernames(nile) == ["ada"]
        with pytest.raises(errors.NestedContextError):
            with nile.tenant_context(globex):
                pass
        with pytest.raises(errors.NestedContextError):
            with nile.admin_context("nested"):
                pass
        assert usernames(nile) == ["ada"]
    with admin.admin_context("outer"):
        with admin.admin_context("inner"):
            assert len(admin.sql.fetch_all("SELECT 1 FROM public.users")) >= 2
        with pytest.raises(errors.NestedContextError):
            with admin.tenant_context(acme):
                pass


def test_contexts_are_per_thread(nile: Nile, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    seen: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def work(tenant: str) -> None:
        with nile.tenant_context(tenant):
            barrier.wait(timeout=10)  # both contexts open at once
            seen[tenant] = usernames(nile)

    threads = [threading.Thread(target=work, args=(t,)) for t in (acme, globex)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {acme: ["ada"], globex: ["grace"]}


def test_the_connection_of_a_context(nile: Nile, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    with pytest.raises(errors.NoActiveContext):
        nile.sql.connection
    with nile.tenant_context(acme):
        with nile.sql.connection.cursor() as cur:
            cur.execute("SELECT username FROM public.users")
            assert cur.fetchall() == [("ada",)]


def test_statements_outside_a_context_run_each_in_a_transaction(admin: Nile) -> None:
    admin.sql.execute("CREATE TEMP TABLE IF NOT EXISTS scratch (a int)")  # a connection of the pool, then committed
    assert admin.sql.fetch_one("SELECT 41 + 1") == (42,)
    assert admin.sql.fetch_all("SELECT g FROM generate_series(1, 3) g") == [(1,), (2,), (3,)]


# --- tokens -----------------------------------------------------------------------------------------------------------


def test_token_context(nile: Nile, admin: Nile, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    token = admin.tokens.sign(acme, dt.timedelta(minutes=5), user_id="user-42")
    assert token == admin.tokens.sign(acme, 300, "user-42", key=TOKEN_KEY) or token.count(".") == 2
    with nile.tenant_context(token=token):
        assert usernames(nile) == ["ada"]
        assert nile.sql.fetch_one("SELECT nile.current_user_id()") == ("user-42",)
        with nile.tenant_context(acme):  # the token's own tenant: nested, nothing happens
            pass
    # The server mints the same format.
    with admin.admin_context("token from the server"):
        server_token = admin.sql.fetch_one("SELECT nile.sign_tenant_token(%s, '5 minutes')", [acme])[0]
    with nile.tenant_context(token=server_token):
        assert usernames(nile) == ["ada"]


def test_sign_refuses_what_the_server_would(admin: Nile) -> None:
    with pytest.raises(ValueError):
        admin.tokens.sign(uuid.uuid4(), 60, key="too short")
    with pytest.raises(ValueError):
        admin.tokens.sign(uuid.uuid4(), -1)
    with pytest.raises(ValueError):
        admin.tokens.sign(uuid.uuid4(), 60, user_id="x" * 300)
    with Nile(dsn("app_user")) as keyless, pytest.raises(ValueError):
        keyless.tokens.sign(uuid.uuid4(), 60)  # no key anywhere


# --- admin_context ----------------------------------------------------------------------------------------------------


def the_latest_audit_reason() -> str:
    with superuser() as su:
        return su.execute("SELECT reason FROM nile.admin_audit ORDER BY at DESC, id DESC LIMIT 1").fetchone()[0]


def test_admin_context_sees_every_tenant_and_is_audited(admin: Nile, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    with admin.admin_context("monthly report"):
        tenants = {r[0] for r in admin.sql.fetch_all("SELECT tenant_id::text FROM public.users")}
    assert {acme, globex} <= tenants
    assert the_latest_audit_reason() == "monthly report"


def test_admin_context_without_a_reason_records_the_caller(admin: Nile) -> None:
    def total_active_users() -> int:
        with admin.admin_context():
            return admin.sql.fetch_one("SELECT count(*) FROM public.users")[0]

    assert total_active_users() >= 0
    assert the_latest_audit_reason() == (
        f"{__name__}.test_admin_context_without_a_reason_records_the_caller.<locals>.total_active_users"
        if hasattr(total_active_users.__code__, "co_qualname")
        else f"{__name__}.total_active_users"
    )


def test_admin_context_needs_nile_admin(nile: Nile) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with nile.admin_context("not allowed"):
            nile.sql.execute("SELECT 1")


# --- errors -----------------------------------------------------------------------------------------------------------


INSERT_USER = "INSERT INTO public.users (username, email) VALUES ('x', 'x')"
INSERT_USER_OF = "INSERT INTO public.users (tenant_id, username, email) VALUES (%s, 'x', 'x')"


def raised(fn) -> BaseException:
    with pytest.raises(errors.NileError) as info:
        fn()
    return info.value


def test_every_error_class_by_sqlstate(nile: Nile, admin: Nile, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    inactive = admin.tenants.create("inactive")["tenant_id"]
    admin.tenants.deactivate(inactive)
    deleted = admin.tenants.create("deleted")["tenant_id"]
    admin.tenants.delete(deleted)

    def in_context(tenant: str, sql: str, params=None) -> None:
        with nile.tenant_context(tenant):
            nile.sql.execute(sql, params)

    def with_token(token: str) -> None:
        with nile.tenant_context(token=token):
            nile.sql.execute("SELECT 1")

    def token_role_without_token() -> None:
        with Nile(dsn("sdk_token")) as token_only:
            with token_only.tenant_context(acme):
                token_only.sql.execute("SELECT 1")

    def outside_a_transaction() -> None:
        with psycopg.connect(dsn("app_user"), autocommit=True, prepare_threshold=None) as conn:
            conn.execute("SELECT nile.set_tenant(%s)", [acme])

    def session_scope() -> None:
        with nile.tenant_context(acme):
            nile.sql.execute("SELECT nile.set_tenant(%s, is_local => false)", [acme])

    expired = sign(acme, 60, key=TOKEN_KEY, now=1_000_000_000)  # issued in 2001
    cases = [
        (errors.NoTenantContext, "NT001", lambda: nile.sql.fetch_all("SELECT * FROM public.users")),
        (errors.TenantNotFound, "NT002", lambda: in_context(str(uuid.uuid4()), "SELECT 1")),
        (errors.TenantInactive, "NT003", lambda: in_context(inactive, INSERT_USER)),
        (errors.TenantDeleted, "NT004", lambda: in_context(deleted, "SELECT 1")),
        (errors.ForeignTenantRow, "NT005", lambda: in_context(acme, INSERT_USER_OF, [globex])),
        (errors.ContextForgery, "NT006", lambda: in_context(acme, f"SET nile.tenant_id = {psycopg.sql.quote(globex)}")),
        (errors.SessionScopeRefused, "NT007", session_scope),
        (errors.InvalidToken, "NT008", lambda: with_token("not.a.token")),
        (errors.TokenExpired, "NT009", lambda: with_token(expired)),
        (errors.TokenRequired, "NT010", token_role_without_token),
        (errors.NotInTransaction, "25P01", outside_a_transaction),
    ]
    assert sorted(code for _, code, _ in cases) == sorted(errors.BY_SQLSTATE)
    for cls, code, fn in cases:
        error = raised(fn)
        assert type(error) is cls, (code, type(error), error)
        assert error.sqlstate == code and isinstance(error, psycopg.Error)
    assert issubclass(errors.NotInTransaction, psycopg.errors.NoActiveSqlTransaction)
    assert all(issubclass(cls, psycopg.DatabaseError) for cls in errors.BY_SQLSTATE.values())


def test_raw_psycopg_raises_the_same_classes(two_tenants: tuple[str, str]) -> None:
    with psycopg.connect(dsn("app_user"), prepare_threshold=None) as conn:
        with pytest.raises(errors.NoTenantContext):
            conn.execute("SELECT * FROM public.users")


# --- usage ------------------------------------------------------------------------------------------------------------


def test_usage(nile: Nile, admin: Nile, two_tenants: tuple[str, str]) -> None:
    acme, _ = two_tenants
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    for _ in range(3):
        with nile.tenant_context(acme):
            usernames(nile)
    live = admin.usage.tenant(acme)
    assert live is not None and live["tenant_id"] == uuid.UUID(acme) and live["statements"] >= 3
    assert admin.usage.tenant(uuid.uuid4()) is None
    admin.sql.execute("SELECT nile.flush_usage()")
    history = admin.usage.history(since=started, tenant_id=acme)
    assert history and all(r["tenant_id"] == uuid.UUID(acme) for r in history)
    assert sum(r["statements"] for r in history) >= 3
    long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    assert admin.usage.history(since=long_ago, until=long_ago + dt.timedelta(days=1)) == []
    ranked = admin.usage.noisy_neighbours(recent="1 hour")
    assert ranked and ranked[0]["rank"] == 1 and "share_of_time" in ranked[0]
    assert admin.usage.noisy_neighbours(dt.timedelta(hours=1))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        nile.usage.tenant(acme)


# --- for_each_tenant --------------------------------------------------------------------------------------------------


def test_for_each_tenant(admin: Nile, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    with superuser() as su:
        su.execute("UPDATE public.users SET last_login_at = NULL")
    seen: list[str] = []
    lock = threading.Lock()

    def backfill(tenant: str) -> None:
        admin.sql.execute("UPDATE public.users SET last_login_at = created_at WHERE last_login_at IS NULL")
        with lock:
            seen.append(tenant)
        if tenant == globex:
            raise ValueError("globex fails")

    result = admin.for_each_tenant(backfill, batch_size=2, concurrency=3, progress=False)
    active = {t["tenant_id"] for t in admin.tenants.list() if t["status"] == "active"}
    assert set(seen) == active and len(seen) == len(active)
    assert set(result.done) == active - {globex}
    assert list(result.failed) == [globex] and isinstance(result.failed[globex], ValueError)
    assert result.remaining == [] and not result.ok
    with superuser() as su:
        rows = dict(su.execute("SELECT tenant_id::text, last_login_at IS NOT NULL FROM public.users").fetchall())
    assert rows[acme] is True and rows[globex] is False  # the failed tenant's transaction was rolled back

    again = admin.for_each_tenant(lambda t: admin.sql.execute("UPDATE public.users SET last_login_at = created_at"),
                                  resume=result, progress=False)
    assert again.done == [globex] and again.ok


def test_seed_walkthrough(admin: Nile) -> None:
    """The seed's story, run as clients/python/examples/seed_walkthrough.py runs it."""
    import runpy
    import pathlib

    example = pathlib.Path(__file__).parent.parent / "examples" / "seed_walkthrough.py"
    namespace = runpy.run_path(str(example), run_name="nile_example")
    assert namespace["main"](dsn("sdk_admin"), dsn("app_user")) == "ok"
