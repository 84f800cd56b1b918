"""What the synchronous and the asynchronous clients share: the SQL they send, row conversion, argument checks, the
caller's name for an admin context's reason, and the result of ``for_each_tenant``. No I/O here."""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import functools
import inspect
import json
import sys
import uuid
from typing import Any, Sequence

import psycopg
from psycopg.rows import tuple_row

from . import _pipeline, errors

# The extension's functions, all schema-qualified (no search_path is trusted).
SET_TENANT = "SELECT nile.set_tenant(%s::uuid)"
SET_TENANT_TOKEN = "SELECT nile.set_tenant_token(%s)"
SET_TENANT_READ_ONLY = "SELECT nile.set_tenant_read_only(%s::uuid)"
SET_TENANT_TOKEN_READ_ONLY = "SELECT nile.set_tenant_token_read_only(%s)"
#: Whether the database's nile_tenancy has the one-round-trip reads (0.3.0 and later; until ALTER EXTENSION UPDATE,
#: an older database does not) and the role may use them (nile_app may).
HAS_READ_ONLY_CONTEXT = (
    "SELECT coalesce(pg_catalog.bool_and(f IS NOT NULL AND pg_catalog.has_function_privilege(f, 'EXECUTE')), false)"
    " FROM (VALUES"
    " (pg_catalog.to_regprocedure('nile.set_tenant_read_only(uuid)')),"
    " (pg_catalog.to_regprocedure('nile.set_tenant_token_read_only(text)')),"
    " (pg_catalog.to_regprocedure('nile.assert_read_only()'))) AS v(f)"
)
ADMIN_CONTEXT = "SELECT nile.admin_context(%s)"
TENANT_COLUMNS = "id, name, status::text, created_at, metadata"
CREATE_TENANT = "SELECT nile.create_tenant(%s, %s::uuid, %s::jsonb)"
GET_TENANT = f"SELECT {TENANT_COLUMNS} FROM nile.tenants WHERE id = %s::uuid"
LIST_TENANTS = f"SELECT {TENANT_COLUMNS} FROM nile.tenants ORDER BY created_at, id"
UPDATE_TENANT = f"SELECT {TENANT_COLUMNS} FROM nile.update_tenant(%s::uuid, %s::jsonb)"
DEACTIVATE_TENANT = f"SELECT {TENANT_COLUMNS} FROM nile.deactivate_tenant(%s::uuid)"
REACTIVATE_TENANT = f"SELECT {TENANT_COLUMNS} FROM nile.reactivate_tenant(%s::uuid)"
DELETE_TENANT = "SELECT nile.delete_tenant(%s::uuid, %s)"
ACTIVE_TENANTS_PAGE = (
    "SELECT id FROM nile.tenants WHERE status = 'active' AND (%s::uuid IS NULL OR id > %s::uuid) ORDER BY id LIMIT %s"
)
USAGE_OF_TENANT = "SELECT * FROM nile.tenant_usage WHERE kind = 'tenant' AND tenant_id = %s::uuid"
USAGE_HISTORY = (
    "SELECT * FROM nile.usage_history WHERE period_end > %s AND (%s::timestamptz IS NULL OR period_start < %s)"
    " AND (%s::uuid IS NULL OR tenant_id = %s::uuid) ORDER BY period_start, kind, tenant_id"
)
NOISY_NEIGHBOURS = "SELECT * FROM nile.noisy_neighbours(%s::interval)"
#: Leaves a tenant context set for the whole session (``set_tenant(..., is_local => false)``), so that nothing of it
#: reaches the pool's next user; calls nothing when there is none (a role bound to a tenant may not clear_tenant()).
RESET_SESSION_CONTEXT = (
    "SELECT nile.clear_tenant() WHERE coalesce(pg_catalog.current_setting('nile.tenant_id', true), '') <> ''"
)
CONTEXT_ENDED = (
    "the tenant or admin context this code was started in has ended (a thread or task started inside its with block "
    "outlived it): its connection is back in the pool, so nothing runs; enter a context of its own"
)
TRANSACTION_IN_PROGRESS = (
    "a tenant or admin context is a transaction of its own and cannot start inside an open transaction: commit or "
    "roll back first (entered inside it, the context would outlive the with block)"
)
TRANSACTION_ABORTED = (
    "a statement of this context failed and its error was caught inside the with block: PostgreSQL had aborted the "
    "transaction, so nothing of the block was committed (let the error leave the block, or use a savepoint: "
    "nile.sql.connection.transaction())"
)


#: What the server answers a read sent in a read-only transaction of its own (SET_TENANT_READ_ONLY) when it has to run
#: in the block's transaction instead: it wrote or hid an error (25006), or the isolation level is above READ COMMITTED
#: (25000).
RUN_IN_TRANSACTION = (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InvalidTransactionState)
#: Calls whose effect lasts until the end of the transaction, not of the statement: a statement that names one is not
#: sent in a read-only transaction of its own (which would end it at once).
_TRANSACTION_SCOPED = ("advisory_xact", "set_config", "pg_notify", "xact_id", "txid_", "set_tenant")


def _text(query: Any) -> str | None:
    """A statement's text (``bytes`` decoded), or None for one that is not text (a psycopg.sql.Composed, which needs a
    connection to become text)."""
    if isinstance(query, bytes):
        return query.decode("utf-8", "replace")
    return query if isinstance(query, str) else None


def tuples(conn: Any) -> Any:
    """A cursor of ``conn`` (sync or async) whose rows are tuples whatever the connection's ``row_factory``: the
    clients' own statements read their rows by position, and ``nile.sql`` answers with tuples (a row factory applies
    to psycopg's own API: ``nile.sql.connection``)."""
    return conn.cursor(row_factory=tuple_row)


def several_statements(query: Any) -> bool:
    """Whether a statement's text holds several statements (a ';' before its end; maybe one in a literal): a pipeline
    takes one per string (the extended protocol), so it is sent on its own, where psycopg uses the simple protocol."""
    text = _text(query)
    return text is not None and ";" in text.rstrip().rstrip(";")


def classify(query: Any) -> tuple[bool, bool, bool]:
    """What a block needs to know of a statement before sending it, in one look (remembered for the last 1024 texts):
    whether it may call the extension's context functions itself (``set_tenant(…, false)`` would keep a context for
    the session: the block then clears any session-wide context before the connection goes back; a statement that is
    not text, a psycopg.sql.Composed, may), whether it holds several statements (:func:`several_statements`), and
    whether it looks like a read (:func:`_looks_read_only`)."""
    if isinstance(query, str):
        return _classify_text(query)
    text = _text(query)
    return (True, False, False) if text is None else _classify_text(text)


@functools.lru_cache(maxsize=1024)
def _classify_text(text: str) -> tuple[bool, bool, bool]:
    lowered = text.lower()
    names_a_context_function = "set_tenant" in lowered or "admin_context" in lowered
    return names_a_context_function, several_statements(text), _looks_read_only(text)


#: :func:`classify` of a ``str``, for the clients' path of every statement (a call fewer).
classify_text = _classify_text


class ReadPath:
    """A client's one-round-trip reads (see _sync.py): whether they are on (None: not yet known whether the database
    has them), and the statements the server refused in a read-only transaction, which go to the block's transaction
    from then on (so that a function that writes is not run twice each time)."""

    REMEMBERED = 1024

    def __init__(self, enabled: bool) -> None:
        self.enabled: bool | None = None if enabled else False
        self.refused: set[str] = set()

    def wants(self, query: Any) -> bool:
        """Whether to send ``query``, which :func:`classify` found to look like a read, in a read-only transaction of
        its own (given that the database has them)."""
        if self.enabled is False:
            return False
        if query.__class__ is str:  # the usual case, without a call
            return query not in self.refused
        text = _text(query)
        return text is not None and text not in self.refused

    def refused_by_server(self, query: Any, error: Exception) -> None:
        """The server refused ``query`` in a read-only transaction: 25000 (the isolation level) turns the reads off for
        the client; 25006 (it wrote, or hid an error) sends that statement to the block's transaction from now on."""
        if isinstance(error, psycopg.errors.InvalidTransactionState):
            self.enabled = False
            return
        text = _text(query)
        if text is None:
            return  # never sent that way (wants() is False for it)
        if len(self.refused) >= self.REMEMBERED:
            self.refused.clear()
        self.refused.add(text)


def begin_sql(conn: Any) -> str:
    """BEGIN with the characteristics the connection asks psycopg for (``isolation_level``, ``read_only``,
    ``deferrable``): the clients send BEGIN themselves, in a pipeline, where psycopg would have sent its own."""
    parts = ["BEGIN"]
    if conn.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + psycopg.IsolationLevel(conn.isolation_level).name.replace("_", " "))
    if conn.read_only is not None:
        parts.append("READ ONLY" if conn.read_only else "READ WRITE")
    if conn.deferrable is not None:
        parts.append("DEFERRABLE" if conn.deferrable else "NOT DEFERRABLE")
    return " ".join(parts)


#: The isolation levels of a connection whose transactions may be READ COMMITTED (None: the server's default).
READ_COMMITTED_OR_BELOW = (None, psycopg.IsolationLevel.READ_UNCOMMITTED, psycopg.IsolationLevel.READ_COMMITTED)


def reads_may_run_alone(conn: Any) -> bool:
    """Whether the connection's transactions may be READ COMMITTED, where a read in a transaction of its own sees what
    it would have seen in the block's (the server refuses it at any other level the connection does not name)."""
    return conn.isolation_level in READ_COMMITTED_OR_BELOW


_READ_KEYWORDS = ("select", "values", "table")


@functools.lru_cache(maxsize=1024)
def _looks_read_only(query: str) -> bool:
    """Whether a statement's text (remembered for the last 1024 texts) starts like a query that writes nothing
    (SELECT, VALUES, TABLE, after comments and parentheses), so that it is worth sending in a read-only transaction of
    its own. A guess only: the server enforces
    read-only, and a statement it refuses (SELECT ... FOR UPDATE, a function that writes) is run again in the block's
    transaction. A statement that names a call whose effect lasts until the end of the transaction
    (_TRANSACTION_SCOPED) does not count."""
    lowered = query.lower()
    if any(name in lowered for name in _TRANSACTION_SCOPED):
        return False
    if several_statements(query):
        return False
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch.isspace() or ch == "(":
            i += 1
        elif query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
        elif query.startswith("/*", i):
            end = query.find("*/", i)  # nested comments are rare: anything unusual takes the general way
            if end < 0 or "/*" in query[i + 2 : end]:
                return False
            i = end + 2
        else:
            break
    word = query[i : i + 7].lower()
    return any(word.startswith(k) and (len(word) == len(k) or not word[len(k)].isalnum() and word[len(k)] != "_")
               for k in _READ_KEYWORDS)


def tenant_id_text(tenant_id: uuid.UUID | str) -> str:
    """The canonical text of a tenant id; ValueError for anything that is not a UUID."""
    if isinstance(tenant_id, str):
        return _canonical_uuid(tenant_id)
    if isinstance(tenant_id, uuid.UUID):
        return str(tenant_id)
    raise TypeError(f"a tenant id is a uuid.UUID or its text, not {type(tenant_id).__name__}")


#: The canonical text of each tenant-id text seen (at most 4 096, then emptied): the same tenants come back request
#: after request, and a sync block looks its tenant up here before it calls anything (_sync.py). Only exact ``str``
#: texts go in: a str subclass is equal to the plain text it holds, but uuid.UUID() parses it with its own methods,
#: and what it parses as must not become the answer for that plain text. Nothing else writes to it.
CANONICAL_TEXTS: dict[str, str] = {}


def _canonical_uuid(text: str) -> str:
    """tenant_id_text of a text (remembered in CANONICAL_TEXTS when it is an exact ``str``)."""
    if text.__class__ is not str:
        return str(uuid.UUID(text))
    canonical = CANONICAL_TEXTS.get(text)
    if canonical is None:
        canonical = str(uuid.UUID(text))
        if len(CANONICAL_TEXTS) >= 4096:
            CANONICAL_TEXTS.clear()
        CANONICAL_TEXTS[text] = canonical
    return canonical


def token_tenant(token: str) -> str | None:
    """The tenant a token names, read without verifying it (the server verifies it): only to tell whether two nested
    contexts are for the same tenant. None if it cannot be read."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return tenant_id_text(claims["tid"])
    except (IndexError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: deeply nested JSON
        return None


def tenant_row(row: Sequence[Any] | None) -> dict[str, Any] | None:
    """A row of TENANT_COLUMNS as the seed's dictionary (``tenant["tenant_id"]``)."""
    if row is None:
        return None
    return {
        "tenant_id": str(row[0]),
        "name": row[1],
        "status": row[2],
        "created_at": row[3],
        "metadata": row[4],
    }


def as_dicts(description: Any, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    names = [column.name for column in description or ()]
    return [dict(zip(names, row)) for row in rows]


def metadata_json(metadata: dict[str, Any] | None) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be a dict (a JSON object)")
    return json.dumps(metadata)


def changes_json(changes: dict[str, Any]) -> str:
    if not isinstance(changes, dict):
        raise TypeError('changes must be a dict such as {"status": "inactive"}')
    return json.dumps(changes)


def interval_text(recent: str | _dt.timedelta) -> str:
    if isinstance(recent, _dt.timedelta):
        return f"{recent.total_seconds()} seconds"
    return recent


# The statements that enter a tenant's context for one read-only implicit transaction, made once.
_READ_ONLY = _pipeline.fixed(SET_TENANT_READ_ONLY)
_TOKEN_READ_ONLY = _pipeline.fixed(SET_TENANT_TOKEN_READ_ONLY)


def context_statements(
    kind: str, key: str | None, token: str | None, reason: str | None
) -> tuple[str, "_pipeline.Fixed | None", Any]:
    """A block's context statements (the sync and the async block alike): the one that enters it, the one that enters
    it for one read-only implicit transaction (None for the admin context, which has none), and their one argument
    (the tenant's id, the token, or the reason: the caller's qualified name when none was given)."""
    if kind == "tenant":
        if token:
            return SET_TENANT_TOKEN, _TOKEN_READ_ONLY, token
        return SET_TENANT, _READ_ONLY, key
    return ADMIN_CONTEXT, None, reason or caller_name()


def caller_name(skip_modules: Sequence[str] = ("contextlib", "nile_tenancy")) -> str:
    """The qualified name of the function that entered an admin context without a reason: recorded as the reason, so
    the audit trail (nile.admin_audit) says which code crossed tenants."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if not any(module == m or module.startswith(m + ".") for m in skip_modules):
                code = frame.f_code
                name = getattr(code, "co_qualname", code.co_name)  # co_qualname: Python 3.11+
                return f"{module}.{name}" if module else name
            frame = frame.f_back
        return "nile_tenancy"
    finally:
        del frame


@dataclasses.dataclass
class ForEachTenantResult:
    """What ``for_each_tenant`` did: the tenants done, the failures (tenant id → exception), and the tenants not yet
    started when it stopped early (Ctrl-C). Pass it back as ``resume=`` to run the failed and remaining tenants."""

    done: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, BaseException] = dataclasses.field(default_factory=dict)
    remaining: list[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.remaining

    def to_resume(self) -> list[str]:
        return list(self.failed) + list(self.remaining)


class Progress:
    """A one-line progress bar on a terminal (stderr), or nothing."""

    def __init__(self, total: int | None, enabled: bool | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.done, self.failed = total, 0, 0

    def step(self, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        if self.enabled:
            total = self.total or self.done
            filled = int(30 * self.done / max(total, 1))
            sys.stderr.write(
                f"\r[{'#' * filled}{' ' * (30 - filled)}] {self.done}/{total} tenants, {self.failed} failed"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()


def check_sources(dsn: str | None, pool: object, sandbox: bool) -> None:
    """A client is made from exactly one of a DSN, a pool of the caller's, or the sandbox."""
    if sum((dsn is not None, pool is not None, bool(sandbox))) != 1:
        raise TypeError("give exactly one of dsn, pool= or sandbox=True")


def pool_kwargs(prepared_statements: bool, connect_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The connection arguments of a pool the client opens. autocommit: a statement outside a context is its own
    transaction without BEGIN and COMMIT round trips, and a context sends its own BEGIN. No prepared statements unless
    asked: PgBouncer 1.18 in transaction mode cannot follow them."""
    return {"prepare_threshold": 5 if prepared_statements else None, "autocommit": True, **connect_kwargs}


def tenant_key(tenant_id: uuid.UUID | str | None, token: str | None) -> str | None:
    """The tenant a ``tenant_context(tenant_id)`` or ``tenant_context(token=...)`` is for (None: a token that cannot
    be read); TypeError unless exactly one is given."""
    if token is None and tenant_id.__class__ is str:  # the usual case: a tenant id's text, seen before
        return _canonical_uuid(tenant_id)
    if (tenant_id is None) == (token is None):
        raise TypeError("give either a tenant_id or token=")
    return tenant_id_text(tenant_id) if tenant_id is not None else token_tenant(token or "")


def check_verified_tenant(row: Sequence[Any] | None, active: str | None) -> None:
    """After the server verified a nested context's token (``set_tenant_token()`` returns the tenant it entered):
    NestedContextError unless it is the active context's tenant."""
    verified = None if row is None or row[0] is None else str(row[0])
    if verified is None or verified != active:
        raise errors.NestedContextError(
            f"a tenant context for {verified or 'a token'} cannot start inside the context of tenant {active}"
        )


def joins_active_context(current_kind: str | None, current_key: str | None, kind: str, key: str | None) -> bool:
    """Whether a context of ``kind`` (and tenant ``key``) asked for while another is active (``current_kind``, None
    if none) is that same context, which the block then simply joins. Any other nesting raises NestedContextError."""
    if current_kind is None:
        return False
    if current_kind == kind and (kind == "admin" or (key is not None and current_key == key)):
        return True
    wanted = "the admin context" if kind == "admin" else f"a tenant context for {key or 'a token'}"
    active = "the admin context" if current_kind == "admin" else f"the context of tenant {current_key}"
    raise errors.NestedContextError(f"{wanted} cannot start inside {active}")
