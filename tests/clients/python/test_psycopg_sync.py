"""psycopg 3, synchronous: the application role app_user working per transaction, and every error it must handle.

Each test names the numbered problem of issue 18 it guards ("isolation" where it guards the isolation itself).
"""

import psycopg
import pytest

from conftest import (
    CONTEXT_FORGERY,
    FEATURE_NOT_SUPPORTED,
    INSUFFICIENT_PRIVILEGE,
    NO_TENANT_CONTEXT,
    NOT_IN_TRANSACTION,
    ROW_OF_ANOTHER_TENANT,
    SESSION_SCOPE_REFUSED,
    TENANT_DELETED,
    TENANT_INACTIVE,
    TENANT_NOT_FOUND,
    VIA_PGBOUNCER,
    admin_connect,
    bodies_as,
    connect,
    create_tenant,
    insert_as,
    raises_sqlstate,
)


# Isolation: two tenants on one connection, one transaction each, set_tenant() first.
def test_transactions_with_set_tenant_see_only_their_rows(items, tenant_a, tenant_b):
    with connect("app_user") as conn:
        for tenant, body in [(tenant_a, "a1"), (tenant_b, "b1"), (tenant_a, "a2")]:
            with conn.transaction():
                assert conn.execute("SELECT nile.set_tenant(%s)", (tenant,)).fetchone()[0] is not None
                conn.execute(f"INSERT INTO {items} (body) VALUES (%s)", (body,))
        for tenant, expected in [(tenant_a, ["a1", "a2"]), (tenant_b, ["b1"])]:
            with conn.transaction():
                conn.execute("SELECT nile.set_tenant(%s)", (tenant,))
                rows = conn.execute(f"SELECT tenant_id, body FROM {items} ORDER BY id").fetchall()
                assert [b for _, b in rows] == expected
                assert {str(t) for t, _ in rows} == {tenant}
            # The context ended with the transaction.
            assert conn.execute("SELECT nile.current_tenant()").fetchone()[0] is None
            conn.rollback()


# Problem 9 (NT001): a forgotten set_tenant() fails closed with its own SQLSTATE, never returns rows.
def test_forgotten_set_tenant_fails_closed_with_nt001(items, tenant_a):
    insert_as(tenant_a, items, "secret")
    with connect("app_user") as conn:
        with raises_sqlstate(NO_TENANT_CONTEXT), conn.transaction():
            conn.execute(f"SELECT body FROM {items}").fetchall()
        with raises_sqlstate(NO_TENANT_CONTEXT), conn.transaction():
            conn.execute(f"INSERT INTO {items} (tenant_id, body) VALUES (%s, 'x')", (tenant_a,))
    # In autocommit mode too.
    with connect("app_user", autocommit=True) as conn, raises_sqlstate(NO_TENANT_CONTEXT):
        conn.execute(f"SELECT count(*) FROM {items}").fetchone()


# Problem 9 (NT002): set_tenant() of an id that is no tenant.
def test_unknown_tenant_is_nt002():
    with connect("app_user") as conn, raises_sqlstate(TENANT_NOT_FOUND), conn.transaction():
        conn.execute("SELECT nile.set_tenant(%s)", ("00000000-0000-7000-8000-000000000000",))


# Problem 9 (NT003): an inactive tenant reads its rows, every write is refused with its own SQLSTATE.
def test_inactive_tenant_reads_but_writes_are_nt003(admin, items, tenant_a):
    insert_as(tenant_a, items, "before")
    admin.execute("SELECT nile.deactivate_tenant(%s)", (tenant_a,))
    assert [b for _, b in bodies_as(tenant_a, items)] == ["before"]
    with connect("app_user") as conn, raises_sqlstate(TENANT_INACTIVE), conn.transaction():
        conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
        conn.execute(f"INSERT INTO {items} (body) VALUES ('after')")


# Problem 9 (NT004): a deleted tenant, at set_tenant() and in the middle of a transaction alike.
def test_deleted_tenant_is_nt004_at_set_tenant_and_mid_transaction(admin, items, tenant_a):
    insert_as(tenant_a, items, "row")
    with connect("app_user") as conn:
        with raises_sqlstate(TENANT_DELETED), conn.transaction():
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
            assert conn.execute(f"SELECT count(*) FROM {items}").fetchone()[0] == 1
            admin.execute("SELECT nile.delete_tenant(%s)", (tenant_a,))
            conn.execute(f"SELECT count(*) FROM {items}").fetchone()
        with raises_sqlstate(TENANT_DELETED), conn.transaction():
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))


# Problem 9 (NT005): writing a row that carries another tenant's id (WITH CHECK), by INSERT and by UPDATE.
def test_writing_another_tenants_id_is_nt005(items, tenant_a, tenant_b):
    insert_as(tenant_a, items, "mine")
    with connect("app_user") as conn:
        with raises_sqlstate(ROW_OF_ANOTHER_TENANT), conn.transaction():
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
            conn.execute(f"INSERT INTO {items} (tenant_id, body) VALUES (%s, 'planted')", (tenant_b,))
        with raises_sqlstate(ROW_OF_ANOTHER_TENANT), conn.transaction():
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
            conn.execute(f"UPDATE {items} SET tenant_id = %s", (tenant_b,))
    assert bodies_as(tenant_b, items) == []


# Problem 9 (NT006): forging the context with SET / set_config() instead of nile.set_tenant().
def test_forging_the_context_with_set_is_nt006(items, tenant_a):
    insert_as(tenant_a, items, "row")
    with connect("app_user") as conn:
        with raises_sqlstate(CONTEXT_FORGERY), conn.transaction():
            conn.execute(f"SET LOCAL nile.tenant_id = '{tenant_a}'")
        with raises_sqlstate(CONTEXT_FORGERY), conn.transaction():
            conn.execute("SELECT set_config('nile.tenant_id', %s, true)", (tenant_a,))
    with connect("app_user", autocommit=True) as conn:
        with raises_sqlstate(CONTEXT_FORGERY):
            conn.execute(f"SET nile.tenant_id = '{tenant_a}'")
        with raises_sqlstate(NO_TENANT_CONTEXT):
            conn.execute(f"SELECT body FROM {items}").fetchall()


# Problems 7 and 9 (NT007): the layout forbids session scope to app_user (nile.allow_session_scope = off).
def test_session_scope_is_refused_for_app_user_nt007(items, tenant_a):
    with connect("app_user", autocommit=True) as conn:
        assert conn.execute("SHOW nile.allow_session_scope").fetchone()[0] == "off"
        with raises_sqlstate(SESSION_SCOPE_REFUSED):
            conn.execute("SELECT nile.set_tenant(%s, is_local => false)", (tenant_a,))
        assert conn.execute("SELECT nile.current_tenant()").fetchone()[0] is None
        with raises_sqlstate(NO_TENANT_CONTEXT):
            conn.execute(f"SELECT body FROM {items}").fetchall()


# Problem 9 (25P01): set_tenant() outside a transaction block is an error, never a silent no-op.
def test_set_tenant_outside_a_transaction_is_25p01(tenant_a):
    with connect("app_user", autocommit=True) as conn:
        with raises_sqlstate(NOT_IN_TRANSACTION):
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
        assert conn.execute("SELECT nile.current_tenant()").fetchone()[0] is None


# Problem 6: a WITH HOLD cursor (psycopg's named cursor, withhold=True) in a tenant context is refused (0A000).
def test_with_hold_cursor_in_a_tenant_context_is_refused(items, tenant_a):
    insert_as(tenant_a, items, "held")
    with connect("app_user") as conn:
        with raises_sqlstate(FEATURE_NOT_SUPPORTED), conn.transaction():
            conn.execute("SELECT nile.set_tenant(%s)", (tenant_a,))
            with conn.cursor(name="held_rows", withhold=True) as cur:
                cur.execute(f"SELECT body FROM {items}")
                cur.fetchall()
        # Nothing outlived the transaction: no such cursor, and no context.
        with raises_sqlstate("34000"), conn.transaction():
            conn.execute("FETCH ALL FROM held_rows")
        assert conn.execute("SELECT nile.current_tenant()").fetchone()[0] is None
        conn.rollback()


# Problem 8: the application cannot change nile.missing_tenant (it would change what the next pooled client gets).
def test_set_missing_tenant_by_the_app_is_refused(items):
    with connect("app_user", autocommit=True) as conn:
        with raises_sqlstate(INSUFFICIENT_PRIVILEGE):
            conn.execute("SET nile.missing_tenant = deny")
        with raises_sqlstate(INSUFFICIENT_PRIVILEGE):
            conn.execute("SELECT set_config('nile.missing_tenant', 'deny', false)")
        assert conn.execute("SHOW nile.missing_tenant").fetchone()[0] == "error"
        with raises_sqlstate(NO_TENANT_CONTEXT):
            conn.execute(f"SELECT body FROM {items}").fetchall()


# Problem 10: N transactions of `set_tenant(); SELECT one row` are N statements and N rows in nile.my_usage
# (the statement entering the context is nobody's work). Directly, psycopg prepares the SELECT from its 6th run on.
def test_usage_counts_n_statements_and_n_rows_for_n_transactions(admin, items):
    n = 10
    tenant = create_tenant(admin, "py-usage")
    # The one row is written by the superuser (no tenant context): it is not the tenant's usage.
    admin.execute(f"INSERT INTO {items} (tenant_id, body) VALUES (%s, 'only')", (tenant,))
    with connect("app_user") as conn:
        for _ in range(n):
            with conn.transaction():
                conn.execute("SELECT nile.set_tenant(%s)", (tenant,))
                assert conn.execute(f"SELECT body FROM {items}").fetchall() == [("only",)]
        with conn.transaction():
            conn.execute("SELECT nile.set_tenant(%s)", (tenant,))
            usage = conn.execute(
                "SELECT statements, rows_returned, rows_inserted, errors FROM nile.my_usage"
            ).fetchall()
    assert usage == [(n, n, 0, 0)], f"nile.my_usage after {n} transactions: {usage}"


# Isolation: one statement text run many times (prepared by psycopg from the 6th run when direct) alternating
# between tenants always answers for the tenant of its own transaction.
def test_repeated_and_prepared_queries_follow_the_tenant(items, tenant_a, tenant_b):
    insert_as(tenant_a, items, "a")
    insert_as(tenant_b, items, "b")
    with connect("app_user") as conn:
        for i in range(14):
            tenant, expected = (tenant_a, "a") if i % 2 == 0 else (tenant_b, "b")
            with conn.transaction():
                conn.execute("SELECT nile.set_tenant(%s)", (tenant,))
                rows = conn.execute(f"SELECT tenant_id, body FROM {items} WHERE body <> %s", ("",)).fetchall()
                assert [(str(t), b) for t, b in rows] == [(tenant, expected)]
        if not VIA_PGBOUNCER:
            prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
            assert prepared > 0, "psycopg did not prepare the repeated query: the test did not test prepared plans"
