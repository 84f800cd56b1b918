//! pg_tests — in-server unit tests (`cargo pgrx test`). Each test runs in one transaction of one session, as a
//! superuser, and is rolled back at the end; roles it creates vanish with it. Multi-session behaviour (transaction
//! boundaries, concurrent sessions, connection options, parallel workers) is in tests/integration.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const ACME: &str = "0a0a0a0a-0000-7000-8000-000000000001";
    const GLOBEX: &str = "0b0b0b0b-0000-7000-8000-000000000002";
    const GONE: &str = "0c0c0c0c-0000-7000-8000-000000000003";

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// First column of the first row; runs read-write so that EXECUTE, EXPLAIN and friends work too.
    fn value<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
        Spi::connect_mut(|client| {
            let mut rows = client
                .update(sql, None, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.next()
                .and_then(|row| row.get::<T>(1).unwrap_or_else(|e| panic!("{sql}: {e}")))
        })
    }

    /// Runs `sql` in a subtransaction (a PL/pgSQL exception block) and returns "SQLSTATE: message" if it failed, None if
    /// it succeeded. A failed attempt is rolled back completely, including any SET LOCAL ROLE it began with.
    fn failure_of(sql: &str) -> Option<String> {
        Spi::get_one_with_args::<String>("SELECT pg_temp.failure_of($1)", &[sql.into()])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    #[track_caller]
    fn assert_sqlstate(sql: &str, sqlstate: &str) {
        match failure_of(sql) {
            Some(failure) => assert!(
                failure.starts_with(sqlstate),
                "{sql}\n  expected SQLSTATE {sqlstate}, got {failure}"
            ),
            None => panic!("{sql}\n  expected SQLSTATE {sqlstate}, but it succeeded"),
        }
    }

    /// Two tenants, a deleted one, an enrolled table `projects` with a row per live tenant, and a role `app` that may
    /// set the tenant context and use the table (a plain application role: not the owner, no BYPASSRLS).
    fn fixture() {
        // Policy expressions as pg_get_expr prints them, without the column alias it adds to the subquery.
        run(
            r"CREATE FUNCTION pg_temp.policy_text(e text) RETURNS text LANGUAGE sql IMMUTABLE
              AS $f$ SELECT regexp_replace(regexp_replace(e, ' AS \w+\)', ')', 'g'), '\( SELECT ', '(SELECT ', 'g') $f$",
        );
        run(
            "CREATE FUNCTION pg_temp.failure_of(sql text) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN EXECUTE sql; RETURN NULL;
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $f$",
        );
        run(&format!(
            "SELECT nile.create_tenant('Acme', '{ACME}'), nile.create_tenant('Globex', '{GLOBEX}'),
                    nile.create_tenant('Gone', '{GONE}');
             SELECT nile.delete_tenant('{GONE}');
             CREATE TABLE public.projects (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
             SELECT nile.enable_tenancy('public.projects');
             CREATE ROLE app NOLOGIN; GRANT nile_app TO app;
             GRANT SELECT, INSERT, UPDATE, DELETE ON public.projects TO app;
             SET LOCAL ROLE app;
             SELECT nile.set_tenant('{ACME}');  INSERT INTO public.projects (id, name) VALUES (1, 'acme-1'), (2, 'acme-2');
             SELECT nile.set_tenant('{GLOBEX}'); INSERT INTO public.projects (id, name) VALUES (1, 'globex-1');
             SELECT nile.clear_tenant();
             RESET ROLE;"
        ));
    }

    #[pg_test]
    fn uuidv7_has_version_7_and_increases() {
        let ids: Vec<String> = Spi::connect(|client| {
            client
                .select(
                    "SELECT nile.uuidv7()::text FROM generate_series(1, 2000)",
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| row.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        for id in &ids {
            assert_eq!(&id[14..15], "7", "{id} is not version 7");
            assert!(
                matches!(&id[19..20], "8" | "9" | "a" | "b"),
                "{id} has the wrong variant"
            );
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "UUIDv7s of one backend must strictly increase"
        );
        let default_id: String = value("SELECT (nile.create_tenant('v7 default'))::text").unwrap();
        assert_eq!(&default_id[14..15], "7");
    }

    #[pg_test]
    fn tenant_functions_reject_bad_arguments() {
        fixture();
        for (sql, sqlstate) in [
            ("SELECT nile.create_tenant(NULL)", "22004"),
            ("SELECT nile.create_tenant('')", "22023"),
            ("SELECT nile.create_tenant('   ')", "22023"),
            ("SELECT nile.create_tenant('x', metadata => NULL)", "22004"),
            (
                "SELECT nile.create_tenant('x', metadata => '[1, 2]')",
                "22023",
            ),
            (
                &format!("SELECT nile.create_tenant('Not Acme', '{ACME}')"),
                "23505",
            ),
            (
                &format!("SELECT nile.create_tenant('Gone', '{GONE}')"),
                "23505",
            ),
            ("SELECT nile.create_tenant('x', 'not-a-uuid')", "22P02"),
            (
                &format!("SELECT nile.update_tenant('{ACME}', '{{\"plan\": \"pro\"}}')"),
                "22023",
            ),
            (
                &format!("SELECT nile.update_tenant('{ACME}', '{{\"id\": \"{GLOBEX}\"}}')"),
                "22023",
            ),
            (
                &format!("SELECT nile.update_tenant('{ACME}', '{{\"status\": \"paused\"}}')"),
                "22023",
            ),
            (
                &format!("SELECT nile.update_tenant('{ACME}', '{{\"status\": null}}')"),
                "22023",
            ),
            (
                &format!("SELECT nile.update_tenant('{ACME}', '{{\"name\": \"\"}}')"),
                "22023",
            ),
            (
                &format!("SELECT nile.update_tenant('{ACME}', '{{\"name\": 42}}')"),
                "22023",
            ),
            (
                &format!("SELECT nile.update_tenant('{ACME}', '{{\"metadata\": \"x\"}}')"),
                "22023",
            ),
            (
                &format!("SELECT nile.update_tenant('{ACME}', '[]')"),
                "22023",
            ),
            (
                &format!("SELECT nile.update_tenant('{ACME}', NULL)"),
                "22004",
            ),
            (
                "SELECT nile.update_tenant('00000000-0000-0000-0000-000000000000', '{}')",
                "42704",
            ),
            (
                "SELECT nile.deactivate_tenant('00000000-0000-0000-0000-000000000000')",
                "42704",
            ),
            (
                "SELECT nile.delete_tenant('00000000-0000-0000-0000-000000000000')",
                "42704",
            ),
            ("SELECT nile.delete_tenant(NULL)", "22004"),
            (
                &format!("SELECT nile.delete_tenant('{ACME}', NULL)"),
                "22004",
            ),
        ] {
            assert_sqlstate(sql, sqlstate);
        }
        // Nothing was half-applied by the failures above.
        assert_eq!(
            value::<String>(&format!(
                "SELECT name FROM nile.tenants WHERE id = '{ACME}'"
            )),
            Some("Acme".into())
        );
        assert_eq!(
            value::<String>(&format!(
                "SELECT status FROM nile.tenants WHERE id = '{ACME}'"
            )),
            Some("active".into())
        );
    }

    #[pg_test]
    fn tenant_lifecycle_updates_status_and_timestamps() {
        fixture();
        // create_tenant with an explicit id is idempotent.
        assert_eq!(
            value::<String>(&format!(
                "SELECT nile.create_tenant('Acme', '{ACME}')::text"
            )),
            Some(ACME.into())
        );
        let row: Option<String> = value(&format!(
            "SELECT concat_ws(',', name, status, metadata->>'plan', deleted_at IS NULL)
             FROM nile.update_tenant('{ACME}', '{{\"name\": \"Acme Corp\", \"metadata\": {{\"plan\": \"pro\"}}}}')"
        ));
        assert_eq!(row.as_deref(), Some("Acme Corp,active,pro,t"));
        assert_eq!(
            value::<String>(&format!(
                "SELECT status FROM nile.deactivate_tenant('{ACME}')"
            )),
            Some("inactive".into())
        );
        run(&format!("SELECT nile.delete_tenant('{ACME}')"));
        assert_eq!(
            value::<String>(&format!("SELECT status || ',' || (deleted_at IS NOT NULL) FROM nile.tenants WHERE id = '{ACME}'")),
            Some("deleted,true".into())
        );
        assert_eq!(
            value::<String>(&format!("SELECT status || ',' || (deleted_at IS NULL) FROM nile.reactivate_tenant('{ACME}')")),
            Some("active,true".into())
        );
        // The soft delete kept the rows (the superuser bypasses row-level security).
        assert_eq!(
            value::<i64>(&format!(
                "SELECT count(*) FROM public.projects WHERE tenant_id = '{ACME}'"
            )),
            Some(2)
        );
    }

    #[pg_test]
    fn set_tenant_validates_the_tenant() {
        fixture();
        for (sql, sqlstate) in [
            ("SELECT nile.set_tenant(NULL)", "22004"),
            (&format!("SELECT nile.set_tenant('{ACME}', NULL)"), "22004"),
            (
                "SELECT nile.set_tenant('00000000-0000-0000-0000-000000000000')",
                "NT002",
            ),
            (&format!("SELECT nile.set_tenant('{GONE}')"), "NT004"),
            ("SELECT nile.set_tenant('garbage')", "22P02"),
            ("SELECT nile.set_tenant('')", "22P02"),
        ] {
            assert_sqlstate(sql, sqlstate);
        }
        assert_eq!(value::<String>("SELECT nile.current_tenant()::text"), None);
        assert_eq!(
            value::<String>(&format!("SELECT nile.set_tenant('{ACME}')::text")),
            Some(ACME.into())
        );
        assert_eq!(
            value::<String>("SELECT nile.current_tenant()::text"),
            Some(ACME.into())
        );
        assert_eq!(
            value::<String>("SELECT current_setting('nile.tenant_id')"),
            Some(ACME.into())
        );
        run("SELECT nile.clear_tenant()");
        assert_eq!(value::<String>("SELECT nile.current_tenant()::text"), None);
    }

    #[pg_test]
    fn tenant_and_admin_context_cannot_be_forged() {
        fixture();
        run("CREATE ROLE attacker NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON public.projects TO attacker;");
        for (sql, sqlstate) in [
            (format!("SET nile.tenant_id = '{ACME}'"), "NT006"),
            (format!("SET LOCAL nile.tenant_id = '{ACME}'"), "NT006"),
            (format!("SET SESSION nile.tenant_id TO '{ACME}'"), "NT006"),
            (format!("SELECT set_config('nile.tenant_id', '{ACME}', false)"), "NT006"),
            (format!("SELECT set_config('nile.tenant_id', '{ACME}', true)"), "NT006"),
            (format!("SELECT set_config('nile.tenant_id', upper('{ACME}'), true)"), "NT006"),
            (format!("ALTER ROLE attacker SET nile.tenant_id = '{ACME}'"), "NT006"),
            (format!("ALTER DATABASE {} SET nile.tenant_id = '{ACME}'", "current_database_placeholder"), "NT006"),
            (
                format!("CREATE FUNCTION pg_temp.as_acme() RETURNS bigint LANGUAGE sql SET nile.tenant_id = '{ACME}' AS 'SELECT count(*) FROM public.projects'"),
                "NT006",
            ),
            ("SET nile.admin_active = on".into(), "NT006"),
            ("SELECT set_config('nile.admin_active', 'on', true)".into(), "NT006"),
            ("ALTER ROLE attacker SET nile.admin_active = on".into(), "NT006"),
        ] {
            let sql = sql.replace("current_database_placeholder", &value::<String>("SELECT quote_ident(current_database())").unwrap());
            assert_sqlstate(&sql, sqlstate);
            // A role without nile_app: same refusals (but ALTER DATABASE needs its owner first), and set_tenant itself
            // is not executable.
            let attacker_sqlstate = if sql.starts_with("ALTER DATABASE") {
                "42501"
            } else {
                sqlstate
            };
            assert_sqlstate(&format!("SET LOCAL ROLE attacker; {sql}"), attacker_sqlstate);
        }
        assert_sqlstate(
            &format!("SET LOCAL ROLE attacker; SELECT nile.set_tenant('{ACME}')"),
            "42501",
        );
        assert_sqlstate(
            "SET LOCAL ROLE attacker; SELECT nile.admin_context('curious')",
            "42501",
        );
        // A name under nile. that the extension does not define: refused from PostgreSQL 15 on (the prefix is
        // reserved); PostgreSQL 14 has no reservation and keeps it as an inert placeholder, which no nile code reads
        // and which cannot stand in for nile.tenant_id or nile.admin_active (those are defined, with their guard).
        #[cfg(not(feature = "pg14"))]
        {
            assert_sqlstate("SET nile.not_a_setting = 1", "42602");
            assert_sqlstate(
                "SET LOCAL ROLE attacker; SET nile.not_a_setting = 1",
                "42602",
            );
        }
        #[cfg(feature = "pg14")]
        {
            assert_eq!(failure_of("SET nile.not_a_setting = 1"), None);
            assert_eq!(
                value::<String>("SELECT current_setting('nile.not_a_setting')"),
                Some("1".into())
            );
            assert_eq!(value::<String>("SELECT nile.current_tenant()::text"), None);
            assert_eq!(
                value::<String>("SELECT current_setting('nile.admin_active')"),
                Some("off".into())
            );
        }
        // After all of that, the session still has no context and sees nothing.
        assert_eq!(
            value::<String>("SELECT current_setting('nile.tenant_id')"),
            Some(String::new())
        );
        assert_sqlstate(
            "SET LOCAL ROLE attacker; SELECT count(*) FROM public.projects",
            "NT001",
        );
    }

    #[pg_test]
    fn enable_tenancy_refuses_what_it_cannot_protect() {
        fixture();
        run(&format!(
            "SET LOCAL nile.auto_enable = off;  -- these tables are enrolled by hand below
             CREATE VIEW public.v AS SELECT 1 AS x;
             CREATE MATERIALIZED VIEW public.mv AS SELECT 1 AS x;
             CREATE TEMP TABLE tmp (x int);
             CREATE TABLE public.wrong_type (tenant_id text);
             CREATE TABLE public.has_rows (x int); INSERT INTO public.has_rows VALUES (1);
             CREATE TABLE public.has_nulls (tenant_id uuid); INSERT INTO public.has_nulls VALUES (NULL);
             CREATE TABLE public.orphans (tenant_id uuid); INSERT INTO public.orphans VALUES ('00000000-0000-0000-0000-00000000abcd');
             CREATE TABLE public.parted (tenant_id uuid, x int) PARTITION BY LIST (x);
             CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES IN (1);
             CREATE ROLE not_owner NOLOGIN; GRANT nile_admin TO not_owner;
             CREATE TABLE public.someone_elses (x int);"
        ));
        for (sql, sqlstate) in [
            ("SELECT nile.enable_tenancy(NULL)", "22004"),
            ("SELECT nile.enable_tenancy('public.no_such_table')", "42P01"),
            ("SELECT nile.enable_tenancy('public.v')", "42809"),
            ("SELECT nile.enable_tenancy('public.mv')", "42809"),
            ("SELECT nile.enable_tenancy('tmp')", "42809"),
            ("SELECT nile.enable_tenancy('pg_catalog.pg_class')", "42809"),
            ("SELECT nile.enable_tenancy('nile.tenants')", "42809"),
            ("SELECT nile.enable_tenancy('nile.admin_audit')", "42809"),
            ("SELECT nile.enable_tenancy('public.parted_1')", "42809"),
            ("SELECT nile.enable_tenancy('public.wrong_type')", "42804"),
            ("SELECT nile.enable_tenancy('public.has_rows')", "55000"),
            ("SELECT nile.enable_tenancy('public.has_nulls')", "23502"),
            ("SELECT nile.enable_tenancy('public.orphans')", "23503"),
            ("SELECT nile.enable_tenancy('public.has_rows', tenant_column => '')", "22023"),
            ("SELECT nile.enable_tenancy('public.has_rows', backfill_tenant => '00000000-0000-0000-0000-000000000000')", "42704"),
            (&format!("SELECT nile.enable_tenancy('public.has_rows', backfill_tenant => '{GONE}')"), "55000"),
            ("SET LOCAL ROLE not_owner; SELECT nile.enable_tenancy('public.someone_elses')", "42501"),
            ("SET LOCAL ROLE app; SELECT nile.enable_tenancy('public.someone_elses')", "42501"),
            ("SET LOCAL ROLE app; SELECT nile.disable_tenancy('public.projects')", "42501"),
        ] {
            assert_sqlstate(sql, sqlstate);
        }
        // Nothing was half-applied: no column added, no RLS, no registry entry.
        assert_eq!(value::<i64>("SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.has_rows'::regclass AND attname = 'tenant_id'"), Some(0));
        assert_eq!(
            value::<bool>(
                "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.wrong_type'::regclass"
            ),
            Some(false)
        );
        assert_eq!(
            value::<i64>("SELECT count(*) FROM nile.tenant_tables"),
            Some(1)
        );
    }

    /// The shape enable_tenancy leaves a table in, as one comparable string.
    fn tenancy_shape(table: &str) -> String {
        value::<String>(&format!(
            "SELECT concat_ws(' | ',
                (SELECT format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END
                        || ' default ' || pg_get_expr(d.adbin, d.adrelid)
                 FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE a.attrelid = '{table}'::regclass AND a.attname = 'tenant_id'),
                (SELECT string_agg(pg_get_constraintdef(oid), ', ' ORDER BY conname) FROM pg_constraint
                 WHERE conrelid = '{table}'::regclass AND contype = 'f'),
                (SELECT count(*) || ' index(es) leading with tenant_id' FROM pg_index i
                 WHERE i.indrelid = '{table}'::regclass AND i.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attname = 'tenant_id')),
                (SELECT 'rls=' || relrowsecurity || ' force=' || relforcerowsecurity FROM pg_class WHERE oid = '{table}'::regclass),
                (SELECT string_agg(polname || ' ' || polcmd::text || ' ' || coalesce(pg_temp.policy_text(pg_get_expr(polqual, polrelid)), '-') || ' ' || coalesce(pg_temp.policy_text(pg_get_expr(polwithcheck, polrelid)), '-'), '; ' ORDER BY polname)
                 FROM pg_policy WHERE polrelid = '{table}'::regclass))"
        ))
        .unwrap_or_default()
    }

    #[pg_test]
    fn enable_tenancy_builds_a_protected_table_and_is_idempotent() {
        fixture();
        run(&format!(
            "CREATE TABLE public.users (id bigint GENERATED ALWAYS AS IDENTITY, name text);
             CREATE TABLE public.legacy (id int); INSERT INTO public.legacy VALUES (1), (2);
             SELECT nile.enable_tenancy('public.users');
             SELECT nile.enable_tenancy('public.legacy', backfill_tenant => '{ACME}');"
        ));
        let expected = "uuid not null default nile.current_tenant() | FOREIGN KEY (tenant_id) REFERENCES nile.tenants(id) \
             | 1 index(es) leading with tenant_id | rls=true force=true \
             | nile_tenant_delete d (tenant_id = (SELECT nile.policy_write_tenant())) -; \
             nile_tenant_insert a - ((tenant_id = (SELECT nile.policy_write_tenant())) OR nile.policy_foreign_row(tenant_id)); \
             nile_tenant_select r (tenant_id = (SELECT nile.policy_read_tenant())) -; \
             nile_tenant_update w (tenant_id = (SELECT nile.policy_write_tenant())) ((tenant_id = (SELECT nile.policy_write_tenant())) OR nile.policy_foreign_row(tenant_id))";
        assert_eq!(tenancy_shape("public.users"), expected);
        assert_eq!(tenancy_shape("public.legacy"), expected);
        assert_eq!(
            value::<i64>(&format!(
                "SELECT count(*) FROM public.legacy WHERE tenant_id = '{ACME}'"
            )),
            Some(2)
        );
        // Again, and after tampering: the same shape, no duplicate objects.
        // (The event triggers refuse such tampering; they are switched off to simulate it.)
        run("ALTER EVENT TRIGGER nile_ddl_command_end DISABLE; ALTER EVENT TRIGGER nile_sql_drop DISABLE;
             ALTER TABLE public.users NO FORCE ROW LEVEL SECURITY; DROP POLICY nile_tenant_select ON public.users;
             ALTER POLICY nile_tenant_insert ON public.users WITH CHECK (true);
             ALTER EVENT TRIGGER nile_ddl_command_end ENABLE; ALTER EVENT TRIGGER nile_sql_drop ENABLE;
             SELECT nile.enable_tenancy('public.users'); SELECT nile.enable_tenancy('public.users');");
        assert_eq!(tenancy_shape("public.users"), expected);
        // The existing primary key (tenant_id, id) counts as the tenant index: no extra index on projects.
        assert!(tenancy_shape("public.projects").contains("1 index(es) leading with tenant_id"));
        assert_eq!(
            value::<String>("SELECT string_agg(relid::text || ':' || tenant_column, ',' ORDER BY relid::text) FROM nile.tenant_tables"),
            Some("legacy:tenant_id,projects:tenant_id,users:tenant_id".into())
        );
        // A custom column name works too.
        run("CREATE TABLE public.orgs (org uuid NOT NULL, x int); SELECT nile.enable_tenancy('public.orgs', 'org');");
        assert!(value::<String>("SELECT string_agg(pg_get_expr(polqual, polrelid), ',') FROM pg_policy WHERE polrelid = 'public.orgs'::regclass")
            .unwrap_or_default()
            .contains("(org = ( SELECT nile.policy_read_tenant()"));
    }

    #[pg_test]
    fn partitions_are_protected_like_their_parent() {
        fixture();
        run(&format!(
            "CREATE TABLE public.events (tenant_id uuid NOT NULL, at date NOT NULL, what text) PARTITION BY RANGE (at);
             CREATE TABLE public.events_2026 PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             CREATE TABLE public.events_2027 PARTITION OF public.events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')
                 PARTITION BY LIST (what);
             CREATE TABLE public.events_2027_x PARTITION OF public.events_2027 DEFAULT;
             SELECT nile.enable_tenancy('public.events');
             GRANT SELECT, INSERT ON public.events, public.events_2026, public.events_2027_x TO app;
             SET LOCAL ROLE app;
             SELECT nile.set_tenant('{ACME}');   INSERT INTO public.events VALUES (DEFAULT, '2026-05-01', 'a'), (DEFAULT, '2027-05-01', 'b');
             SELECT nile.set_tenant('{GLOBEX}'); INSERT INTO public.events VALUES (DEFAULT, '2026-05-01', 'g');"
        ));
        for (partition, day) in [
            ("public.events_2026", "2026-06-01"),
            ("public.events_2027_x", "2027-06-01"),
        ] {
            assert_eq!(
                value::<i64>(&format!(
                    "SELECT count(*) FROM {partition} WHERE tenant_id <> '{GLOBEX}'"
                )),
                Some(0),
                "{partition}"
            );
            assert_sqlstate(
                &format!("INSERT INTO {partition} VALUES ('{ACME}', '{day}', 'x')"),
                "NT005",
            );
        }
        assert_eq!(value::<i64>("SELECT count(*) FROM public.events"), Some(1));
        run("RESET ROLE");
        assert_eq!(
            value::<String>("SELECT string_agg(relid::text || '<' || coalesce(parent::text, '-'), ',' ORDER BY relid::text) FROM nile.tenant_tables WHERE relid::text LIKE 'events%'"),
            Some("events<-,events_2026<events,events_2027<events,events_2027_x<events".into())
        );
    }

    #[pg_test]
    fn a_tenant_sees_and_changes_only_its_own_rows() {
        fixture();
        run(&format!(
            "SET LOCAL ROLE app; SELECT nile.set_tenant('{GLOBEX}')"
        ));
        assert_eq!(
            value::<String>("SELECT string_agg(name, ',' ORDER BY name) FROM public.projects"),
            Some("globex-1".into())
        );
        for (sql, sqlstate) in [
            (format!("INSERT INTO public.projects VALUES ('{ACME}', 9, 'planted')"), "NT005"),
            (format!("UPDATE public.projects SET tenant_id = '{ACME}'"), "NT005"),
            (format!("INSERT INTO public.projects VALUES ('{GLOBEX}', 1, 'dup') ON CONFLICT (tenant_id, id) DO UPDATE SET tenant_id = '{ACME}'"), "NT005"),
        ] {
            assert_sqlstate(&sql, sqlstate);
        }
        for (sql, rows) in [
            (format!("UPDATE public.projects SET name = 'hijacked' WHERE tenant_id = '{ACME}'"), 0),
            (format!("DELETE FROM public.projects WHERE tenant_id = '{ACME}'"), 0),
            ("DELETE FROM public.projects WHERE name LIKE 'acme%'".to_string(), 0),
            (format!("SELECT * FROM public.projects WHERE tenant_id = '{ACME}'"), 0),
            ("SELECT * FROM public.projects p WHERE EXISTS (SELECT 1 FROM public.projects q WHERE q.name = 'acme-1')".to_string(), 0),
        ] {
            let processed = Spi::connect_mut(|c| c.update(sql.as_str(), None, &[]).map(|t| t.len())).unwrap();
            assert_eq!(processed, rows, "{sql}");
        }
        run("RESET ROLE");
        assert_eq!(
            value::<String>("SELECT string_agg(name, ',' ORDER BY name) FROM public.projects"),
            Some("acme-1,acme-2,globex-1".into()),
            "the superuser (who bypasses row-level security) sees every row unchanged"
        );
    }

    #[pg_test]
    fn no_context_fails_closed() {
        fixture();
        run("SET LOCAL ROLE app");
        assert_sqlstate("SELECT count(*) FROM public.projects", "NT001");
        assert_sqlstate(
            "INSERT INTO public.projects (id, name) VALUES (5, 'x')",
            "NT001",
        );
        assert_sqlstate("UPDATE public.projects SET name = 'x'", "NT001");
        assert_sqlstate("SELECT count(*) FROM nile.tenants", "NT001");
        // Only a superuser may change it (issue 18: through a pool, a client's SET would reach the next clients).
        assert_sqlstate("SET LOCAL nile.missing_tenant = deny", "42501");
        run("RESET ROLE");
        run("SET LOCAL nile.missing_tenant = deny");
        run("SET LOCAL ROLE app");
        assert_eq!(
            value::<i64>("SELECT count(*) FROM public.projects"),
            Some(0)
        );
        assert_eq!(value::<i64>("SELECT count(*) FROM nile.tenants"), Some(0));
        assert_sqlstate(
            &format!("INSERT INTO public.projects VALUES ('{ACME}', 5, 'x')"),
            "42501",
        );
        assert_sqlstate(
            "INSERT INTO public.projects (id, name) VALUES (5, 'x')",
            "42501",
        );
        assert_eq!(
            Spi::connect_mut(|c| c
                .update("DELETE FROM public.projects", None, &[])
                .map(|t| t.len()))
            .unwrap(),
            0
        );
        run("RESET ROLE");
        assert_sqlstate("SET LOCAL nile.missing_tenant = allow", "22023");
    }

    #[pg_test]
    fn inactive_tenants_read_and_deleted_tenants_do_nothing() {
        fixture();
        run(&format!("SELECT nile.deactivate_tenant('{ACME}'); SET LOCAL ROLE app; SELECT nile.set_tenant('{ACME}')"));
        assert_eq!(
            value::<i64>("SELECT count(*) FROM public.projects"),
            Some(2)
        );
        assert_eq!(
            value::<String>("SELECT name FROM nile.tenants"),
            Some("Acme".into()),
            "a tenant sees its own tenant row only"
        );
        for sql in [
            "INSERT INTO public.projects (id, name) VALUES (7, 'x')",
            "UPDATE public.projects SET name = 'x' WHERE id = 1",
            "DELETE FROM public.projects WHERE id = 1",
        ] {
            let failure = failure_of(sql).unwrap_or_default();
            assert!(
                failure.starts_with("NT003")
                    && failure.contains("\"Acme\"")
                    && failure.contains("inactive"),
                "{sql}: {failure}"
            );
        }
        // Deleting the tenant while a session works for it: every access stops at once.
        run(&format!(
            "RESET ROLE; SELECT nile.delete_tenant('{ACME}'); SET LOCAL ROLE app"
        ));
        assert_sqlstate("SELECT count(*) FROM public.projects", "NT004");
        assert_sqlstate(&format!("SELECT nile.set_tenant('{ACME}')"), "NT004");
    }

    #[pg_test]
    fn admin_context_is_for_nile_admin_audited_and_sees_all() {
        fixture();
        run("CREATE ROLE backoffice NOLOGIN; GRANT nile_admin TO backoffice; GRANT SELECT ON public.projects TO backoffice;");
        for (sql, sqlstate) in [
            (
                "SET LOCAL ROLE app; SELECT nile.admin_context('report')",
                "42501",
            ),
            (
                "SET LOCAL ROLE backoffice; SELECT nile.admin_context(NULL)",
                "22023",
            ),
            (
                "SET LOCAL ROLE backoffice; SELECT nile.admin_context('  ')",
                "22023",
            ),
        ] {
            assert_sqlstate(sql, sqlstate);
        }
        run("SET LOCAL ROLE backoffice; SELECT nile.admin_context('monthly report')");
        assert_eq!(
            value::<i64>("SELECT count(*) FROM public.projects"),
            Some(3)
        );
        assert_eq!(value::<i64>("SELECT count(*) FROM nile.tenants"), Some(3));
        assert_eq!(
            value::<String>("SELECT current_setting('nile.admin_active')"),
            Some("on".into())
        );
        assert_eq!(
            value::<String>("SELECT session_role || '/' || acting_role || '/' || reason FROM nile.admin_audit ORDER BY id DESC LIMIT 1"),
            Some(format!("{}/backoffice/monthly report", value::<String>("SELECT session_user::text").unwrap()))
        );
    }

    #[pg_test]
    fn admin_context_ends_with_its_subtransaction_and_leaves_no_plan_behind() {
        fixture();
        run(&format!(
            "CREATE ROLE backoffice NOLOGIN; GRANT nile_admin TO backoffice; GRANT SELECT ON public.projects TO backoffice;
             SET LOCAL ROLE backoffice; SELECT nile.set_tenant('{GLOBEX}');
             PREPARE all_projects AS SELECT count(*) FROM public.projects;"
        ));
        assert_eq!(value::<i64>("EXECUTE all_projects"), Some(1));
        // A subtransaction (what SAVEPOINT / ROLLBACK TO does) enters the admin context, uses the prepared statement,
        // and is rolled back.
        run("DO $$
             DECLARE n bigint;
             BEGIN
                 BEGIN
                     PERFORM nile.admin_context('look around');
                     EXECUTE 'EXECUTE all_projects' INTO n;
                     IF n <> 3 THEN RAISE EXCEPTION 'admin context saw % rows, not 3', n USING ERRCODE = 'XX000'; END IF;
                     RAISE EXCEPTION 'roll back' USING ERRCODE = 'P0001';
                 EXCEPTION WHEN SQLSTATE 'P0001' THEN NULL;
                 END;
             END $$");
        assert_eq!(
            value::<String>("SELECT current_setting('nile.admin_active')"),
            Some("off".into())
        );
        assert_eq!(
            value::<i64>("EXECUTE all_projects"),
            Some(1),
            "a plan made in the admin context must not survive it"
        );
        run("DEALLOCATE all_projects");
    }

    #[pg_test]
    fn context_follows_subtransactions_and_prepared_statements_follow_the_tenant() {
        fixture();
        run(&format!("SET LOCAL ROLE app; SELECT nile.set_tenant('{ACME}'); PREPARE names AS SELECT string_agg(name, ',' ORDER BY name) FROM public.projects;"));
        // Enough executions for the plan cache to consider a generic plan.
        for _ in 0..7 {
            assert_eq!(
                value::<String>("EXECUTE names"),
                Some("acme-1,acme-2".into())
            );
        }
        run(&format!("SELECT nile.set_tenant('{GLOBEX}')"));
        for _ in 0..7 {
            assert_eq!(value::<String>("EXECUTE names"), Some("globex-1".into()));
        }
        // A rolled-back subtransaction takes its set_tenant with it.
        run(&format!(
            "DO $$ BEGIN
                 BEGIN PERFORM nile.set_tenant('{ACME}'); RAISE EXCEPTION 'roll back' USING ERRCODE = 'P0001';
                 EXCEPTION WHEN SQLSTATE 'P0001' THEN NULL; END;
             END $$"
        ));
        assert_eq!(
            value::<String>("SELECT nile.current_tenant()::text"),
            Some(GLOBEX.into())
        );
        assert_eq!(value::<String>("EXECUTE names"), Some("globex-1".into()));
        run("RESET ALL");
        assert_eq!(
            value::<String>("SELECT nile.current_tenant()::text"),
            None,
            "RESET ALL clears the tenant context"
        );
        run("DEALLOCATE names");
    }

    #[pg_test]
    fn tenant_comparison_is_an_index_condition_for_reads_joins_and_writes() {
        fixture();
        run(&format!(
            "INSERT INTO public.projects SELECT '{ACME}', g, 'bulk' FROM generate_series(100, 5000) g;
             CREATE TABLE public.tasks (tenant_id uuid NOT NULL, id bigint NOT NULL, project_id bigint NOT NULL,
                                        PRIMARY KEY (tenant_id, id));
             CREATE INDEX ON public.tasks (tenant_id, project_id);
             SELECT nile.enable_tenancy('public.tasks');
             INSERT INTO public.tasks SELECT '{ACME}', g, g / 3 FROM generate_series(1, 5000) g;
             GRANT SELECT ON public.tasks TO app;
             ANALYZE public.projects, public.tasks;
             SET LOCAL ROLE app; SELECT nile.set_tenant('{ACME}');"
        ));
        // (query, the function whose InitPlan feeds the tenant comparison)
        for (query, policy_function) in [
            ("SELECT * FROM public.projects WHERE id = 42", "policy_read_tenant"),
            ("SELECT * FROM public.projects WHERE id BETWEEN 100 AND 120", "policy_read_tenant"),
            ("SELECT * FROM public.projects p JOIN public.tasks t ON t.tenant_id = p.tenant_id AND t.project_id = p.id WHERE p.id = 42", "policy_read_tenant"),
            // A join that leaves the tenant to the policies: each side still finds its rows through its index.
            ("SELECT * FROM public.projects p JOIN public.tasks t ON t.project_id = p.id WHERE p.id = 42", "policy_read_tenant"),
            ("UPDATE public.projects SET name = 'x' WHERE id = 42", "policy_write_tenant"),
            ("DELETE FROM public.projects WHERE id = 42", "policy_write_tenant"),
        ] {
            let plan: String = Spi::connect_mut(|c| {
                c.update(&format!("EXPLAIN (VERBOSE, COSTS OFF) {query}"), None, &[])
                    .unwrap()
                    .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            // The tenant comparison is an index condition against the InitPlan's result: `$0` up to PostgreSQL 16,
            // `(InitPlan 1).col1` from 17 on. The InitPlan computes nile.policy_read_tenant() once per statement.
            let index_conds: Vec<&str> = plan.lines().filter(|l| l.trim_start().starts_with("Index Cond:")).collect();
            let tenant_first = |l: &&str| l.contains("tenant_id = $") || l.contains("tenant_id = (InitPlan");
            assert!(!index_conds.is_empty() && index_conds.iter().all(tenant_first), "{query}\n{plan}");
            assert!(plan.contains(&format!("Output: nile.{policy_function}()")), "{query}\n{plan}");
            assert!(!plan.lines().any(|l| l.contains("Filter:") && l.contains("tenant_id")), "{query}\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{query}\n{plan}");
        }
    }

    #[pg_test]
    fn disable_tenancy_is_the_deliberate_way_out() {
        fixture();
        run("CREATE POLICY users_own ON public.projects FOR SELECT USING (true); SELECT nile.disable_tenancy('public.projects');");
        assert_eq!(value::<i64>("SELECT count(*) FROM pg_policy WHERE polrelid = 'public.projects'::regclass AND polname LIKE 'nile%'"), Some(0));
        assert_eq!(
            value::<bool>(
                "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.projects'::regclass"
            ),
            Some(true),
            "kept for the user's own policy"
        );
        assert_eq!(
            value::<i64>("SELECT count(*) FROM nile.tenant_tables"),
            Some(0)
        );
        run("DROP POLICY users_own ON public.projects; SELECT nile.enable_tenancy('public.projects'); SELECT nile.disable_tenancy('public.projects');");
        assert_eq!(value::<bool>("SELECT relrowsecurity OR relforcerowsecurity FROM pg_class WHERE oid = 'public.projects'::regclass"), Some(false));
        // Again: a no-op with a notice; the data is all still there.
        run("SELECT nile.disable_tenancy('public.projects')");
        assert_eq!(
            value::<i64>("SELECT count(*) FROM public.projects"),
            Some(3)
        );
    }

    #[pg_test]
    fn purge_removes_a_tenant_everywhere_children_first() {
        fixture();
        run(&format!(
            "CREATE TABLE public.tasks (tenant_id uuid NOT NULL, id int, project_id bigint NOT NULL,
                                        FOREIGN KEY (tenant_id, project_id) REFERENCES public.projects (tenant_id, id));
             SELECT nile.enable_tenancy('public.tasks');
             CREATE TABLE public.notes (tenant_id uuid NOT NULL REFERENCES nile.tenants (id), body text);
             INSERT INTO public.tasks VALUES ('{ACME}', 1, 1), ('{ACME}', 2, 2), ('{GLOBEX}', 1, 1);
             INSERT INTO public.notes VALUES ('{ACME}', 'a'), ('{GLOBEX}', 'g');
             SELECT nile.delete_tenant('{ACME}', purge => true);"
        ));
        assert_eq!(
            value::<i64>(&format!(
                "SELECT count(*) FROM public.projects WHERE tenant_id = '{ACME}'"
            )),
            Some(0)
        );
        assert_eq!(
            value::<i64>(&format!(
                "SELECT count(*) FROM public.tasks WHERE tenant_id = '{ACME}'"
            )),
            Some(0)
        );
        assert_eq!(
            value::<i64>(&format!(
                "SELECT count(*) FROM public.notes WHERE tenant_id = '{ACME}'"
            )),
            Some(0)
        );
        assert_eq!(
            value::<i64>(&format!(
                "SELECT count(*) FROM nile.tenants WHERE id = '{ACME}'"
            )),
            Some(0)
        );
        assert_eq!(
            value::<i64>("SELECT count(*) FROM public.projects"),
            Some(1),
            "Globex keeps its rows"
        );
        assert_eq!(value::<i64>("SELECT count(*) FROM public.tasks"), Some(1));
    }

    #[pg_test]
    fn row_changes_made_for_an_admin_run_with_the_table_owners_rights() {
        fixture();
        // A table owner (a nile_admin member, not a superuser) plants triggers that record who runs them.
        run(&format!(
            "SET LOCAL nile.auto_enable = off;  -- trap is enrolled by hand below
             CREATE ROLE table_owner NOLOGIN; GRANT nile_admin TO table_owner;
             CREATE TABLE public.trap (x int, tenant_id uuid);
             CREATE TABLE public.trap_log (who name, what text);
             ALTER TABLE public.trap OWNER TO table_owner; ALTER TABLE public.trap_log OWNER TO table_owner;
             INSERT INTO public.trap VALUES (1, NULL);
             CREATE FUNCTION public.trap_fn() RETURNS trigger LANGUAGE plpgsql AS $f$
                 BEGIN INSERT INTO public.trap_log VALUES (current_user, TG_OP); RETURN COALESCE(NEW, OLD); END $f$;
             ALTER FUNCTION public.trap_fn() OWNER TO table_owner;
             CREATE TRIGGER trap_t BEFORE UPDATE OR DELETE ON public.trap FOR EACH ROW EXECUTE FUNCTION public.trap_fn();
             SET LOCAL ROLE table_owner;
             SELECT nile.enable_tenancy('public.trap', backfill_tenant => '{GLOBEX}');
             RESET ROLE;
             SELECT nile.delete_tenant('{GLOBEX}', purge => true);"
        ));
        assert_eq!(
            value::<String>("SELECT string_agg(who || ':' || what, ',' ORDER BY what DESC) FROM public.trap_log"),
            Some("table_owner:UPDATE,table_owner:DELETE".into()),
            "the backfill and the purge must not run user triggers as a superuser"
        );
    }

    #[pg_test]
    fn the_admin_context_is_not_lent_to_code_the_admin_calls() {
        fixture();
        run("CREATE ROLE backoffice NOLOGIN; GRANT nile_admin TO backoffice; GRANT SELECT ON public.projects TO backoffice;
             CREATE ROLE mallory NOLOGIN; GRANT nile_app TO mallory; GRANT SELECT ON public.projects TO mallory;
             CREATE FUNCTION public.count_projects() RETURNS bigint LANGUAGE sql SECURITY DEFINER
                 AS 'SELECT count(*) FROM public.projects';
             ALTER FUNCTION public.count_projects() OWNER TO mallory;
             SET LOCAL ROLE backoffice; SELECT nile.admin_context('audit');");
        assert_eq!(
            value::<i64>("SELECT count(*) FROM public.projects"),
            Some(3),
            "the admin itself sees everything"
        );
        assert_sqlstate("SELECT public.count_projects()", "NT001");
    }

    #[pg_test]
    fn admin_functions_need_nile_admin() {
        fixture();
        for sql in [
            "SELECT nile.create_tenant('x')",
            "SELECT nile.update_tenant('0a0a0a0a-0000-7000-8000-000000000001', '{}')",
            "SELECT nile.deactivate_tenant('0a0a0a0a-0000-7000-8000-000000000001')",
            "SELECT nile.reactivate_tenant('0a0a0a0a-0000-7000-8000-000000000001')",
            "SELECT nile.delete_tenant('0a0a0a0a-0000-7000-8000-000000000001')",
            "SELECT nile._update_tenant('0a0a0a0a-0000-7000-8000-000000000001', '{}')",
            "SELECT nile.enable_tenancy('public.projects')",
            "SELECT nile._enable_tenancy('public.projects'::regclass::oid, 'tenant_id', NULL)",
            "SELECT nile.disable_tenancy('public.projects')",
            "SELECT nile.admin_context('x')",
            "INSERT INTO nile.tenants (name) VALUES ('x')",
            "UPDATE nile.tenants SET status = 'active'",
            "DELETE FROM nile.admin_audit",
            "SELECT * FROM nile.admin_audit",
        ] {
            assert_sqlstate(&format!("SET LOCAL ROLE app; {sql}"), "42501");
        }
    }
}
