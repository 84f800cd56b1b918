"""Tenant per request: the transaction and nile.set_tenant() around the view, and the tenant for new rows."""

import contextlib
import contextvars

from django.db import connections, transaction

_tenant = contextvars.ContextVar("nile_tenant_id", default=None)


def current_tenant_id():
    """Default of every model's tenant_id: the tenant of the request being served (None outside one)."""
    return _tenant.get()


@contextlib.contextmanager
def tenant_context(tenant_id, using="default"):
    """One transaction in the tenant's context: nile.set_tenant() is local to it, so nothing outlives it."""
    with transaction.atomic(using=using):
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT nile.set_tenant(%s)", [str(tenant_id)])
        token = _tenant.set(tenant_id)
        try:
            yield
        finally:
            _tenant.reset(token)


class TenantMiddleware:
    """Runs each request in its tenant's transaction (here the tenant comes from a header; take it from your
    authenticated session or a signed token)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with tenant_context(request.headers["X-Tenant-Id"]):
            return self.get_response(request)
