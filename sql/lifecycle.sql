-- sql/lifecycle.sql — tenant lifecycle at scale: nile.for_each_tenant() (a statement run under every active tenant,
-- batch by batch, resumable), nile.import_schema() (a legacy schema-per-tenant schema copied into the shared tables)
-- and nile.export_tenant() (the SQL that copies one tenant's rows out; scripts/move_tenant.sh runs it).
--
-- Everything here runs with the caller's rights and, while it touches tenant rows, in the tenant's context, so the
-- tenant policies check every row it reads or writes. The Rust helpers it calls are in src/context/tenant.rs
-- (nile._enter_tenant_for_routine, nile._require_no_transaction_block), src/pg/privilege.rs (nile._require_nile_admin,
-- which the routines call themselves in case EXECUTE on them is granted further) and src/tenants/lifecycle.rs
-- (nile._tenant_tables_in_load_order).
--
-- Runs after those Rust helpers and after sql/usage.sql; where signatures and privileges live: the header of
-- sql/bootstrap.sql. Every routine here, and every Rust helper it calls, is for administrators only.

-- The Rust helpers: the routines run with the caller's rights, so the caller needs them.
REVOKE ALL ON FUNCTION nile._enter_tenant_for_routine(uuid), nile._require_no_transaction_block(text),
    nile._tenant_tables_in_load_order(), nile._require_nile_admin(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._enter_tenant_for_routine(uuid), nile._require_no_transaction_block(text),
    nile._tenant_tables_in_load_order(), nile._require_nile_admin(text) TO nile_admin;

-- ---------------------------------------------------------------------------------------------------------------
-- nile.for_each_tenant(): its runs and their failures. Administrators read them (and may delete old runs).
CREATE TABLE nile.for_each_tenant_runs (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    statement       text        NOT NULL,
    batch_size      integer     NOT NULL,
    status          text        NOT NULL DEFAULT 'running',
    tenants_total   integer     NOT NULL,
    tenants_done    integer     NOT NULL DEFAULT 0,
    tenants_failed  integer     NOT NULL DEFAULT 0,
    rows_affected   bigint      NOT NULL DEFAULT 0,
    last_tenant_id  uuid,
    started_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at     timestamptz,
    started_by      name        NOT NULL DEFAULT CURRENT_USER,
    backend_pid     integer,
    backend_start   timestamptz,
    -- The key of the session-level advisory lock by which the session working on the run claims it: random (the last
    -- 64 bits of a random UUID, 62 of them random; no md5(), which FIPS builds refuse), so that no other session can
    -- take it before the run's session does (nile._run_lock_keys).
    claim_key       bigint      NOT NULL
                                DEFAULT ('x' || pg_catalog.substr(pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''), 17, 16))::bit(64)::bigint,
    CONSTRAINT for_each_tenant_runs_status_valid CHECK (status IN ('running', 'finished', 'stopped')),
    CONSTRAINT for_each_tenant_runs_batch_size_valid CHECK (batch_size BETWEEN 1 AND 100000)
);
CREATE INDEX for_each_tenant_runs_running_idx ON nile.for_each_tenant_runs (statement) WHERE status = 'running';
COMMENT ON TABLE nile.for_each_tenant_runs IS 'nile_tenancy: runs of nile.for_each_tenant(): progress (committed with every batch), and where an interrupted run resumes';

CREATE TABLE nile.for_each_tenant_failures (
    run_id     bigint      NOT NULL REFERENCES nile.for_each_tenant_runs (id) ON DELETE CASCADE,
    tenant_id  uuid        NOT NULL,
    sqlstate   text        NOT NULL,
    message    text        NOT NULL,
    detail     text,
    hint       text,
    failed_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (run_id, tenant_id)
);
COMMENT ON TABLE nile.for_each_tenant_failures IS 'nile_tenancy: the tenants for which a nile.for_each_tenant() statement failed, with the error';

REVOKE ALL ON nile.for_each_tenant_runs, nile.for_each_tenant_failures FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON nile.for_each_tenant_runs, nile.for_each_tenant_failures TO nile_admin;
-- The failures keep error texts, which may quote a tenant's values: nile_admin only (issue 17). The runs are for
-- monitoring too, but not their claim keys.
GRANT SELECT (id, statement, batch_size, status, tenants_total, tenants_done, tenants_failed, rows_affected,
              last_tenant_id, started_at, updated_at, finished_at, started_by, backend_pid, backend_start)
    ON nile.for_each_tenant_runs TO pg_monitor;
SELECT pg_catalog.pg_extension_config_dump('nile.for_each_tenant_runs', '');
SELECT pg_catalog.pg_extension_config_dump('nile.for_each_tenant_runs_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('nile.for_each_tenant_failures', '');

-- The active tenants after `after` (all of them when NULL), in id order: nile.tenants is row-level secured, and
-- nile.for_each_tenant() lists them outside any tenant context.
CREATE FUNCTION nile._active_tenants_after(after_id uuid, how_many integer)
    RETURNS SETOF uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT t.id FROM nile.tenants t
    WHERE t.status = 'active' AND (after_id IS NULL OR t.id > after_id)
    ORDER BY t.id
    LIMIT how_many
    $$;
REVOKE ALL ON FUNCTION nile._active_tenants_after(uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._active_tenants_after(uuid, integer) TO nile_admin;
CREATE FUNCTION nile._active_tenant_count(after_id uuid)
    RETURNS integer
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT count(*)::integer FROM nile.tenants t WHERE t.status = 'active' AND (after_id IS NULL OR t.id > after_id)
    $$;
REVOKE ALL ON FUNCTION nile._active_tenant_count(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._active_tenant_count(uuid) TO nile_admin;

-- The two keys of the session-level advisory lock that the session working on run `run_id` holds: the halves of the
-- run's random claim_key (a key made of the run's id could be taken first by any role: advisory locks have no
-- privileges).
CREATE FUNCTION nile._run_lock_keys(run_id bigint)
    RETURNS integer[]
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT ARRAY[(r.claim_key >> 32)::integer, (r.claim_key & 2147483647)::integer]
    FROM nile.for_each_tenant_runs r WHERE r.id = run_id
    $$;
REVOKE ALL ON FUNCTION nile._run_lock_keys(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._run_lock_keys(bigint) TO nile_admin;

-- Take that lock for this session, once (a session that holds it already keeps its single hold); false when another
-- session holds it.
CREATE FUNCTION nile._hold_run_lock(run_id bigint)
    RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
    DECLARE
        keys integer[] := nile._run_lock_keys(run_id);
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_locks l
                   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.pid = pg_backend_pid()
                     AND l.classid = keys[1]::oid AND l.objid = keys[2]::oid) THEN
            RETURN true;
        END IF;
        RETURN pg_try_advisory_lock(keys[1], keys[2]);
    END
    $$;
REVOKE ALL ON FUNCTION nile._hold_run_lock(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._hold_run_lock(bigint) TO nile_admin;

-- Release it at the end of the run.
CREATE FUNCTION nile._release_run_lock(run_id bigint)
    RETURNS void
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT pg_advisory_unlock(k[1], k[2]) FROM (SELECT nile._run_lock_keys(run_id) AS k) x $$;
REVOKE ALL ON FUNCTION nile._release_run_lock(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._release_run_lock(bigint) TO nile_admin;

-- Start a run of `statement`, or resume its unfinished one; returns the run. Checks everything first.
CREATE FUNCTION nile._for_each_tenant_start(statement text, batch_size integer)
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
REVOKE ALL ON FUNCTION nile._for_each_tenant_start(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._for_each_tenant_start(text, integer) TO nile_admin;

-- for_each_tenant(statement, batch_size): run `statement` once under each active tenant's context, in id order,
-- committing after every `batch_size` tenants. A tenant whose statement fails is recorded in
-- nile.for_each_tenant_failures and the run goes on; calling it again with the same statement after an interruption
-- resumes after the last committed batch.
--
-- A procedure that commits cannot have SET search_path, so it runs in the caller's search_path: every function,
-- operator and type name of its own is schema-qualified (an overload planted in a schema on that path, such as
-- cardinality(uuid[]) or /(integer, numeric), would otherwise beat pg_catalog's). Only `statement` itself is the
-- caller's SQL.
CREATE PROCEDURE nile.for_each_tenant(statement text, batch_size integer DEFAULT 100)
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
REVOKE ALL ON PROCEDURE nile.for_each_tenant(text, integer) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE nile.for_each_tenant(text, integer) TO nile_admin;

-- ---------------------------------------------------------------------------------------------------------------
-- The columns of `tbl` that an INSERT can write (not dropped, not generated), quoted, in table order, without
-- `leave_out`: what nile.import_schema() copies and nile.export_tenant() reads.
CREATE FUNCTION nile._insertable_columns(tbl regclass, leave_out name DEFAULT NULL)
    RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
    FROM pg_attribute a
    WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      AND a.attname IS DISTINCT FROM leave_out
    $$;
REVOKE ALL ON FUNCTION nile._insertable_columns(regclass, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._insertable_columns(regclass, name) TO nile_admin;

-- After rows were copied in with their own values, move the sequences behind the table's serial and identity columns
-- past the highest value the caller can see, so that the next default does not collide with a copied row.
CREATE FUNCTION nile._advance_sequences(tbl regclass)
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
REVOKE ALL ON FUNCTION nile._advance_sequences(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._advance_sequences(regclass) TO nile_admin;

-- The steps of nile.import_schema() that touch user tables (src/tenants/import.rs), for administrators only.
REVOKE ALL ON FUNCTION nile._import_step(text, oid, oid, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._import_step(text, oid, oid, uuid, text) TO nile_admin;

-- import_schema(source_schema, tenant_id, target_schema, dry_run): copy every table of a legacy schema-per-tenant
-- schema into the tenant tables of the same name in target_schema, as tenant_id's rows, in foreign-key order, in the
-- caller's transaction. Every table and column is checked before anything is written. Returns rows per table.
CREATE FUNCTION nile.import_schema(source_schema name, tenant_id uuid, target_schema name DEFAULT 'public',
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
COMMENT ON FUNCTION nile.import_schema(name, uuid, name, boolean) IS 'nile_tenancy: copy a legacy schema-per-tenant schema''s tables into the shared tenant tables as one tenant''s rows, in foreign-key order, in one transaction';
REVOKE ALL ON FUNCTION nile.import_schema(name, uuid, name, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.import_schema(name, uuid, name, boolean) TO nile_admin;

-- ---------------------------------------------------------------------------------------------------------------
-- export_tenant(tenant_id): for every table holding tenant rows, in foreign-key order (referenced tables first), the
-- SQL that reads exactly that tenant's rows: rows_sql (a SELECT), copy_sql (COPY ... TO STDOUT) and checksum_sql
-- (row count and an order-independent checksum, the same text on both sides of a move). scripts/move_tenant.sh
-- runs them. Reading the rows needs the tenant's context (or the admin context): the policies apply.
CREATE FUNCTION nile.export_tenant(tenant_id uuid)
    RETURNS TABLE(load_order integer, table_name regclass, tenant_column name, column_list text, rows_sql text,
                  copy_sql text, checksum_sql text)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    BEGIN
        PERFORM nile._require_nile_admin('nile.export_tenant()');
        IF tenant_id IS NULL THEN
            RAISE EXCEPTION 'tenant_id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
        END IF;
        IF NOT nile._tenant_exists(tenant_id) THEN
            RAISE EXCEPTION 'tenant % does not exist', tenant_id
                USING ERRCODE = 'undefined_object',
                      HINT = 'Check the id; SELECT id, name FROM nile.tenants lists the tenants (in nile.admin_context()).';
        END IF;
        RETURN QUERY
        SELECT (row_number() OVER (ORDER BY o.load_order))::integer, o.relid::regclass, o.tenant_column::name, x.columns,
               x.rows_sql, format('COPY (%s) TO STDOUT', x.rows_sql),
               format('SELECT count(*) AS row_count, coalesce(sum((''x'' || left(md5(r::text), 15))::bit(60)::bigint), 0)::text AS checksum FROM (%s) r',
                      x.rows_sql)
        FROM nile._tenant_tables_in_load_order() o
        CROSS JOIN LATERAL (
            SELECT c.columns, format('SELECT %s FROM %s WHERE %I = %L', c.columns, o.relid::regclass, o.tenant_column,
                                     export_tenant.tenant_id) AS rows_sql
            FROM (SELECT nile._insertable_columns(o.relid::regclass) AS columns) c
        ) x
        -- The extension's own tables (role bindings) are not user data: roles are re-bound on the other side.
        WHERE NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = o.relid
                            AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e')
        ORDER BY o.load_order;
    END
    $$;
COMMENT ON FUNCTION nile.export_tenant(uuid) IS 'nile_tenancy: per tenant table, in foreign-key order, the SQL that reads (rows_sql), copies out (copy_sql) and checksums (checksum_sql) one tenant''s rows';
REVOKE ALL ON FUNCTION nile.export_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile.export_tenant(uuid) TO nile_admin;

CREATE FUNCTION nile._tenant_exists(tenant_id uuid)
    RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT EXISTS (SELECT 1 FROM nile.tenants t WHERE t.id = tenant_id) $$;
REVOKE ALL ON FUNCTION nile._tenant_exists(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION nile._tenant_exists(uuid) TO nile_admin;
