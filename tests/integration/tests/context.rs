//! The tenant context over real connections: its scope (transaction or session), what clears it, that no client
//! path but nile.set_tenant() can set it, and that plans and parallel workers follow it.

use nile_tenancy_integration::*;

#[test]
fn transaction_scope_is_the_default_and_outside_a_transaction_is_an_error() {
    let db = scenario("scope");
    let mut c = connect(&db, "it_app");
    let err = c
        .execute("SELECT nile.set_tenant($1::text::uuid)", &[&ACME])
        .unwrap_err();
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "25P01");
    // The hint does not recommend session scope (issue 18: with a pool, the next client would inherit the context).
    let hint = db_err.hint().unwrap_or_default();
    assert!(
        hint.contains("BEGIN") && !hint.contains("is_local => false"),
        "the hint points to the transaction: {hint}"
    );
    assert_eq!(
        one::<Option<String>>(&mut c, "SELECT nile.current_tenant()::text"),
        None,
        "never a silent no-op"
    );

    // Transaction scope: gone after COMMIT, and after ROLLBACK.
    c.batch_execute(&format!("BEGIN; SELECT nile.set_tenant('{ACME}'); COMMIT;"))
        .unwrap();
    assert_eq!(
        one::<Option<String>>(&mut c, "SELECT nile.current_tenant()::text"),
        None
    );
    c.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{ACME}'); ROLLBACK;"
    ))
    .unwrap();
    assert_eq!(
        one::<Option<String>>(&mut c, "SELECT nile.current_tenant()::text"),
        None
    );

    // Session scope: survives transactions; a rolled-back switch restores the previous tenant.
    c.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
    c.batch_execute("BEGIN; SELECT 1; COMMIT;").unwrap();
    assert_eq!(visible(&mut c), "acme-1,acme-2");
    c.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{GLOBEX}', is_local => false); ROLLBACK;"
    ))
    .unwrap();
    assert_eq!(visible(&mut c), "acme-1,acme-2");
    c.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{GLOBEX}'); COMMIT;"
    ))
    .unwrap();
    assert_eq!(
        visible(&mut c),
        "acme-1,acme-2",
        "a local switch ends with its transaction"
    );
    // Savepoints: ROLLBACK TO undoes a switch made after the savepoint, RELEASE keeps it.
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(&format!(
        "SAVEPOINT before_switch; SELECT nile.set_tenant('{GLOBEX}')"
    ))
    .unwrap();
    assert_eq!(visible(&mut tx), "globex-1");
    tx.batch_execute("ROLLBACK TO SAVEPOINT before_switch")
        .unwrap();
    assert_eq!(visible(&mut tx), "acme-1,acme-2");
    tx.batch_execute(&format!(
        "SAVEPOINT again; SELECT nile.set_tenant('{GLOBEX}'); RELEASE SAVEPOINT again"
    ))
    .unwrap();
    assert_eq!(visible(&mut tx), "globex-1");
    tx.batch_execute(
        "SAVEPOINT clearing; SELECT nile.clear_tenant(); ROLLBACK TO SAVEPOINT clearing",
    )
    .unwrap();
    assert_eq!(
        visible(&mut tx),
        "globex-1",
        "a rolled-back clear_tenant() restores the context"
    );
    tx.rollback().unwrap();
    assert_eq!(
        visible(&mut c),
        "acme-1,acme-2",
        "ROLLBACK of the whole transaction restores the session tenant"
    );
    c.batch_execute("RESET ALL").unwrap();
    assert_eq!(
        one::<Option<String>>(&mut c, "SELECT nile.current_tenant()::text"),
        None,
        "RESET ALL clears it"
    );
    c.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
    c.batch_execute("DISCARD ALL").unwrap();
    assert_eq!(
        one::<Option<String>>(&mut c, "SELECT nile.current_tenant()::text"),
        None,
        "DISCARD ALL clears it"
    );
    c.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false); SELECT nile.clear_tenant();"
    ))
    .unwrap();
    assert_fails(c.query("SELECT * FROM projects", &[]), "NT001");
}

#[test]
fn no_connection_option_or_default_can_set_the_tenant() {
    let db = scenario("options");
    // Startup packet (PGOPTIONS='-c nile.tenant_id=...'): the connection is refused outright.
    let with_option = format!("{} options='-c nile.tenant_id={ACME}'", dsn(&db, "it_app"));
    let refused = postgres::Client::connect(&with_option, postgres::NoTls);
    assert_fails(refused, "NT006");
    let with_admin = format!("{} options='-c nile.admin_active=on'", dsn(&db, "it_app"));
    assert_fails(
        postgres::Client::connect(&with_admin, postgres::NoTls),
        "NT006",
    );
    // Role and database defaults cannot even be stored, not even by a superuser.
    let mut su = connect(&db, "postgres");
    assert_fails(
        su.batch_execute(&format!("ALTER ROLE it_app SET nile.tenant_id = '{ACME}'")),
        "NT006",
    );
    assert_fails(
        su.batch_execute(&format!(
            "ALTER ROLE it_app IN DATABASE {db} SET nile.tenant_id = '{ACME}'"
        )),
        "NT006",
    );
    assert_fails(
        su.batch_execute(&format!(
            "ALTER DATABASE {db} SET nile.tenant_id = '{ACME}'"
        )),
        "NT006",
    );
    assert_fails(
        su.batch_execute(&format!("ALTER SYSTEM SET nile.tenant_id = '{ACME}'")),
        "55P02",
    );
    let mut app = connect(&db, "it_app");
    assert_fails(app.query("SELECT * FROM projects", &[]), "NT001");
}

#[test]
fn prepared_statements_follow_the_tenant_on_every_execution() {
    let db = scenario("prepared");
    let mut c = connect(&db, "it_app");
    let stmt = c
        .prepare("SELECT string_agg(name, ',' ORDER BY name) FROM projects WHERE id >= $1")
        .unwrap();
    // Well past the five custom plans after which Postgres may switch to a generic plan.
    for round in 0..12 {
        let (tenant, expected) = if round % 2 == 0 {
            (ACME, "acme-1,acme-2")
        } else {
            (GLOBEX, "globex-1")
        };
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT nile.set_tenant($1::text::uuid)", &[&tenant])
            .unwrap();
        let got: Option<String> = tx.query_one(&stmt, &[&0i64]).unwrap().get(0);
        assert_eq!(got.as_deref(), Some(expected), "round {round}");
        tx.commit().unwrap();
    }
    c.batch_execute("SET plan_cache_mode = force_generic_plan")
        .unwrap();
    let generic = c
        .prepare("SELECT count(*) FROM projects WHERE id >= $1")
        .unwrap();
    for (tenant, expected) in [(ACME, 2i64), (GLOBEX, 1), (ACME, 2)] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT nile.set_tenant($1::text::uuid)", &[&tenant])
            .unwrap();
        assert_eq!(
            tx.query_one(&generic, &[&0i64]).unwrap().get::<_, i64>(0),
            expected
        );
        tx.commit().unwrap();
    }
}

#[test]
fn parallel_workers_see_the_leaders_tenant() {
    let db = scenario("parallel");
    let mut su = connect(&db, "postgres");
    su.batch_execute(&format!(
        "INSERT INTO projects SELECT '{ACME}', g, 'bulk' FROM generate_series(10, 200000) g;
         INSERT INTO projects SELECT '{GLOBEX}', g, 'bulk' FROM generate_series(10, 50000) g;
         ANALYZE projects;"
    ))
    .unwrap();
    let force = force_parallel_setting(&mut su);
    let mut c = connect(&db, "it_app");
    c.batch_execute(&format!(
        "SET {force} = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
         SET max_parallel_workers_per_gather = 2; SET enable_indexscan = off; SET enable_bitmapscan = off;
         SELECT nile.set_tenant('{GLOBEX}', is_local => false);"
    ))
    .unwrap();
    let plan: Vec<String> = c
        .query(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM projects",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    let launched = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Workers Launched: "))
        .and_then(|n| n.trim().parse::<i32>().ok())
        .unwrap_or(0);
    assert!(
        launched >= 1,
        "the scan must run in parallel workers:\n{plan}"
    );
    assert_eq!(
        one::<i64>(&mut c, "SELECT count(*) FROM projects"),
        49992,
        "Globex's rows only, counted by workers"
    );
    c.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM projects"), 199993);
}

/// Issue 18, pool safety: a cursor WITH HOLD outlives the transaction and with it the tenant context, so on a pooled
/// server connection the next client could fetch rows read in one tenant's context. Refused when declared in a tenant's
/// or the admin context, and the commit is refused when the transaction declared one and entered a context, in
/// either order (the commit runs the cursor to its end with what it computed in the context).
#[test]
fn a_cursor_with_hold_cannot_carry_a_tenants_rows_past_its_transaction() {
    let db = scenario("cursor_hold");
    let mut c = connect(&db, "it_app");
    let mut admin = connect(&db, "it_admin");
    let code = |r: Result<(), postgres::Error>| {
        r.err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()))
            .unwrap_or_else(|| "ok".into())
    };
    let in_context = code(c.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{ACME}'); DECLARE held CURSOR WITH HOLD FOR SELECT name FROM projects; COMMIT;"
    )));
    let _ = c.batch_execute("ROLLBACK");
    assert_eq!(in_context, "0A000", "declared in a tenant's context");
    let in_admin = code(admin.batch_execute(
        "BEGIN; SELECT nile.admin_context('cursor test'); DECLARE held CURSOR WITH HOLD FOR SELECT name FROM projects; COMMIT;",
    ));
    let _ = admin.batch_execute("ROLLBACK");
    assert_eq!(in_admin, "0A000", "declared in the admin context");
    let declared_first = code(c.batch_execute(&format!(
        "BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT name FROM projects;
         SELECT nile.set_tenant('{ACME}'); FETCH 1 FROM held; SELECT nile.clear_tenant(); COMMIT;"
    )));
    let _ = c.batch_execute("ROLLBACK");
    assert_eq!(
        declared_first, "0A000",
        "declared first, then a context: the commit is refused"
    );
    // Nothing was left behind for the next statement on this connection.
    let left: i64 = one(&mut c, "SELECT count(*) FROM pg_cursors WHERE is_holdable");
    assert_eq!(left, 0, "a cursor survived");
    // Without any context in its transaction, a cursor WITH HOLD is as Postgres makes it (it reads no tenant's rows).
    c.batch_execute("BEGIN; DECLARE plain CURSOR WITH HOLD FOR SELECT 1; COMMIT; CLOSE plain;")
        .unwrap();
}

/// Issue 18, pool safety: a superuser can forbid session scope per role (`nile.allow_session_scope`), and
/// `nile.missing_tenant` can be changed only by superusers, never by the application at run time.
#[test]
fn session_scope_and_missing_tenant_are_a_superusers_settings() {
    let db = scenario("pool_settings");
    ensure_login_role(&mut connect(&db, "postgres"), "it_pooled_app", "");
    let mut su = connect(&db, "postgres");
    su.batch_execute(&format!(
        "GRANT nile_app TO it_pooled_app; GRANT SELECT ON projects TO it_pooled_app;
         ALTER ROLE it_pooled_app IN DATABASE {db} SET nile.allow_session_scope = off;
         ALTER ROLE it_pooled_app IN DATABASE {db} SET nile.missing_tenant = deny;"
    ))
    .unwrap();
    let mut c = connect(&db, "it_pooled_app");
    assert_fails(
        c.batch_execute(&format!(
            "SELECT nile.set_tenant('{ACME}', is_local => false)"
        )),
        "NT007",
    );
    assert_fails(
        c.batch_execute("SET nile.allow_session_scope = on"),
        "42501",
    );
    assert_fails(c.batch_execute("SET nile.missing_tenant = error"), "42501");
    // Transaction scope works; and without a context the role's missing_tenant = deny applies.
    let seen: i64 = one(&mut c, "SELECT count(*) FROM projects");
    assert_eq!(seen, 0);
    c.batch_execute(&format!("BEGIN; SELECT nile.set_tenant('{ACME}');"))
        .unwrap();
    let acme: i64 = one(&mut c, "SELECT count(*) FROM projects");
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(acme, 2);
    // Other roles keep the defaults; an application role cannot change missing_tenant for itself either.
    let mut app = connect(&db, "it_app");
    assert_fails(app.batch_execute("SET nile.missing_tenant = deny"), "42501");
    app.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
}
