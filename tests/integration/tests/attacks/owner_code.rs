//! A tenant table's owner against the extension's administration (issue 17 and its reviews): code it hangs on its
//! tables (CHECK constraints, statistics, index predicates, triggers) runs with no other rights and sees no other
//! tenant's rows when an administrator enrolls, measures or purges, and no parent makes every tenant's rows
//! readable.

use super::*;

impl Siege {
    /// Every trap run with rights other than its owner's, as `who:place` (empty when there was none).
    fn traps_run_by_others(&mut self) -> String {
        one::<Option<String>>(
            &mut self.su,
            "SELECT string_agg(DISTINCT who || ':' || place, ', ') FROM public.trap_log WHERE who <> 'it_atk_owner'",
        )
        .unwrap_or_default()
    }
}

/// Issue 17, finding 1 (critical): the DDL event trigger's automatic enrolment, and `nile.enable_tenancy()`, planned
/// queries over the user's table as the bootstrap superuser (the NULL-tenant check, the foreign key's validation), and
/// planning evaluates the table owner's IMMUTABLE functions: CHECK constraints of inheritance children, statistics
/// and index-predicate expressions. Any role that could create a table ran code as superuser. Now every query over a
/// table and every change to it runs as its owner in a security-restricted operation.
#[test]
fn run_owner_code_as_superuser_through_enrolment() {
    let mut s = Siege::new("owner_code_enrolment");
    let mut owner = s.login("it_atk_owner");
    owner.batch_execute(OWNER_TRAPS).unwrap();
    owner
        .batch_execute(
            "-- The review's repro: a parent whose inheritance child has a trapping CHECK, given a tenant column.
             CREATE TABLE public.p (a int);
             CREATE TABLE public.c (CHECK (a > public.trap_check())) INHERITS (public.p);
             ALTER TABLE public.p ADD COLUMN tenant_id uuid;
             -- Statistics and a partial index over a table that is given a tenant column.
             CREATE TABLE public.s (a int);
             CREATE STATISTICS public.s_stat ON (a + public.trap_stat()), a FROM public.s;
             CREATE INDEX ON public.s (a) WHERE a > public.trap_pred();
             ALTER TABLE public.s ADD COLUMN tenant_id uuid;
             -- A table that joins an enrolled tree, with rows its foreign key validates.
             SET nile.auto_enable = off;
             CREATE TABLE public.kid (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL);
             CREATE STATISTICS public.kid_stat ON (id + public.trap_stat()), id FROM public.kid;
             RESET nile.auto_enable;",
        )
        .unwrap();
    s.su.batch_execute(&format!(
        "INSERT INTO public.kid VALUES ('{ACME}', 7, 'kid-row');
         SET nile.auto_enable = off;
         CREATE TABLE public.s2 (tenant_id uuid, a int);
         ALTER TABLE public.s2 OWNER TO it_atk_owner;"
    ))
    .unwrap();
    owner
        .batch_execute(
            "CREATE STATISTICS public.s2_stat ON (a + public.trap_stat()), a FROM public.s2;
             ALTER TABLE public.kid INHERIT public.projects;",
        )
        .unwrap();
    // An administrator (here the superuser) enrolls the owner's table by hand, from a fresh backend.
    let mut su = connect(&s.db, "postgres");
    su.batch_execute(&format!(
        "INSERT INTO public.s2 VALUES ('{ACME}', 1), (NULL, 2);
         SELECT nile.enable_tenancy('public.s2', backfill_tenant => '{ACME}');"
    ))
    .unwrap();
    let enrolled: i64 = one(
        &mut s.su,
        "SELECT count(*) FROM nile.tenant_tables
         WHERE relid IN ('public.p'::regclass, 'public.c'::regclass, 'public.s'::regclass, 'public.kid'::regclass,
                         'public.s2'::regclass)",
    );
    assert_eq!(enrolled, 5, "every table was enrolled");
    assert_eq!(
        s.traps_run_by_others(),
        "",
        "a table owner's function ran with other rights"
    );
    let owner_is_superuser: bool = one(
        &mut s.su,
        "SELECT rolsuper FROM pg_roles WHERE rolname = 'it_atk_owner'",
    );
    assert!(!owner_is_superuser);
    // The owner was given no lasting REFERENCES on nile.tenants along the way.
    let references: bool = one(
        &mut s.su,
        "SELECT has_table_privilege('it_atk_owner', 'nile.tenants', 'REFERENCES')
                OR has_column_privilege('it_atk_owner', 'nile.tenants', 'id', 'REFERENCES')",
    );
    assert!(!references, "the owner kept REFERENCES on nile.tenants");
    s.assert_globex_intact();
}

/// Issue 17, finding 2: `nile.tenant_storage()` is SECURITY DEFINER and planned a query over every tenant table with
/// the superuser's rights, so a tenant table's owner ran code as superuser when an administrator called it. It now
/// reads each table with a heap scan that evaluates nothing of anybody's.
#[test]
fn run_owner_code_as_superuser_through_tenant_storage() {
    let mut s = Siege::new("owner_code_storage");
    let mut owner = s.login("it_atk_owner");
    owner.batch_execute(OWNER_TRAPS).unwrap();
    owner
        .batch_execute(
            "CREATE STATISTICS public.projects_stat ON (id + public.trap_stat()), id FROM public.projects;
             CREATE INDEX ON public.projects (id) WHERE id > public.trap_pred();",
        )
        .unwrap();
    let mut su = connect(&s.db, "postgres");
    let storage: String = one(
        &mut su,
        "SELECT string_agg(concat_ws(':', tenant_name, table_name, row_count), ',' ORDER BY tenant_name)
         FROM nile.tenant_storage()",
    );
    assert_eq!(storage, "Acme:projects:2,Globex:projects:1");
    assert_eq!(
        s.traps_run_by_others(),
        "",
        "a table owner's function ran with other rights"
    );
}

/// Issue 17, finding 7: a purge deleted each table's rows as its owner with row-level security not forced, so a
/// statement trigger the owner added saw (and copied) every tenant's rows; and a setting the trigger changed stayed
/// changed in the administrator's session. Now the deletes run with the policies forced, in the purged tenant's
/// context, and the owner's setting changes are rolled back.
#[test]
fn copy_every_tenant_from_a_purge_trigger() {
    let mut s = Siege::new("purge_trigger");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.loot (name text);
             CREATE FUNCTION public.grab() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.loot SELECT name FROM public.projects;
                 PERFORM set_config('search_path', 'public', false);
                 PERFORM set_config('work_mem', '7777kB', false);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER grab BEFORE DELETE ON public.projects FOR EACH STATEMENT EXECUTE FUNCTION public.grab();",
        )
        .unwrap();
    let mut admin = connect(&s.db, "postgres");
    admin
        .batch_execute("SET search_path = pg_catalog; SET work_mem = '4MB';")
        .unwrap();
    admin
        .batch_execute(&format!(
            "SELECT nile.delete_tenant('{ACME}', purge => true)"
        ))
        .unwrap();
    let settings: String = one(
        &mut admin,
        "SELECT current_setting('search_path') || ' ' || current_setting('work_mem')",
    );
    assert_eq!(
        settings, "pg_catalog 4MB",
        "the purge trigger changed the session's settings"
    );
    let loot: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM public.loot",
    );
    assert_eq!(
        loot, "acme-1,acme-2",
        "the purge trigger saw other tenants' rows"
    );
    s.assert_globex_intact();
    let acme_rows: i64 = one(
        &mut s.su,
        &format!("SELECT count(*) FROM public.projects WHERE tenant_id = '{ACME}'"),
    );
    assert_eq!(acme_rows, 0, "the purge deleted Acme's rows");
}

/// Issue 17, finding 6: `ALTER TABLE projects INHERIT base` was accepted, and reading `base` (no row-level security)
/// returned the rows of `projects` of every tenant; `nile.verify()` said nothing. Now the DDL event trigger refuses it,
/// `nile.enable_tenancy()` refuses a table with such a parent, and `nile.verify()` reports one made behind the event
/// trigger's back.
#[test]
fn read_every_tenant_through_an_unprotected_parent() {
    let mut s = Siege::new("unprotected_parent");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.base (name text);
             GRANT SELECT ON public.base TO it_attacker;",
        )
        .unwrap();
    refused(
        &mut owner,
        "ALTER TABLE public.projects INHERIT public.base",
        "55000",
    );
    owner
        .batch_execute(
            "SET nile.auto_enable = off;
             CREATE TABLE public.kid (tenant_id uuid NOT NULL, name text) INHERITS (public.base);",
        )
        .unwrap();
    refused(
        &mut s.su,
        "SELECT nile.enable_tenancy('public.kid')",
        "55000",
    );
    let mut c = s.attacker();
    assert_eq!(attempt(&mut c, "SELECT name FROM public.base"), "");
    // Made behind the event trigger's back (a superuser restoring with row_security off skips it): verify() says so.
    s.su.batch_execute(
        "SET row_security = off; ALTER TABLE public.projects INHERIT public.base; RESET row_security;",
    )
    .unwrap();
    let found = s.finding("%projects%inherits from public.base%");
    assert!(found.starts_with("error table public.projects"), "{found}");
    s.assert_globex_intact();
}

/// Issue 17 review of the fix for finding 1: enrolment ran the owner's planner-time code as the owner but with row-level
/// security lifted (`SECURITY_NOFORCE_RLS`), so a table owner's IMMUTABLE function, folded while the extension
/// checked a new child of `projects` for rows of unknown tenants, read every tenant's rows of `projects`. Those checks
/// are heap scans now, and everything else runs as the owner with its tables' policies forced.
#[test]
fn read_every_tenant_from_owner_code_during_enrolment() {
    let mut s = Siege::new("owner_code_noforce");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.loot (name text);
             CREATE FUNCTION public.steal() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN
                 BEGIN INSERT INTO public.loot SELECT name FROM public.projects; EXCEPTION WHEN OTHERS THEN NULL; END;
                 RETURN 1;
             END $$;
             CREATE FUNCTION public.grab() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.steal(); END $$;
             SET nile.auto_enable = off;
             CREATE TABLE public.kid (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL);
             CREATE STATISTICS public.kid_stat ON (id + public.grab()), id FROM public.kid;
             RESET nile.auto_enable;
             ALTER TABLE public.kid INHERIT public.projects;
             CREATE TABLE public.p2 (a int);
             CREATE TABLE public.c2 (CHECK (a > public.grab())) INHERITS (public.p2);
             ALTER TABLE public.p2 ADD COLUMN tenant_id uuid;",
        )
        .unwrap();
    let enrolled: i64 = one(
        &mut s.su,
        "SELECT count(*) FROM nile.tenant_tables WHERE relid IN ('public.kid'::regclass, 'public.p2'::regclass)",
    );
    assert_eq!(enrolled, 2);
    let loot: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT name, ','), '') FROM public.loot",
    );
    assert!(
        !leaks(&loot),
        "the owner's code read other tenants' rows: {loot}"
    );
    s.assert_globex_intact();
}

/// Review of issue 17's finding 6 fix: `ALTER TABLE p ATTACH PARTITION projects` is reported to the event trigger
/// for `p` only, so with automatic enrolment off a tenant table became a partition of a table without row-level
/// security, through which every tenant's rows could be read. The tenant tables below a changed table are checked too.
#[test]
fn read_every_tenant_through_a_parent_it_is_attached_to() {
    let mut s = Siege::new("attach_to_parent");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "SET nile.auto_enable = off;
             CREATE TABLE public.p (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL) PARTITION BY LIST (tenant_id);
             GRANT SELECT ON public.p TO it_attacker;",
        )
        .unwrap();
    refused(
        &mut owner,
        "SET nile.auto_enable = off; ALTER TABLE public.p ATTACH PARTITION public.projects DEFAULT",
        "55000",
    );
    let mut c = s.attacker();
    assert_eq!(attempt(&mut c, "SELECT name FROM public.p"), "");
    s.assert_globex_intact();
}

/// Third review of issue 17's purge fix: a purge formatted every table's name up front, then deleted table by table,
/// each as its owner, after earlier tables' triggers had run: an owner whose table is purged first, owning the schema
/// of another owner's tenant table, renamed that schema from its trigger and put its own table, with a trigger,
/// under that name, whose trigger then ran as the other owner. Each table is named from its oid just before its
/// delete.
#[test]
fn rename_a_table_purged_later_from_a_purge_trigger() {
    let mut s = Siege::new("purge_rename");
    ensure_login_role(&mut s.su, "it_atk_victim", "");
    let db = s.db.clone();
    s.su.batch_execute(&format!(
        "GRANT CREATE ON DATABASE {db} TO it_atk_owner;
         CREATE TABLE public.purge_log (who text);
         GRANT INSERT ON public.purge_log TO PUBLIC;"
    ))
    .unwrap();
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE SCHEMA vs;
             GRANT USAGE, CREATE ON SCHEMA vs TO it_atk_victim;
             CREATE FUNCTION public.rename_vs() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
                 IF to_regclass('vs_real.victim') IS NULL THEN
                     ALTER SCHEMA vs RENAME TO vs_real;
                     CREATE SCHEMA vs;
                     GRANT USAGE ON SCHEMA vs TO PUBLIC;
                     SET LOCAL nile.auto_enable = off;
                     CREATE TABLE vs.victim (tenant_id uuid);
                     GRANT DELETE, SELECT ON vs.victim TO PUBLIC;
                     CREATE FUNCTION vs.p() RETURNS trigger LANGUAGE plpgsql AS $p$
                     BEGIN
                         -- As the second owner: it can empty its real table, so that the purge succeeds and commits.
                         DELETE FROM vs_real.victim;
                         INSERT INTO public.purge_log VALUES (current_user);
                         RETURN NULL;
                     END $p$;
                     CREATE TRIGGER p BEFORE DELETE ON vs.victim FOR EACH STATEMENT EXECUTE FUNCTION vs.p();
                 END IF;
                 RETURN NULL;
             END $f$;
             CREATE TRIGGER rename_vs BEFORE DELETE ON public.projects FOR EACH STATEMENT EXECUTE FUNCTION public.rename_vs();",
        )
        .unwrap();
    let mut victim = s.login("it_atk_victim");
    victim
        .batch_execute("CREATE TABLE vs.victim (tenant_id uuid NOT NULL, note text)")
        .unwrap();
    s.su.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{ACME}'); INSERT INTO vs.victim VALUES ('{ACME}', 'v'); COMMIT;"
    ))
    .unwrap();
    let order: String = one(
        &mut s.su,
        "SELECT string_agg(relid::regclass::text, ',' ORDER BY load_order DESC) FROM nile._tenant_tables_in_load_order()",
    );
    // The purge goes through the tables in the reverse of their load order: projects before vs.victim here.
    assert!(
        order.ends_with("projects,vs.victim"),
        "projects must be purged before vs.victim: {order}"
    );
    let _ = s.su.batch_execute(&format!(
        "SELECT nile.delete_tenant('{ACME}', purge => true)"
    ));
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(who, ','), '') FROM public.purge_log",
    );
    assert_eq!(ran, "", "the first owner's trigger ran as the second owner");
}
