"""Settings of the Django tests (test_django.py), on the database run.sh made (conftest.DB).

Three connections to it: `default` is the application (app_user, nile_app; TenantMiddleware enters the tenant per
request), `migrator` runs `migrate --database migrator` (app_migrator, owner of the tables, no tenant context), `tokens`
is sdk_token (nile_app with nile.require_token on). Behind PgBouncer in transaction mode no server-side cursors (a
cursor outside a transaction outlives it) and no named prepared statements.
"""

from __future__ import annotations

from typing import Any

from conftest import CLIENT_PORT, DB, HOST, VIA_PGBOUNCER


def _database(user: str) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DB,
        "USER": user,
        "HOST": HOST,
        "PORT": str(CLIENT_PORT),
        "DISABLE_SERVER_SIDE_CURSORS": VIA_PGBOUNCER,
        "OPTIONS": {"prepare_threshold": None},
    }


DATABASES = {"default": _database("app_user"), "migrator": _database("app_migrator"), "tokens": _database("sdk_token")}
INSTALLED_APPS = ["django_app"]
MIDDLEWARE = [
    "nile_tenancy.django.TenantMiddleware",
    "django_app.middleware.FailAfterViewMiddleware",
    "django_app.middleware.AnswerViewErrorsMiddleware",
]
# The tests send tenant ids in the header (tokens too); test_the_header_takes_tokens_only_by_default checks the default.
NILE_TENANT_HEADER_ACCEPTS_IDS = True
ROOT_URLCONF = "django_app.urls"
SECRET_KEY = "nile-tenancy-sdk-tests-only"
USE_TZ = True
DEBUG = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ALLOWED_HOSTS = ["testserver"]
