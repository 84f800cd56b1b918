"""nile_tenancy.errors — one exception class per SQLSTATE that the extension documents for applications.

Every class is a subclass of :class:`NileError` and of the psycopg class the error would otherwise have been raised as.
The classes are registered with psycopg by SQLSTATE when this module is imported, so psycopg itself raises them for any
connection of the process, whether the statement went through this package or not; nothing is ever recognised by its
message text. The server's SQLSTATEs are listed in docs/errors.md.

Errors the package raises itself, before anything reaches the server (a context started inside an open transaction,
nested contexts of different tenants, a sandbox that cannot start), are subclasses of :class:`NileError` too.
"""

from __future__ import annotations

import psycopg
import psycopg.errors


class NileError(Exception):
    """Base class of every error of nile_tenancy, from the server (by SQLSTATE) or from this package."""


# --- Raised by the server, by SQLSTATE (class NT: the extension's own codes) ---------------------------------------


class NoTenantContext(NileError, psycopg.DatabaseError, code="NT001"):
    """NT001: a tenant table was used with no tenant context (``nile.missing_tenant = error``). A bug: enter the
    tenant's context first."""


class TenantNotFound(NileError, psycopg.DatabaseError, code="NT002"):
    """NT002: the tenant of ``set_tenant()`` or of a token does not exist (HTTP 404)."""


class TenantInactive(NileError, psycopg.DatabaseError, code="NT003"):
    """NT003: a write for an inactive tenant; its reads still work (HTTP 403 or 423)."""


class TenantDeleted(NileError, psycopg.DatabaseError, code="NT004"):
    """NT004: the tenant is deleted, at ``set_tenant()`` or in the middle of a transaction working for it (HTTP 410)."""


class ForeignTenantRow(NileError, psycopg.DatabaseError, code="NT005"):
    """NT005: a written row belongs to another tenant than the context's. A bug: let the tenant column default to the
    context."""


class ContextForgery(NileError, psycopg.DatabaseError, code="NT006"):
    """NT006: ``nile.tenant_id``, ``nile.user_id`` or ``nile.admin_active`` was set directly, not by the extension."""


class SessionScopeRefused(NileError, psycopg.DatabaseError, code="NT007"):
    """NT007: a context for the whole session while ``nile.allow_session_scope`` is off for the role."""


class InvalidToken(NileError, psycopg.DatabaseError, code="NT008"):
    """NT008: a tenant token that is malformed, altered, signed with an unknown key or not valid yet (HTTP 401)."""


class TokenExpired(NileError, psycopg.DatabaseError, code="NT009"):
    """NT009: a tenant token that has expired: get a new one (HTTP 401 with a refresh)."""


class TokenRequired(NileError, psycopg.DatabaseError, code="NT010"):
    """NT010: ``set_tenant()`` without a token while ``nile.require_token`` is on for the role."""


class NotInTransaction(NileError, psycopg.errors.NoActiveSqlTransaction, code="25P01"):
    """25P01: ``set_tenant()`` for the transaction, or ``admin_context()``, outside a transaction block."""


# --- Raised by this package ------------------------------------------------------------------------------------------


class TransactionInProgress(NileError, psycopg.ProgrammingError):
    """A tenant or admin context was started on a connection inside an open transaction. A context is one transaction
    of its own: end the open one first (a context begun inside it would outlive the ``with`` block)."""


class NestedContextError(NileError, psycopg.ProgrammingError):
    """A context was started inside another one for a different tenant, or an admin context inside a tenant context
    (or the reverse). Nesting the same context is allowed and does nothing."""


class NoActiveContext(NileError, psycopg.ProgrammingError):
    """Something that needs a tenant or admin context (``nile.sql.connection``) was used outside one."""


class ContextEnded(NoActiveContext):
    """The tenant or admin context this code was started in has ended: a thread or asyncio task started inside the
    ``with`` block outlived it, or the block's ``nile.sql`` was kept and used after it. Its connection has gone back
    to the pool (perhaps to another tenant's request), so nothing runs."""


class TransactionAborted(NileError, psycopg.errors.InFailedSqlTransaction):
    """A statement of the context's block failed and the block went on (the error was caught): PostgreSQL had
    already aborted the transaction, so at the end of the block nothing was committed. Raised instead of returning
    as if the block's writes were saved; its ``__cause__`` is None, the failed statement's error was the one caught."""


class SandboxUnavailable(NileError, RuntimeError):
    """The sandbox cannot start: no PostgreSQL build with the extension was found. The message says what is missing."""


#: SQLSTATE → class, for the codes the extension documents for applications.
BY_SQLSTATE: dict[str, type[NileError]] = {
    cls.sqlstate: cls  # type: ignore[misc]
    for cls in (
        NoTenantContext,
        TenantNotFound,
        TenantInactive,
        TenantDeleted,
        ForeignTenantRow,
        ContextForgery,
        SessionScopeRefused,
        InvalidToken,
        TokenExpired,
        TokenRequired,
        NotInTransaction,
    )
}

__all__ = [
    "NileError",
    "NoTenantContext",
    "TenantNotFound",
    "TenantInactive",
    "TenantDeleted",
    "ForeignTenantRow",
    "ContextForgery",
    "SessionScopeRefused",
    "InvalidToken",
    "TokenExpired",
    "TokenRequired",
    "NotInTransaction",
    "TransactionInProgress",
    "NestedContextError",
    "NoActiveContext",
    "ContextEnded",
    "TransactionAborted",
    "SandboxUnavailable",
    "BY_SQLSTATE",
]
