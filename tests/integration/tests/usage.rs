//! Usage metering over real connections: concurrent sessions run a known number of statements for known tenants
//! (reads, inserts, updates, deletes, failing statements, statements inside a function) and the counters must match
//! exactly; a tenant session can see no other tenant's usage; tracking is a superuser's switch.

use nile_tenancy_integration::*;
use std::thread;

const ROUNDS: i64 = 20;
const FAILURES: i64 = ROUNDS / 5;

fn tenant(n: usize) -> String {
    format!("{:08x}-0000-7000-8000-{:012x}", 0x5000_0000 + n, n)
}

/// One row of nile.tenant_usage as "statements errors returned inserted updated deleted".
fn usage_of(client: &mut postgres::Client, condition: &str) -> String {
    one::<Option<String>>(
        client,
        &format!(
            "SELECT max(concat_ws(' ', statements, errors, rows_returned, rows_inserted, rows_updated, rows_deleted))
             FROM nile.tenant_usage WHERE {condition}"
        ),
    )
    .unwrap_or_else(|| "no row".into())
}

#[test]
fn counters_match_exactly_what_concurrent_sessions_did() {
    let db = scenario("usage_exact");
    let mut su = connect(&db, "postgres");
    su.batch_execute(
        "CREATE SEQUENCE ids START 1000;
         GRANT USAGE ON SEQUENCE ids TO it_app;
         -- Two nested inserts: they count as rows of the one statement that calls the function.
         CREATE FUNCTION add_two() RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO projects (id, name) VALUES (nextval('ids'), 'nested');
             INSERT INTO projects (id, name) VALUES (nextval('ids'), 'nested');
             RETURN 2;
         END $$;",
    )
    .unwrap();
    for n in 0..4 {
        su.execute(
            "SELECT nile.create_tenant($1, $2::text::uuid)",
            &[&format!("usage-{n}"), &tenant(n)],
        )
        .unwrap();
    }
    su.batch_execute("SELECT nile.reset_usage()").unwrap();

    let workers: Vec<_> = (0..4)
        .map(|n| {
            let db = db.clone();
            thread::spawn(move || {
                let mut c = connect(&db, "it_app");
                let t = tenant(n);
                for round in 0..ROUNDS {
                    // 5 statements for the tenant (set_tenant, which changes the context, is not counted): 3 rows
                    // inserted (1 + 2 nested), 1 updated, 1 deleted, 2 returned (the count and the function's result).
                    c.batch_execute(&format!("BEGIN; SELECT nile.set_tenant('{t}')"))
                        .unwrap();
                    c.batch_execute(
                        "INSERT INTO projects (id, name) VALUES (nextval('ids'), 'direct')",
                    )
                    .unwrap();
                    c.batch_execute("SELECT count(*) FROM projects").unwrap();
                    c.batch_execute(
                        "UPDATE projects SET name = 'updated' WHERE id = currval('ids')",
                    )
                    .unwrap();
                    c.batch_execute("SELECT add_two()").unwrap();
                    c.batch_execute("DELETE FROM projects WHERE id = currval('ids')")
                        .unwrap();
                    c.batch_execute("COMMIT").unwrap();
                    if round % 5 == 0 {
                        // A statement that fails while executing: counted, as an error.
                        c.batch_execute(&format!("BEGIN; SELECT nile.set_tenant('{t}')"))
                            .unwrap();
                        assert_fails(
                            c.batch_execute("SELECT 1 / (id - id) FROM projects"),
                            "22012",
                        );
                        c.batch_execute("ROLLBACK").unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a session failed");
    }

    for n in 0..4 {
        assert_eq!(
            usage_of(&mut su, &format!("tenant_id = '{}'", tenant(n))),
            format!(
                "{} {FAILURES} {} {} {ROUNDS} {ROUNDS}",
                5 * ROUNDS + FAILURES,
                2 * ROUNDS,
                3 * ROUNDS
            ),
            "tenant {n}: statements errors returned inserted updated deleted"
        );
    }
    // Without a tenant: only the superuser's reset and its four reads above.
    let no_tenant: i64 = one(
        &mut su,
        "SELECT statements FROM nile.tenant_usage WHERE kind = 'no tenant'",
    );
    assert_eq!(no_tenant, 5);
    // Latency figures are there and consistent.
    let consistent: bool = one(
        &mut su,
        "SELECT bool_and(p50_ms <= p95_ms AND p95_ms <= p99_ms AND p99_ms <= max_time_ms AND mean_time_ms > 0
                         AND first_activity <= last_activity AND tenant_name LIKE 'usage-%')
         FROM nile.tenant_usage WHERE kind = 'tenant'",
    );
    assert!(consistent);
    // Resetting one tenant leaves the others.
    su.execute("SELECT nile.reset_usage($1::text::uuid)", &[&tenant(0)])
        .unwrap();
    assert_eq!(
        usage_of(&mut su, &format!("tenant_id = '{}'", tenant(0))),
        "no row"
    );
    assert_ne!(
        usage_of(&mut su, &format!("tenant_id = '{}'", tenant(1))),
        "no row"
    );
}

#[test]
fn a_tenant_session_sees_its_own_usage_and_nobody_elses() {
    let db = scenario("usage_privacy");
    let mut su = connect(&db, "postgres");
    ensure_login_role(&mut su, "it_monitor", "");
    su.batch_execute("GRANT pg_monitor TO it_monitor; SELECT nile.reset_usage()")
        .unwrap();
    let mut globex = connect(&db, "it_app");
    globex
        .batch_execute(&format!(
            "BEGIN; SELECT nile.set_tenant('{GLOBEX}'); SELECT * FROM projects; COMMIT;"
        ))
        .unwrap();

    let mut acme = connect(&db, "it_app");
    acme.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
    acme.batch_execute("SELECT * FROM projects").unwrap();
    for sql in [
        "SELECT * FROM nile.tenant_usage",
        "SELECT * FROM nile._usage()",
        "SELECT nile.reset_usage()",
    ] {
        assert_fails(acme.batch_execute(sql), "42501");
    }
    let mine: String = one(
        &mut acme,
        "SELECT string_agg(tenant_id::text, ',') FROM nile.my_usage",
    );
    assert_eq!(mine, ACME, "exactly its own row");
    acme.batch_execute("SELECT nile.clear_tenant()").unwrap();
    let without: i64 = one(&mut acme, "SELECT count(*) FROM nile.my_usage");
    assert_eq!(without, 0, "no tenant, no row");

    // nile_admin and pg_monitor see every tenant.
    for role in ["it_admin", "it_monitor"] {
        let mut reader = connect(&db, role);
        let tenants: String = one(
            &mut reader,
            "SELECT string_agg(tenant_name, ',' ORDER BY tenant_name) FROM nile.tenant_usage WHERE kind = 'tenant'",
        );
        assert_eq!(tenants, "Acme,Globex", "{role}");
    }
}

#[test]
fn tracking_is_a_superuser_switch() {
    let db = scenario("usage_switch");
    let mut su = connect(&db, "postgres");
    su.batch_execute("SELECT nile.reset_usage()").unwrap();
    let mut app = connect(&db, "it_app");
    assert_fails(app.batch_execute("SET nile.track_usage = off"), "42501");
    su.batch_execute(&format!(
        "SET nile.track_usage = off; BEGIN; SELECT nile.set_tenant('{ACME}'); SELECT * FROM projects; COMMIT;"
    ))
    .unwrap();
    su.batch_execute("RESET nile.track_usage").unwrap();
    assert_eq!(
        usage_of(&mut su, &format!("tenant_id = '{ACME}'")),
        "no row"
    );
}

#[test]
fn storage_per_tenant_and_table_for_admins_only() {
    let db = scenario("usage_storage");
    let mut su = connect(&db, "postgres");
    su.batch_execute(&format!(
        "CREATE TABLE files (tenant_id uuid NOT NULL, body text NOT NULL);
         SELECT nile.enable_tenancy('files');
         INSERT INTO files SELECT '{ACME}', repeat('a', 1000) FROM generate_series(1, 3);
         INSERT INTO files SELECT '{GLOBEX}', repeat('g', 1000) FROM generate_series(1, 5);"
    ))
    .unwrap();
    let mut admin = connect(&db, "it_admin");
    let per_table: String = one(
        &mut admin,
        "SELECT string_agg(concat_ws(':', tenant_name, table_name, row_count, bytes > 1000 * row_count), ','
                           ORDER BY tenant_name, table_name::text)
         FROM nile.tenant_storage()",
    );
    assert_eq!(
        per_table,
        "Acme:files:3:t,Acme:projects:2:f,Globex:files:5:t,Globex:projects:1:f"
    );
    let one_tenant: i64 = one(
        &mut admin,
        &format!("SELECT sum(row_count)::bigint FROM nile.tenant_storage('{GLOBEX}')"),
    );
    assert_eq!(one_tenant, 6);
    let mut app = connect(&db, "it_app");
    app.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
    assert_fails(
        app.batch_execute("SELECT * FROM nile.tenant_storage()"),
        "42501",
    );
}

#[test]
fn procedures_committing_and_planner_work_count_as_the_one_statement_they_are() {
    let db = scenario("usage_nesting");
    let mut su = connect(&db, "postgres");
    su.batch_execute(
        "CREATE SEQUENCE ids START 500;
         GRANT USAGE ON SEQUENCE ids TO it_app;
         -- A procedure that commits after each insert: its transactions end inside the CALL.
         CREATE PROCEDURE add_five() LANGUAGE plpgsql AS $$
         BEGIN
             FOR i IN 1..5 LOOP
                 INSERT INTO projects (id, name) VALUES (nextval('ids'), 'from procedure');
                 COMMIT;
             END LOOP;
         END $$;
         GRANT EXECUTE ON PROCEDURE add_five() TO it_app;
         -- An immutable function that runs a query: the planner folds it, running that query while planning.
         CREATE FUNCTION two() RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
         BEGIN RETURN (SELECT count(*) FROM (VALUES (1), (2)) v); END $$;
         SELECT nile.reset_usage();",
    )
    .unwrap();
    let mut app = connect(&db, "it_app");
    // Session scope: the procedure's COMMITs would end a transaction-scoped context.
    app.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
    app.batch_execute("CALL add_five()").unwrap();
    app.batch_execute("SELECT name FROM projects WHERE id = two()")
        .unwrap();
    app.batch_execute("SELECT count(*) FROM projects").unwrap();
    // set_tenant: not counted (it changes the context); CALL: 1 statement, 5 rows inserted; the two SELECTs: 1
    // statement each (acme-2 and the count).
    assert_eq!(
        usage_of(&mut su, &format!("tenant_id = '{ACME}'")),
        "3 0 2 5 0 0",
        "statements errors returned inserted updated deleted"
    );
    // CREATE TABLE AS writes rows: they count as inserted, not returned.
    su.batch_execute(&format!(
        "SELECT nile.reset_usage('{ACME}');
         SELECT nile.set_tenant('{ACME}', is_local => false);
         CREATE TABLE names_copy AS SELECT name FROM generate_series(1, 4) g, LATERAL (SELECT 'n' || g AS name) n;
         SELECT nile.clear_tenant();"
    ))
    .unwrap();
    assert_eq!(
        usage_of(&mut su, &format!("tenant_id = '{ACME}'")),
        "1 0 0 4 0 0",
        "CREATE TABLE AS (4 rows inserted) only: set_tenant() and clear_tenant() change the context and are not \
         counted; the reset, made at the commit of this one-transaction batch, comes before them"
    );
}

/// The tenant that takes most of the time ranks first in nile.noisy_neighbours, from the period still open and, after
/// a flush, from nile.usage_history; an administrator who is not a superuser sees the tenants' names.
#[test]
fn the_noisy_neighbour_ranks_first() {
    let db = scenario("usage_noisy");
    let mut su = connect(&db, "postgres");
    su.batch_execute("SELECT nile.reset_usage()").unwrap();
    let mut app = connect(&db, "it_app");
    app.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{ACME}'); SELECT pg_sleep(0.3), count(*) FROM projects; COMMIT;"
    ))
    .unwrap();
    for _ in 0..5 {
        app.batch_execute(&format!(
            "BEGIN; SELECT nile.set_tenant('{GLOBEX}'); SELECT count(*) FROM projects; COMMIT;"
        ))
        .unwrap();
    }
    let mut admin = connect(&db, "it_admin");
    let ranking = |c: &mut postgres::Client| -> String {
        one(
            c,
            "SELECT string_agg(concat_ws(':', tenant_name, statements, share_of_time > 0.5), ' '
                              ORDER BY rank, tenant_name)
                    || ' first:' || min(rank)
             FROM nile.noisy_neighbours WHERE kind = 'tenant'",
        )
    };
    assert_eq!(ranking(&mut admin), "Acme:1:t Globex:5:f first:1");
    // Written to the history, the same periods give the same ranking (and the open period is then empty).
    let written: i64 = one(&mut admin, "SELECT nile.flush_usage()");
    assert!(written >= 2, "{written}");
    assert_eq!(ranking(&mut admin), "Acme:1:t Globex:5:f first:1");
    let open: i64 = one(
        &mut admin,
        "SELECT count(*) FROM nile._unflushed_usage() WHERE kind = 'tenant'",
    );
    assert_eq!(open, 0);
    // A window that ends before the periods: nothing of the tenants.
    let none: i64 = one(
        &mut admin,
        "SELECT count(*) FROM nile.noisy_neighbours('0 seconds') WHERE kind = 'tenant'",
    );
    assert_eq!(none, 0);
}

/// Issue 18: the statement that enters a context is not the tenant's work. N transactions of one single-row SELECT,
/// each entering the tenant with set_tenant(), show exactly N statements and N rows returned (before: 2N and 2N);
/// clear_tenant() and admin_context() are not counted either.
#[test]
fn entering_a_context_is_not_counted_as_the_tenants_work() {
    let db = scenario("usage_switch");
    let mut su = connect(&db, "postgres");
    su.batch_execute("SELECT nile.reset_usage()").unwrap();
    let mut app = connect(&db, "it_app");
    for _ in 0..10 {
        app.batch_execute(&format!(
            "BEGIN; SELECT nile.set_tenant('{ACME}'); SELECT name FROM projects WHERE id = 1; COMMIT;"
        ))
        .unwrap();
    }
    app.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false); SELECT nile.clear_tenant();"
    ))
    .unwrap();
    let mut admin = connect(&db, "it_admin");
    admin
        .batch_execute("BEGIN; SELECT nile.admin_context('usage test'); COMMIT;")
        .unwrap();
    assert_eq!(
        usage_of(&mut su, &format!("tenant_id = '{ACME}'")),
        "10 0 10 0 0 0",
        "statements errors returned inserted updated deleted"
    );
    let admin_rows: i64 = one(
        &mut su,
        "SELECT count(*) FROM nile.tenant_usage WHERE kind = 'admin' AND statements > 0",
    );
    assert_eq!(admin_rows, 0, "admin_context() is not counted");
}

#[test]
fn a_row_removed_by_a_reset_is_never_added_to_through_a_stale_pointer() {
    // A backend keeps a pointer to each usage row it recorded into (src/usage/store.rs); a reset removes rows, and the
    // shared table hands a removed row's memory to the next row it creates. The first session's next statements must
    // go to a new row of their own tenant, not to whichever row took over the memory.
    let db = scenario("usage_stale_row");
    let mut su = connect(&db, "postgres");
    for n in 10..12 {
        su.execute(
            "SELECT nile.create_tenant($1, $2::text::uuid)",
            &[&format!("usage-{n}"), &tenant(n)],
        )
        .unwrap();
    }
    let mut first = connect(&db, "it_app");
    let mut second = connect(&db, "it_app");
    let run = |c: &mut postgres::Client, n: usize, statements: usize| {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT nile.set_tenant($1::text::uuid)", &[&tenant(n)])
            .unwrap();
        for _ in 0..statements {
            tx.batch_execute("SELECT count(*) FROM projects").unwrap();
        }
        tx.commit().unwrap();
    };
    // Twice: the first commit creates the row, the second finds it (and keeps the pointer).
    run(&mut first, 10, 1);
    run(&mut first, 10, 2);
    su.batch_execute("SELECT nile.reset_usage()").unwrap();
    run(&mut second, 11, 1);
    run(&mut first, 10, 2);
    assert_eq!(
        usage_of(&mut su, &format!("tenant_id = '{}'", tenant(10))),
        "2 0 2 0 0 0"
    );
    assert_eq!(
        usage_of(&mut su, &format!("tenant_id = '{}'", tenant(11))),
        "1 0 1 0 0 0"
    );
}
