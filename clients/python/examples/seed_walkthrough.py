"""The seed's walkthrough with nile_tenancy: provision a tenant, add users in its context, backfill last_login_at per
tenant, deactivate and reactivate it, count active users across tenants in the admin context, and the sandbox notes.

    python examples/seed_walkthrough.py                      # in a sandbox (Nile(sandbox=True))
    python examples/seed_walkthrough.py ADMIN_DSN APP_DSN    # against your database (the tests run it this way)

ADMIN_DSN is an operator's role in nile_admin and in the application's role (it provisions tenants, reports and runs
batch jobs); APP_DSN is the application's role (nile_app).
The table `users` must exist and be a tenant table (created by your migrations; `setup_schema()` makes it).
"""

from __future__ import annotations

import sys

from nile_tenancy import Nile, errors


def setup_schema(nile: Nile) -> None:
    """The seed's users table; the extension enrolls it as a tenant table as it is created (nile.auto_enable)."""
    nile.sql.execute(
        """CREATE TABLE IF NOT EXISTS users (
               tenant_id uuid NOT NULL,
               id bigint GENERATED ALWAYS AS IDENTITY,
               username text NOT NULL,
               email text NOT NULL,
               created_at timestamptz NOT NULL DEFAULT now(),
               last_login_at timestamptz,
               is_active boolean NOT NULL DEFAULT true,
               PRIMARY KEY (tenant_id, id))"""
    )


def main(admin_dsn: str, app_dsn: str) -> str:
    with Nile(admin_dsn) as admin, Nile(app_dsn) as app:

        # Example 1: provisioning a new tenant.
        def create_customer_tenant(customer_email: str) -> str:
            tenant = admin.tenants.create(name=f"tenant-{customer_email}")
            return tenant["tenant_id"]

        # Running queries as a tenant.
        def add_user(tenant_id: str, username: str, email: str) -> None:
            with app.tenant_context(tenant_id):
                app.sql.execute("INSERT INTO users (username, email) VALUES (%s, %s)", (username, email))

        # Backfilling data safely, one tenant at a time.
        def backfill_last_login(tenant_id: str) -> None:
            with app.tenant_context(tenant_id):
                app.sql.execute("UPDATE users SET last_login_at = created_at WHERE last_login_at IS NULL")

        # Soft deleting (deactivating) a tenant.
        def deactivate_tenant(tenant_id: str) -> None:
            admin.tenants.update(tenant_id, {"status": "inactive"})

        # Cross-tenant reporting.
        def total_active_users() -> int:
            with admin.admin_context():
                result = admin.sql.fetch_one("SELECT COUNT(*) FROM users WHERE is_active = TRUE;")
            return result[0]

        acme = create_customer_tenant("ops@acme.test")
        globex = create_customer_tenant("it@globex.test")
        before = total_active_users()
        add_user(acme, "ada", "ada@acme.test")
        add_user(acme, "alan", "alan@acme.test")
        add_user(globex, "grace", "grace@globex.test")
        with app.tenant_context(acme):
            assert [r[0] for r in app.sql.fetch_all("SELECT username FROM users ORDER BY 1")] == ["ada", "alan"]

        backfill_last_login(acme)
        # The same backfill as a batch job over every active tenant, each in its own transaction and context (listing
        # the tenants needs nile_admin: run it as the operator's role).
        backfill = "UPDATE users SET last_login_at = created_at WHERE last_login_at IS NULL"
        result = admin.for_each_tenant(lambda tenant_id: admin.sql.execute(backfill), progress=False)
        assert acme in result.done and globex in result.done and not result.failed
        with app.tenant_context(globex):
            assert app.sql.fetch_one("SELECT count(*) FROM users WHERE last_login_at IS NULL") == (0,)

        deactivate_tenant(globex)
        try:
            add_user(globex, "hopper", "hopper@globex.test")
            raise AssertionError("an inactive tenant must not write")
        except errors.TenantInactive:
            pass  # reads still work: the account is read-only
        admin.tenants.reactivate(globex)
        add_user(globex, "hopper", "hopper@globex.test")

        assert total_active_users() == before + 4
        return "ok"


def sandbox_notes() -> list[tuple]:
    """Testing locally with the sandbox: a throwaway PostgreSQL with the extension, gone at close()."""
    with Nile(sandbox=True) as nile:
        sandbox_tenant = nile.tenants.create(name="dev-tenant")
        tenant_id = sandbox_tenant["tenant_id"]
        with nile.tenant_context(tenant_id):
            nile.sql.execute("CREATE TABLE IF NOT EXISTS notes (id SERIAL PRIMARY KEY, content TEXT);")
            nile.sql.execute("INSERT INTO notes (content) VALUES (%s)", ("Hello, Nile sandbox!",))
            rows = nile.sql.fetch_all("SELECT * FROM notes;")
        print(rows)
        return rows


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(main(sys.argv[1], sys.argv[2]))
    else:
        print(sandbox_notes())
