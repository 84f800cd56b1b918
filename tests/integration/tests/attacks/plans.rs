//! Plan caching: a plan made in one tenant's context (a generic plan, a protocol-level prepared statement, a
//! PL/pgSQL function's cached plan) returns no rows outside it.

use super::*;

#[test]
fn plans_prepared_statement_under_force_generic_plan() {
    let s = Siege::new("generic_plan");
    let mut c = s.login("it_app");
    c.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE names AS SELECT string_agg(name, ',' ORDER BY name) FROM projects;
         PREPARE by_tenant(uuid) AS SELECT count(*) FROM projects WHERE tenant_id = $1;",
    )
    .unwrap();
    for _ in 0..6 {
        c.batch_execute(&format!("BEGIN; SELECT nile.set_tenant('{ACME}')"))
            .unwrap();
        assert_eq!(attempt(&mut c, "EXECUTE names"), "acme-1,acme-2");
        assert_eq!(
            attempt(&mut c, &format!("EXECUTE by_tenant('{GLOBEX}')")),
            "0"
        );
        c.batch_execute("COMMIT").unwrap();
    }
    // The same generic plan after the context ended: nothing.
    refused(&mut c, "EXECUTE names", "NT001");
}

#[test]
fn plans_protocol_level_prepared_statement_after_the_transaction() {
    let s = Siege::new("protocol_prepared");
    let mut c = s.login("it_app");
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT nile.set_tenant($1::text::uuid)", &[&ACME])
        .unwrap();
    let statement = tx.prepare("SELECT name FROM projects").unwrap();
    assert_eq!(tx.query(&statement, &[]).unwrap().len(), 2);
    tx.commit().unwrap();
    assert_fails(c.query(&statement, &[]), "NT001");
}

#[test]
fn plans_plpgsql_cached_plan() {
    let mut s = Siege::new("plpgsql_plan");
    s.su.batch_execute(
        "CREATE FUNCTION project_names() RETURNS text LANGUAGE plpgsql AS $$
         BEGIN RETURN (SELECT string_agg(name, ',' ORDER BY name) FROM projects); END $$;",
    )
    .unwrap();
    let mut c = s.attacker();
    for _ in 0..6 {
        assert_eq!(attempt(&mut c, "SELECT project_names()"), "acme-1,acme-2");
    }
    c.batch_execute("RESET ALL").ok();
    let after = attempt(&mut c, "SELECT project_names()");
    assert!(
        after == "acme-1,acme-2" || after.starts_with("NT001"),
        "{after}"
    );
}
