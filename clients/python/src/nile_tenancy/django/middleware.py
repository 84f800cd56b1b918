"""nile_tenancy.django.middleware — one tenant context per request, and the extension's errors as HTTP responses.

Settings (all optional):
  NILE_TENANT_HEADER    the request header with a signed tenant token (default ``X-Tenant-Id``)
  NILE_TENANT_HEADER_ACCEPTS_IDS
                        False (the default): the header's value is always a token, verified by the server
                        (``nile.set_tenant_token()``), so a raw tenant id there is refused (401). True: a value that
                        is a UUID is taken as the tenant's id (``nile.set_tenant()``): only behind a proxy that sets
                        the header itself from an authenticated session and strips the client's
  NILE_TENANT_RESOLVER  instead of the header: a callable ``resolver(request)`` (or its dotted path) returning the
                        tenant's id (``uuid.UUID`` or text), a signed tenant token, or None; your code, so a UUID it
                        returns is taken as the tenant's id (take it from the authenticated session)
  NILE_TENANT_DATABASE  the database alias of the context (default ``default``)

A tenant id is not a secret: anyone can send one in a header, which is why the header takes tokens only unless told
otherwise. A request without a tenant runs with no context (a tenant table then fails with NT001, a 500).

The request's transaction is committed when the response is sent, except when it is rolled back: an exception of the
view (``process_exception``, if no middleware below this one answered it first), an exception Django turned into a
response below this middleware (``got_request_exception``), or a response with a status of 500 or above, whoever made
it (a middleware or a framework that answered the exception itself). A handled error answered with a 4xx status
(Django's ``Http404`` and ``PermissionDenied`` raised below the view's middleware, a framework's validation error)
commits what the view wrote before it: raise, or call ``transaction.set_rollback(True)``, to undo it.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, ClassVar

from django.conf import settings
from django.core.signals import got_request_exception
from django.db import DEFAULT_DB_ALIAS, transaction
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from .. import errors
from .context import tenant_context

__all__ = ["TenantMiddleware", "nile_error_of"]

_REQUEST_ALIAS = "_nile_tenancy_context_alias"  # set on the request while its context is open


def nile_error_of(exc: BaseException) -> errors.NileError | None:
    """The :class:`~nile_tenancy.errors.NileError` an exception is or wraps (Django's and SQLAlchemy's database
    errors carry the driver's error as their cause), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, errors.NileError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _roll_back_failed_request(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """``got_request_exception``: an exception below the middleware that Django turned into a 500 response (the view's
    go through ``process_exception``) rolls the request's transaction back."""
    using = getattr(request, _REQUEST_ALIAS, None)
    if using is not None:
        transaction.set_rollback(True, using=using)


class TenantMiddleware:
    """Runs each request with a tenant in that tenant's context: one transaction, committed after the view, rolled
    back if the view (or its template) raises. NT002 → 404, NT003 → 403, NT004 → 410, NT008/NT009 → 401 (with
    ``WWW-Authenticate``), whether raised entering the context, by the view or at COMMIT; other errors propagate.
    Put it after the middleware its resolver needs (authentication). Sync only; a streaming response's body is
    produced after the context has ended."""

    sync_capable = True
    async_capable = False

    #: The HTTP status and the body of each error a client can cause; subclasses may change them.
    responses: ClassVar[dict[type[errors.NileError], tuple[int, str]]] = {
        errors.TenantNotFound: (404, "tenant not found"),
        errors.TenantInactive: (403, "tenant is read-only"),
        errors.TenantDeleted: (410, "tenant deleted"),
        errors.InvalidToken: (401, "invalid tenant token"),
        errors.TokenExpired: (401, "tenant token expired"),
    }

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.header: str = getattr(settings, "NILE_TENANT_HEADER", "X-Tenant-Id")
        self.header_accepts_ids: bool = bool(getattr(settings, "NILE_TENANT_HEADER_ACCEPTS_IDS", False))
        self.using: str = getattr(settings, "NILE_TENANT_DATABASE", DEFAULT_DB_ALIAS)
        resolver = getattr(settings, "NILE_TENANT_RESOLVER", None)
        self.resolver: Callable[[HttpRequest], uuid.UUID | str | None] | None = (
            import_string(resolver) if isinstance(resolver, str) else resolver
        )
        got_request_exception.connect(_roll_back_failed_request, dispatch_uid="nile_tenancy.django.middleware")

    def tenant_of(self, request: HttpRequest) -> tuple[uuid.UUID | str | None, str | None]:
        """The request's ``(tenant_id, token)``, one of them set, or ``(None, None)``: the resolver's value (an id
        if it is a UUID, else a token), else the header's (a token, unless NILE_TENANT_HEADER_ACCEPTS_IDS)."""
        if self.resolver is not None:
            value = self.resolver(request)
            return (None, None) if value is None else _id_or_token(value)
        header = request.headers.get(self.header) or None
        if header is None:
            return None, None
        return _id_or_token(header) if self.header_accepts_ids else (None, header)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant_id, token = self.tenant_of(request)
        if tenant_id is None and token is None:
            return self.get_response(request)
        try:
            with tenant_context(tenant_id, token=token, using=self.using):
                setattr(request, _REQUEST_ALIAS, self.using)
                try:
                    response = self.get_response(request)
                finally:
                    delattr(request, _REQUEST_ALIAS)
                if response.status_code >= 500:  # a server error, answered below this middleware: nothing is kept
                    transaction.set_rollback(True, using=self.using)
                return response
        except Exception as exc:  # entering the context or COMMIT: answered if it is the client's
            response = self.error_response(request, exc)
            if response is None:
                raise
            return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """An exception of the view: roll the request's transaction back, and answer the client's errors."""
        using = getattr(request, _REQUEST_ALIAS, None)
        if using is not None:
            transaction.set_rollback(True, using=using)
        return self.error_response(request, exception)

    def error_response(self, request: HttpRequest, exc: BaseException) -> HttpResponse | None:
        """The response to an error the client caused (``responses``), or None for any other."""
        error = nile_error_of(exc)
        answer = None if error is None else self.responses.get(type(error))
        if answer is None:
            return None
        status, body = answer
        response = HttpResponse(body + "\n", status=status, content_type="text/plain; charset=utf-8")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response


def _id_or_token(value: uuid.UUID | str) -> tuple[uuid.UUID | str | None, str | None]:
    if isinstance(value, uuid.UUID):
        return value, None
    if not isinstance(value, str):
        raise TypeError(f"a tenant is a uuid.UUID, its text or a token, not {type(value).__name__}")
    try:
        uuid.UUID(value)
    except ValueError:
        return None, value
    return value, None
