//! The tenant context: what nile.set_tenant() checks, the settings that cannot forge it (nor the admin context), and
//! how it follows subtransactions, prepared statements and RESET ALL.

#[pgrx::pg_schema]
mod tests {
    #[cfg(feature = "pg14")]
    use crate::pg_tests::failure_of;
    use crate::pg_tests::{assert_sqlstate, fixture, run, value, ACME, GLOBEX, GONE};
    use pgrx::prelude::*;

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
}
