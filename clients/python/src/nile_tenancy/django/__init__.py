"""nile_tenancy.django — Django with the nile_tenancy extension.

- :class:`TenantMiddleware` (``"nile_tenancy.django.TenantMiddleware"`` in ``MIDDLEWARE``): each request in its
  tenant's context, the extension's errors as 404/403/410/401.
- :func:`tenant_context`: ``with tenant_context(tenant_id):`` one ``transaction.atomic()`` in a tenant's context, for
  management commands, tasks and tests.
- :class:`CurrentTenant`: ``nile.current_tenant()``, the tenant column's database default
  (``models.UUIDField(db_default=CurrentTenant(), editable=False)``); :func:`current_tenant_id` the Python-side one.

Migrations need nothing of this package: run ``manage.py migrate --database migrator`` with a second ``DATABASES``
entry for the migration role (``app_migrator`` of examples/role_layout.sql), with no tenant context
(docs/migrations.md).
"""

from .context import current_tenant_id, tenant_context
from .expressions import CurrentTenant
from .middleware import TenantMiddleware, nile_error_of

__all__ = ["TenantMiddleware", "tenant_context", "current_tenant_id", "CurrentTenant", "nile_error_of"]
