-- sql/tenants.sql — the tenants: the table nile.tenants, its row-level security, the trigger that empties the tenant
-- caches, the SQL signatures of the tenant lifecycle (update, deactivate, reactivate) and the privileges of all of it,
-- with those of its Rust functions: nile.create_tenant(), nile._update_tenant() and nile.delete_tenant()
-- (src/tenants/lifecycle.rs), nile.uuidv7() (src/pg/uuid_text.rs) and the trigger function nile.tenants_changed()
-- (src/context/tenant_cache.rs). Runs after them; where signatures and privileges live: the header of
-- sql/bootstrap.sql.

-- The tenants. Column order matters to src/context/tenant_cache.rs only through the names it looks up.
CREATE TABLE nile.tenants (
    id          uuid        NOT NULL DEFAULT nile.uuidv7(),
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
-- Privileges: every write goes through the extension's functions, which check the caller's role first.
REVOKE ALL ON nile.tenants FROM PUBLIC;
GRANT SELECT ON nile.tenants TO PUBLIC;               -- row-level security limits it to the session's own tenant
-- Foreign keys to nile.tenants, for the owners of tenant tables (a foreign key can hold up a tenant's purge, so not for
-- PUBLIC). Only a superuser may create a cast to uuid that runs a function, and verify() reports a key from a column
-- that is not uuid: a lookup in nile.tenants runs as its owner (src/tables/fk_validation.rs).
GRANT REFERENCES (id) ON nile.tenants TO nile_table_owner;
-- pg_dump dumps its rows (the extension's own objects are recreated by CREATE EXTENSION): a restored database keeps
-- its tenants.
SELECT pg_catalog.pg_extension_config_dump('nile.tenants', '');

-- The default of nile.tenants.id, for everyone.
REVOKE ALL ON FUNCTION nile.uuidv7() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.uuidv7() TO PUBLIC;

-- A tenant session sees its own tenant only; the admin context sees all (see src/context/admin.rs).
ALTER TABLE nile.tenants ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY nile_tenant_select ON nile.tenants FOR SELECT TO PUBLIC USING (id = (SELECT nile.policy_read_tenant()));
-- The purge deletes the tenant's row as nile_purger, a role with no members and no other right
-- (src/tenants/lifecycle.rs): the AFTER triggers that a cascade from nile.tenants queues into a table owner's table
-- fire as it, never as a superuser.
GRANT SELECT, DELETE ON nile.tenants TO nile_purger;
CREATE POLICY nile_purger_delete ON nile.tenants FOR DELETE TO nile_purger USING (id = (SELECT nile.policy_write_tenant()));

-- Any change to a tenant empties every backend's tenant cache (src/context/tenant_cache.rs).
CREATE TRIGGER nile_tenants_changed
    AFTER UPDATE OR DELETE OR TRUNCATE ON nile.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION nile.tenants_changed();
REVOKE ALL ON FUNCTION nile.tenants_changed() FROM PUBLIC;   -- a trigger function, called by no one

-- create_tenant(name, id, metadata), delete_tenant(tenant_id, purge) and _update_tenant(tenant_id, changes), behind
-- update_tenant() below, are Rust (src/tenants/lifecycle.rs): for administrators.
REVOKE ALL ON FUNCTION nile.create_tenant(text, uuid, jsonb), nile._update_tenant(uuid, jsonb),
    nile.delete_tenant(uuid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.create_tenant(text, uuid, jsonb), nile._update_tenant(uuid, jsonb),
    nile.delete_tenant(uuid, boolean) TO nile_admin;

-- update_tenant(tenant_id, changes): apply {"name": ..., "status": ..., "metadata": ...} and return the new row.
CREATE FUNCTION nile.update_tenant(tenant_id uuid, changes jsonb) RETURNS nile.tenants
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        -- In FROM, so that _update_tenant runs once (a (row).* in the select list would run it once per column).
        SELECT r.* FROM pg_catalog.jsonb_populate_record(NULL::nile.tenants, nile._update_tenant(tenant_id, changes)) AS r;
    END;
REVOKE ALL ON FUNCTION nile.update_tenant(uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.update_tenant(uuid, jsonb) TO nile_admin;

-- deactivate_tenant(tenant_id): the tenant keeps read access to its rows; every write is refused.
CREATE FUNCTION nile.deactivate_tenant(tenant_id uuid) RETURNS nile.tenants
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT * FROM nile.update_tenant(tenant_id, '{"status": "inactive"}');
    END;
REVOKE ALL ON FUNCTION nile.deactivate_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.deactivate_tenant(uuid) TO nile_admin;

-- reactivate_tenant(tenant_id): back to active, from inactive or from a soft delete.
CREATE FUNCTION nile.reactivate_tenant(tenant_id uuid) RETURNS nile.tenants
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT * FROM nile.update_tenant(tenant_id, '{"status": "active"}');
    END;
REVOKE ALL ON FUNCTION nile.reactivate_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.reactivate_tenant(uuid) TO nile_admin;
