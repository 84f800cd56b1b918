-- sql/finalize.sql — everything that needs both the tables (bootstrap.sql) and the Rust functions: defaults, the row
-- level security of nile.tenants, the cache-invalidation trigger, the user-facing SQL signatures, and privileges.

ALTER TABLE nile.tenants ALTER COLUMN id SET DEFAULT nile.uuidv7();

-- A tenant session sees its own tenant only; the admin context sees all (see src/admin.rs).
ALTER TABLE nile.tenants ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY nile_tenant_select ON nile.tenants FOR SELECT TO PUBLIC USING (id = (SELECT nile.policy_read_tenant()));
-- The purge deletes the tenant's row as nile_purger, a role with no members and no other right (src/tenants.rs): the
-- AFTER triggers that a cascade from nile.tenants queues into a table owner's table fire as it, never as a superuser.
GRANT SELECT, DELETE ON nile.tenants TO nile_purger;
CREATE POLICY nile_purger_delete ON nile.tenants FOR DELETE TO nile_purger USING (id = (SELECT nile.policy_write_tenant()));

-- Any change to a tenant empties every backend's tenant cache (src/tenant_cache.rs).
CREATE TRIGGER nile_tenants_changed
    AFTER UPDATE OR DELETE OR TRUNCATE ON nile.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION nile.tenants_changed();
-- The same for the role bindings (src/role_binding.rs): the trigger function invalidates the table it fires on.
CREATE TRIGGER nile_role_bindings_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON nile.role_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION nile.tenants_changed();

-- update_tenant(tenant_id, changes): apply {"name": ..., "status": ..., "metadata": ...} and return the new row.
CREATE FUNCTION nile.update_tenant(tenant_id uuid, changes jsonb) RETURNS nile.tenants
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        -- In FROM, so that _update_tenant runs once (a (row).* in the select list would run it once per column).
        SELECT r.* FROM pg_catalog.jsonb_populate_record(NULL::nile.tenants, nile._update_tenant(tenant_id, changes)) AS r;
    END;

-- deactivate_tenant(tenant_id): the tenant keeps read access to its rows; every write is refused.
CREATE FUNCTION nile.deactivate_tenant(tenant_id uuid) RETURNS nile.tenants
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT * FROM nile.update_tenant(tenant_id, '{"status": "inactive"}');
    END;

-- reactivate_tenant(tenant_id): back to active, from inactive or from a soft delete.
CREATE FUNCTION nile.reactivate_tenant(tenant_id uuid) RETURNS nile.tenants
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT * FROM nile.update_tenant(tenant_id, '{"status": "active"}');
    END;

-- enable_tenancy(tbl, tenant_column, backfill_tenant): enroll a table (see src/tenancy.rs).
CREATE FUNCTION nile.enable_tenancy(tbl regclass, tenant_column name DEFAULT 'tenant_id', backfill_tenant uuid DEFAULT NULL)
    RETURNS void
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT nile._enable_tenancy(tbl::oid, tenant_column::text, backfill_tenant);
    END;

-- disable_tenancy(tbl): the deliberate way out; columns and rows stay.
CREATE FUNCTION nile.disable_tenancy(tbl regclass) RETURNS void
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT nile._disable_tenancy(tbl::oid);
    END;

-- The DDL event triggers (src/ddl/events.rs). Created last, so that none of the SQL above goes through them.
CREATE FUNCTION nile._ddl_command_end() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'nile_ddl_command_end';
CREATE FUNCTION nile._sql_drop() RETURNS event_trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'nile_sql_drop';
CREATE EVENT TRIGGER nile_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE', 'ALTER POLICY',
                 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE SCHEMA', 'CREATE CAST')
    EXECUTE FUNCTION nile._ddl_command_end();
CREATE EVENT TRIGGER nile_sql_drop ON sql_drop
    EXECUTE FUNCTION nile._sql_drop();

-- bind_role(role, tenant_id): every session of the role works for that tenant and cannot leave it (src/role_binding.rs).
CREATE FUNCTION nile.bind_role(role name, tenant_id uuid) RETURNS void
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT nile._bind_role(role::text, tenant_id);
    END;
-- unbind_role(role): release a bound role.
CREATE FUNCTION nile.unbind_role(role name) RETURNS void
    LANGUAGE sql VOLATILE PARALLEL UNSAFE
    BEGIN ATOMIC
        SELECT nile._unbind_role(role::text);
    END;

-- Privileges. Nothing is executable by PUBLIC unless listed here.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA nile FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    nile.current_tenant(), nile.clear_tenant(), nile.uuidv7(), nile.current_user_id(),
    nile.policy_read_tenant(), nile.policy_write_tenant(), nile.policy_foreign_row(uuid)
    TO PUBLIC;
GRANT EXECUTE ON FUNCTION nile.set_tenant(uuid, boolean), nile.set_tenant_token(text, boolean) TO nile_app;
GRANT EXECUTE ON FUNCTION
    nile.create_tenant(text, uuid, jsonb),
    nile.update_tenant(uuid, jsonb), nile._update_tenant(uuid, jsonb),
    nile.deactivate_tenant(uuid), nile.reactivate_tenant(uuid),
    nile.delete_tenant(uuid, boolean),
    nile.enable_tenancy(regclass, name, uuid), nile._enable_tenancy(oid, text, uuid),
    nile.disable_tenancy(regclass), nile._disable_tenancy(oid),
    nile.admin_context(text),
    nile.sign_tenant_token(uuid, interval, text),
    nile.bind_role(name, uuid), nile._bind_role(text, uuid), nile.unbind_role(name), nile._unbind_role(text),
    nile.verify(), nile._protection_problems(regclass),
    nile.reset_usage(uuid), nile.flush_usage(),
    -- what the routines of sql/lifecycle.sql call
    nile._enter_tenant_for_routine(uuid), nile._require_no_transaction_block(text), nile._tenant_tables_in_load_order(),
    nile._require_nile_admin(text)
    TO nile_admin;
-- Enrolling only adds protection: the migration role of examples/role_layout.sql enrolls the tables it owns.
GRANT EXECUTE ON FUNCTION nile.enable_tenancy(regclass, name, uuid), nile._enable_tenancy(oid, text, uuid)
    TO nile_table_owner;

-- Usage metering (src/usage/store.rs, src/usage/hooks.rs). Every tenant's figures are for nile_admin and pg_monitor;
-- a tenant session sees its own row in nile.my_usage.
CREATE VIEW nile.tenant_usage AS
    SELECT u.tenant_id, t.name AS tenant_name, u.kind, u.statements, u.errors,
           u.rows_returned, u.rows_inserted, u.rows_updated, u.rows_deleted,
           u.total_time_ms, u.mean_time_ms, u.max_time_ms, u.p50_ms, u.p95_ms, u.p99_ms,
           round((u.total_time_ms / nullif(sum(u.total_time_ms) OVER (), 0))::numeric, 4) AS share_of_time,
           u.cpu_user_ms, u.cpu_system_ms, u.shared_blks_hit, u.shared_blks_read, u.shared_blks_dirtied,
           u.first_activity, u.last_activity
    FROM nile._usage() u
    LEFT JOIN nile.tenants t ON t.id = u.tenant_id;
COMMENT ON VIEW nile.tenant_usage IS 'nile_tenancy: usage of every tenant of this database since the last reset (one row per tenant, plus no tenant, admin and overflow rows)';
CREATE VIEW nile.my_usage AS
    SELECT u.tenant_id, u.statements, u.errors, u.rows_returned, u.rows_inserted, u.rows_updated, u.rows_deleted,
           u.total_time_ms, u.mean_time_ms, u.max_time_ms, u.p50_ms, u.p95_ms, u.p99_ms,
           u.cpu_user_ms, u.cpu_system_ms, u.shared_blks_hit, u.shared_blks_read, u.shared_blks_dirtied,
           u.first_activity, u.last_activity
    FROM nile._my_usage() u;
COMMENT ON VIEW nile.my_usage IS 'nile_tenancy: the usage of the session''s own tenant';
REVOKE ALL ON nile.tenant_usage, nile.my_usage FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._usage() TO nile_admin, pg_monitor;
GRANT SELECT ON nile.tenant_usage TO nile_admin, pg_monitor;
GRANT EXECUTE ON FUNCTION nile._my_usage() TO PUBLIC;
GRANT SELECT ON nile.my_usage TO PUBLIC;

-- Noisy neighbours: who used the most execution time lately? The periods of nile.usage_history that ended within
-- `recent`, plus the period still open (not yet flushed), summed per row and ranked by their share of the time.
GRANT EXECUTE ON FUNCTION nile._unflushed_usage() TO nile_admin, pg_monitor;
CREATE FUNCTION nile.noisy_neighbours(recent interval DEFAULT '15 minutes')
    RETURNS TABLE(rank bigint, tenant_id uuid, tenant_name text, kind text, share_of_time numeric,
                  total_time_ms double precision, statements bigint, errors bigint, mean_time_ms double precision,
                  worst_p99_ms double precision, cpu_ms double precision, shared_blks_read bigint,
                  since timestamptz)
    LANGUAGE sql VOLATILE PARALLEL RESTRICTED SECURITY DEFINER  -- tenant names: nile.tenants is row-level secured
    SET search_path = pg_catalog, pg_temp
    BEGIN ATOMIC
        WITH periods AS (
            SELECT h.kind, h.tenant_id, h.period_start, h.statements, h.errors, h.total_time_ms, h.p99_ms,
                   h.cpu_user_ms + h.cpu_system_ms AS cpu_ms, h.shared_blks_read
            FROM nile.usage_history h
            WHERE h.period_end > now() - recent
            UNION ALL
            SELECT u.kind, u.tenant_id, u.period_start, u.statements, u.errors, u.total_time_ms, u.p99_ms,
                   u.cpu_user_ms + u.cpu_system_ms, u.shared_blks_read
            FROM nile._unflushed_usage() u
        ), per_row AS (
            SELECT p.kind, p.tenant_id, min(p.period_start) AS since, sum(p.statements)::bigint AS statements,
                   sum(p.errors)::bigint AS errors, sum(p.total_time_ms) AS total_time_ms,
                   max(p.p99_ms) AS worst_p99_ms, sum(p.cpu_ms) AS cpu_ms,
                   sum(p.shared_blks_read)::bigint AS shared_blks_read
            FROM periods p
            GROUP BY p.kind, p.tenant_id
        )
        SELECT rank() OVER (ORDER BY r.total_time_ms DESC), r.tenant_id, t.name, r.kind,
               round((r.total_time_ms / nullif(sum(r.total_time_ms) OVER (), 0))::numeric, 4),
               r.total_time_ms, r.statements, r.errors, r.total_time_ms / nullif(r.statements, 0),
               r.worst_p99_ms, r.cpu_ms, r.shared_blks_read, r.since
        FROM per_row r
        LEFT JOIN nile.tenants t ON t.id = r.tenant_id
        ORDER BY 1, r.kind, r.tenant_id;
    END;
COMMENT ON FUNCTION nile.noisy_neighbours(interval) IS 'nile_tenancy: tenants ranked by their share of execution time over the recent periods of nile.usage_history and the period still open';
CREATE VIEW nile.noisy_neighbours AS SELECT * FROM nile.noisy_neighbours();
COMMENT ON VIEW nile.noisy_neighbours IS 'nile_tenancy: tenants ranked by their share of execution time over the last 15 minutes';
REVOKE ALL ON FUNCTION nile.noisy_neighbours(interval) FROM PUBLIC;
REVOKE ALL ON nile.noisy_neighbours FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.noisy_neighbours(interval) TO nile_admin, pg_monitor;
GRANT SELECT ON nile.noisy_neighbours TO nile_admin, pg_monitor;

-- tenant_storage(only_tenant): rows and bytes per tenant per tenant table. It reads every row of every tenant table
-- with a plain heap scan (nile._tenant_table_storage() in src/tenant_storage.rs: no planner, no policies, no table
-- owner's expression runs), so it is for nile_admin only; SECURITY DEFINER for the tenants' names.
CREATE FUNCTION nile.tenant_storage(only_tenant uuid DEFAULT NULL)
    RETURNS TABLE(tenant_id uuid, tenant_name text, table_name regclass, row_count bigint, bytes bigint)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT s.tenant_id, tn.name, e.relid, s.row_count, s.bytes
    FROM nile.tenant_tables e
    JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) e.relid::oid
    CROSS JOIN LATERAL nile._tenant_table_storage(e.relid::oid, only_tenant) s
    LEFT JOIN nile.tenants tn ON tn.id OPERATOR(pg_catalog.=) s.tenant_id
    WHERE c.relkind OPERATOR(pg_catalog.=) 'r'
    ORDER BY e.relid::text, s.tenant_id
    $$;
COMMENT ON FUNCTION nile.tenant_storage(uuid) IS 'nile_tenancy: rows and bytes (each row''s data without its tuple header, plus its values moved out to TOAST, uncompressed; no indexes) per tenant per tenant table; scans every tenant table';
REVOKE ALL ON FUNCTION nile.tenant_storage(uuid), nile._tenant_table_storage(oid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.tenant_storage(uuid) TO nile_admin;

-- The steps of nile.import_schema() that touch user tables (src/import_copy.rs), for administrators only.
REVOKE ALL ON FUNCTION nile._import_step(text, oid, oid, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._import_step(text, oid, oid, uuid, text) TO nile_admin;
