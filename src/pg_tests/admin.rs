//! Administration: the admin context (for nile_admin only, audited, ended with its subtransaction, not lent to code the
//! admin calls), the functions only nile_admin may call, and row changes made for an administrator, which run with the
//! table owner's rights.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{assert_sqlstate, fixture, run, value, GLOBEX};
    use pgrx::prelude::*;

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
