//! The extension's own objects: its catalogs, audit and usage views, the binding of a bound role, the search_path
//! its functions run in, and what its errors tell the client.

use super::*;

#[test]
fn own_objects_tenants_catalog() {
    let mut s = Siege::new("tenants_catalog");
    let mut c = s.attacker();
    assert_eq!(
        attempt(&mut c, "SELECT string_agg(name, ',') FROM nile.tenants"),
        "Acme"
    );
    let mut none = s.login("it_noexec");
    let got = attempt(&mut none, "SELECT count(*) FROM nile.tenants");
    assert!(got == "0" || got.starts_with("NT001"), "{got}");
}

#[test]
fn own_objects_audit_bindings_and_registry() {
    let mut s = Siege::new("own_tables");
    let mut c = s.attacker();
    // The audit and the bindings name tenants and people: nile_admin only. (The registry of tenant tables is
    // readable by everyone: it describes the schema, not any tenant.)
    for table in ["nile.admin_audit", "nile.role_bindings"] {
        refused(&mut c, &format!("SELECT * FROM {table}"), "42501");
    }
    refused(
        &mut c,
        "BEGIN; SELECT nile.admin_context('curious')",
        "42501",
    );
    refused(
        &mut c,
        &format!("SELECT nile.bind_role('it_attacker', '{GLOBEX}')"),
        "42501",
    );
    refused(&mut c, "SELECT nile.enable_tenancy('projects')", "42501");
    refused(
        &mut c,
        &format!("SELECT nile.delete_tenant('{GLOBEX}')"),
        "42501",
    );
    s.assert_globex_intact();
}

#[test]
fn own_objects_bound_role_cannot_leave() {
    let mut s = Siege::new("bound_role");
    let mut c = s.login("it_atk_bound");
    for (sql, sqlstate) in [
        (
            format!("BEGIN; SELECT nile.set_tenant('{GLOBEX}')"),
            "42501",
        ),
        (format!("SET nile.tenant_id = '{GLOBEX}'"), "NT006"),
        ("SELECT nile.clear_tenant()".to_string(), "42501"),
        (
            format!(
                "SELECT nile.set_tenant_token('{}', is_local => false)",
                s.token(GLOBEX)
            ),
            "42501",
        ),
    ] {
        refused(&mut c, &sql, sqlstate);
    }
    // SET ROLE to an unbound role keeps the login role's binding.
    s.su.batch_execute("GRANT it_app TO it_atk_bound").unwrap();
    c.batch_execute("SET ROLE it_app").unwrap();
    assert_sees_only_acme(&mut c);
    refused(
        &mut c,
        &format!("BEGIN; SELECT nile.set_tenant('{GLOBEX}')"),
        "42501",
    );
    s.su.batch_execute("REVOKE it_app FROM it_atk_bound")
        .unwrap();
}

#[test]
fn own_objects_usage_views() {
    let mut s = Siege::new("usage_views");
    // Globex works a little, so that there is a Globex usage row to steal.
    s.su.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{GLOBEX}'); SELECT * FROM projects; COMMIT;"
    ))
    .unwrap();
    let mut c = s.attacker();
    for sql in [
        "SELECT * FROM nile.tenant_usage",
        "SELECT * FROM nile._usage()",
        "SELECT nile.reset_usage()",
        "SELECT * FROM nile.usage_history",
        "DELETE FROM nile.usage_history",
        "SELECT * FROM nile.noisy_neighbours",
        "SELECT * FROM nile.noisy_neighbours('1 day')",
        "SELECT * FROM nile._unflushed_usage()",
        "SELECT nile.flush_usage()",
    ] {
        refused(&mut c, sql, "42501");
    }
    assert_eq!(
        attempt(
            &mut c,
            "SELECT string_agg(tenant_id::text, ',') FROM nile.my_usage"
        ),
        ACME
    );
}

/// Issue 17, finding 3: an overload planted in a schema on the administrator's search_path must not run while
/// `nile.enable_tenancy()` / `nile.disable_tenancy()` read the table's catalog entry. `format(text, name, name)`
/// matches the catalog query's `format('%I.%I', nspname, relname)` better than `pg_catalog.format(text, VARIADIC
/// "any")`, so before the fix it ran with the caller's rights (here a superuser's) on every call.
#[test]
fn hijack_search_path_of_enable_and_disable_tenancy() {
    let mut s = Siege::new("search_path_format");
    let mut c = s.attacker();
    c.batch_execute(
        "CREATE TABLE public.loot (who text, superuser text);
         GRANT INSERT ON public.loot TO PUBLIC;
         CREATE FUNCTION public.format(text, name, name) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.loot VALUES (current_user, current_setting('is_superuser'));
             RETURN pg_catalog.format($1, $2, $3);
         END $$;",
    )
    .unwrap();
    s.su.batch_execute(
        "SET search_path = \"$user\", public;
         SET nile.auto_enable = off;
         CREATE TABLE public.invoices (tenant_id uuid NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id));
         SELECT nile.enable_tenancy('public.invoices');
         SELECT nile.disable_tenancy('public.invoices');
         SELECT nile.enable_tenancy('public.invoices');",
    )
    .unwrap();
    let fired: i64 = one(&mut s.su, "SELECT count(*) FROM public.loot");
    assert_eq!(
        fired, 0,
        "the planted format() ran inside enable/disable_tenancy"
    );
    // The table is enrolled as asked.
    let enrolled: bool = one(
        &mut s.su,
        "SELECT EXISTS (SELECT 1 FROM nile.tenant_tables WHERE relid = 'public.invoices'::regclass)",
    );
    assert!(enrolled);
    s.assert_globex_intact();
}

/// Issue 17, finding 4: `nile.for_each_tenant()` commits, so it cannot pin its search_path, and ran in the caller's:
/// overloads planted in `public` (`cardinality(uuid[])`, `format(text, bigint)`, `/(integer, numeric)`) beat
/// pg_catalog's polymorphic, variadic or casting ones and ran with the administrator's rights. Every call of its own is
/// now schema-qualified; the statement it is given still runs in the caller's search_path, as it should.
#[test]
fn hijack_search_path_of_for_each_tenant() {
    let mut s = Siege::new("search_path_for_each");
    let mut c = s.attacker();
    c.batch_execute(
        "CREATE TABLE public.loot (what text, who text);
         GRANT INSERT ON public.loot TO PUBLIC;
         CREATE FUNCTION public.cardinality(uuid[]) RETURNS integer LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.loot VALUES ('cardinality', current_user); RETURN pg_catalog.cardinality($1); END $$;
         CREATE FUNCTION public.format(text, bigint) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.loot VALUES ('format', current_user); RETURN pg_catalog.format($1, $2); END $$;
         CREATE FUNCTION public.trap_div(integer, numeric) RETURNS numeric LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.loot VALUES ('/', current_user); RETURN $1::numeric OPERATOR(pg_catalog./) $2; END $$;
         CREATE OPERATOR public./ (LEFTARG = integer, RIGHTARG = numeric, FUNCTION = public.trap_div);",
    )
    .unwrap();
    // The administrator's run: a statement that fails for Globex (so the failure path runs too), from a session
    // whose search_path has the attacker's schema on it.
    s.su.batch_execute(&format!(
        "SET search_path = \"$user\", public;
         CREATE FUNCTION public.refuse_globex() RETURNS integer LANGUAGE plpgsql AS $$
         BEGIN IF nile.current_tenant() = '{GLOBEX}' THEN RAISE EXCEPTION 'no'; END IF; RETURN 1; END $$;"
    ))
    .unwrap();
    // A statement of its own: the procedure commits.
    s.su.batch_execute(
        "CALL nile.for_each_tenant('SELECT public.refuse_globex()', batch_size => 1)",
    )
    .unwrap();
    let fired: Option<String> = one(
        &mut s.su,
        "SELECT string_agg(DISTINCT what || ' as ' || who, ', ') FROM public.loot",
    );
    assert_eq!(
        fired, None,
        "a planted overload ran inside nile.for_each_tenant()"
    );
    let (done, failed): (i32, i32) = {
        let row = s
            .su
            .query_one(
                "SELECT tenants_done, tenants_failed FROM nile.for_each_tenant_runs ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((done, failed), (2, 1));
    s.assert_globex_intact();
}

/// Issue 17 ("also seen"): with RUST_BACKTRACE set in the server's environment (scripts/cluster.sh starts every test
/// server so), an error that PostgreSQL raised inside the extension's Rust code reached the client with a Rust
/// backtrace in its DETAIL: file names, symbols and the extension's inner structure, to whoever can provoke an error.
/// Here `enable_tenancy()` waits for a lock past `lock_timeout`; the client must get 55P03 and nothing of Rust.
#[test]
fn leak_rust_backtrace_in_error_detail() {
    let mut s = Siege::new("backtrace");
    s.su.batch_execute(
        "SET nile.auto_enable = off;
         CREATE TABLE public.ledger (tenant_id uuid NOT NULL, amount int);",
    )
    .unwrap();
    let mut holder = connect(&s.db, "postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE public.ledger IN ACCESS SHARE MODE")
        .unwrap();
    s.su.batch_execute("SET lock_timeout = '200ms'").unwrap();
    let err =
        s.su.batch_execute("SELECT nile.enable_tenancy('public.ledger')")
            .expect_err("the table is locked by another session");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55P03", "{db:?}");
    for text in [Some(db.message()), db.detail(), db.hint(), db.where_()]
        .into_iter()
        .flatten()
    {
        assert!(
            !text.contains("backtrace")
                && !text.contains("rust_begin_unwind")
                && !text.contains(".rs:"),
            "a Rust backtrace reached the client: {text}"
        );
    }
    holder.batch_execute("ROLLBACK").unwrap();
    s.su.batch_execute("RESET lock_timeout; SELECT nile.enable_tenancy('public.ledger')")
        .unwrap();
}
