//! nile.import_schema() between owners (issue 17, finding 5, and its reviews): no legacy table's owner, tenant
//! table's owner or importing administrator runs code with another's rights or swaps a table under the import,
//! and every value arrives unchanged.

use super::*;

/// Issue 17, finding 5: `nile.import_schema()` read the legacy tables as the importing administrator, so a legacy
/// schema's owner ran code with the administrator's rights through a policy on its table (or any other code it hangs
/// there). Now each step reads a table as that table's owner; with two owners, the rows pass through a staging table.
#[test]
fn run_legacy_owner_code_as_the_importing_admin() {
    let mut s = Siege::new("import_legacy_code");
    ensure_login_role(&mut s.su, "it_atk_admin", "");
    s.su.batch_execute(&format!(
        "GRANT nile_admin TO it_atk_admin;
         CREATE SCHEMA legacy AUTHORIZATION it_attacker;
         GRANT USAGE ON SCHEMA legacy TO it_atk_admin;
         GRANT SELECT, INSERT ON public.projects TO it_atk_admin;
         SELECT nile.create_tenant('Initech', '{INITECH}');"
    ))
    .unwrap();
    // The legacy schema's owner (it_attacker, not an administrator) plants its code on its table: a policy it forces
    // on itself, and statistics the planner folds.
    let mut legacy_owner = s.login("it_attacker");
    legacy_owner.batch_execute(OWNER_TRAPS).unwrap();
    legacy_owner
        .batch_execute(
            "CREATE TABLE legacy.projects (id bigint NOT NULL, name text NOT NULL);
             INSERT INTO legacy.projects VALUES (1, 'initech-1'), (2, 'initech-2');
             ALTER TABLE legacy.projects ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
             CREATE POLICY spy ON legacy.projects USING (public.trap('policy') = 1);
             GRANT SELECT ON legacy.projects TO it_atk_admin;",
        )
        .unwrap();
    // A policy that applies to the administrator: refused (the owner would read rows it hides), and never run.
    let mut admin = s.login("it_atk_admin");
    refused(
        &mut admin,
        &format!("SELECT * FROM nile.import_schema('legacy', '{INITECH}')"),
        "42501",
    );
    // Planner-time code instead: statistics (with data) and a partial index, which the administrator's backend folds
    // when it plans its first query over the table.
    legacy_owner
        .batch_execute(
            "DROP POLICY spy ON legacy.projects;
             ALTER TABLE legacy.projects NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
             CREATE STATISTICS legacy.projects_stat ON (id + public.trap_stat()), id FROM legacy.projects;
             CREATE INDEX ON legacy.projects (id) WHERE id > public.trap_pred();
             ANALYZE legacy.projects;",
        )
        .unwrap();
    let mut admin = s.login("it_atk_admin");
    let copied: String = one(
        &mut admin,
        &format!(
            "SELECT string_agg(target_table || ':' || rows_copied, ',') FROM nile.import_schema('legacy', '{INITECH}')"
        ),
    );
    assert_eq!(copied, "projects:2");
    let imported: String = one(
        &mut s.su,
        &format!("SELECT string_agg(name, ',' ORDER BY id) FROM public.projects WHERE tenant_id = '{INITECH}'"),
    );
    assert_eq!(imported, "initech-1,initech-2");
    let runs: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT who, ','), '') FROM public.trap_log",
    );
    assert_eq!(
        runs, "it_attacker",
        "the legacy owner's code ran with other rights (or not at all)"
    );
    s.assert_globex_intact();
}

/// Review of issue 17's import (finding 5) fix, 1: the staging table had a predictable name and was created with IF NOT
/// EXISTS, so a nile_admin member could create it first, with a trigger, and have its function run as the source
/// table's owner (a superuser) when the rows went in. Each step now creates a table under a fresh random name.
#[test]
fn run_code_as_a_source_owner_through_a_staging_table_made_in_advance() {
    let mut s = Siege::new("import_stage_planted");
    ensure_login_role(&mut s.su, "it_atk_admin", "");
    s.su.batch_execute(
        "GRANT nile_admin TO it_atk_admin;
         GRANT CREATE ON SCHEMA public TO it_atk_admin;
         CREATE TABLE public.su_src (id bigint NOT NULL, a int);
         INSERT INTO public.su_src VALUES (1, 1);
         GRANT SELECT ON public.su_src TO it_atk_admin;
         CREATE TABLE public.stage_log (who text);
         GRANT INSERT ON public.stage_log TO PUBLIC;",
    )
    .unwrap();
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(
            "CREATE TABLE public.adm_t (tenant_id uuid NOT NULL, id bigint NOT NULL, a int);
             CREATE FUNCTION public.planted() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.stage_log VALUES (current_user); RETURN NULL; END $$;",
        )
        .unwrap();
    let target_oid: u32 = one(&mut admin, "SELECT 'public.adm_t'::regclass::oid");
    admin
        .batch_execute(&format!(
            "BEGIN;
             SELECT nile.set_tenant('{ACME}');
             CREATE TEMP TABLE nile_import_stage_{target_oid} (id bigint, a int);
             CREATE TRIGGER planted BEFORE INSERT ON pg_temp.nile_import_stage_{target_oid}
                 FOR EACH STATEMENT EXECUTE FUNCTION public.planted();
             SELECT nile._import_step('copy', 'public.su_src'::regclass, 'public.adm_t'::regclass, '{ACME}');
             COMMIT;"
        ))
        .unwrap();
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(who, ','), '') FROM public.stage_log",
    );
    assert_eq!(ran, "", "the planted trigger ran");
    let copied: i64 = one(&mut s.su, "SELECT count(*) FROM public.adm_t");
    assert_eq!(copied, 1);
}

impl Siege {
    /// Tenant Initech, a nile_admin member `it_atk_admin` with SELECT and INSERT on `projects`, and a legacy schema
    /// `legacy_su` of the superuser's with one table `projects (columns)` holding `rows`, which it_atk_admin may read.
    fn legacy_schema_of_a_superuser(&mut self, columns: &str, rows: &str) {
        ensure_login_role(&mut self.su, "it_atk_admin", "");
        self.su
            .batch_execute(&format!(
                "GRANT nile_admin TO it_atk_admin;
                 SELECT nile.create_tenant('Initech', '{INITECH}');
                 CREATE SCHEMA legacy_su;
                 CREATE TABLE legacy_su.projects ({columns});
                 INSERT INTO legacy_su.projects VALUES {rows};
                 GRANT USAGE ON SCHEMA legacy_su TO it_atk_admin;
                 GRANT SELECT ON legacy_su.projects TO it_atk_admin;
                 GRANT SELECT, INSERT ON public.projects TO it_atk_admin;"
            ))
            .unwrap();
    }
}

/// Review of issue 17's import fix, 2: with two owners, the staging table had the target's column types, so the
/// conversion into them, domain checks included, ran as the source's owner: a tenant table's owner whose column has
/// a domain with a CHECK of its own ran that function as the legacy table's owner (here a superuser). The values now
/// pass as text, converted by the target's owner.
#[test]
fn run_code_as_a_legacy_owner_through_a_domain_of_the_target() {
    let mut s = Siege::new("import_domain");
    s.legacy_schema_of_a_superuser(
        "id bigint NOT NULL, name text NOT NULL, note text",
        "(1, 'initech-1', 'n1'), (2, 'initech-2', 'n2')",
    );
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.domain_log (who text);
             GRANT INSERT ON public.domain_log TO PUBLIC;
             CREATE FUNCTION public.note_ok(text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.domain_log VALUES (current_user); RETURN true; END $$;
             CREATE DOMAIN public.note_t AS text CHECK (public.note_ok(VALUE));
             ALTER TABLE public.projects ADD COLUMN note public.note_t;",
        )
        .unwrap();
    let mut admin = s.login("it_atk_admin");
    let copied: String = one(
        &mut admin,
        &format!(
            "SELECT string_agg(target_table || ':' || rows_copied, ',') FROM nile.import_schema('legacy_su', '{INITECH}')"
        ),
    );
    assert_eq!(copied, "projects:2");
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT who, ','), '') FROM public.domain_log",
    );
    assert_eq!(
        ran, "it_atk_owner",
        "the target owner's domain ran with other rights"
    );
    let notes: String = one(
        &mut s.su,
        &format!("SELECT string_agg(name || '/' || note, ',' ORDER BY id) FROM public.projects WHERE tenant_id = '{INITECH}'"),
    );
    assert_eq!(notes, "initech-1/n1,initech-2/n2");
}

/// Second review of issue 17's import fix, 1 and 3: the typecheck planned the conversion into the tenant table's types
/// as the legacy table's owner, so the tenant table's owner's cast (inlined, and its IMMUTABLE call folded) ran as that
/// owner, here a superuser; and a type name was split at a newline, which a quoted name may hold. Each half of the
/// copy is now planned as its own owner, and type names are never split.
#[test]
fn run_code_as_a_legacy_owner_through_a_cast_or_a_type_name_of_the_target() {
    let mut s = Siege::new("import_cast");
    s.legacy_schema_of_a_superuser(
        "id bigint NOT NULL, name text NOT NULL, mood text, note text",
        "(1, 'initech-1', 'ok', 'n1')",
    );
    s.su.batch_execute("CREATE TABLE public.canary ();")
        .unwrap();
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.cast_log (who text);
             GRANT INSERT ON public.cast_log TO PUBLIC;
             CREATE FUNCTION public.cast_trap() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.cast_log VALUES (current_user); RETURN 1; END $$;
             CREATE FUNCTION public.cast_trap0() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.cast_trap(); END $$;
             CREATE TYPE public.mood AS ENUM ('ok', 'meh');
             CREATE FUNCTION public.to_mood(text) RETURNS public.mood IMMUTABLE LANGUAGE sql
                 AS $$ SELECT CASE WHEN public.cast_trap0() = 1 THEN (CASE $1 WHEN 'ok' THEN 'ok'::public.mood ELSE 'meh'::public.mood END) END $$;
             CREATE CAST (text AS public.mood) WITH FUNCTION public.to_mood(text) AS ASSIGNMENT;
             ALTER TABLE public.projects ADD COLUMN mood public.mood;
             CREATE DOMAIN public.\"x\n);DROP TABLE public.canary;--\" AS text;
             ALTER TABLE public.projects ADD COLUMN note public.\"x\n);DROP TABLE public.canary;--\";",
        )
        .unwrap();
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(&format!(
            "SELECT * FROM nile.import_schema('legacy_su', '{INITECH}')"
        ))
        .unwrap();
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT who, ','), '') FROM public.cast_log WHERE who <> 'it_atk_owner'",
    );
    assert_eq!(ran, "", "the target owner's cast ran with other rights");
    let canary: bool = one(&mut s.su, "SELECT to_regclass('public.canary') IS NOT NULL");
    assert!(canary, "a type name injected SQL");
    let imported: String = one(
        &mut s.su,
        &format!("SELECT string_agg(name || '/' || mood || '/' || note, ',') FROM public.projects WHERE tenant_id = '{INITECH}'"),
    );
    assert_eq!(imported, "initech-1/ok/n1");
}

/// Second review of issue 17's import fix, 2: a nile_admin member that owns the legacy table ran its own code while
/// the staging table was filled (as itself, the source's owner), renamed the staging table away and put a table of
/// its own, with statistics calling its function, under that name, which the tenant table's owner (a superuser) then
/// planned. The staging table is the extension's own now, and checked by name and contents before it is read.
#[test]
fn swap_the_staging_table_while_it_is_filled() {
    let mut s = Siege::new("import_swap");
    ensure_login_role(&mut s.su, "it_atk_admin", "");
    s.su.batch_execute(
        "GRANT nile_admin TO it_atk_admin;
         GRANT CREATE ON SCHEMA public TO it_atk_admin;
         CREATE TABLE public.su_target (tenant_id uuid NOT NULL, id bigint NOT NULL, a int);
         GRANT SELECT, INSERT ON public.su_target TO it_atk_admin;
         CREATE TABLE public.swap_log (who text, what text);
         GRANT INSERT ON public.swap_log TO PUBLIC;",
    )
    .unwrap();
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(
            "CREATE FUNCTION public.boom() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.swap_log VALUES (current_user, 'boom'); RETURN 1; END $$;
             CREATE FUNCTION public.boom0() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.boom(); END $$;
             CREATE FUNCTION public.swap() RETURNS int LANGUAGE plpgsql AS $$
             DECLARE stage text;
             BEGIN
                 SELECT c.relname INTO stage FROM pg_class c
                 WHERE c.relnamespace = pg_my_temp_schema() AND c.relname LIKE 'nile_import_%';
                 IF stage IS NOT NULL THEN
                     BEGIN
                         EXECUTE format('ALTER TABLE pg_temp.%I RENAME TO nile_gone', stage);
                         EXECUTE format('ALTER TABLE pg_temp.evil RENAME TO %I', stage);
                         INSERT INTO public.swap_log VALUES (current_user, 'swapped');
                     EXCEPTION WHEN OTHERS THEN
                         INSERT INTO public.swap_log VALUES (current_user, 'refused: ' || SQLERRM);
                     END;
                 END IF;
                 RETURN 1;
             END $$;
             CREATE FUNCTION public.swap0() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.swap(); END $$;
             CREATE TABLE public.adm_src (id bigint NOT NULL, a int);
             INSERT INTO public.adm_src SELECT g, g FROM generate_series(1, 20) g;
             CREATE STATISTICS public.adm_src_stat ON (a + public.swap0()), a FROM public.adm_src;
             ANALYZE public.adm_src;",
        )
        .unwrap();
    admin
        .batch_execute(&format!(
            "BEGIN;
             SELECT nile.set_tenant('{ACME}');
             CREATE TEMP TABLE evil (id text, a text);
             INSERT INTO evil SELECT g, g FROM generate_series(1, 20) g;
             CREATE STATISTICS evil_stat ON ((a::int) + public.boom0()), a FROM pg_temp.evil;
             ANALYZE pg_temp.evil;
             SELECT nile._import_step('copy', 'public.adm_src'::regclass, 'public.su_target'::regclass, '{ACME}');
             COMMIT;"
        ))
        .ok();
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT who || ':' || what, ','), '') FROM public.swap_log
         WHERE what = 'swapped' OR (what = 'boom' AND who <> 'it_atk_admin')",
    );
    assert_eq!(
        ran, "",
        "the staging table was swapped, or the admin's code ran as the superuser"
    );
    let reached: i64 = one(
        &mut s.su,
        "SELECT count(*) FROM public.swap_log WHERE what LIKE 'refused%'",
    );
    assert!(
        reached > 0,
        "the admin's code never reached the staging table: the test no longer tries the swap"
    );
}

/// Third review of issue 17's import fix, 4: between two owners, values were converted from text with `format_type(…,
/// NULL)`'s name, `character`, which is char(1): a char(10) value lost all but its first character. And a caller's
/// `extra_float_digits = 0` dropped digits of floats. Both now read back exactly.
#[test]
fn lose_data_in_a_two_owner_import() {
    let mut s = Siege::new("import_text_round_trip");
    s.legacy_schema_of_a_superuser(
        "id bigint NOT NULL, name text NOT NULL, code char(10), ratio float8",
        "(1, 'initech-1', 'ABCDEFGHIJ', 0.1 + 0.2)",
    );
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "ALTER TABLE public.projects ADD COLUMN code char(10), ADD COLUMN ratio float8",
        )
        .unwrap();
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(&format!(
            "SET extra_float_digits = 0; SELECT * FROM nile.import_schema('legacy_su', '{INITECH}')"
        ))
        .unwrap();
    let same: bool = one(
        &mut s.su,
        &format!(
            "SELECT p.code = l.code AND p.ratio = l.ratio FROM public.projects p, legacy_su.projects l
             WHERE p.tenant_id = '{INITECH}' AND p.id = l.id"
        ),
    );
    assert!(same, "a value changed on its way through the staging table");
}

/// Third review of issue 17's import fix, 1: the names of the tables and types were read once, then used again after
/// the legacy owner's code had run: a nile_admin member owning the legacy table and the tenant table's schema renamed
/// that schema from its cast and put its own table, with a trigger, under the tenant table's name, which the tenant
/// table's owner (a superuser) then wrote to. The names are checked again before the second half runs.
#[test]
fn rename_the_target_while_the_source_is_read() {
    let mut s = Siege::new("import_rename");
    ensure_login_role(&mut s.su, "it_atk_admin", "");
    let db = s.db.clone();
    s.su.batch_execute(&format!(
        "GRANT nile_admin TO it_atk_admin;
         GRANT CREATE ON DATABASE {db} TO it_atk_admin;
         CREATE SCHEMA app AUTHORIZATION it_atk_admin;
         CREATE TABLE app.orders (tenant_id uuid NOT NULL, id bigint NOT NULL, note text);
         GRANT SELECT, INSERT ON app.orders TO it_atk_admin;
         CREATE TABLE public.rename_log (who text);
         GRANT INSERT ON public.rename_log TO PUBLIC;"
    ))
    .unwrap();
    let enrolled: bool = one(
        &mut s.su,
        "SELECT EXISTS (SELECT 1 FROM nile.tenant_tables WHERE relid = 'app.orders'::regclass)",
    );
    assert!(enrolled);
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(
            "CREATE SCHEMA lg;
             CREATE TYPE lg.c AS (x int);
             CREATE FUNCTION lg.c2t(lg.c) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN
                 IF to_regclass('app_real.orders') IS NULL THEN
                     ALTER SCHEMA app RENAME TO app_real;
                     CREATE SCHEMA app;
                     CREATE TABLE app.orders (tenant_id uuid, id bigint, note text);
                     GRANT INSERT, SELECT ON app.orders TO PUBLIC;
                     GRANT USAGE ON SCHEMA app TO PUBLIC;
                     CREATE FUNCTION app.p() RETURNS trigger LANGUAGE plpgsql AS $p$
                     BEGIN INSERT INTO public.rename_log VALUES (current_user); RETURN NEW; END $p$;
                     CREATE TRIGGER p BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.p();
                 END IF;
                 RETURN 'x';
             END $f$;
             CREATE CAST (lg.c AS text) WITH FUNCTION lg.c2t(lg.c);
             CREATE TABLE lg.orders (id bigint NOT NULL, note lg.c);
             INSERT INTO lg.orders VALUES (1, row(1));",
        )
        .unwrap();
    let outcome = admin.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{ACME}');
         SELECT nile._import_step('copy', 'lg.orders'::regclass, 'app.orders'::regclass, '{ACME}');
         COMMIT;"
    ));
    let _ = admin.batch_execute("ROLLBACK");
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(who, ','), '') FROM public.rename_log",
    );
    assert_eq!(
        ran, "",
        "the tenant table's owner wrote into a table put under its name"
    );
    assert!(outcome.is_err(), "the import went on after the rename");
}
