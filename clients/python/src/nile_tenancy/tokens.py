"""nile_tenancy.tokens — signed tenant tokens, minted on the client in the extension's format.

A token is a JSON Web Token signed with HMAC-SHA256 under the server's ``nile.token_key``: header
``{"alg": "HS256", "typ": "JWT", "kid": <first 16 hex digits of SHA-256(key)>}``, payload ``{"tid": <tenant uuid>,
"iat": <now>, "exp": <now + valid_for>}`` and, optionally, ``"sub": <user id>``. ``nile.set_tenant_token()`` (and
``Nile.tenant_context(token=...)``) verifies it on the server; see docs/context.md.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
import time
import uuid

#: The shortest key the server accepts (``nile.token_key``), in bytes.
MIN_KEY_BYTES = 32
#: The longest user id a token may carry, in bytes.
MAX_USER_ID_BYTES = 256


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:  # bytes(32) would be 32 zero bytes: a key nobody chose
        raise TypeError(f"a tenant-token key is text or bytes, not {type(key).__name__}")
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(f"a tenant-token key must be at least {MIN_KEY_BYTES} bytes long (the server refuses shorter)")
    return raw


def _seconds(valid_for: _dt.timedelta | int | float) -> int:
    seconds = valid_for.total_seconds() if isinstance(valid_for, _dt.timedelta) else float(valid_for)
    if not seconds >= 1:  # also NaN; a token's times are whole seconds: less than one would be expired at once
        raise ValueError("valid_for must be at least one second")
    return int(seconds)


def sign(
    tenant_id: uuid.UUID | str,
    valid_for: _dt.timedelta | int | float,
    user_id: str | None = None,
    *,
    key: str | bytes,
    now: float | None = None,
) -> str:
    """A token for ``tenant_id``, valid for ``valid_for`` (a timedelta or seconds), carrying ``user_id`` if given
    (``nile.current_user_id()`` returns it on the server), signed with ``key`` (the server's ``nile.token_key``)."""
    raw_key = _key_bytes(key)
    tenant = str(uuid.UUID(str(tenant_id)))
    issued = int(time.time() if now is None else now)
    payload: dict[str, object] = {"tid": tenant, "iat": issued, "exp": issued + _seconds(valid_for)}
    if user_id is not None:
        if not isinstance(user_id, str):
            raise TypeError(f"user_id is text, not {type(user_id).__name__}")
        if not user_id or len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
            raise ValueError(f"user_id must be 1 to {MAX_USER_ID_BYTES} bytes long")
        if "\x00" in user_id:  # PostgreSQL's text cannot hold it: the server would refuse the token
            raise ValueError("user_id cannot contain a NUL character")
        payload["sub"] = user_id
    header = {"alg": "HS256", "typ": "JWT", "kid": hashlib.sha256(raw_key).hexdigest()[:16]}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
        + _b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = hmac.new(raw_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)


class Tokens:
    """``nile.tokens``: ``sign(tenant_id, valid_for, user_id=None, key=...)``."""

    def __init__(self, default_key: str | bytes | None = None) -> None:
        self._default_key = default_key

    def sign(
        self,
        tenant_id: uuid.UUID | str,
        valid_for: _dt.timedelta | int | float,
        user_id: str | None = None,
        *,
        key: str | bytes | None = None,
    ) -> str:
        """See :func:`nile_tenancy.tokens.sign`; ``key`` defaults to the client's ``token_key``."""
        chosen = key if key is not None else self._default_key
        if chosen is None:
            raise ValueError("no key: pass key=... (the server's nile.token_key) or Nile(..., token_key=...)")
        return sign(tenant_id, valid_for, user_id, key=chosen)
