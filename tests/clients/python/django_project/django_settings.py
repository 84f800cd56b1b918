"""Settings of the Django client suite (test_django.py): one app, no contrib apps.

Two connections to the same database: `default` is the application (app_user, a member of nile_app, which sets the
tenant per request), `migrator` runs `manage.py migrate --database migrator` (app_migrator, owner of the tables).
"""

import os

_port = os.environ.get("NILE_CLIENT_PORT", os.environ.get("NILE_TEST_PORT", "5432"))
_name = os.environ.get("NILE_PY_DB_DJANGO", "clients_py_django")


def _database(user: str) -> dict:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _name,
        "USER": user,
        "HOST": "127.0.0.1",
        "PORT": _port,
        # Behind PgBouncer in transaction mode: no server-side cursors (they live past a transaction) and no named
        # prepared statements (Django's default client-side binding prepares nothing; prepare_threshold=None makes
        # sure of it if server_side_binding is ever turned on).
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": {"prepare_threshold": None},
    }


DATABASES = {"default": _database("app_user"), "migrator": _database("app_migrator")}
INSTALLED_APPS = ["tenancy_app"]
MIDDLEWARE = ["tenancy_app.tenant.TenantMiddleware"]
SECRET_KEY = "clients-python-test-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ALLOWED_HOSTS = ["testserver"]
