//! Tenants: their UUIDv7 ids, the argument checks of the tenant functions, a tenant's lifecycle (update, deactivate,
//! delete, reactivate) and the purge of its rows from every tenant table, children first.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{assert_sqlstate, fixture, run, value, ACME, GLOBEX, GONE};
    use pgrx::prelude::*;

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
}
