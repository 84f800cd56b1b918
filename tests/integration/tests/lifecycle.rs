//! Tenant lifecycle and admin context across sessions: a status change made by one session reaches the others at
//! once, and the admin context belongs to one transaction of one session.

use nile_tenancy_integration::*;

#[test]
fn status_changes_reach_sessions_already_working_for_the_tenant() {
    let db = scenario("status");
    let mut worker = connect(&db, "it_app");
    worker
        .batch_execute(&format!(
            "SELECT nile.set_tenant('{GLOBEX}', is_local => false)"
        ))
        .unwrap();
    worker
        .batch_execute("INSERT INTO projects (id, name) VALUES (2, 'globex-2')")
        .unwrap();
    let mut admin = connect(&db, "it_admin");

    admin
        .batch_execute(&format!("SELECT nile.deactivate_tenant('{GLOBEX}')"))
        .unwrap();
    assert_eq!(
        visible(&mut worker),
        "globex-1,globex-2",
        "an inactive tenant still reads"
    );
    let failure = assert_fails(
        worker.batch_execute("INSERT INTO projects (id, name) VALUES (3, 'x')"),
        "NT003",
    );
    assert!(
        failure.contains("Globex") && failure.contains("inactive"),
        "{failure}"
    );
    assert_fails(
        worker.batch_execute("UPDATE projects SET name = 'x'"),
        "NT003",
    );
    assert_fails(worker.batch_execute("DELETE FROM projects"), "NT003");

    admin
        .batch_execute(&format!("SELECT nile.delete_tenant('{GLOBEX}')"))
        .unwrap();
    assert_fails(worker.query("SELECT * FROM projects", &[]), "NT004");
    let mut fresh = connect(&db, "it_app");
    assert_fails(
        fresh.batch_execute(&format!(
            "SELECT nile.set_tenant('{GLOBEX}', is_local => false)"
        )),
        "NT004",
    );

    admin
        .batch_execute(&format!("SELECT nile.reactivate_tenant('{GLOBEX}')"))
        .unwrap();
    worker
        .batch_execute("INSERT INTO projects (id, name) VALUES (3, 'globex-3')")
        .unwrap();
    assert_eq!(visible(&mut worker), "globex-1,globex-2,globex-3");

    // Purge from another session: rows and tenant gone, the worker is refused, Acme untouched.
    admin
        .batch_execute(&format!(
            "SELECT nile.delete_tenant('{GLOBEX}', purge => true)"
        ))
        .unwrap();
    assert_fails(worker.query("SELECT * FROM projects", &[]), "NT004");
    let mut su = connect(&db, "postgres");
    assert_eq!(visible(&mut su), "acme-1,acme-2");
    assert_eq!(one::<i64>(&mut su, "SELECT count(*) FROM nile.tenants"), 1);
}

#[test]
fn status_changes_reach_an_open_transaction_at_its_next_statement() {
    use postgres::IsolationLevel::{ReadCommitted, RepeatableRead};
    for (level, name) in [(ReadCommitted, "status_rc"), (RepeatableRead, "status_rr")] {
        let db = scenario(name);
        let mut worker = connect(&db, "it_app");
        let mut admin = connect(&db, "it_admin");

        let mut tx = begin_as(&mut worker, level, GLOBEX);
        tx.execute(
            "INSERT INTO projects (id, name) VALUES (2, 'globex-2')",
            &[],
        )
        .unwrap();
        admin
            .batch_execute(&format!("SELECT nile.deactivate_tenant('{GLOBEX}')"))
            .unwrap();
        assert_fails(
            tx.execute(
                "INSERT INTO projects (id, name) VALUES (3, 'globex-3')",
                &[],
            ),
            "NT003",
        );
        tx.rollback().unwrap();

        let mut tx = begin_as(&mut worker, level, GLOBEX);
        assert_eq!(visible(&mut tx), "globex-1");
        admin
            .batch_execute(&format!("SELECT nile.delete_tenant('{GLOBEX}')"))
            .unwrap();
        assert_fails(tx.query("SELECT * FROM projects", &[]), "NT004");
        tx.rollback().unwrap();
    }
}

#[test]
fn a_deleted_tenant_stays_deleted_after_a_parallel_plan_in_an_old_snapshot() {
    // A REPEATABLE READ transaction whose snapshot predates the deletion runs a plan in parallel mode (the leader
    // reads with the statement's snapshot there). What it reads must not be cached for later transactions.
    let db = scenario("parallel_snapshot");
    let mut su = connect(&db, "postgres");
    let force = force_parallel_setting(&mut su);
    let mut worker = connect(&db, "it_app");
    worker
        .batch_execute(&format!("SET {force} = on; SET max_parallel_workers = 0; SET plan_cache_mode = force_generic_plan"))
        .unwrap();
    let mut admin = connect(&db, "it_admin");
    worker
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .unwrap();
    worker
        .batch_execute(&format!("SELECT nile.set_tenant('{ACME}')"))
        .unwrap();
    worker
        .batch_execute("PREPARE p AS SELECT count(*) FROM projects")
        .unwrap();
    assert_eq!(one::<i64>(&mut worker, "EXECUTE p"), 2);
    admin
        .batch_execute(&format!("SELECT nile.delete_tenant('{ACME}')"))
        .unwrap();
    worker
        .batch_execute("CREATE TEMP TABLE poke (); SELECT * FROM poke")
        .unwrap();
    let _ = worker.query("EXECUTE p", &[]);
    worker.batch_execute("ROLLBACK").unwrap();
    assert_fails(
        worker.batch_execute(&format!("BEGIN; SELECT nile.set_tenant('{ACME}')")),
        "NT004",
    );
    worker.batch_execute("ROLLBACK").unwrap();
    assert_fails(
        worker.batch_execute(&format!(
            "SELECT nile.set_tenant('{ACME}', is_local => false)"
        )),
        "NT004",
    );
}

#[test]
fn admin_context_lasts_one_transaction_of_one_session_and_is_audited() {
    let db = scenario("admin");
    let mut admin = connect(&db, "it_admin");
    let mut app = connect(&db, "it_app");
    let err = admin
        .batch_execute("SELECT nile.admin_context('outside a transaction')")
        .unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("25P01"));

    let mut tx = admin.transaction().unwrap();
    tx.execute("SELECT nile.admin_context('quarterly report')", &[])
        .unwrap();
    let all: Option<String> = tx
        .query_one(
            "SELECT string_agg(name, ',' ORDER BY name) FROM projects",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(all.as_deref(), Some("acme-1,acme-2,globex-1"));
    assert_eq!(
        tx.query_one("SELECT count(*) FROM nile.tenants", &[])
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    // Meanwhile another session has no such power.
    assert_fails(app.query("SELECT * FROM projects", &[]), "NT001");
    app.batch_execute(&format!(
        "SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
    assert_eq!(visible(&mut app), "acme-1,acme-2");
    tx.commit().unwrap();

    // Over with the transaction.
    assert_eq!(one::<String>(&mut admin, "SHOW nile.admin_active"), "off");
    assert_fails(admin.query("SELECT * FROM projects", &[]), "NT001");
    let audit: String = one(&mut admin, "SELECT session_role || ':' || acting_role || ':' || reason FROM nile.admin_audit ORDER BY id DESC LIMIT 1");
    assert_eq!(audit, "it_admin:it_admin:quarterly report");
    // The application role cannot read or erase the audit.
    assert_fails(app.query("SELECT * FROM nile.admin_audit", &[]), "42501");
    assert_fails(app.batch_execute("DELETE FROM nile.admin_audit"), "42501");
}

#[test]
fn purge_is_all_or_nothing() {
    let db = scenario("purge");
    let mut su = connect(&db, "postgres");
    // A table that references Globex's rows without being a tenant table blocks the purge: nothing is deleted.
    su.batch_execute(&format!(
        "SET nile.auto_enable = off;
         CREATE TABLE audit_refs (tenant_id uuid, project_id bigint, FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id));
         INSERT INTO audit_refs VALUES ('{GLOBEX}', 1);"
    ))
    .unwrap();
    let mut admin = connect(&db, "it_admin");
    assert_fails(
        admin.batch_execute(&format!(
            "SELECT nile.delete_tenant('{GLOBEX}', purge => true)"
        )),
        "23503",
    );
    assert_eq!(visible(&mut su), "acme-1,acme-2,globex-1");
    assert_eq!(one::<i64>(&mut su, "SELECT count(*) FROM nile.tenants"), 2);
}
