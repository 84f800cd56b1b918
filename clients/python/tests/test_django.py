"""nile_tenancy.django against the real server (directly and through PgBouncer): migrations as the migration role
with no context, TenantMiddleware through Django's request handler (isolation, rollback of failed views, the HTTP
mapping of the extension's errors), tenant_context's transaction rules and nesting, CurrentTenant. Project:
django_app/ (settings, models, migrations, views); tables made by `migrate --database migrator` in run.sh's database.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, Iterator

import psycopg
import pytest

from conftest import DB, TOKEN_KEY, VIA_PGBOUNCER, dsn, superuser
from nile_tenancy import Nile, errors
from nile_tenancy.tokens import sign

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import DatabaseError, connection, connections, transaction  # noqa: E402
from django.http import HttpRequest  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django_app.models import Project, Task  # noqa: E402

from nile_tenancy.django import CurrentTenant, current_tenant_id, nile_error_of, tenant_context  # noqa: E402

TABLES = ("django_app_project", "django_app_task")


def migrate(*target: str) -> None:
    """`manage.py migrate [django_app TARGET] --database migrator`: app_migrator, no tenant context."""
    call_command("migrate", *(("django_app",) + target if target else ()), database="migrator", verbosity=0,
                 interactive=False)


@pytest.fixture(scope="module", autouse=True)
def migrated() -> Iterator[None]:
    migrate()
    yield
    connections.close_all()
    migrate("zero")
    connections.close_all()


@pytest.fixture
def tenant(admin: Nile) -> Iterator[Any]:
    """A factory of fresh tenants (ids as text)."""
    yield lambda label: admin.tenants.create(name=f"{label}-{uuid.uuid4().hex[:8]}")["tenant_id"]


def server_rows(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with superuser() as su:
        return su.execute(sql, params).fetchall()


def context_of(alias: str = "default") -> Any:
    """nile.current_tenant() on a Django connection, as a statement of its own."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT nile.current_tenant()")
        return cursor.fetchone()[0]


def client(tenant_value: str | None = None, **kwargs: Any) -> Client:
    headers = {"X-Tenant-Id": tenant_value} if tenant_value is not None else {}
    return Client(headers=headers, **kwargs)


# --- migrations -----------------------------------------------------------------------------------------------------


def test_migrate_as_the_migration_role_with_no_tenant_context(tenant: Any) -> None:
    migrate("zero")
    assert server_rows("SELECT to_regclass('django_app_project'), to_regclass('django_app_task')") == [(None, None)]
    migrate("0001")
    owners = server_rows("SELECT relname::text, pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = ANY(%s)",
                         [list(TABLES)])
    assert sorted(owners) == [(t, "app_migrator") for t in TABLES]
    assert server_rows("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = 'app_migrator'") == [(False,)]
    defaults = server_rows(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid "
        "AND a.attnum = d.adnum WHERE a.attname = 'tenant_id' AND d.adrelid = ANY(%s::regclass[])",
        [list(TABLES)],
    )
    assert [d for (d,) in defaults] == ["nile.current_tenant()"] * 2
    # Rows of two tenants, written as the app at 0001 writes them (the models are ahead: raw SQL).
    for label in ("mig-a", "mig-b"):
        with tenant_context(tenant(label)), connection.cursor() as cursor:
            project = uuid.uuid4()
            cursor.execute("INSERT INTO django_app_project (id, name) VALUES (%s, %s)", [project, label])
            cursor.execute("INSERT INTO django_app_task (id, project_id, title) VALUES (%s, %s, 't')",
                           [uuid.uuid4(), project])
    migrate()  # 0002: ADD COLUMN, CREATE INDEX over both tenants' rows
    enrolled = {r for (r,) in server_rows("SELECT relid::text FROM nile.tenant_tables")}
    assert set(TABLES) <= enrolled
    assert server_rows("SELECT to_regclass('sdk_task_tenant_done_idx') IS NOT NULL") == [(True,)]
    assert server_rows("SELECT count(DISTINCT tenant_id), count(*) FROM django_app_task") == [(2, 2)]
    migrate("zero")
    assert server_rows("SELECT count(*) FROM nile.tenant_tables WHERE relid::text LIKE 'django_app_%'") == [(0,)]
    migrate()
    assert server_rows("SELECT count(*) FROM nile.tenant_tables WHERE relid::text LIKE 'django_app_%'") == [(2,)]


def test_makemigrations_sees_no_change() -> None:
    """CurrentTenant() deconstructs to itself: the models and the migrations agree."""
    try:
        call_command("makemigrations", "django_app", "--check", "--dry-run", verbosity=0)
    except SystemExit as exc:
        pytest.fail(f"makemigrations --check found changes (exit {exc.code})")
    assert CurrentTenant().deconstruct() == ("nile_tenancy.django.CurrentTenant", (), {})
    assert CurrentTenant() == CurrentTenant()


# --- TenantMiddleware -----------------------------------------------------------------------------------------------


def test_requests_of_two_tenants_are_isolated(tenant: Any) -> None:
    a, b = tenant("dj-a"), tenant("dj-b")
    for t, name in ((a, "pa"), (b, "pb"), (a, "pa2")):
        response = client(t).post("/projects", {"name": name})
        assert response.status_code == 200, response.content
        assert response.json()["tenants"] == [t]  # filled in by the database: Django sent no tenant_id
    assert client(a).get("/projects").json() == {"projects": ["pa", "pa2"], "tenants": [a],
                                                 "tasks": ["pa task", "pa2 task"]}
    assert client(b).get("/projects").json() == {"projects": ["pb"], "tenants": [b], "tasks": ["pb task"]}
    assert client(uuid.UUID(a).hex).get("/context").json() == {"server": a, "package": a}  # any spelling of a UUID
    # Between requests: no context, no transaction, on the server and in the package.
    assert client().get("/context").json() == {"server": None, "package": "None"}
    assert context_of() is None and current_tenant_id() is None
    assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # A request without a tenant that reads a tenant table fails closed (NT001, a 500), with no rows.
    assert client(raise_request_exception=False).get("/projects").status_code == 500
    with pytest.raises(DatabaseError) as info:
        client().get("/projects")
    assert isinstance(nile_error_of(info.value), errors.NoTenantContext)


def test_a_failing_view_is_rolled_back(tenant: Any) -> None:
    a = tenant("dj-fail")
    name = f"never-{uuid.uuid4().hex[:6]}"
    assert client(a, raise_request_exception=False).post("/write-then-fail", {"name": name}).status_code == 500
    assert client(a).post("/write-then-fail", {"name": name, "how": "404"}).status_code == 404
    with pytest.raises(RuntimeError):
        client(a).post("/write-then-fail", {"name": name})
    # The view succeeded, a middleware below TenantMiddleware failed: Django answers 500 without process_exception.
    failing = Client(headers={"X-Tenant-Id": a, "X-Fail-After-View": "1"}, raise_request_exception=False)
    assert failing.post("/projects", {"name": name}).status_code == 500
    assert server_rows("SELECT count(*) FROM django_app_project WHERE name = %s", [name]) == [(0,)]
    assert client(a).get("/projects").json()["projects"] == []
    assert context_of() is None


def test_a_server_error_answered_below_the_middleware_is_rolled_back(tenant: Any) -> None:
    """The view's exception answered by a middleware below TenantMiddleware (its process_exception never runs), and a
    view that answers 503 itself after writing: neither request keeps its writes."""
    a = tenant("dj-answered")
    name = f"never-{uuid.uuid4().hex[:6]}"
    answered = Client(headers={"X-Tenant-Id": a, "X-Answer-View-Errors": "1"}, raise_request_exception=False)
    assert answered.post("/write-then-fail", {"name": name}).status_code == 500
    assert client(a).post("/write-then-fail", {"name": name, "how": "503"}).status_code == 503
    assert server_rows("SELECT count(*) FROM django_app_project WHERE name = %s", [name]) == [(0,)]


def test_the_header_takes_tokens_only_by_default(admin: Nile, tenant: Any) -> None:
    """A tenant id is no secret: by default the header's value is a token the server verifies, and a raw id is
    refused as an invalid token (401), never entered. The resolver (the application's code) may still return ids."""
    a = tenant("dj-header")
    with override_settings():
        del settings.NILE_TENANT_HEADER_ACCEPTS_IDS  # the default
        response = Client(headers={"X-Tenant-Id": a}).get("/context")
        assert response.status_code == 401 and response["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        token = admin.tokens.sign(a, 300)
        assert Client(headers={"X-Tenant-Id": token}).get("/context").json()["server"] == a
        with override_settings(NILE_TENANT_RESOLVER=lambda request: uuid.UUID(request.GET["org"])):
            assert Client().get("/context", {"org": a}).json()["server"] == a
    with override_settings(NILE_TENANT_HEADER_ACCEPTS_IDS=False):
        assert Client(headers={"X-Tenant-Id": a}).get("/context").status_code == 401


def test_a_nested_token_is_verified(admin: Nile, tenant: Any) -> None:
    a = tenant("dj-nested-token")
    forged = sign(a, 300, "mallory", key="a-key-the-server-has-never-seen-" + "x" * 16)
    with tenant_context(a):
        with pytest.raises(errors.InvalidToken):
            with tenant_context(token=forged):
                pass
        with tenant_context(token=admin.tokens.sign(a, 300, user_id="inner")):
            assert context_of() == uuid.UUID(a)
            with connection.cursor() as cursor:
                cursor.execute("SELECT nile.current_user_id()")
                assert cursor.fetchone() == (None,)  # the outer context's user: none
        assert context_of() == uuid.UUID(a)


def test_the_extensions_errors_as_http(admin: Nile, tenant: Any) -> None:
    live, inactive, deleted = tenant("dj-live"), tenant("dj-inactive"), tenant("dj-deleted")
    client(inactive).post("/projects", {"name": "before"})
    admin.tenants.deactivate(inactive)
    admin.tenants.delete(deleted)
    assert client(str(uuid.uuid4())).get("/projects").status_code == 404  # NT002 entering the context
    assert client(deleted).get("/projects").status_code == 410  # NT004
    assert client(inactive).get("/projects").json()["projects"] == ["before"]  # reads work
    written = client(inactive).post("/projects", {"name": "after"})  # NT003 from the view's INSERT
    assert written.status_code == 403 and written.content == b"tenant is read-only\n"
    assert server_rows("SELECT count(*) FROM django_app_project WHERE tenant_id = %s", [inactive]) == [(1,)]
    for bad in ("not-a-token", sign(live, 60, key=TOKEN_KEY, now=1_000_000_000), "a.b.c"):  # NT008, NT009, NT008
        response = client(bad).get("/projects")
        assert response.status_code == 401 and response["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    token = admin.tokens.sign(live, 300)
    assert client(token).get("/context").json() == {"server": live, "package": live}


def test_the_tenant_from_a_resolver_or_another_header(admin: Nile, tenant: Any) -> None:
    a = tenant("dj-resolver")
    token = admin.tokens.sign(a, 300)
    with override_settings(NILE_TENANT_RESOLVER="test_django.bearer_token"):
        assert Client(headers={"Authorization": f"Bearer {token}"}).get("/context").json()["server"] == a
        assert Client(headers={"X-Tenant-Id": a}).get("/context").json()["server"] is None  # the resolver decides
    with override_settings(NILE_TENANT_RESOLVER=lambda request: uuid.UUID(request.GET["org"])):
        assert Client().get("/context", {"org": a}).json()["server"] == a
    with override_settings(NILE_TENANT_HEADER="X-Org"):
        assert Client(headers={"X-Org": a}).get("/context").json()["server"] == a


def bearer_token(request: HttpRequest) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value if scheme == "Bearer" and value else None


# --- tenant_context -------------------------------------------------------------------------------------------------


def test_commit_at_the_end_and_rollback_on_an_exception(tenant: Any) -> None:
    a = tenant("dj-ctx")
    with tenant_context(a) as entered:
        assert entered == uuid.UUID(a) and current_tenant_id() == uuid.UUID(a)
        project = Project.objects.create(name="kept")
        assert project.tenant_id == uuid.UUID(a)  # returned by the INSERT
        Task.objects.create(project=project, title="t")
    with pytest.raises(RuntimeError):
        with tenant_context(a):
            Project.objects.create(name="dropped")
            raise RuntimeError
    assert server_rows("SELECT name FROM django_app_project WHERE tenant_id = %s", [a]) == [("kept",)]
    assert context_of() is None and current_tenant_id() is None


def test_refused_inside_an_open_transaction(tenant: Any) -> None:
    a = tenant("dj-open")
    with transaction.atomic():
        with pytest.raises(errors.TransactionInProgress):
            with tenant_context(a):
                pass
    transaction.set_autocommit(False)
    try:
        with pytest.raises(errors.TransactionInProgress):
            with tenant_context(a):
                pass
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")  # a transaction Django does not know about
        with pytest.raises(errors.TransactionInProgress):
            with tenant_context(a):
                pass
        cursor.execute("ROLLBACK")
    # Savepoints inside the context are fine, and a failed one leaves the context in force.
    with tenant_context(a):
        with pytest.raises(RuntimeError), transaction.atomic():
            Project.objects.create(name="savepoint")
            raise RuntimeError
        assert context_of() == uuid.UUID(a) and not Project.objects.filter(name="savepoint").exists()


def test_nesting(admin: Nile, tenant: Any) -> None:
    a, b = tenant("dj-nest-a"), tenant("dj-nest-b")
    with pytest.raises(RuntimeError):
        with tenant_context(a):
            with tenant_context(uuid.UUID(a)) as inner:  # the same tenant: nothing happens
                assert inner == uuid.UUID(a)
                Project.objects.create(name="inner")
            with tenant_context(token=admin.tokens.sign(a, 300)):  # the same tenant by token: nothing happens
                assert Project.objects.count() == 1
            with pytest.raises(errors.NestedContextError):
                with tenant_context(b):
                    pass
            with pytest.raises(errors.NestedContextError):
                with tenant_context(token="unreadable"):
                    pass
            assert context_of() == uuid.UUID(a) and current_tenant_id() == uuid.UUID(a)
            raise RuntimeError  # one transaction: the inner block's row goes with it
    assert server_rows("SELECT count(*) FROM django_app_project WHERE tenant_id = %s", [a]) == [(0,)]
    # Another alias, same tenant: a context of its own on that connection.
    with tenant_context(a), tenant_context(token=admin.tokens.sign(a, 300), using="tokens") as on_tokens:
        assert on_tokens == uuid.UUID(a) and context_of("tokens") == uuid.UUID(a)
    assert context_of("tokens") is None


def test_a_token_only_role(admin: Nile, two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    with tenant_context(token=admin.tokens.sign(globex, 300), using="tokens") as entered:
        assert entered == uuid.UUID(globex)
        with connections["tokens"].cursor() as cursor:
            cursor.execute("SELECT username FROM public.users")
            assert cursor.fetchall() == [("grace",)]
    with pytest.raises(errors.TokenRequired):  # NT010: the package's class itself, not a Django wrapper
        with tenant_context(acme, using="tokens"):
            pass
    with pytest.raises(errors.TenantNotFound):
        with tenant_context(uuid.uuid4()):
            pass
    assert context_of("tokens") is None and context_of() is None


def test_the_tenant_and_the_token_are_bound_parameters(admin: Nile, tenant: Any) -> None:
    a = tenant("dj-bound")
    token = admin.tokens.sign(a, 300)
    for kwargs, secret in (({"tenant_id": a}, a), ({"token": token, "using": "tokens"}, token)):
        with tenant_context(**kwargs):
            # The server connection is idle in this transaction: pg_stat_activity shows its last statement.
            queries = [q for (q,) in server_rows(
                "SELECT query FROM pg_stat_activity WHERE datname = %s AND state = 'idle in transaction'", [DB])]
            assert any(q.startswith("SELECT nile.set_tenant") and "$1" in q for q in queries), queries
            assert not [q for q in queries if secret in q]


def test_current_tenant_in_queries(two_tenants: tuple[str, str]) -> None:
    acme, globex = two_tenants
    for t in (acme, globex):
        with tenant_context(t):
            Project.objects.create(name=f"expr-{t}")
    with tenant_context(acme):
        assert list(Project.objects.annotate(t=CurrentTenant()).values_list("t", flat=True).distinct()) == [
            uuid.UUID(acme)]
        assert Project.objects.filter(tenant_id=CurrentTenant()).count() == Project.objects.count() == 1
    with pytest.raises(DatabaseError) as info:
        Project.objects.annotate(t=CurrentTenant()).count()
    assert isinstance(nile_error_of(info.value), errors.NoTenantContext)


def test_iterator_and_server_side_cursors(tenant: Any) -> None:
    a = tenant("dj-iter")
    assert connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is VIA_PGBOUNCER
    with tenant_context(a):
        Project.objects.bulk_create([Project(name=f"p{i}") for i in range(5)])
    with tenant_context(a):
        assert sorted(p.name for p in Project.objects.iterator(chunk_size=2)) == [f"p{i}" for i in range(5)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors")
        assert cursor.fetchone() == (0,)
    assert context_of() is None


def test_threads_and_pooled_server_connections(two_tenants: tuple[str, str]) -> None:
    """Two threads (each its own Django connection) alternate tenants; through PgBouncer they share two server
    connections. Each sees its tenant only, and a client between them finds no context."""
    acme, globex = two_tenants
    seen: dict[str, set[tuple[str, ...]]] = {acme: set(), globex: set()}
    failures: list[BaseException] = []

    def work(order: tuple[str, str]) -> None:
        try:
            for i in range(10):
                t = order[i % 2]
                with tenant_context(t), connection.cursor() as cursor:
                    cursor.execute("SELECT username FROM public.users ORDER BY 1")
                    seen[t].add(tuple(r[0] for r in cursor.fetchall()))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(o,)) for o in ((acme, globex), (globex, acme))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    assert seen == {acme: {("ada",)}, globex: {("grace",)}}
    with psycopg.connect(dsn("app_user"), prepare_threshold=None, autocommit=True) as other:
        for _ in range(4):
            assert other.execute("SELECT nile.current_tenant()").fetchone() == (None,)
            with pytest.raises(errors.NoTenantContext):
                other.execute("SELECT count(*) FROM public.users")
