//! Tenant tables: what nile.enable_tenancy() refuses, the shape it leaves a table in (and restores when run again),
//! partitions, and nile.disable_tenancy() as the deliberate way out.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{assert_sqlstate, fixture, run, value, ACME, GLOBEX, GONE};
    use pgrx::prelude::*;

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
}
