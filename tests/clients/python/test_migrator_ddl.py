"""The migration role app_migrator (examples/role_layout.sql) running plain DDL through psycopg, with no tenant or admin
context: what ORMs emit. The rows are written by app_user in each tenant's context, as the application would.

Each test names the numbered problem of issue 18 it guards.
"""

import uuid

import pytest

from conftest import FOREIGN_KEY_VIOLATION, admin_connect, connect, migrator_ddl, raises_sqlstate


@pytest.fixture
def parent_child():
    """Two fresh enrolled tables, parent (tenant_id, id) and child (tenant_id, id, parent_id), no foreign key yet."""
    s = uuid.uuid4().hex[:8]
    parent, child = f"parent_{s}", f"child_{s}"
    migrator_ddl(
        f"CREATE TABLE {parent} (tenant_id uuid NOT NULL, id uuid NOT NULL, name text, PRIMARY KEY (tenant_id, id));"
        f"CREATE TABLE {child} (tenant_id uuid NOT NULL, id uuid NOT NULL, parent_id uuid, "
        f"PRIMARY KEY (tenant_id, id))"
    )
    yield parent, child
    migrator_ddl(f"DROP TABLE IF EXISTS {child}, {parent}")


def write(tenant, sql, *params):
    with connect("app_user") as conn, conn.transaction():
        conn.execute("SELECT nile.set_tenant(%s)", (tenant,))
        conn.execute(sql, params)


def constraint(table, name):
    with admin_connect() as admin:
        return admin.execute(
            "SELECT convalidated, condeferrable, condeferred FROM pg_constraint WHERE conrelid = %s::regclass "
            "AND conname = %s",
            (table, name),
        ).fetchone()


# Problem 1: ADD FOREIGN KEY (tenant_id, parent_id) REFERENCES parent (tenant_id, id) between enrolled tables, by
# their non-superuser owner with no context, on empty tables and on tables holding two tenants' rows.
@pytest.mark.parametrize("with_rows", [False, True], ids=["empty", "with-rows"])
def test_composite_foreign_key_between_tenant_tables_needs_no_context(parent_child, tenant_a, tenant_b, with_rows):
    parent, child = parent_child
    if with_rows:
        for tenant in (tenant_a, tenant_b):
            pid = uuid.uuid4()
            write(tenant, f"INSERT INTO {parent} (id, name) VALUES (%s, 'p')", pid)
            write(tenant, f"INSERT INTO {child} (id, parent_id) VALUES (%s, %s)", uuid.uuid4(), pid)
    migrator_ddl(
        f"ALTER TABLE {child} ADD CONSTRAINT {child}_parent_fk FOREIGN KEY (tenant_id, parent_id) "
        f"REFERENCES {parent} (tenant_id, id)"
    )
    assert constraint(child, f"{child}_parent_fk") == (True, False, False)
    # The constraint holds afterwards: a row naming a parent its tenant does not have is refused.
    with raises_sqlstate(FOREIGN_KEY_VIOLATION):
        write(tenant_a, f"INSERT INTO {child} (id, parent_id) VALUES (%s, %s)", uuid.uuid4(), uuid.uuid4())


# Problem 1: what Django emits, a single-column foreign key to a unique id, DEFERRABLE INITIALLY DEFERRED; and the
# NOT VALID + VALIDATE CONSTRAINT form.
def test_django_style_and_not_valid_foreign_keys_need_no_context(parent_child, tenant_a):
    parent, child = parent_child
    pid = uuid.uuid4()
    write(tenant_a, f"INSERT INTO {parent} (id, name) VALUES (%s, 'p')", pid)
    write(tenant_a, f"INSERT INTO {child} (id, parent_id) VALUES (%s, %s)", uuid.uuid4(), pid)
    migrator_ddl(
        f"ALTER TABLE {parent} ADD CONSTRAINT {parent}_id_uniq UNIQUE (id);"
        f"ALTER TABLE {child} ADD CONSTRAINT {child}_django_fk FOREIGN KEY (parent_id) REFERENCES {parent} (id) "
        f"DEFERRABLE INITIALLY DEFERRED"
    )
    assert constraint(child, f"{child}_django_fk") == (True, True, True)
    migrator_ddl(
        f"ALTER TABLE {child} ADD CONSTRAINT {child}_nv_fk FOREIGN KEY (tenant_id, parent_id) "
        f"REFERENCES {parent} (tenant_id, id) NOT VALID"
    )
    assert constraint(child, f"{child}_nv_fk")[0] is False
    migrator_ddl(f"ALTER TABLE {child} VALIDATE CONSTRAINT {child}_nv_fk")
    assert constraint(child, f"{child}_nv_fk")[0] is True


# Problem 2: validation sees every tenant's rows. Tenant B has a dangling reference, tenant A none: ADD FOREIGN KEY
# and NOT VALID + VALIDATE CONSTRAINT both fail with 23503, and the constraint is not left marked valid.
def test_foreign_key_validation_sees_a_dangling_row_of_any_tenant(parent_child, tenant_a, tenant_b):
    parent, child = parent_child
    pid = uuid.uuid4()
    write(tenant_a, f"INSERT INTO {parent} (id, name) VALUES (%s, 'p')", pid)
    write(tenant_a, f"INSERT INTO {child} (id, parent_id) VALUES (%s, %s)", uuid.uuid4(), pid)
    write(tenant_b, f"INSERT INTO {child} (id, parent_id) VALUES (%s, %s)", uuid.uuid4(), uuid.uuid4())  # dangles
    with raises_sqlstate(FOREIGN_KEY_VIOLATION):
        migrator_ddl(
            f"ALTER TABLE {child} ADD CONSTRAINT {child}_parent_fk FOREIGN KEY (tenant_id, parent_id) "
            f"REFERENCES {parent} (tenant_id, id)"
        )
    assert constraint(child, f"{child}_parent_fk") is None
    migrator_ddl(
        f"ALTER TABLE {child} ADD CONSTRAINT {child}_parent_fk FOREIGN KEY (tenant_id, parent_id) "
        f"REFERENCES {parent} (tenant_id, id) NOT VALID"
    )
    with raises_sqlstate(FOREIGN_KEY_VIOLATION):
        migrator_ddl(f"ALTER TABLE {child} VALIDATE CONSTRAINT {child}_parent_fk")
    assert constraint(child, f"{child}_parent_fk")[0] is False
    # Django's single-column form as well (B's dangling parent_id exists in no tenant).
    migrator_ddl(f"ALTER TABLE {parent} ADD CONSTRAINT {parent}_id_uniq UNIQUE (id)")
    with raises_sqlstate(FOREIGN_KEY_VIOLATION):
        migrator_ddl(
            f"ALTER TABLE {child} ADD CONSTRAINT {child}_django_fk FOREIGN KEY (parent_id) "
            f"REFERENCES {parent} (id) DEFERRABLE INITIALLY DEFERRED"
        )


# Problem 3: the seed playbook's column, written by the non-superuser migrator.
def test_migrator_may_reference_nile_tenants(admin, tenant_a):
    table = f"accounts_{uuid.uuid4().hex[:8]}"
    migrator_ddl(
        f"CREATE TABLE {table} (tenant_id uuid NOT NULL REFERENCES nile.tenants (id) ON DELETE CASCADE, "
        f"id uuid NOT NULL, PRIMARY KEY (tenant_id, id))"
    )
    try:
        write(tenant_a, f"INSERT INTO {table} (id) VALUES (%s)", uuid.uuid4())
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 1
        admin.execute("SELECT nile.delete_tenant(%s, purge => true)", (tenant_a,))
        assert admin.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        assert admin.execute(
            "SELECT count(*) FROM nile.tenant_tables WHERE relid = %s::regclass", (table,)
        ).fetchone()[0] == 1
    finally:
        migrator_ddl(f"DROP TABLE IF EXISTS {table}")


# Problem 4: with examples/role_layout.sql, nile.verify() reports nothing about roles (here, with two enrolled tables
# joined by a composite foreign key, nothing at all).
def test_verify_is_clean_with_the_role_layout(admin):
    s = uuid.uuid4().hex[:8]
    parent, child = f"vparent_{s}", f"vchild_{s}"
    migrator_ddl(
        f"CREATE TABLE {parent} (tenant_id uuid NOT NULL, id uuid NOT NULL, PRIMARY KEY (tenant_id, id));"
        f"CREATE TABLE {child} (tenant_id uuid NOT NULL, id uuid NOT NULL, parent_id uuid NOT NULL, "
        f"PRIMARY KEY (tenant_id, id), FOREIGN KEY (tenant_id, parent_id) REFERENCES {parent} (tenant_id, id))"
    )
    try:
        findings = admin.execute("SELECT severity, object, problem FROM nile.verify() WHERE object NOT LIKE 'role %' OR object IN ('role app_migrator', 'role app_user')").fetchall()
    finally:
        migrator_ddl(f"DROP TABLE IF EXISTS {child}, {parent}")
    assert [f for f in findings if f[1].startswith("role ")] == []
    assert findings == []
