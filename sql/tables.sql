-- sql/tables.sql — tenant tables: the registry of enrolled tables (nile.tenant_tables), the tables shared on purpose
-- (nile.excluded_tables), the SQL signatures nile.enable_tenancy() and nile.disable_tenancy() over their Rust
-- functions nile._enable_tenancy() and nile._disable_tenancy() (src/tables/enrolment.rs), and the privileges of all of
-- it. Runs after those Rust functions and after sql/tenants.sql; where signatures and privileges live: the header of
-- sql/bootstrap.sql.

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
-- Privileges: every write goes through the extension's functions, which check the caller's role first.
REVOKE ALL ON nile.tenant_tables FROM PUBLIC;
GRANT SELECT ON nile.tenant_tables TO PUBLIC;
-- pg_dump dumps its rows (the extension's own objects are recreated by CREATE EXTENSION): a restored database keeps
-- its registry. Its regclass values are dumped as names.
SELECT pg_catalog.pg_extension_config_dump('nile.tenant_tables', '');

-- Tables that carry a tenant column but are deliberately shared (nile.disable_tenancy() puts them here): the DDL
-- event trigger does not enroll them and nile.verify() does not report them. Partitions and children follow them.
CREATE TABLE nile.excluded_tables (
    relid        regclass    NOT NULL PRIMARY KEY,
    excluded_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    excluded_by  name        NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE nile.excluded_tables IS 'nile_tenancy: tables with a tenant column that nile.disable_tenancy() marked as shared on purpose';
REVOKE ALL ON nile.excluded_tables FROM PUBLIC;
GRANT SELECT ON nile.excluded_tables TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('nile.excluded_tables', '');

-- The Rust functions behind the two signatures below (src/tables/enrolment.rs), with the same privileges.
REVOKE ALL ON FUNCTION nile._enable_tenancy(oid, text, uuid), nile._disable_tenancy(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._enable_tenancy(oid, text, uuid) TO nile_admin, nile_table_owner;
GRANT EXECUTE ON FUNCTION nile._disable_tenancy(oid) TO nile_admin;

-- enable_tenancy(tbl, tenant_column, backfill_tenant): enroll a table (see src/tables/enrolment.rs).
CREATE FUNCTION nile.enable_tenancy(tbl regclass, tenant_column name DEFAULT 'tenant_id', backfill_tenant uuid DEFAULT NULL)
    RETURNS void
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT nile._enable_tenancy(tbl::oid, tenant_column::text, backfill_tenant);
    END;
REVOKE ALL ON FUNCTION nile.enable_tenancy(regclass, name, uuid) FROM PUBLIC;
-- Enrolling only adds protection: the migration role of examples/role_layout.sql enrolls the tables it owns.
GRANT EXECUTE ON FUNCTION nile.enable_tenancy(regclass, name, uuid) TO nile_admin, nile_table_owner;

-- disable_tenancy(tbl): the deliberate way out; columns and rows stay.
CREATE FUNCTION nile.disable_tenancy(tbl regclass) RETURNS void
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT nile._disable_tenancy(tbl::oid);
    END;
REVOKE ALL ON FUNCTION nile.disable_tenancy(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.disable_tenancy(regclass) TO nile_admin;
