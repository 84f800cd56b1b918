-- sql/usage.sql — usage metering and storage: the durable history nile.usage_history, the views over the shared
-- counters (nile.tenant_usage, nile.my_usage), nile.noisy_neighbours() and its view, nile.tenant_storage(), and the
-- privileges of all of it, with those of their Rust functions (src/usage/api.rs, src/usage/history.rs,
-- src/tenants/storage.rs). Runs after those Rust functions and after sql/context.sql; where signatures and privileges
-- live: the header of sql/bootstrap.sql.

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
-- Every tenant's usage: for administrators and monitoring, never for PUBLIC; administrators delete old periods.
REVOKE ALL ON nile.usage_history FROM PUBLIC;
GRANT SELECT, DELETE ON nile.usage_history TO nile_admin;
GRANT SELECT ON nile.usage_history TO pg_monitor;
-- pg_dump dumps its rows (the extension's own objects are recreated by CREATE EXTENSION): a restored database keeps
-- its usage history.
SELECT pg_catalog.pg_extension_config_dump('nile.usage_history', '');
-- flush_usage() and reset_usage(tenant_id) (src/usage/history.rs): for administrators.
REVOKE ALL ON FUNCTION nile.reset_usage(uuid), nile.flush_usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.reset_usage(uuid), nile.flush_usage() TO nile_admin;

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
REVOKE ALL ON nile.tenant_usage FROM PUBLIC;
GRANT SELECT ON nile.tenant_usage TO nile_admin, pg_monitor;
REVOKE ALL ON FUNCTION nile._usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._usage() TO nile_admin, pg_monitor;
CREATE VIEW nile.my_usage AS
    SELECT u.tenant_id, u.statements, u.errors, u.rows_returned, u.rows_inserted, u.rows_updated, u.rows_deleted,
           u.total_time_ms, u.mean_time_ms, u.max_time_ms, u.p50_ms, u.p95_ms, u.p99_ms,
           u.cpu_user_ms, u.cpu_system_ms, u.shared_blks_hit, u.shared_blks_read, u.shared_blks_dirtied,
           u.first_activity, u.last_activity
    FROM nile._my_usage() u;
COMMENT ON VIEW nile.my_usage IS 'nile_tenancy: the usage of the session''s own tenant';
REVOKE ALL ON nile.my_usage FROM PUBLIC;
GRANT SELECT ON nile.my_usage TO PUBLIC;
REVOKE ALL ON FUNCTION nile._my_usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._my_usage() TO PUBLIC;

-- Noisy neighbours: who used the most execution time lately? The periods of nile.usage_history that ended within
-- `recent`, plus the period still open (not yet flushed), summed per row and ranked by their share of the time.
REVOKE ALL ON FUNCTION nile._unflushed_usage() FROM PUBLIC;
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
REVOKE ALL ON FUNCTION nile.noisy_neighbours(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.noisy_neighbours(interval) TO nile_admin, pg_monitor;
CREATE VIEW nile.noisy_neighbours AS SELECT * FROM nile.noisy_neighbours();
COMMENT ON VIEW nile.noisy_neighbours IS 'nile_tenancy: tenants ranked by their share of execution time over the last 15 minutes';
REVOKE ALL ON nile.noisy_neighbours FROM PUBLIC;
GRANT SELECT ON nile.noisy_neighbours TO nile_admin, pg_monitor;

-- tenant_storage(only_tenant): rows and bytes per tenant per tenant table. It reads every row of every tenant table
-- with a plain heap scan (nile._tenant_table_storage() in src/tenants/storage.rs: no planner, no policies, no table
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
REVOKE ALL ON FUNCTION nile.tenant_storage(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.tenant_storage(uuid) TO nile_admin;
-- Called only by tenant_storage(), as its owner.
REVOKE ALL ON FUNCTION nile._tenant_table_storage(oid, uuid) FROM PUBLIC;
