-- sql/nile_tenancy--0.2.0--0.3.0.sql — upgrade from 0.2.0 to 0.3.0 (ALTER EXTENSION nile_tenancy UPDATE).
--
-- 0.3.0 is the hardening release (issue 17). Its SQL changes so far:
--   * nile.for_each_tenant_failures is readable by nile_admin only: its error texts may quote a tenant's values, and
--     pg_monitor could read them.
--   * nile.verify() also reports exclusion constraints that do not compare the tenant column with =.
--   * nile.for_each_tenant() schema-qualifies every function and operator of its own: it commits, so it cannot pin its
--     search_path, and overloads planted on the caller's path ran with the caller's rights.
--   * A run of nile.for_each_tenant() is claimed by an advisory lock on its own random claim_key (a new column), not on
--     a key made of its id, which any role could take first; pg_monitor reads every column of the runs but that one.
--     A run going on during the upgrade keeps its 0.2.0 key. Starts are serialized by a lock on the runs table that
--     only nile_admin can take, not by an advisory lock on a key made of the statement.
--   * nile._protection_problems() (and so nile.verify() and the DDL event trigger) reports an enrolled table that
--     inherits from a table that is not a tenant table: reading the parent returns its rows of every tenant.
--   * nile.tenant_storage() reads each table with a heap scan (the new nile._tenant_table_storage()) instead of a query
--     planned, as a SECURITY DEFINER function, with the superuser's rights over the table owner's functions.
--   * nile.import_schema() and nile._advance_sequences() read and write user tables only through the new
--     nile._import_step(), as each table's owner, so that no owner's code runs with the administrator's rights.
-- Issue 18:
--   * A new role, nile_table_owner (for the roles that own tenant tables and run migrations), holds REFERENCES on
--     nile.tenants (id) and may call nile.enable_tenancy() (the table's owner no longer needs to be in nile_admin).
--   * nile.verify() no longer reports a table owner that can log in and is a member of nile_table_owner (the migration
--     role of the documented layout); it reports an application role (a member of nile_app) that owns a tenant table,
--     or may become its owner.
--   * nile.verify() reports a cast to uuid that runs a user's function, and a foreign key to nile.tenants from a column
--     that is not uuid. The DDL event trigger also fires for CREATE CAST (it refuses such a cast by a non-superuser).
--   * delete_tenant(purge => true) deletes the tenant's row as the new role nile_purger (no members, no rights but
--     that row), so that the AFTER triggers a cascade from nile.tenants queues into an owner's table never fire with
--     the extension owner's rights (PostgreSQL 14-17 fire them as the role that ran the statement).
--   * The application's errors get SQLSTATEs of their own (class NT); the generated insert and update policies of every
--     enrolled table raise NT005 for a row of another tenant (the new nile.policy_foreign_row()).
--   * nile.verify() expects those policies.
-- Issue 20:
--   * nile.set_tenant_read_only() and nile.set_tenant_token_read_only() enter a tenant's context for a read-only
--     transaction that may be an implicit one (a pipeline without BEGIN): the Python SDK's one-round-trip reads.
--     Such a transaction that wrote or hid an error cannot commit; nile.assert_read_only() says so as a statement.
-- After the upgrade, a database is what CREATE EXTENSION nile_tenancy VERSION '0.3.0' makes
-- (tests/integration/tests/upgrade.rs checks it object by object, from 0.1.0 and from 0.2.0).

\echo Use "ALTER EXTENSION nile_tenancy UPDATE TO '0.3.0'" to load this file. \quit

REVOKE SELECT ON nile.for_each_tenant_failures FROM pg_monitor;

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'nile_table_owner') THEN
        CREATE ROLE nile_table_owner NOLOGIN;
        COMMENT ON ROLE nile_table_owner IS 'nile_tenancy: for the roles that own tenant tables and run migrations: may reference nile.tenants (id)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'nile_purger') THEN
        CREATE ROLE nile_purger NOLOGIN;
        COMMENT ON ROLE nile_purger IS 'nile_tenancy: the powerless role that deletes a purged tenant''s row (src/tenants/lifecycle.rs); give it no members';
    END IF;
END
$roles$;
GRANT REFERENCES (id) ON nile.tenants TO nile_table_owner;
-- The purge deletes the tenant's row as nile_purger (src/tenants/lifecycle.rs).
GRANT SELECT, DELETE ON nile.tenants TO nile_purger;
CREATE POLICY nile_purger_delete ON nile.tenants FOR DELETE TO nile_purger USING (id = (SELECT nile.policy_write_tenant()));
-- Enrolling only adds protection: the migration role of examples/role_layout.sql enrolls the tables it owns.
GRANT EXECUTE ON FUNCTION nile.enable_tenancy(regclass, name, uuid), nile._enable_tenancy(oid, text, uuid)
    TO nile_table_owner;

ALTER TABLE nile.for_each_tenant_runs
    ADD COLUMN claim_key bigint NOT NULL
        DEFAULT ('x' || pg_catalog.substr(pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''), 17, 16))::bit(64)::bigint;
-- A run still going on during the upgrade keeps the key its session holds (the 0.2.0 key, from the run's id), so that
-- no other session can resume it meanwhile; runs started after the upgrade get random keys.
UPDATE nile.for_each_tenant_runs
SET claim_key = ((pg_catalog.hashtext('nile.for_each_tenant') OPERATOR(pg_catalog.&) 2147483647)::bigint OPERATOR(pg_catalog.<<) 32)
                OPERATOR(pg_catalog.|) (id OPERATOR(pg_catalog.%) 2147483647)
WHERE status OPERATOR(pg_catalog.=) 'running';
REVOKE SELECT ON nile.for_each_tenant_runs FROM pg_monitor;
GRANT SELECT (id, statement, batch_size, status, tenants_total, tenants_done, tenants_failed, rows_affected,
              last_tenant_id, started_at, updated_at, finished_at, started_by, backend_pid, backend_start)
    ON nile.for_each_tenant_runs TO pg_monitor;

-- nile._run_lock_keys() and nile._for_each_tenant_start(), as in sql/lifecycle.sql.
CREATE OR REPLACE FUNCTION nile._run_lock_keys(run_id bigint)
    RETURNS integer[]
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT ARRAY[(r.claim_key >> 32)::integer, (r.claim_key & 2147483647)::integer]
    FROM nile.for_each_tenant_runs r WHERE r.id = run_id
    $$;

CREATE OR REPLACE FUNCTION nile._for_each_tenant_start(statement text, batch_size integer)
    RETURNS nile.for_each_tenant_runs
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        run nile.for_each_tenant_runs;
        holder integer;
        my_start timestamptz := (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid());
    BEGIN
        PERFORM nile._require_nile_admin('nile.for_each_tenant()');
        IF statement IS NULL OR btrim(statement) = '' THEN
            RAISE EXCEPTION 'statement must not be empty'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Pass the SQL to run under each tenant, e.g. ''UPDATE users SET last_login_at = created_at WHERE last_login_at IS NULL''.';
        END IF;
        IF batch_size IS NULL OR batch_size NOT BETWEEN 1 AND 100000 THEN
            RAISE EXCEPTION 'batch_size must be between 1 and 100000, not %', coalesce(batch_size::text, 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The run commits after every batch of this many tenants; 50 to 100 is typical.';
        END IF;
        PERFORM nile._require_no_transaction_block('nile.for_each_tenant()');
        IF nile.current_tenant() IS NOT NULL THEN
            RAISE EXCEPTION 'nile.for_each_tenant() cannot run inside a tenant''s context'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'It enters every active tenant''s context in turn; the session is in tenant ' || nile.current_tenant() || '''s.',
                      HINT = 'Call nile.clear_tenant() first, from a role that is not bound to a tenant.';
        END IF;

        -- One start at a time, so that two sessions never claim the same run. A table lock only nile_admin can take
        -- (it needs UPDATE on the runs), not an advisory lock on a key any role could take first and keep.
        LOCK TABLE nile.for_each_tenant_runs IN SHARE ROW EXCLUSIVE MODE;
        SELECT * INTO run FROM nile.for_each_tenant_runs r
        WHERE r.statement = _for_each_tenant_start.statement AND r.status = 'running'
        ORDER BY r.id DESC LIMIT 1
        FOR UPDATE;
        IF FOUND THEN
            -- The session working on a run holds a session-level advisory lock on it until the run ends or the session
            -- does (pg_locks shows it to every role): a run whose session is gone, or this session's own interrupted
            -- run, is resumed; a run held by another live session is not.
            IF NOT nile._hold_run_lock(run.id) THEN
                holder := (SELECT l.pid FROM pg_locks l
                           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                             AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                             AND l.classid = (nile._run_lock_keys(run.id))[1]::oid AND l.objid = (nile._run_lock_keys(run.id))[2]::oid
                           LIMIT 1);
                RAISE EXCEPTION 'run % of this statement is still running in the session with process id %', run.id, holder
                    USING ERRCODE = 'object_in_use',
                          HINT = format('Wait for it to finish. A run that was cancelled stays with its session until that session calls nile.for_each_tenant() again or disconnects (pg_terminate_backend(%s)); then any session resumes it.', holder);
            END IF;
            UPDATE nile.for_each_tenant_runs r
            SET batch_size = _for_each_tenant_start.batch_size,
                tenants_total = r.tenants_done + nile._active_tenant_count(r.last_tenant_id),
                backend_pid = pg_backend_pid(),
                backend_start = my_start,
                updated_at = clock_timestamp()
            WHERE r.id = run.id
            RETURNING * INTO run;
            RAISE NOTICE 'nile.for_each_tenant: resuming run % after %/% tenants (% failed)',
                run.id, run.tenants_done, run.tenants_total, run.tenants_failed;
        ELSE
            INSERT INTO nile.for_each_tenant_runs (statement, batch_size, tenants_total, backend_pid, backend_start)
            VALUES (statement, batch_size, nile._active_tenant_count(NULL), pg_backend_pid(), my_start)
            RETURNING * INTO run;
            -- A new run, whose random key nobody could know before this transaction: the claim cannot fail, and a run
            -- never goes on without it.
            IF NOT nile._hold_run_lock(run.id) THEN
                RAISE EXCEPTION 'could not claim run % of nile.for_each_tenant()', run.id
                    USING ERRCODE = 'object_in_use', HINT = 'Call nile.for_each_tenant() again.';
            END IF;
            RAISE NOTICE 'nile.for_each_tenant: run % over % active tenants, in batches of %',
                run.id, run.tenants_total, run.batch_size;
        END IF;
        RETURN run;
    END
    $$;

-- What is wrong with one enrolled table's protection: the table or its tenant column is gone, row-level security is
-- not enabled or not forced, a nile_tenant_* policy is missing or differs from what enable_tenancy generates, or it
-- inherits from a table that is not a tenant table.
CREATE OR REPLACE FUNCTION nile._protection_problems(tbl regclass)
    RETURNS TABLE(object text, problem text, fix text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    WITH t AS (
        SELECT e.relid::oid AS relid, e.relid::text AS name, e.tenant_column AS col,
               format('SELECT nile.enable_tenancy(%L%s);', coalesce(e.parent, e.relid)::text,
                      CASE WHEN e.tenant_column <> 'tenant_id' THEN format(', tenant_column => %L', e.tenant_column) ELSE '' END)
                   AS fix,
               c.oid IS NOT NULL AS table_exists, c.relrowsecurity, c.relforcerowsecurity,
               a.atttypid
        FROM nile.tenant_tables e
        LEFT JOIN pg_class c ON c.oid = e.relid::oid
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = e.tenant_column AND a.attnum > 0 AND NOT a.attisdropped
        WHERE e.relid = tbl
    ),
    expected AS (
        SELECT 'nile_tenant_' || e.suffix AS polname, e.polcmd,
               CASE e.using_side WHEN 'read' THEN format('(%s = ( SELECT nile.policy_read_tenant() AS policy_read_tenant))', quote_ident(t.col))
                                 WHEN 'write' THEN format('(%s = ( SELECT nile.policy_write_tenant() AS policy_write_tenant))', quote_ident(t.col)) END
                   AS using_expr,
               CASE WHEN e.checks THEN format('((%1$s = ( SELECT nile.policy_write_tenant() AS policy_write_tenant)) OR nile.policy_foreign_row(%1$s))', quote_ident(t.col)) END
                   AS check_expr
        FROM t, (VALUES ('select', 'r', 'read', false), ('insert', 'a', NULL, true),
                        ('update', 'w', 'write', true), ('delete', 'd', 'write', false)) AS e(suffix, polcmd, using_side, checks)
    )
    SELECT 'table ' || t.name, 'the table is in nile.tenant_tables but no longer exists',
           format('DELETE FROM nile.tenant_tables WHERE relid = %s;', t.relid)
    FROM t WHERE NOT t.table_exists
    UNION ALL
    SELECT 'table ' || t.name, format('tenant column %I is missing', t.col), t.fix
    FROM t WHERE t.table_exists AND t.atttypid IS NULL
    UNION ALL
    SELECT 'table ' || t.name, format('tenant column %I is of type %s, not uuid', t.col, format_type(t.atttypid, NULL)),
           format('ALTER TABLE %s ALTER COLUMN %I TYPE uuid USING %I::uuid; %s', t.name, t.col, t.col, t.fix)
    FROM t WHERE t.atttypid IS NOT NULL AND t.atttypid <> 'uuid'::regtype
    UNION ALL
    SELECT 'table ' || t.name, 'row-level security is not enabled', t.fix
    FROM t WHERE t.table_exists AND NOT t.relrowsecurity
    UNION ALL
    SELECT 'table ' || t.name, 'row-level security is not forced (the table owner bypasses the policies)', t.fix
    FROM t WHERE t.table_exists AND NOT t.relforcerowsecurity
    UNION ALL
    SELECT format('policy %I on %s', x.polname, t.name),
           CASE WHEN p.oid IS NULL THEN 'the policy is missing'
                ELSE 'the policy differs from the one nile.enable_tenancy() generates' END,
           t.fix
    FROM t CROSS JOIN expected x
    LEFT JOIN pg_policy p ON p.polrelid = t.relid AND p.polname = x.polname
    WHERE t.table_exists
      AND (p.oid IS NULL
           OR p.polcmd::text <> x.polcmd OR NOT p.polpermissive OR p.polroles <> '{0}'::oid[]
           OR pg_get_expr(p.polqual, p.polrelid) IS DISTINCT FROM x.using_expr
           OR pg_get_expr(p.polwithcheck, p.polrelid) IS DISTINCT FROM x.check_expr)
    UNION ALL
    -- A parent that is not a tenant table: reading it returns this table's rows with the parent's policies (none).
    SELECT 'table ' || t.name,
           format('it inherits from %s, which is not a tenant table: reading %s returns this table''s rows of every tenant',
                  i.inhparent::regclass, i.inhparent::regclass),
           format('ALTER TABLE %s NO INHERIT %s;  -- or enroll the parent, which covers its children: SELECT nile.enable_tenancy(%L);',
                  t.name, i.inhparent::regclass, i.inhparent::regclass::text)
    FROM t JOIN pg_inherits i ON i.inhrelid = t.relid
    WHERE NOT EXISTS (SELECT 1 FROM nile.tenant_tables pe WHERE pe.relid::oid = i.inhparent)
    $$;

-- nile.verify(), as in sql/verify.sql.
CREATE OR REPLACE FUNCTION nile.verify()
    RETURNS TABLE(severity text, object text, problem text, fix text)
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    WITH RECURSIVE
    -- The column names that make a table a tenant table: tenant_id and the tenant column of every enrolled table.
    tenant_column_names(names) AS MATERIALIZED (
        SELECT array_agg(DISTINCT tenant_column) || 'tenant_id'::name FROM nile.tenant_tables
    ),
    -- Enrolled tables that exist, with their tenant column's number and the root their fix is run on.
    enrolled AS (
        SELECT c.oid AS relid, e.relid::text AS name, e.tenant_column AS col, a.attnum, c.relowner, c.relkind,
               c.relispartition, coalesce(e.parent, e.relid)::text AS root, c.relacl
        FROM nile.tenant_tables e
        JOIN pg_class c ON c.oid = e.relid::oid
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = e.tenant_column AND a.attnum > 0 AND NOT a.attisdropped
    ),
    -- Every table below an enrolled or excluded table, with the table it is below.
    below(relid, top, top_excluded) AS (
        SELECT i.inhrelid, i.inhparent, x.relid IS NOT NULL
        FROM pg_inherits i
        LEFT JOIN nile.excluded_tables x ON x.relid::oid = i.inhparent
        WHERE i.inhparent IN (SELECT relid FROM enrolled) OR x.relid IS NOT NULL
        UNION
        SELECT i.inhrelid, b.top, b.top_excluded FROM pg_inherits i JOIN below b ON i.inhparent = b.relid
    ),
    -- Views and materialized views that read enrolled tables, directly or through other views.
    readers(view_oid, tbl) AS (
        SELECT r.ev_class, d.refobjid
        FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid IN (SELECT relid FROM enrolled) AND r.ev_class <> d.refobjid
        UNION
        SELECT r.ev_class, rd.tbl
        FROM readers rd
        JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = rd.view_oid AND d.classid = 'pg_rewrite'::regclass
        JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> rd.view_oid
    ),
    findings(severity, object, problem, fix) AS (
        -- The protection of each enrolled table.
        SELECT 'error', p.object, p.problem, p.fix
        FROM nile.tenant_tables e, LATERAL nile._protection_problems(e.relid) p

        -- Tables with a tenant column that are not enrolled (only the top of each inheritance tree is named).
        UNION ALL
        SELECT 'error', 'table ' || c.oid::regclass::text,
               format('table has a tenant column %I but is not a tenant table: every session that can read it sees every tenant''s rows', a.attname),
               format('SELECT nile.enable_tenancy(%L%s);  -- or, if it is shared on purpose: SELECT nile.disable_tenancy(%L);',
                      c.oid::regclass::text,
                      CASE WHEN a.attname <> 'tenant_id' THEN format(', tenant_column => %L', a.attname) ELSE '' END,
                      c.oid::regclass::text)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                            AND a.attname = ANY ((SELECT names FROM tenant_column_names)::name[])
        WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'nile') AND n.nspname NOT LIKE 'pg\_%'
          AND c.oid NOT IN (SELECT relid FROM enrolled)
          AND c.oid NOT IN (SELECT relid::oid FROM nile.excluded_tables)
          AND c.oid NOT IN (SELECT relid FROM below)
          AND NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_attribute pa ON pa.attrelid = i.inhparent AND pa.attname = a.attname
                          WHERE i.inhrelid = c.oid)
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')

        -- Partitions and inheritance children of tenant tables that are not protected.
        UNION ALL
        SELECT 'error', 'table ' || b.relid::regclass::text,
               CASE WHEN c.relkind = 'f'
                    THEN format('foreign table below tenant table %s: row-level security cannot protect it', b.top::regclass)
                    ELSE format('table below tenant table %s is not protected: reading it directly shows every tenant''s rows', b.top::regclass) END,
               CASE WHEN c.relkind = 'f' AND c.relispartition
                    THEN format('ALTER TABLE %s DETACH PARTITION %s;', (SELECT inhparent::regclass FROM pg_inherits WHERE inhrelid = b.relid LIMIT 1), b.relid::regclass)
                    WHEN c.relkind = 'f'
                    THEN format('ALTER TABLE %s NO INHERIT %s;', b.relid::regclass, (SELECT inhparent::regclass FROM pg_inherits WHERE inhrelid = b.relid LIMIT 1))
                    ELSE format('SELECT nile.enable_tenancy(%L);', (SELECT root FROM enrolled WHERE relid = b.top)) END
        FROM below b JOIN pg_class c ON c.oid = b.relid
        WHERE NOT b.top_excluded AND b.relid NOT IN (SELECT relid FROM enrolled)

        -- No index leading with the tenant column: every tenant's query scans every tenant's rows.
        UNION ALL
        SELECT 'warning', 'table ' || e.name,
               format('no index leads with the tenant column %I: each tenant''s queries read every tenant''s rows', e.col),
               format('CREATE INDEX ON %s (%I);', e.name, e.col)
        FROM enrolled e
        WHERE e.attnum IS NOT NULL AND NOT e.relispartition
          AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = e.relid AND i.indkey[0] = e.attnum)

        -- Unique keys without the tenant column: inserting another tenant's key fails, which tells that it exists.
        -- (Partitions' copies of a partitioned key are reported once, on the partitioned table.)
        UNION ALL
        SELECT 'warning',
               CASE WHEN k.oid IS NOT NULL THEN format('constraint %I on %s', k.conname, e.name)
                    ELSE 'index ' || i.indexrelid::regclass::text END,
               'unique key without the tenant column: a duplicate-key error tells one tenant that another tenant''s key exists',
               CASE WHEN k.oid IS NOT NULL
                    THEN format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s;', e.name, k.conname, k.conname,
                                regexp_replace(pg_get_constraintdef(k.oid), '\(', '(' || quote_ident(e.col) || ', '))
                    ELSE format('DROP INDEX %s; %s;', i.indexrelid::regclass,
                                regexp_replace(pg_get_indexdef(i.indexrelid), ' USING (\w+) \(', ' USING \1 (' || quote_ident(e.col) || ', ')) END
        FROM enrolled e
        JOIN pg_index i ON i.indrelid = e.relid AND i.indisunique
        LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.contype IN ('p', 'u') AND k.conrelid = e.relid
        WHERE e.attnum IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM generate_series(0, i.indnkeyatts - 1) n WHERE i.indkey[n] = e.attnum)
          -- A key of uuid columns only is unguessable: its duplicate-key error tells nothing to a tenant who does not
          -- already know the other tenant's key.
          AND NOT (SELECT bool_and(coalesce(a.atttypid = 'uuid'::regtype, false))
                   FROM generate_series(0, i.indnkeyatts - 1) n
                   LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[n])
          AND NOT EXISTS (SELECT 1 FROM pg_inherits ih WHERE ih.inhrelid = i.indexrelid)

        -- Exclusion constraints that do not compare the tenant column with =: a conflict (23P01) tells one tenant that
        -- another tenant has a row there, e.g. a booking of the same room at the same time. (Partitions' copies of a
        -- partitioned table's constraint are reported once, on the partitioned table.)
        UNION ALL
        SELECT 'warning', format('constraint %I on %s', k.conname, e.name),
               'exclusion constraint without the tenant column compared with =: a conflict error tells one tenant that another tenant''s row exists',
               format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s;  -- uuid in a gist index needs the btree_gist extension',
                      e.name, k.conname, k.conname,
                      regexp_replace(pg_get_constraintdef(k.oid), 'USING (\w+) \(', 'USING \1 (' || quote_ident(e.col) || ' WITH =, '))
        FROM enrolled e
        JOIN pg_constraint k ON k.conrelid = e.relid AND k.contype = 'x' AND k.conparentid = 0
        WHERE e.attnum IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM generate_subscripts(k.conkey, 1) n
                          JOIN pg_operator o ON o.oid = k.conexclop[n]
                          WHERE k.conkey[n] = e.attnum AND o.oprname = '=' AND o.oprnamespace = 'pg_catalog'::regnamespace)

        -- Foreign keys between tenant tables without the tenant column: a row can point at another tenant's row.
        UNION ALL
        SELECT 'warning', format('constraint %I on %s', k.conname, e.name),
               format('foreign key to tenant table %s does not include the tenant column: a row can reference another tenant''s row', k.confrelid::regclass),
               format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s;  -- the referenced table needs a unique key on (%I, ...) first',
                      e.name, k.conname, k.conname,
                      regexp_replace(regexp_replace(pg_get_constraintdef(k.oid), '^FOREIGN KEY \(', 'FOREIGN KEY (' || quote_ident(e.col) || ', '),
                                     ' REFERENCES ([^(]+)\(', ' REFERENCES \1(' || quote_ident(r.col) || ', '),
                      r.col)
        FROM enrolled e
        JOIN pg_constraint k ON k.conrelid = e.relid AND k.contype = 'f' AND k.conparentid = 0
        JOIN enrolled r ON r.relid = k.confrelid
        WHERE e.attnum IS NOT NULL AND r.attnum IS NOT NULL
          AND NOT (e.attnum = ANY (k.conkey) AND r.attnum = ANY (k.confkey))

        -- Missing foreign key to nile.tenants: rows can carry tenant ids that do not exist.
        UNION ALL
        SELECT 'warning', 'table ' || e.name,
               format('no foreign key from %I to nile.tenants: rows can belong to tenants that do not exist', e.col),
               format('SELECT nile.enable_tenancy(%L);', e.root)
        FROM enrolled e
        WHERE e.attnum IS NOT NULL AND NOT e.relispartition
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = e.relid AND k.contype = 'f'
                            AND k.confrelid = 'nile.tenants'::regclass AND k.conkey = ARRAY[e.attnum])

        -- Other policies: a permissive one does nothing (the tenant policies are also applied as restrictive ones,
        -- see src/rls/restrictive.rs) but suggests that someone expects it to widen access; a restrictive one that is always
        -- false locks every tenant out.
        UNION ALL
        SELECT CASE WHEN p.polpermissive THEN 'warning' ELSE 'error' END, format('policy %I on %s', p.polname, e.name),
               CASE WHEN p.polpermissive
                    THEN 'permissive policy next to the tenant policies has no effect: nile_tenancy also applies the tenant policies as restrictive ones, so no permissive policy can widen access beyond the tenant'
                    ELSE 'restrictive policy that is always false: no tenant can reach any row' END,
               CASE WHEN p.polpermissive
                    THEN format('DROP POLICY %I ON %s;  -- or recreate it AS RESTRICTIVE, so that it narrows the tenant policies instead', p.polname, e.name)
                    ELSE format('DROP POLICY %I ON %s;', p.polname, e.name) END
        FROM enrolled e JOIN pg_policy p ON p.polrelid = e.relid
        WHERE p.polname NOT IN ('nile_tenant_select', 'nile_tenant_insert', 'nile_tenant_update', 'nile_tenant_delete')
          AND (p.polpermissive
               OR pg_get_expr(p.polqual, p.polrelid) IN ('false', 'NULL::boolean')
               OR pg_get_expr(p.polwithcheck, p.polrelid) IN ('false', 'NULL::boolean'))

        -- Roles that can log in and bypass row-level security on tenant tables. The bootstrap superuser (who owns
        -- the cluster) is not named: it cannot be taken away.
        UNION ALL
        SELECT 'warning', 'role ' || quote_ident(r.rolname),
               CASE WHEN r.rolsuper THEN 'a superuser that can log in: row-level security never applies to it'
                    ELSE 'can log in and has BYPASSRLS: row-level security never applies to it' END,
               format('ALTER ROLE %I %s;', r.rolname, CASE WHEN r.rolsuper THEN 'NOSUPERUSER' ELSE 'NOBYPASSRLS' END)
        FROM pg_roles r
        WHERE r.rolcanlogin AND (r.rolsuper OR r.rolbypassrls) AND r.oid <> 10 AND EXISTS (SELECT 1 FROM enrolled)
        UNION ALL
        SELECT 'warning', 'role ' || quote_ident(r.rolname),
               format('can log in and may become %I, which %s', g.rolname,
                      CASE WHEN g.rolsuper THEN 'is a superuser' ELSE 'has BYPASSRLS' END),
               format('REVOKE %I FROM %I;', g.rolname, r.rolname)
        FROM pg_roles r JOIN pg_roles g ON g.oid <> r.oid AND (g.rolsuper OR g.rolbypassrls)
        WHERE r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolbypassrls AND pg_has_role(r.oid, g.oid, 'MEMBER')
          AND EXISTS (SELECT 1 FROM enrolled)
        UNION ALL
        -- Roles that can log in and own a tenant table (or may become its owner). An owner's code (its triggers, an
        -- ALTER TABLE ... USING expression) reads every tenant's rows, so only the migration role should: a member
        -- of nile_table_owner that is not an application role (examples/role_layout.sql), which is not reported. An
        -- application role (a member of nile_app) that owns one could also empty, change or drop it.
        SELECT 'warning', 'role ' || quote_ident(r.rolname),
               CASE WHEN pg_has_role(r.oid, 'nile_app', 'MEMBER')
                    THEN format('is an application role (a member of nile_app) and %s tenant table %s: the application can empty it, change it or drop it',
                                CASE WHEN r.oid = e.relowner THEN 'owns' ELSE format('is a member of %I, which owns', o.rolname) END, e.name)
                    ELSE format('can log in and %s tenant table %s, whose code reads every tenant''s rows, but is not a member of nile_table_owner (the migration role)',
                                CASE WHEN r.oid = e.relowner THEN 'owns' ELSE format('is a member of %I, which owns', o.rolname) END, e.name) END,
               CASE WHEN pg_has_role(r.oid, 'nile_app', 'MEMBER')
                    THEN CASE WHEN r.oid = e.relowner
                              THEN format('ALTER TABLE %s OWNER TO <the migration role>;  -- see examples/role_layout.sql', e.name)
                              ELSE format('REVOKE %I FROM %I;', o.rolname, r.rolname) END
                    ELSE format('GRANT nile_table_owner TO %I;  -- if it is the migration role (examples/role_layout.sql); else REVOKE its ownership', r.rolname) END
        FROM enrolled e JOIN pg_roles o ON o.oid = e.relowner
        JOIN pg_roles r ON r.rolcanlogin AND NOT r.rolsuper AND pg_has_role(r.oid, e.relowner, 'MEMBER')
        WHERE NOT e.relispartition
          AND (pg_has_role(r.oid, 'nile_app', 'MEMBER') OR NOT pg_has_role(r.oid, 'nile_table_owner', 'MEMBER'))

        -- Tenant-bound roles that row-level security no longer confines, and bindings of roles that were dropped
        -- (a role created later with the same OID would inherit the binding).
        UNION ALL
        SELECT 'error', 'role ' || quote_ident(r.rolname),
               format('is bound to tenant %s but %s: row-level security never applies to it, so the binding does not confine it',
                      b.tenant_id, CASE WHEN r.rolsuper THEN 'is a superuser' ELSE 'has BYPASSRLS' END),
               format('ALTER ROLE %I %s;', r.rolname, CASE WHEN r.rolsuper THEN 'NOSUPERUSER' ELSE 'NOBYPASSRLS' END)
        FROM nile.role_bindings b JOIN pg_roles r ON r.oid = b.role::oid
        WHERE r.rolsuper OR r.rolbypassrls
        UNION ALL
        SELECT 'error', 'role binding ' || b.role::oid::text,
               format('binding of a dropped role (OID %s) to tenant %s: a role created later with the same OID would be bound to that tenant',
                      b.role::oid, b.tenant_id),
               format('DELETE FROM nile.role_bindings WHERE role = %s;  -- as a superuser', b.role::oid)
        FROM nile.role_bindings b
        WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = b.role::oid)

        -- Views that read tenant tables with their owner's rights, and materialized views of tenant tables.
        UNION ALL
        SELECT CASE WHEN v.relkind = 'm' OR o.rolsuper OR o.rolbypassrls THEN 'error' ELSE 'warning' END,
               CASE WHEN v.relkind = 'm' THEN 'materialized view ' ELSE 'view ' END || v.oid::regclass::text,
               CASE WHEN v.relkind = 'm'
                    THEN format('materialized view of tenant table %s: its rows are stored without row-level security, readable by anyone who can read the view', rd.tbl::regclass)
                    WHEN o.rolsuper OR o.rolbypassrls
                    THEN format('reads tenant table %s with the rights of its owner %I, who bypasses row-level security: every tenant''s rows are visible through it', rd.tbl::regclass, o.rolname)
                    ELSE format('reads tenant table %s with the rights of its owner %I instead of the caller''s', rd.tbl::regclass, o.rolname) END,
               CASE WHEN v.relkind = 'm'
                    THEN format('DROP MATERIALIZED VIEW %s;  -- use a view WITH (security_invoker = true) instead', v.oid::regclass)
                    WHEN current_setting('server_version_num')::int >= 150000
                    THEN format('ALTER VIEW %s SET (security_invoker = true);', v.oid::regclass)
                    ELSE format('ALTER VIEW %s OWNER TO <a role without BYPASSRLS>;  -- security_invoker needs PostgreSQL 15', v.oid::regclass) END
        FROM (SELECT DISTINCT ON (view_oid) view_oid, tbl FROM readers ORDER BY view_oid, tbl) rd
        JOIN pg_class v ON v.oid = rd.view_oid AND v.relkind IN ('v', 'm')
        JOIN pg_roles o ON o.oid = v.relowner
        WHERE v.relkind = 'm'
           OR NOT coalesce((SELECT lower(option_value) IN ('true', 'on', '1', 'yes')
                            FROM pg_options_to_table(v.reloptions) WHERE option_name = 'security_invoker'), false)

        -- TRUNCATE ignores row-level security: only owners and nile_admin may hold it.
        UNION ALL
        SELECT 'error', 'table ' || e.name,
               format('%s may TRUNCATE it, which empties every tenant''s rows at once (TRUNCATE ignores row-level security)',
                      CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE 'role ' || quote_ident(pg_get_userbyid(g.grantee)) END),
               format('REVOKE TRUNCATE ON %s FROM %s;', e.name,
                      CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END)
        FROM enrolled e, LATERAL aclexplode(e.relacl) g
        WHERE g.privilege_type = 'TRUNCATE' AND g.grantee <> e.relowner
          AND (g.grantee = 0 OR NOT (pg_has_role(g.grantee, e.relowner, 'MEMBER') OR pg_has_role(g.grantee, 'nile_admin', 'MEMBER')))

        -- Casts to uuid that run a user's function, and foreign keys to nile.tenants from a column that is not uuid:
        -- each lookup of such a key in nile.tenants would run the cast's function with the rights of the owner of
        -- nile.tenants (src/tables/fk_validation.rs).
        UNION ALL
        SELECT 'error', format('cast from %s to uuid', c.castsource::regtype),
               format('runs function %s: a foreign key from a column of type %s to nile.tenants would run it with the rights of the owner of nile.tenants',
                      c.castfunc::regprocedure, c.castsource::regtype),
               format('DROP CAST (%s AS uuid);', c.castsource::regtype)
        FROM pg_cast c
        WHERE c.casttarget = 'uuid'::regtype AND c.castmethod = 'f' AND c.oid >= 16384
        UNION ALL
        SELECT 'error', format('constraint %I on %s', k.conname, k.conrelid::regclass),
               format('foreign key to nile.tenants from column %I of type %s, not uuid: each lookup converts it with a cast, run with the rights of the owner of nile.tenants',
                      a.attname, a.atttypid::regtype),
               format('ALTER TABLE %s DROP CONSTRAINT %I;  -- and store the tenant id as uuid', k.conrelid::regclass, k.conname)
        FROM pg_constraint k
        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)
        JOIN pg_type ty ON ty.oid = a.atttypid
        WHERE k.contype = 'f' AND k.confrelid = 'nile.tenants'::regclass AND k.conparentid = 0
          AND CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END <> 'uuid'::regtype  -- a domain over uuid is uuid

        -- The event triggers that keep new tables and partitions protected.
        UNION ALL
        SELECT 'error', 'event trigger ' || quote_ident(t.name),
               'the event trigger is missing or disabled: new tables, partitions and policy changes are not checked',
               format('ALTER EVENT TRIGGER %I ENABLE;', t.name)
        FROM (VALUES ('nile_ddl_command_end'), ('nile_sql_drop')) t(name)
        LEFT JOIN pg_event_trigger et ON et.evtname = t.name
        WHERE et.oid IS NULL OR et.evtenabled NOT IN ('O', 'A')
    )
    SELECT f.severity, f.object, f.problem, f.fix
    FROM findings f
    ORDER BY f.severity = 'warning', f.object, f.problem
    $$;
COMMENT ON FUNCTION nile.verify() IS 'nile_tenancy: every way the tenancy of this database is not sound, with the SQL that fixes it; empty when all is sound';

-- nile.for_each_tenant(), as in sql/lifecycle.sql.
CREATE OR REPLACE PROCEDURE nile.for_each_tenant(statement text, batch_size integer DEFAULT 100)
    LANGUAGE plpgsql
    AS $$
    DECLARE
        run nile.for_each_tenant_runs;
        batch pg_catalog.uuid[];
        tenant pg_catalog.uuid;
        affected bigint;
        succeeded_in_run boolean;
        started pg_catalog.timestamptz := pg_catalog.clock_timestamp();
        done_now integer := 0;
        failed_in_batch integer;
        err_state pg_catalog.text;
        err_message pg_catalog.text;
        err_detail pg_catalog.text;
        err_hint pg_catalog.text;
    BEGIN
        run := nile._for_each_tenant_start(statement, batch_size);
        COMMIT;
        succeeded_in_run := run.tenants_done OPERATOR(pg_catalog.>) run.tenants_failed;
        LOOP
            batch := ARRAY(SELECT nile._active_tenants_after(run.last_tenant_id, run.batch_size));
            EXIT WHEN pg_catalog.cardinality(batch) OPERATOR(pg_catalog.=) 0;
            failed_in_batch := 0;
            FOREACH tenant IN ARRAY batch LOOP
                BEGIN
                    PERFORM nile._enter_tenant_for_routine(tenant);
                    EXECUTE statement;
                    GET DIAGNOSTICS affected = ROW_COUNT;
                    PERFORM nile.clear_tenant();
                    run.rows_affected := run.rows_affected OPERATOR(pg_catalog.+) affected;
                    succeeded_in_run := true;
                EXCEPTION WHEN OTHERS THEN
                    -- The tenant's changes and its context are rolled back with the block.
                    GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT,
                                            err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
                    INSERT INTO nile.for_each_tenant_failures (run_id, tenant_id, sqlstate, message, detail, hint)
                    VALUES (run.id, tenant, err_state, err_message,
                            CASE WHEN err_detail OPERATOR(pg_catalog.=) '' THEN NULL ELSE err_detail END,
                            CASE WHEN err_hint OPERATOR(pg_catalog.=) '' THEN NULL ELSE err_hint END)
                    ON CONFLICT (run_id, tenant_id) DO UPDATE
                        SET sqlstate = excluded.sqlstate, message = excluded.message, detail = excluded.detail,
                            hint = excluded.hint, failed_at = excluded.failed_at;
                    run.tenants_failed := run.tenants_failed OPERATOR(pg_catalog.+) 1;
                    failed_in_batch := failed_in_batch OPERATOR(pg_catalog.+) 1;
                END;
                run.tenants_done := run.tenants_done OPERATOR(pg_catalog.+) 1;
                run.last_tenant_id := tenant;
            END LOOP;
            done_now := done_now OPERATOR(pg_catalog.+) pg_catalog.cardinality(batch);

            IF NOT succeeded_in_run THEN
                -- Failing for every tenant of the first batch: the statement is wrong, not the tenants' data.
                ROLLBACK;
                UPDATE nile.for_each_tenant_runs r
                SET status = 'stopped', backend_pid = NULL, updated_at = pg_catalog.clock_timestamp()
                WHERE r.id OPERATOR(pg_catalog.=) run.id;
                COMMIT;
                PERFORM nile._release_run_lock(run.id);
                RAISE EXCEPTION 'nile.for_each_tenant: the statement failed for each of the first % tenants; run % stopped',
                    pg_catalog.cardinality(batch), run.id
                    USING ERRCODE = err_state, DETAIL = 'The last error was: ' OPERATOR(pg_catalog.||) err_message,
                          HINT = 'Fix the statement and call nile.for_each_tenant() again; nothing of this batch was kept.';
            END IF;

            UPDATE nile.for_each_tenant_runs r
            SET tenants_done = run.tenants_done, tenants_failed = run.tenants_failed, rows_affected = run.rows_affected,
                last_tenant_id = run.last_tenant_id, updated_at = pg_catalog.clock_timestamp()
            WHERE r.id OPERATOR(pg_catalog.=) run.id;
            COMMIT;
            RAISE NOTICE 'nile.for_each_tenant: %/% tenants done (% failed), % tenants/s',
                run.tenants_done, GREATEST(run.tenants_total, run.tenants_done), run.tenants_failed,
                pg_catalog.round(done_now::numeric OPERATOR(pg_catalog./)
                                 GREATEST(EXTRACT(epoch FROM pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) started), 0.001)::numeric, 1);
        END LOOP;

        UPDATE nile.for_each_tenant_runs r
        SET status = 'finished', finished_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp(),
            backend_pid = NULL, tenants_total = run.tenants_done
        WHERE r.id OPERATOR(pg_catalog.=) run.id;
        COMMIT;
        PERFORM nile._release_run_lock(run.id);
        IF run.tenants_failed OPERATOR(pg_catalog.>) 0 THEN
            RAISE WARNING 'nile.for_each_tenant: run % finished: % tenants, % failed, % rows affected',
                run.id, run.tenants_done, run.tenants_failed, run.rows_affected
                USING HINT = pg_catalog.format('SELECT * FROM nile.for_each_tenant_failures WHERE run_id = %s lists the failures.', run.id);
        ELSE
            RAISE NOTICE 'nile.for_each_tenant: run % finished: % tenants, % rows affected',
                run.id, run.tenants_done, run.rows_affected;
        END IF;
    END
    $$;
COMMENT ON PROCEDURE nile.for_each_tenant(text, integer) IS 'nile_tenancy: run a statement under every active tenant''s context, committing per batch; failures go to nile.for_each_tenant_failures; resumable';

CREATE FUNCTION nile."_tenant_table_storage"(
	"tbl" oid, /* core::option::Option<pgrx_pg_sys::submodules::oids::Oid> */
	"only_tenant" uuid /* core::option::Option<pgrx::datum::uuid::Uuid> */
) RETURNS TABLE (
	"tenant_id" uuid,  /* pgrx::datum::uuid::Uuid */
	"row_count" bigint,  /* i64 */
	"bytes" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_table_storage_wrapper';

-- tenant_storage(only_tenant): rows and bytes per tenant per tenant table. It reads every row of every tenant table
-- with a plain heap scan (nile._tenant_table_storage() in src/tenants/storage.rs: no planner, no policies, no table
-- owner's expression runs), so it is for nile_admin only; SECURITY DEFINER for the tenants' names.
CREATE OR REPLACE FUNCTION nile.tenant_storage(only_tenant uuid DEFAULT NULL)
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

CREATE FUNCTION nile."_import_step"(
	"step" TEXT, /* Option < & str > */
	"source" oid, /* Option < pg_sys :: Oid > */
	"target" oid, /* Option < pg_sys :: Oid > */
	"tenant" uuid, /* Option < Uuid > */
	"column_name" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS bigint /* Option < i64 > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'import_step_wrapper';
REVOKE ALL ON FUNCTION nile._import_step(text, oid, oid, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._import_step(text, oid, oid, uuid, text) TO nile_admin;

-- After rows were copied in with their own values, move the sequences behind the table's serial and identity columns
-- past the highest value the caller can see, so that the next default does not collide with a copied row.
CREATE OR REPLACE FUNCTION nile._advance_sequences(tbl regclass)
    RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        col record;
        highest bigint;
    BEGIN
        FOR col IN
            SELECT a.attname, pg_get_serial_sequence(tbl::text, a.attname)::regclass AS seq
            FROM pg_attribute a
            WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
              AND pg_get_serial_sequence(tbl::text, a.attname) IS NOT NULL
        LOOP
            -- Read as the table's owner (src/tenants/import.rs): the caller must not run the owner's code.
            highest := nile._import_step('highest', NULL, tbl, NULL, col.attname);
            CONTINUE WHEN highest IS NULL;
            IF has_sequence_privilege(col.seq, 'UPDATE') AND has_sequence_privilege(col.seq, 'SELECT, USAGE') THEN
                IF highest > coalesce(pg_sequence_last_value(col.seq), 0) THEN
                    PERFORM setval(col.seq, highest);
                END IF;
            ELSE
                RAISE WARNING 'sequence % of %.% was not advanced to %: permission denied', col.seq, tbl, col.attname, highest
                    USING HINT = format('Its owner can run SELECT setval(%L, %s).', col.seq, highest);
            END IF;
        END LOOP;
    END
    $$;

-- import_schema(source_schema, tenant_id, target_schema, dry_run): copy every table of a legacy schema-per-tenant
-- schema into the tenant tables of the same name in target_schema, as tenant_id's rows, in foreign-key order, in the
-- caller's transaction. Every table and column is checked before anything is written. Returns rows per table.
CREATE OR REPLACE FUNCTION nile.import_schema(source_schema name, tenant_id uuid, target_schema name DEFAULT 'public',
                                   dry_run boolean DEFAULT false)
    RETURNS TABLE(load_order integer, source_table regclass, target_table regclass, rows_copied bigint)
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        source_oid oid;
        target_oid oid;
        problems text[] := '{}';
        first_code text;
        mismatched_tables regclass[];
        pair record;
        copied bigint;
        foreign_rows bigint;
        existing_rows bigint;
    BEGIN
        PERFORM nile._require_nile_admin('nile.import_schema()');
        IF source_schema IS NULL OR tenant_id IS NULL OR target_schema IS NULL OR dry_run IS NULL THEN
            RAISE EXCEPTION 'source_schema, tenant_id, target_schema and dry_run must not be NULL'
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        SELECT n.oid INTO source_oid FROM pg_namespace n WHERE n.nspname = source_schema;
        SELECT n.oid INTO target_oid FROM pg_namespace n WHERE n.nspname = target_schema;
        IF source_oid IS NULL OR target_oid IS NULL THEN
            RAISE EXCEPTION 'schema "%" does not exist', CASE WHEN source_oid IS NULL THEN source_schema ELSE target_schema END
                USING ERRCODE = 'invalid_schema_name';
        END IF;
        IF source_oid = target_oid THEN
            RAISE EXCEPTION 'source_schema and target_schema are both "%"', source_schema
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The source is the legacy tenant''s own schema; the target holds the shared tenant tables.';
        END IF;
        -- The caller must be outside any tenant context, which is where the function leaves it (a SET clause would
        -- not end a context entered inside the function: it restores only the settings it names).
        IF nile.current_tenant() IS NOT NULL THEN
            RAISE EXCEPTION 'nile.import_schema() cannot run inside a tenant''s context'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'It enters the context of tenant ' || tenant_id || ' for the copy and leaves the session without one.',
                      HINT = 'Call nile.clear_tenant() first, from a role that is not bound to a tenant.';
        END IF;
        -- Checks that the tenant exists and is not deleted, and enters its context: the tenant policies check every
        -- row written below.
        PERFORM nile._enter_tenant_for_routine(tenant_id);
        IF NOT EXISTS (SELECT 1 FROM nile.tenants t WHERE t.id = import_schema.tenant_id AND t.status = 'active') THEN
            RAISE EXCEPTION 'tenant % is inactive: rows cannot be imported into it', tenant_id
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Reactivate it first with nile.reactivate_tenant().';
        END IF;

        -- One row per source table. Every step that reads or writes a user table is nile._import_step()
        -- (src/tenants/import.rs): it runs as the table's owner, so that no owner's code runs with the caller's rights.
        CREATE TEMP TABLE pg_temp.nile_import_plan (
            source_table regclass, target_table regclass, tenant_column name, load_order integer,
            source_has_tenant_column boolean
        ) ON COMMIT DROP;
        INSERT INTO pg_temp.nile_import_plan
        SELECT s.oid::regclass, t.oid::regclass, e.tenant_column, o.load_order,
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = s.oid AND a.attname = e.tenant_column
                       AND a.attnum > 0 AND NOT a.attisdropped)
        FROM pg_class s
        LEFT JOIN pg_class t ON t.relnamespace = target_oid AND t.relname = s.relname AND t.relkind IN ('r', 'p')
        LEFT JOIN nile.tenant_tables e ON e.relid = t.oid::regclass
        LEFT JOIN nile._tenant_tables_in_load_order() o ON o.relid = t.oid
        WHERE s.relnamespace = source_oid AND s.relkind IN ('r', 'p') AND NOT s.relispartition;

        IF NOT EXISTS (SELECT 1 FROM pg_temp.nile_import_plan) THEN
            RAISE EXCEPTION 'schema "%" has no tables to import', source_schema USING ERRCODE = 'no_data_found';
        END IF;

        -- Every problem, before anything is written: a missing or unenrolled target table, a source column the
        -- target lacks or cannot take, a required target column the source cannot fill.
        SELECT array_agg(p.problem ORDER BY p.kind, p.problem), (array_agg(p.code ORDER BY p.kind, p.problem))[1],
               array_agg(DISTINCT p.source_table) FILTER (WHERE p.kind = 3)
        INTO problems, first_code, mismatched_tables
        FROM (
            SELECT 1 AS kind, p.source_table, format('table %s has no table %I.%I to go to', p.source_table, target_schema,
                                     (SELECT c.relname FROM pg_class c WHERE c.oid = p.source_table)) AS problem, '42P01' AS code
            FROM pg_temp.nile_import_plan p WHERE p.target_table IS NULL
            UNION ALL
            SELECT 2, p.source_table, format('table %s is not a tenant table', p.target_table), '55000'
            FROM pg_temp.nile_import_plan p WHERE p.target_table IS NOT NULL AND p.tenant_column IS NULL
            UNION ALL
            SELECT 3, p.source_table, CASE
                       WHEN ta.attname IS NULL THEN format('column %s.%I has no column of that name in %s', p.source_table, sa.attname, p.target_table)
                       ELSE format('column %s.%I is a generated column', p.target_table, ta.attname)
                   END,
                   CASE WHEN ta.attname IS NULL THEN '42703' ELSE '428C9' END
            FROM pg_temp.nile_import_plan p
            JOIN pg_attribute sa ON sa.attrelid = p.source_table AND sa.attnum > 0 AND NOT sa.attisdropped
                                AND sa.attgenerated = '' AND sa.attname <> p.tenant_column
            LEFT JOIN pg_attribute ta ON ta.attrelid = p.target_table AND ta.attname = sa.attname AND ta.attnum > 0
                                     AND NOT ta.attisdropped
            WHERE p.tenant_column IS NOT NULL AND (ta.attname IS NULL OR ta.attgenerated <> '')
            UNION ALL
            SELECT 4, p.source_table, format('column %s.%I is NOT NULL without a default, and %s has no such column', p.target_table,
                          ta.attname, p.source_table), '23502'
            FROM pg_temp.nile_import_plan p
            JOIN pg_attribute ta ON ta.attrelid = p.target_table AND ta.attnum > 0 AND NOT ta.attisdropped
                                AND ta.attnotnull AND NOT ta.atthasdef AND ta.attidentity = '' AND ta.attgenerated = ''
                                AND ta.attname <> p.tenant_column
            WHERE p.tenant_column IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM pg_attribute sa WHERE sa.attrelid = p.source_table AND sa.attname = ta.attname
                              AND sa.attnum > 0 AND NOT sa.attisdropped AND sa.attgenerated = '')
        ) p;
        -- Column types: Postgres itself decides whether each source column can be assigned to its target column, by
        -- planning (not running) the insert.
        FOR pair IN
            SELECT * FROM pg_temp.nile_import_plan p
            WHERE p.tenant_column IS NOT NULL
              AND p.source_table <> ALL (coalesce(mismatched_tables, '{}'))  -- already reported above
        LOOP
            -- The tenant must not have rows there yet: importing twice would duplicate or collide.
            existing_rows := nile._import_step('existing', pair.source_table, pair.target_table, tenant_id);
            IF existing_rows > 0 THEN
                problems := coalesce(problems, '{}') || format('table %s already holds %s row(s) of tenant %s',
                                                                pair.target_table, existing_rows, tenant_id);
                first_code := coalesce(first_code, '55000');
            END IF;
            BEGIN
                PERFORM nile._import_step('typecheck', pair.source_table, pair.target_table, tenant_id);
            EXCEPTION WHEN OTHERS THEN
                problems := coalesce(problems, '{}') || format('%s cannot be copied into %s: %s', pair.source_table,
                                                                pair.target_table, SQLERRM);
                first_code := coalesce(first_code, SQLSTATE);
            END;
        END LOOP;
        IF cardinality(problems) > 0 THEN
            RAISE EXCEPTION 'schema "%" cannot be imported into "%": % problem(s)', source_schema, target_schema, cardinality(problems)
                USING ERRCODE = first_code, DETAIL = array_to_string(problems, E'\n'),
                      HINT = 'Nothing was written. Create or enroll the missing tables (nile.enable_tenancy()), align the columns, import into a tenant that has no rows yet, then call it again.';
        END IF;

        -- A source table that already has the tenant column may only hold this tenant's rows (or NULL there).
        FOR pair IN SELECT * FROM pg_temp.nile_import_plan p WHERE p.source_has_tenant_column LOOP
            foreign_rows := nile._import_step('foreign', pair.source_table, pair.target_table, tenant_id);
            IF foreign_rows > 0 THEN
                RAISE EXCEPTION 'table % has % row(s) whose % is not tenant %', pair.source_table, foreign_rows,
                    pair.tenant_column, tenant_id
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Nothing was written. A legacy schema holds one tenant''s rows; import each tenant''s schema with its own id.';
            END IF;
        END LOOP;

        FOR pair IN SELECT * FROM pg_temp.nile_import_plan p ORDER BY p.load_order, p.target_table::text LOOP
            IF dry_run THEN
                copied := nile._import_step('count', pair.source_table, pair.target_table, tenant_id);
            ELSE
                copied := nile._import_step('copy', pair.source_table, pair.target_table, tenant_id);
                PERFORM nile._advance_sequences(pair.target_table);
            END IF;
            load_order := pair.load_order;
            source_table := pair.source_table;
            target_table := pair.target_table;
            rows_copied := copied;
            RETURN NEXT;
        END LOOP;
        DROP TABLE pg_temp.nile_import_plan;
        -- Back to no context (after an error, the rollback of the caller's transaction or savepoint does it).
        PERFORM nile.clear_tenant();
    END
    $$;

-- NT005: the generated WITH CHECK raises its own SQLSTATE for a row of another tenant (src/context/tenant.rs,
-- policy_foreign_row; evaluated only for such a row). Every enrolled table's insert and update policies get it.
CREATE FUNCTION nile."policy_foreign_row"(
	"row_tenant" uuid /* Option < Uuid > */
) RETURNS bool /* bool */
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'policy_foreign_row_wrapper';
REVOKE EXECUTE ON FUNCTION nile.policy_foreign_row(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.policy_foreign_row(uuid) TO PUBLIC;
DO $policies$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT p.polrelid::regclass AS tbl, p.polname, e.tenant_column
             FROM nile.tenant_tables e
             JOIN pg_catalog.pg_policy p ON p.polrelid = e.relid::oid
                                        AND p.polname IN ('nile_tenant_insert', 'nile_tenant_update')
    LOOP
        EXECUTE pg_catalog.format(
            'ALTER POLICY %I ON %s WITH CHECK (%I = (SELECT nile.policy_write_tenant()) OR nile.policy_foreign_row(%I))',
            t.polname, t.tbl, t.tenant_column, t.tenant_column);
    END LOOP;
END
$policies$;

-- The DDL event trigger also looks at CREATE CAST (src/tables/fk_validation.rs).
DROP EVENT TRIGGER nile_ddl_command_end;
CREATE EVENT TRIGGER nile_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE', 'ALTER POLICY',
                 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'CREATE SCHEMA', 'CREATE CAST')
    EXECUTE FUNCTION nile._ddl_command_end();

-- The one-round-trip reads of the Python SDK (src/context/tenant.rs, src/context/tokens.rs): a tenant's context for a
-- read-only transaction, which may be an implicit one. For application roles, as nile.set_tenant() is.
CREATE FUNCTION nile."set_tenant_read_only"(
	"tenant_id" uuid /* Option < Uuid > */
) RETURNS uuid /* Uuid */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_tenant_read_only_wrapper';
CREATE FUNCTION nile."set_tenant_token_read_only"(
	"token" TEXT /* Option < & str > */
) RETURNS uuid /* Uuid */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_tenant_token_read_only_wrapper';
CREATE FUNCTION nile."assert_read_only"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'assert_read_only_wrapper';
REVOKE ALL ON FUNCTION nile.set_tenant_read_only(uuid), nile.set_tenant_token_read_only(text),
    nile.assert_read_only() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.set_tenant_read_only(uuid), nile.set_tenant_token_read_only(text),
    nile.assert_read_only() TO nile_app;
