"""Django 5.2: `migrate` as app_migrator with no tenant context, the ORM as app_user through a tenant middleware
(transaction.atomic + nile.set_tenant()), `makemigrations --check`. Project: django_project/ (one app, no contrib
apps). Database: NILE_PY_DB_DJANGO.

Each test names the numbered problem of issue 18 it guards.
"""

import os
import sys
import uuid

import pytest

from conftest import DB_DJANGO, NO_TENANT_CONTEXT, admin_connect, create_tenant, raises_sqlstate

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "django_project")
sys.path.insert(0, PROJECT)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from tenancy_app.models import Project, Task  # noqa: E402
from tenancy_app.tenant import TenantMiddleware, tenant_context  # noqa: E402

TABLES = ("tenancy_app_project", "tenancy_app_task")


def migrate(target=None):
    args = ["tenancy_app", target] if target else []
    call_command("migrate", *args, database="migrator", verbosity=0, interactive=False)


@pytest.fixture
def admin_django():
    with admin_connect(DB_DJANGO) as conn:
        yield conn


@pytest.fixture
def migrated():
    """The app's tables at the last migration (made by app_migrator, no tenant context)."""
    migrate()
    yield
    for alias in connections:
        connections[alias].close()


# Problem 1: Django's migrations (CREATE TABLE, its single-column foreign key DEFERRABLE INITIALLY DEFERRED, ADD
# COLUMN, CREATE INDEX), backwards to zero and forwards again, as app_migrator with no tenant context, also with two
# tenants' rows in the tables.
def test_migrate_as_the_migrator_with_no_tenant_context(admin_django):
    migrate("zero")
    migrate("0001")
    for label in ("dj-a", "dj-b"):
        tenant = create_tenant(admin_django, label)
        # The models are ahead of the tables here: rows as the app at 0001 would write them.
        with tenant_context(tenant), connections["default"].cursor() as cursor:
            project = uuid.uuid4()
            cursor.execute("INSERT INTO tenancy_app_project (id, tenant_id, name) VALUES (%s, %s, %s)",
                           [project, tenant, label])
            cursor.execute("INSERT INTO tenancy_app_task (id, tenant_id, project_id, title) VALUES (%s, %s, %s, %s)",
                           [uuid.uuid4(), tenant, project, f"{label} task"])
    migrate()  # 0002: ADD COLUMN done, CREATE INDEX
    enrolled = {r[0] for r in admin_django.execute("SELECT relid::text FROM nile.tenant_tables")}
    assert set(TABLES) <= enrolled
    fk = admin_django.execute(
        "SELECT convalidated, condeferrable, condeferred FROM pg_constraint "
        "WHERE conrelid = 'tenancy_app_task'::regclass AND contype = 'f' AND confrelid = 'tenancy_app_project'::regclass"
    ).fetchall()
    assert fk == [(True, True, True)]
    migrate("zero")
    assert admin_django.execute(
        "SELECT count(*) FROM nile.tenant_tables WHERE relid::text LIKE 'tenancy_app_%'"
    ).fetchone()[0] == 0
    migrate()
    assert admin_django.execute(
        "SELECT count(*) FROM nile.tenant_tables WHERE relid::text LIKE 'tenancy_app_%'"
    ).fetchone()[0] == 2


# Problem 5 (Django's side): makemigrations compares the models with the migrations, not with the database, so the
# extension's objects never show up; the project's migrations are complete.
def test_makemigrations_check_is_clean():
    try:
        call_command("makemigrations", "--check", "--dry-run", verbosity=0)
    except SystemExit as exc:
        pytest.fail(f"makemigrations --check found changes (exit {exc.code})")


# Isolation and problem 9 (NT001) through the ORM: requests of two tenants through the middleware see only their
# own rows; ORM use without a tenant fails closed, in a transaction and in autocommit.
def test_orm_requests_of_two_tenants_are_isolated(migrated, admin_django):
    a, b = create_tenant(admin_django, "dj-a"), create_tenant(admin_django, "dj-b")
    factory = RequestFactory()

    def create_view(request):
        project = Project.objects.create(name=request.GET["name"])
        Task.objects.create(project=project, title=f"{project.name} task")
        return list(Task.objects.select_related("project").values_list("tenant_id", "project__name", "title"))

    def list_view(request):
        return (
            sorted(Project.objects.values_list("tenant_id", "name")),
            sorted(Task.objects.filter(project__name__startswith="p").values_list("title", flat=True)),
        )

    for tenant, name in ((a, "pa"), (b, "pb"), (a, "pa2")):
        rows = TenantMiddleware(create_view)(factory.get("/", {"name": name}, HTTP_X_TENANT_ID=tenant))
        assert {str(t) for t, _, _ in rows} == {tenant}
    for tenant, names in ((a, ["pa", "pa2"]), (b, ["pb"])):
        projects, titles = TenantMiddleware(list_view)(factory.get("/", HTTP_X_TENANT_ID=tenant))
        assert [(str(t), n) for t, n in projects] == [(tenant, n) for n in names]
        assert titles == [f"{n} task" for n in names]
    # Between requests the connection has no tenant context.
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT nile.current_tenant()")
        assert cursor.fetchone()[0] is None
    with raises_sqlstate(NO_TENANT_CONTEXT), transaction.atomic():
        list(Project.objects.all())
    with raises_sqlstate(NO_TENANT_CONTEXT):
        Project.objects.count()


# Problem 4: with the README's role layout, nile.verify() reports nothing about roles after Django's migrations.
# (Django's single-column foreign keys are reported as not including the tenant column: that finding is not about
# roles, and is the app's to fix.)
def test_verify_reports_nothing_about_roles(migrated, admin_django):
    findings = admin_django.execute("SELECT severity, object, problem FROM nile.verify() WHERE object NOT LIKE 'role %' OR object IN ('role app_migrator', 'role app_user')").fetchall()
    assert [f for f in findings if f[1].startswith("role ")] == []
    assert [f for f in findings if f[0] == "error"] == []
