"""nile_tenancy — the Python client of the nile_tenancy PostgreSQL extension.

    from nile_tenancy import Nile

    nile = Nile("postgresql://app@db/app")
    tenant = nile.tenants.create(name="acme")
    with nile.tenant_context(tenant["tenant_id"]):
        nile.sql.execute("INSERT INTO users (username, email) VALUES (%s, %s)", ("ada", "ada@acme.test"))

See clients/python/README.md.
"""

from . import errors
from ._async import AsyncNile
from ._common import ForEachTenantResult
from ._sync import Nile, enter_tenant, tenant_transaction

__version__ = "0.3.0"
__all__ = ["Nile", "AsyncNile", "errors", "ForEachTenantResult", "enter_tenant", "tenant_transaction", "__version__"]
