"""psycopg_pool.ConnectionPool (sync) with one connection: whatever a client does and forgets to clean up, the next
client of the same pooled connection gets no tenant context (NT001), never the previous client's rows.
Run directly and, in run.sh's second pass, through PgBouncer in transaction mode (prepare_threshold=None).

Each test names the numbered problem of issue 18 it guards.
"""

import contextlib

import pytest
from psycopg_pool import ConnectionPool

from conftest import (
    FEATURE_NOT_SUPPORTED,
    INSUFFICIENT_PRIVILEGE,
    NO_TENANT_CONTEXT,
    NOT_IN_TRANSACTION,
    SESSION_SCOPE_REFUSED,
    client_kwargs,
    conninfo,
    insert_as,
    raises_sqlstate,
)


@pytest.fixture
def pool():
    # One connection: the next client is certain to get the very connection the previous one returned.
    with ConnectionPool(conninfo("app_user"), min_size=1, max_size=1, kwargs=client_kwargs(), open=False) as p:
        yield p


def next_client_sees_nothing(pool, items):
    """The next client forgets set_tenant(): no context, and reading the tenant table fails closed with NT001."""
    with pool.connection() as conn:
        assert conn.execute("SELECT nile.current_tenant()").fetchone()[0] is None
        conn.rollback()
        with raises_sqlstate(NO_TENANT_CONTEXT), conn.transaction():
            rows = conn.execute(f"SELECT tenant_id, body FROM {items}").fetchall()
            raise AssertionError(f"the next client read rows without a tenant context: {rows}")
        with raises_sqlstate(NO_TENANT_CONTEXT):
            conn.execute(f"SELECT tenant_id, body FROM {items}").fetchall()


# Problem 7 (baseline): a client that worked in a tenant's transaction and returned the connection leaves nothing.
def test_pool_next_client_after_a_tenant_transaction_has_no_context(pool, items, tenant_a):
    with pool.connection() as conn:
        conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))  # psycopg opened the transaction
        conn.execute(f"INSERT INTO {items} (body) VALUES ('a')")
        # ... the pool commits on return
    next_client_sees_nothing(pool, items)
    # The row was committed for A (the check above is not vacuous).
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
        assert conn.execute(f"SELECT body FROM {items}").fetchall() == [("a",)]


# Problem 7: a client that returns the connection in the middle of a tenant transaction (an exception escaped).
def test_pool_next_client_after_an_aborted_tenant_transaction_has_no_context(pool, items, tenant_a):
    insert_as(tenant_a, items, "a")
    with contextlib.suppress(RuntimeError), pool.connection() as conn:
        conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
        assert conn.execute(f"SELECT count(*) FROM {items}").fetchone()[0] == 1
        raise RuntimeError("the request failed half way")
    next_client_sees_nothing(pool, items)


# Problem 7: session scope (set_tenant(..., is_local => false)) is refused for app_user (NT007), in autocommit mode
# and inside a transaction; the next client gets NT001, not the tenant.
def test_pool_session_scope_is_refused_and_does_not_leak(pool, items, tenant_a):
    insert_as(tenant_a, items, "a")
    with pool.connection() as conn:
        conn.autocommit = True
        with raises_sqlstate(SESSION_SCOPE_REFUSED):
            conn.execute("SELECT nile.set_tenant(%s, is_local => false)", (tenant_a,))
        # The hint of 25P01 must not lead there either: the local form outside a transaction fails.
        with raises_sqlstate(NOT_IN_TRANSACTION):
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
        conn.autocommit = False
    with pool.connection() as conn:
        with raises_sqlstate(SESSION_SCOPE_REFUSED):
            conn.execute("SELECT nile.set_tenant(%s, false)", (tenant_a,))
    next_client_sees_nothing(pool, items)


# Problem 6: a WITH HOLD cursor declared in a tenant's context is refused (0A000), so there is nothing for the next
# client to FETCH; also not when the cursor is declared before set_tenant() in the same transaction.
def test_pool_with_hold_cursor_is_refused_and_next_client_fetches_nothing(pool, items, tenant_a):
    insert_as(tenant_a, items, "held")
    with pool.connection() as conn:
        with raises_sqlstate(FEATURE_NOT_SUPPORTED), conn.transaction():
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
            conn.execute(f"DECLARE leak CURSOR WITH HOLD FOR SELECT tenant_id, body FROM {items}")
        with raises_sqlstate(FEATURE_NOT_SUPPORTED), conn.transaction():
            conn.execute(f"DECLARE leak2 CURSOR WITH HOLD FOR SELECT tenant_id, body FROM {items}")
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
    with pool.connection() as conn:
        for name in ("leak", "leak2"):
            with raises_sqlstate("34000"), conn.transaction():
                rows = conn.execute(f"FETCH ALL FROM {name}").fetchall()
                raise AssertionError(f"the next client fetched {rows} from {name}")
    next_client_sees_nothing(pool, items)


# Problem 8: `SET nile.missing_tenant = deny` by a client is refused (42501); the next client still fails closed with
# NT001 (not an empty result that would hide its missing set_tenant()).
def test_pool_missing_tenant_deny_is_refused_and_next_client_still_fails_closed(pool, items, tenant_a):
    insert_as(tenant_a, items, "a")
    with pool.connection() as conn:
        conn.autocommit = True
        with raises_sqlstate(INSUFFICIENT_PRIVILEGE):
            conn.execute("SET nile.missing_tenant = deny")
        with raises_sqlstate(INSUFFICIENT_PRIVILEGE):
            conn.execute("SET SESSION nile.missing_tenant TO 'deny'")
        conn.autocommit = False
    with pool.connection() as conn:
        assert conn.execute("SHOW nile.missing_tenant").fetchone()[0] == "error"
        conn.rollback()
    next_client_sees_nothing(pool, items)
