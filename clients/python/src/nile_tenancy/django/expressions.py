"""nile_tenancy.django.expressions — the tenant of the context as a Django expression, for the tenant column's
database default and for queries."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db.models import Func, UUIDField
from django.utils.deconstruct import deconstructible


@deconstructible(path="nile_tenancy.django.CurrentTenant")
class CurrentTenant(Func):
    """``nile.current_tenant()``: the tenant of the transaction's context (NULL outside one).

    As the tenant column's database default (Django 5.0 or later), Django leaves the column to the database on
    ``INSERT`` and reads the value back::

        tenant_id = models.UUIDField(db_default=CurrentTenant(), editable=False)

    Migrations write it as ``nile_tenancy.django.CurrentTenant()``.
    """

    template = "nile.current_tenant()"
    arity = 0
    output_field: ClassVar[Any] = UUIDField()
    allowed_default = True  # Django 5.0+: may be a db_default
