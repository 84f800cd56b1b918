//! The trap harness (issue 17): a table owner hangs code in every place Postgres lets it, and overloads of the
//! functions and operators the extension's SQL uses wait on the caller's search_path; then a superuser and a member of
//! `nile_admin` run every nile function and every path of the DDL event triggers. Each trap records who ran it. The
//! harness fails if any trap ran with rights its owner (`it_trap_owner`, a plain role) does not have, that is as
//! anyone but itself. Running as the owner is expected: that is where the extension puts the owner's code.
//!
//! What runs the traps when the extension is correct: the owner's triggers, policies, defaults, generated columns and
//! domains when the extension writes or deletes rows as the owner (import, purge), and its index, statistics and CHECK
//! expressions when the extension plans a query as the owner (import; enrolment plans none). The overloads never run.

use nile_tenancy_integration::*;
use postgres::Client;

const INITECH: &str = "0c0c0c0c-0000-7000-8000-000000000003";
const HOOLI: &str = "0d0d0d0d-0000-7000-8000-000000000004";

/// The owner's code: a log, the function every trap calls, and the functions hung on its objects. The no-argument
/// IMMUTABLE ones are folded by the planner wherever it plans a query over their table.
const TRAPS: &str = r#"
CREATE TABLE public.trap_log (who text, super text, place text);
GRANT INSERT ON public.trap_log TO PUBLIC;
CREATE FUNCTION public.trap(place text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trap_log VALUES (current_user, current_setting('is_superuser'), place);
    RETURN 1;
END $$;
CREATE FUNCTION public.trap_idx() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('index expression'); END $$;
CREATE FUNCTION public.trap_pred() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('index predicate'); END $$;
CREATE FUNCTION public.trap_stat() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('statistics'); END $$;
CREATE FUNCTION public.trap_check() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('check'); END $$;
CREATE FUNCTION public.trap_child_check() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('check of a child'); END $$;
CREATE FUNCTION public.trap_parent_check() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('check of a parent'); END $$;
CREATE FUNCTION public.trap_gen(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN $1 + public.trap('generated column') - 1; END $$;
CREATE FUNCTION public.trap_default() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('default'); END $$;
CREATE FUNCTION public.trap_dom_check(int) RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('domain') = 1; END $$;
CREATE DOMAIN public.trap_dom AS int CHECK (public.trap_dom_check(VALUE));
CREATE TYPE public.mood AS ENUM ('ok', 'meh');
CREATE FUNCTION public.mood_text(public.mood) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('cast'); RETURN $1::text; END $$;
CREATE CAST (public.mood AS text) WITH FUNCTION public.mood_text(public.mood) AS ASSIGNMENT;
CREATE FUNCTION public.trap_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.trap(format('trigger %s %s %s', TG_WHEN, TG_LEVEL, TG_OP));
    RETURN CASE WHEN TG_LEVEL = 'ROW' AND TG_OP = 'DELETE' THEN OLD WHEN TG_LEVEL = 'ROW' THEN NEW END;
END $$;

-- Overloads on the caller's search_path (the actors put public before pg_catalog): each beats pg_catalog's function
-- or operator for the argument types the extension's SQL passes, if that SQL ever resolved names in the caller's path.
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('format(text, text)'); RETURN pg_catalog.format($1, $2); END $$;
CREATE FUNCTION public.format(text, name, name) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('format(text, name, name)'); RETURN pg_catalog.format($1, $2, $3); END $$;
CREATE FUNCTION public.format(text, text, text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('format(text, text, text)'); RETURN pg_catalog.format($1, $2, $3); END $$;
CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('quote_ident(name)'); RETURN pg_catalog.quote_ident($1::text); END $$;
CREATE FUNCTION public.quote_literal(text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('quote_literal(text)'); RETURN pg_catalog.quote_literal($1); END $$;
CREATE FUNCTION public.starts_with(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('starts_with'); RETURN pg_catalog.starts_with($1, $2); END $$;
CREATE FUNCTION public.cardinality(uuid[]) RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('cardinality(uuid[])'); RETURN pg_catalog.cardinality($1); END $$;
CREATE FUNCTION public.unnest(uuid[]) RETURNS SETOF uuid LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('unnest(uuid[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION public.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION public.gen_random_uuid() RETURNS uuid LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('gen_random_uuid()'); RETURN pg_catalog.gen_random_uuid(); END $$;
CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('current_setting(text)'); RETURN pg_catalog.current_setting($1); END $$;
CREATE FUNCTION public.to_regclass(text) RETURNS regclass LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('to_regclass(text)'); RETURN pg_catalog.to_regclass($1); END $$;
CREATE FUNCTION public.pg_has_role(oid, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('pg_has_role(oid, text)'); RETURN pg_catalog.pg_has_role($1, $2); END $$;
CREATE FUNCTION public.has_table_privilege(oid, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('has_table_privilege(oid, text)'); RETURN pg_catalog.has_table_privilege($1, $2); END $$;
CREATE FUNCTION public.has_column_privilege(oid, regclass, text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('has_column_privilege'); RETURN pg_catalog.has_column_privilege($1, $2, $3, $4); END $$;
CREATE FUNCTION public.format_type(oid, integer) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('format_type'); RETURN pg_catalog.format_type($1, $2); END $$;
CREATE FUNCTION public.pg_get_expr(pg_node_tree, oid) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('pg_get_expr'); RETURN pg_catalog.pg_get_expr($1, $2); END $$;
CREATE FUNCTION public.hashtext(text) RETURNS integer LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('hashtext'); RETURN pg_catalog.hashtext($1); END $$;
CREATE FUNCTION public.trap_eq_oid(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('=(oid, oid)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.trap_eq_oid);
CREATE FUNCTION public.trap_eq_name(name, name) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('=(name, name)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = name, FUNCTION = public.trap_eq_name);
CREATE FUNCTION public.trap_eq_text(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('=(text, text)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_eq_text);
CREATE FUNCTION public.trap_eq_uuid(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('=(uuid, uuid)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = public.trap_eq_uuid);
CREATE FUNCTION public.trap_eq_int2(smallint, smallint) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('=(smallint, smallint)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = smallint, RIGHTARG = smallint, FUNCTION = public.trap_eq_int2);
CREATE FUNCTION public.trap_ne_text(text, text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('<>(text, text)'); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$;
CREATE OPERATOR public.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_ne_text);
CREATE FUNCTION public.trap_concat(text, text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('||(text, text)'); RETURN $1 OPERATOR(pg_catalog.||) $2; END $$;
CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = public.trap_concat);
CREATE FUNCTION public.trap_add_int8(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN PERFORM public.trap('+(bigint, bigint)'); RETURN $1 OPERATOR(pg_catalog.+) $2; END $$;
CREATE OPERATOR public.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.trap_add_int8);

-- The tenant table, with code in every place a table can carry it.
CREATE TABLE public.t (
    tenant_id uuid NOT NULL,
    id bigint NOT NULL,
    a int DEFAULT public.trap_default(),
    d public.trap_dom,
    g int GENERATED ALWAYS AS (public.trap_gen(a)) STORED,
    m public.mood DEFAULT 'ok',
    PRIMARY KEY (tenant_id, id),
    CHECK (a > public.trap_check() - 1000000)
);
CREATE INDEX t_expr ON public.t ((a + public.trap_idx()));
CREATE INDEX t_partial ON public.t (a) WHERE a > public.trap_pred();
CREATE STATISTICS public.t_stat ON (a + public.trap_stat()), a FROM public.t;
CREATE TRIGGER trap_bir BEFORE INSERT OR UPDATE OR DELETE ON public.t FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();
CREATE TRIGGER trap_air AFTER INSERT OR UPDATE OR DELETE ON public.t FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();
CREATE TRIGGER trap_bis BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.t FOR EACH STATEMENT EXECUTE FUNCTION public.trap_trigger();
CREATE TRIGGER trap_ais AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.t FOR EACH STATEMENT EXECUTE FUNCTION public.trap_trigger();
CREATE RULE trap_rule AS ON UPDATE TO public.t DO ALSO SELECT public.trap('rule');
CREATE POLICY trap_policy ON public.t AS RESTRICTIVE USING (public.trap('policy') = 1) WITH CHECK (public.trap('policy check') = 1);
CREATE TABLE public.t_child (CHECK (a > public.trap_child_check() - 1000000)) INHERITS (public.t);
CREATE VIEW public.trap_view AS SELECT public.trap('view') AS x, t.id FROM public.t;
CREATE MATERIALIZED VIEW public.trap_mv AS SELECT public.trap('materialized view') AS x WITH NO DATA;

-- A table that is given a tenant column later, whose child carries a CHECK, with statistics (the enrolment path of
-- the event trigger), and a parent with a CHECK.
CREATE TABLE public.late (a int);
CREATE TABLE public.late_child (CHECK (a > public.trap_child_check() - 1000000)) INHERITS (public.late);
CREATE STATISTICS public.late_stat ON (a + public.trap_stat()), a FROM public.late;

-- The legacy schema-per-tenant copy of t, with its own code, for import_schema().
CREATE TABLE legacy.t (id bigint NOT NULL, a int, d int, m public.mood);
INSERT INTO legacy.t VALUES (1, 1, 1, 'ok'), (2, 2, 2, 'meh');
CREATE FUNCTION public.trap_legacy_stat() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('legacy statistics'); END $$;
CREATE STATISTICS legacy.t_stat ON (a + public.trap_legacy_stat()), a FROM legacy.t;
ANALYZE legacy.t;
CREATE TRIGGER legacy_trap BEFORE INSERT OR UPDATE OR DELETE ON legacy.t FOR EACH ROW EXECUTE FUNCTION public.trap_trigger();
"#;

/// The database: tenants, the owner's traps, rows of Acme and Globex in `t`, and the trap log emptied of what the
/// set-up itself ran.
fn trapped_database() -> String {
    let db = "it_traps";
    let mut admin = connect("postgres", "postgres");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    ensure_login_role(&mut admin, "it_trap_owner", "");
    ensure_login_role(&mut admin, "it_trap_admin", "");
    let mut su = connect(db, "postgres");
    su.batch_execute(&format!(
        "CREATE EXTENSION nile_tenancy;
         GRANT nile_admin TO it_trap_admin;
         GRANT CREATE ON SCHEMA public TO it_trap_owner, it_trap_admin;
         CREATE SCHEMA legacy AUTHORIZATION it_trap_owner;
         GRANT USAGE ON SCHEMA legacy TO it_trap_admin;
         SELECT nile.create_tenant('Acme', '{ACME}'), nile.create_tenant('Globex', '{GLOBEX}');"
    ))
    .unwrap();
    let mut owner = connect(db, "it_trap_owner");
    owner.batch_execute(TRAPS).unwrap();
    owner
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON public.t, public.t_child TO it_trap_admin;
             GRANT SELECT ON legacy.t TO it_trap_admin;"
        ))
        .unwrap();
    su.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{ACME}');
             INSERT INTO public.t (tenant_id, id, a, d) VALUES ('{ACME}', 1, 5, 5), ('{ACME}', 2, 6, 6);
             COMMIT;
             BEGIN; SELECT nile.set_tenant('{GLOBEX}');
             INSERT INTO public.t (tenant_id, id, a, d) VALUES ('{GLOBEX}', 1, 7, 7);
             INSERT INTO public.t_child (tenant_id, id, a, d) VALUES ('{GLOBEX}', 9, 8, 8);
             COMMIT;"
        ))
        .unwrap();
    let enrolled: i64 = one(
        &mut su,
        "SELECT count(*) FROM nile.tenant_tables WHERE relid IN ('public.t'::regclass, 'public.t_child'::regclass)",
    );
    assert_eq!(
        enrolled, 2,
        "the owner's CREATE TABLE enrolled t and its child"
    );
    su.batch_execute("TRUNCATE public.trap_log").unwrap();
    db.to_string()
}

/// A session of `role` with the owner's schema ahead of pg_catalog on its search_path, and overloads of its own in
/// pg_temp (which Postgres never searches for functions and operators: they must never run either).
fn actor(db: &str, role: &str) -> Client {
    let mut c = connect(db, role);
    c.batch_execute(
        "SET search_path = public, pg_catalog;
         CREATE FUNCTION pg_temp.format(text, text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN PERFORM public.trap('pg_temp.format(text, text)'); RETURN pg_catalog.format($1, $2); END $$;
         CREATE FUNCTION pg_temp.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN PERFORM public.trap('pg_temp.quote_ident(name)'); RETURN pg_catalog.quote_ident($1::text); END $$;
         CREATE FUNCTION pg_temp.trap_eq_regproc(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN PERFORM public.trap('pg_temp.=(oid, oid)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
         CREATE OPERATOR pg_temp.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = pg_temp.trap_eq_regproc);",
    )
    .unwrap();
    c
}

/// Every nile function, as `role`. The statements are the actor's own only where they must be (a for_each_tenant()
/// statement), and then they touch no trapped object.
fn run_every_function(db: &str, role: &str, tenant: &str, round: usize) {
    let mut c = actor(db, role);
    let run = |c: &mut Client, sql: &str| {
        c.batch_execute(sql)
            .unwrap_or_else(|e| panic!("as {role}: {sql}: {e:?}"))
    };
    run(
        &mut c,
        &format!("SELECT nile.create_tenant('Trap {round}', '{tenant}')"),
    );
    run(
        &mut c,
        &format!("SELECT nile.update_tenant('{tenant}', '{{\"name\": \"Trap {round}b\"}}')"),
    );
    run(
        &mut c,
        &format!(
            "SELECT nile.deactivate_tenant('{tenant}'); SELECT nile.reactivate_tenant('{tenant}')"
        ),
    );
    run(&mut c, "SELECT * FROM nile.verify()");
    run(&mut c, "SELECT * FROM nile.tenant_storage()");
    run(
        &mut c,
        &format!("SELECT * FROM nile.tenant_storage('{ACME}')"),
    );
    run(&mut c, "SELECT * FROM nile.tenant_usage; SELECT * FROM nile.noisy_neighbours(); SELECT * FROM nile.usage_history");
    run(&mut c, "SELECT nile.reset_usage()");
    run(&mut c, &format!("BEGIN; SELECT nile.admin_context('trap harness'); SELECT count(*) FROM nile.tenants; COMMIT"));
    run(&mut c, &format!("BEGIN; SELECT nile.set_tenant('{ACME}'); SELECT nile.current_tenant(); COMMIT; SELECT nile.clear_tenant()"));
    run(
        &mut c,
        &format!("SELECT * FROM nile.export_tenant('{ACME}')"),
    );
    // The helpers granted to nile_admin, called directly (each must pin its own search_path, not rely on a caller's).
    run(&mut c, "SELECT * FROM nile._tenant_tables_in_load_order()");
    run(&mut c, "SELECT nile._advance_sequences('public.t')");
    run(&mut c, "SELECT * FROM nile._insertable_columns('public.t')");
    // Import the legacy copy of t as the new tenant (dry run first), then purge it again. t carries a policy of its
    // owner's besides the tenant policies, which could bind the owner (as whom the import writes) differently from an
    // administrator who is not the owner: such an administrator is refused, before any of the owner's code runs.
    if role == "postgres" {
        run(
            &mut c,
            &format!("SELECT * FROM nile.import_schema('legacy', '{tenant}', dry_run => true)"),
        );
        run(
            &mut c,
            &format!("SELECT * FROM nile.import_schema('legacy', '{tenant}')"),
        );
    } else {
        let err = c
            .batch_execute(&format!(
                "SELECT * FROM nile.import_schema('legacy', '{tenant}')"
            ))
            .expect_err(
                "an import into a table with a policy of its owner's besides the tenant policies",
            );
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("42501"),
            "{err:?}"
        );
    }
    run(&mut c, "CALL nile.for_each_tenant('SELECT 1', 2)");
    run(
        &mut c,
        &format!("SELECT nile.delete_tenant('{tenant}', purge => true)"),
    );
    run(&mut c, &format!("SELECT nile.create_tenant('Trap {round} again', '{tenant}'); SELECT nile.delete_tenant('{tenant}')"));
    if role == "postgres" {
        // The superuser's paths that need a table's owner or a superuser: repairing the enrolment, switching it off
        // and on, binding roles, tokens.
        run(&mut c, "SELECT nile.enable_tenancy('public.t')");
        run(
            &mut c,
            "SELECT nile.disable_tenancy('public.t'); SELECT nile.enable_tenancy('public.t')",
        );
        run(&mut c, &format!("SELECT nile.bind_role('it_trap_owner', '{ACME}'); SELECT nile.unbind_role('it_trap_owner')"));
        // The event triggers' paths on the owner's tables: a column added, a child created, the tenant column
        // given to a tree, a column renamed, a table dropped.
        run(&mut c, "ALTER TABLE public.t ADD COLUMN extra_su int");
        run(
            &mut c,
            "CREATE TABLE public.su_child (note text) INHERITS (public.t)",
        );
        run(&mut c, "ALTER TABLE public.late ADD COLUMN tenant_id uuid");
        run(
            &mut c,
            "ALTER TABLE public.t RENAME COLUMN extra_su TO extra_su2",
        );
        run(&mut c, "DROP TABLE public.su_child");
        run(&mut c, "SELECT nile.disable_tenancy('public.late')");
    } else {
        // The event triggers' paths on a table of its own.
        run(
            &mut c,
            "CREATE TABLE public.adm_own (tenant_id uuid NOT NULL, v int)",
        );
        run(&mut c, "ALTER TABLE public.adm_own ADD COLUMN w int");
        run(
            &mut c,
            "CREATE TABLE public.adm_kid () INHERITS (public.adm_own)",
        );
        run(&mut c, "SELECT nile.disable_tenancy('public.adm_own'); SELECT nile.enable_tenancy('public.adm_own')");
        run(&mut c, "DROP TABLE public.adm_own CASCADE");
    }
}

/// Every trap run by someone other than its owner, as "who (superuser?): place", one a line.
fn runs_by_others(su: &mut Client) -> String {
    one::<Option<String>>(
        su,
        "SELECT string_agg(DISTINCT who || ' (' || super || '): ' || place, E'\\n') FROM public.trap_log
         WHERE who <> 'it_trap_owner'",
    )
    .unwrap_or_default()
}

#[test]
fn no_owner_code_runs_with_a_superusers_or_an_administrators_rights() {
    let db = trapped_database();
    let mut su = connect(&db, "postgres");
    for (round, (role, tenant)) in [("postgres", INITECH), ("it_trap_admin", HOOLI)]
        .into_iter()
        .enumerate()
    {
        run_every_function(&db, role, tenant, round);
        assert_eq!(
            runs_by_others(&mut su),
            "",
            "as {role}: the owner's code ran with other rights"
        );
    }
    // The harness reaches the owner's code (as the owner): through the purges, the imports and the enrolments.
    let reached: String = one(
        &mut su,
        "SELECT string_agg(DISTINCT place, ', ' ORDER BY place) FROM public.trap_log",
    );
    for place in [
        "trigger BEFORE ROW DELETE",
        "trigger AFTER STATEMENT INSERT",
        "domain",
        "generated column",
        "legacy statistics",
        "policy check",
        "check of a child",
    ] {
        assert!(
            reached.contains(place),
            "the owner's {place} never ran: {reached}"
        );
    }
    // And the extension still did its work: Globex's rows are untouched, the legacy rows were imported and purged.
    let globex: i64 = one(
        &mut su,
        &format!("SELECT count(*) FROM public.t WHERE tenant_id = '{GLOBEX}'"),
    );
    assert_eq!(globex, 2);
}
