//! Row isolation: a tenant reads and changes only its own rows, no context fails closed, an inactive tenant only reads
//! and a deleted one does nothing, and the tenant comparison is an index condition.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{assert_sqlstate, failure_of, fixture, run, value, ACME, GLOBEX};
    use pgrx::prelude::*;

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
}
