-- sql/bootstrap.sql — roles and tables of nile_tenancy. Runs first, before any function is created.
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
        COMMENT ON ROLE nile_purger IS 'nile_tenancy: the powerless role that deletes a purged tenant''s row (src/tenants.rs); give it no members';
    END IF;
    -- An administrator can do everything an application role can.
    IF NOT pg_catalog.pg_has_role('nile_admin', 'nile_app', 'MEMBER') THEN
        GRANT nile_app TO nile_admin;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA nile TO PUBLIC;

-- The tenants. Column order matters to src/tenant_cache.rs only through the names it looks up.
CREATE TABLE nile.tenants (
    id          uuid        NOT NULL,
    name        text        NOT NULL,
    status      text        NOT NULL DEFAULT 'active',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    deleted_at  timestamptz,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_name_not_blank CHECK (pg_catalog.btrim(name) <> ''),
    CONSTRAINT tenants_status_valid CHECK (status IN ('active', 'inactive', 'deleted')),
    CONSTRAINT tenants_deleted_at_matches_status CHECK ((status = 'deleted') = (deleted_at IS NOT NULL)),
    CONSTRAINT tenants_metadata_is_object CHECK (pg_catalog.jsonb_typeof(metadata) = 'object')
);
COMMENT ON TABLE nile.tenants IS 'nile_tenancy: one row per tenant. A tenant session sees its own row only; nile.admin_context() sees all.';

-- The registry of tables whose rows are isolated per tenant (partitions are listed with their parent).
CREATE TABLE nile.tenant_tables (
    relid          regclass    NOT NULL PRIMARY KEY,
    tenant_column  name        NOT NULL,
    parent         regclass,
    enabled_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_by     name        NOT NULL DEFAULT CURRENT_USER
);
-- The DDL event trigger looks up "is this a tenant column name?" on every DDL command.
CREATE INDEX tenant_tables_tenant_column_idx ON nile.tenant_tables (tenant_column);
COMMENT ON TABLE nile.tenant_tables IS 'nile_tenancy: tables enrolled with nile.enable_tenancy(); parent is set for partitions';

-- Tables that carry a tenant column but are deliberately shared (nile.disable_tenancy() puts them here): the DDL
-- event trigger does not enroll them and nile.verify() does not report them. Partitions and children follow them.
CREATE TABLE nile.excluded_tables (
    relid        regclass    NOT NULL PRIMARY KEY,
    excluded_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    excluded_by  name        NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE nile.excluded_tables IS 'nile_tenancy: tables with a tenant column that nile.disable_tenancy() marked as shared on purpose';

-- Tenant-bound roles (nile.bind_role()): every session of such a role works for its tenant and cannot leave it.
CREATE TABLE nile.role_bindings (
    role       regrole     NOT NULL PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES nile.tenants (id) ON DELETE CASCADE,
    bound_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    bound_by   name        NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE nile.role_bindings IS 'nile_tenancy: roles whose every session is fixed to one tenant (nile.bind_role())';

-- Every use of nile.admin_context(). Rows are written in the caller's transaction; a server log line is written too,
-- which survives a rollback.
CREATE TABLE nile.admin_audit (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    session_role  name        NOT NULL DEFAULT SESSION_USER,
    acting_role   name        NOT NULL DEFAULT CURRENT_USER,
    reason        text        NOT NULL,
    backend_pid   integer     NOT NULL DEFAULT pg_catalog.pg_backend_pid(),
    xact_id       xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id()
);
COMMENT ON TABLE nile.admin_audit IS 'nile_tenancy: who entered nile.admin_context(), when, and why';

-- Usage history for billing: what each tenant (and the no-tenant, admin and overflow rows) did in each period between
-- two flushes of the shared usage counters (src/usage/history.rs, written every nile.usage_flush_interval by the
-- background worker of src/usage/flusher.rs). Rows are never updated; delete old periods to keep it small.
CREATE TABLE nile.usage_history (
    period_start         timestamptz      NOT NULL,
    period_end           timestamptz      NOT NULL,
    kind                 text             NOT NULL,
    tenant_id            uuid,
    statements           bigint           NOT NULL,
    errors               bigint           NOT NULL,
    rows_returned        bigint           NOT NULL,
    rows_inserted        bigint           NOT NULL,
    rows_updated         bigint           NOT NULL,
    rows_deleted         bigint           NOT NULL,
    total_time_ms        double precision NOT NULL,
    p50_ms               double precision,
    p95_ms               double precision,
    p99_ms               double precision,
    cpu_user_ms          double precision NOT NULL,
    cpu_system_ms        double precision NOT NULL,
    shared_blks_hit      bigint           NOT NULL,
    shared_blks_read     bigint           NOT NULL,
    shared_blks_dirtied  bigint           NOT NULL,
    CONSTRAINT usage_history_kind_valid CHECK (kind IN ('tenant', 'no tenant', 'admin', 'overflow')),
    CONSTRAINT usage_history_tenant_matches_kind CHECK ((kind = 'tenant') = (tenant_id IS NOT NULL)),
    CONSTRAINT usage_history_period_valid CHECK (period_start <= period_end)
);
CREATE INDEX usage_history_period_end_idx ON nile.usage_history (period_end);
CREATE INDEX usage_history_tenant_idx ON nile.usage_history (tenant_id, period_end);
COMMENT ON TABLE nile.usage_history IS 'nile_tenancy: usage per tenant per period between two flushes (nile.usage_flush_interval), for billing';

-- Privileges: every write goes through the extension's functions, which check the caller's role first.
REVOKE ALL ON nile.tenants, nile.tenant_tables, nile.excluded_tables, nile.role_bindings, nile.admin_audit,
    nile.usage_history FROM PUBLIC;
GRANT SELECT ON nile.tenants TO PUBLIC;               -- row-level security limits it to the session's own tenant
-- Foreign keys to nile.tenants, for the owners of tenant tables (a foreign key can hold up a tenant's purge, so not for
-- PUBLIC). Only a superuser may create a cast to uuid that runs a function, and verify() reports a key from a column
-- that is not uuid: a lookup in nile.tenants runs as its owner (src/fk_validation.rs).
GRANT REFERENCES (id) ON nile.tenants TO nile_table_owner;
GRANT SELECT ON nile.tenant_tables, nile.excluded_tables TO PUBLIC;
GRANT SELECT ON nile.admin_audit, nile.role_bindings TO nile_admin;
-- Every tenant's usage: for administrators and monitoring, never for PUBLIC; administrators delete old periods.
GRANT SELECT, DELETE ON nile.usage_history TO nile_admin;
GRANT SELECT ON nile.usage_history TO pg_monitor;

-- pg_dump dumps the rows of these tables (the extension's own objects are recreated by CREATE EXTENSION): a restored
-- database keeps its tenants, its registry, its audit trail and its usage history. The registry's regclass values are dumped as names.
SELECT pg_catalog.pg_extension_config_dump('nile.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('nile.tenant_tables', '');
SELECT pg_catalog.pg_extension_config_dump('nile.excluded_tables', '');
SELECT pg_catalog.pg_extension_config_dump('nile.role_bindings', '');
SELECT pg_catalog.pg_extension_config_dump('nile.admin_audit', '');
SELECT pg_catalog.pg_extension_config_dump('nile.admin_audit_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('nile.usage_history', '');
