-- examples/role_layout.sql — the role layout for a real deployment (docs/getting-started.md, "Roles for a real deployment").
-- Run it once per database as a superuser, after CREATE EXTENSION nile_tenancy; it is idempotent. Change the
-- passwords (or use the authentication your pg_hba.conf asks for). With it, nile.verify() reports nothing about roles.
--
--   app_migrator  LOGIN, not a superuser: runs the migrations (Django, Alembic, Knex, drizzle-kit, plain SQL) and owns
--                 every table. A member of nile_table_owner, so it may write REFERENCES nile.tenants (id). It needs no
--                 tenant or admin context to create, change or drop tenant tables: tables with a tenant column are
--                 enrolled as they are created, and foreign keys are validated over every tenant's rows. As the owner
--                 it is trusted with every tenant's data: its code (a trigger, ALTER TABLE ... USING) reads every row.
--   app_user      LOGIN: the application. A member of nile_app (may enter a tenant's context with nile.set_tenant())
--                 and given SELECT, INSERT, UPDATE, DELETE on the migrator's tables, USAGE on its sequences. It owns
--                 nothing and may not keep a tenant context past a transaction (nile.allow_session_scope = off).
--
-- Tenants are created by a member of nile_admin (a back-office role, or a SECURITY DEFINER sign-up function owned by
-- one; docs/tenants.md), never by app_user itself.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'app_migrator') THEN
        CREATE ROLE app_migrator LOGIN PASSWORD 'change-me-migrator';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'app_user') THEN
        CREATE ROLE app_user LOGIN PASSWORD 'change-me-app';
    END IF;
END
$$;

GRANT nile_table_owner TO app_migrator;
GRANT nile_app TO app_user;
ALTER ROLE app_user SET nile.allow_session_scope = off;

-- Only the migrator creates objects in the public schema: on PostgreSQL 14 every role still may (an application role
-- could plant a function or an operator there that the migrator's statements would run). A tool that keeps its journal
-- in a schema of its own needs it created for the migrator: CREATE SCHEMA drizzle AUTHORIZATION app_migrator (drizzle-kit).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO app_migrator;
GRANT USAGE ON SCHEMA public TO app_user;

-- What the application may do with every table and sequence the migrator creates from now on. No TRUNCATE (it would
-- empty every tenant's rows at once) and no REFERENCES or TRIGGER.
ALTER DEFAULT PRIVILEGES FOR ROLE app_migrator IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO app_user;
ALTER DEFAULT PRIVILEGES FOR ROLE app_migrator IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO app_user;
