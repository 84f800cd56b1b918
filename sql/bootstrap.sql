-- sql/bootstrap.sql — the roles of nile_tenancy and the use of its schema. Runs first (pgrx `bootstrap`), before any
-- function is created.
--
-- The install script, in order (src/lib.rs declares it): this file; the functions written in Rust (pgrx creates them
-- from the #[pg_extern]s of src/); tenants.sql, tables.sql, context.sql, usage.sql, lifecycle.sql, verify.sql, each
-- after the Rust functions it names and after the one before it; ddl_triggers.sql last (pgrx `finalize`).
--
-- Where a public signature lives (docs/contributing.md): a function whose logic is Rust is a #[pg_extern] in its
-- module of src/, and that is its public signature whenever pgrx can declare it as users call it. When the signature
-- needs what only SQL declares (a BEGIN ATOMIC body, a composite return such as nile.tenants, regclass or name
-- arguments), the Rust function is the underscore-named nile._name and the public nile.name is a SQL wrapper in the
-- .sql file of its concern; a function pgrx cannot declare at all (RETURNS event_trigger) is declared there over its
-- C symbol. Routines written in SQL or PL/pgSQL, tables and views live in the file of their concern too. Every
-- object's privileges live in the file of its concern: REVOKE ALL ... FROM PUBLIC, then its GRANTs, right after its
-- CREATE (for a Rust function, in the privileges part of that file). Nothing is executable by PUBLIC unless a file
-- grants it: the install stops at the end of ddl_triggers.sql when a function of schema nile has no privileges set.
--
-- Roles are cluster-wide, so they are created only when missing and are not members of the extension: DROP EXTENSION
-- leaves them (and the grants users gave them) in place.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'nile_app') THEN
        CREATE ROLE nile_app NOLOGIN;
        COMMENT ON ROLE nile_app IS 'nile_tenancy: may put its sessions into a tenant''s context with nile.set_tenant()';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'nile_admin') THEN
        CREATE ROLE nile_admin NOLOGIN;
        COMMENT ON ROLE nile_admin IS 'nile_tenancy: manages tenants and tenant tables, may enter nile.admin_context()';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'nile_table_owner') THEN
        CREATE ROLE nile_table_owner NOLOGIN;
        COMMENT ON ROLE nile_table_owner IS 'nile_tenancy: for the roles that own tenant tables and run migrations: may reference nile.tenants (id)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'nile_purger') THEN
        CREATE ROLE nile_purger NOLOGIN;
        COMMENT ON ROLE nile_purger IS 'nile_tenancy: the powerless role that deletes a purged tenant''s row (src/tenants/lifecycle.rs); give it no members';
    END IF;
    -- An administrator can do everything an application role can.
    IF NOT pg_catalog.pg_has_role('nile_admin', 'nile_app', 'MEMBER') THEN
        GRANT nile_app TO nile_admin;
    END IF;
END
$roles$;

-- Everyone may look up the objects of schema nile; what a role may do with each is granted in its concern's file.
GRANT USAGE ON SCHEMA nile TO PUBLIC;
