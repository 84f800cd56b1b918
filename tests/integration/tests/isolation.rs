//! Two tenants working at the same time over separate connections: every cross-tenant read or write is blocked,
//! whatever role or statement shape the session uses.

use nile_tenancy_integration::*;

#[test]
fn concurrent_sessions_each_see_and_change_only_their_tenant() {
    let db = scenario("concurrent");
    let mut acme = connect(&db, "it_app");
    let mut globex = connect(&db, "it_app");
    let mut a = acme.transaction().unwrap();
    let mut g = globex.transaction().unwrap();
    a.execute("SELECT nile.set_tenant($1::text::uuid)", &[&ACME])
        .unwrap();
    g.execute("SELECT nile.set_tenant($1::text::uuid)", &[&GLOBEX])
        .unwrap();
    // Interleaved writes in two open transactions.
    a.execute("INSERT INTO projects (id, name) VALUES (3, 'acme-3')", &[])
        .unwrap();
    g.execute(
        "INSERT INTO projects (id, name) VALUES (3, 'globex-3')",
        &[],
    )
    .unwrap();
    assert_eq!(
        one::<Option<String>>(
            &mut a,
            "SELECT string_agg(name, ',' ORDER BY name) FROM projects"
        )
        .unwrap(),
        "acme-1,acme-2,acme-3"
    );
    assert_eq!(
        one::<Option<String>>(
            &mut g,
            "SELECT string_agg(name, ',' ORDER BY name) FROM projects"
        )
        .unwrap(),
        "globex-1,globex-3"
    );
    a.commit().unwrap();
    g.commit().unwrap();

    // Every cross-tenant attempt from Globex's session.
    let mut s = connect(&db, "it_app");
    s.batch_execute(&format!(
        "SELECT nile.set_tenant('{GLOBEX}', is_local => false)"
    ))
    .unwrap();
    for (sql, expected) in [
        (format!("INSERT INTO projects VALUES ('{ACME}', 9, 'planted')"), "NT005"),
        (format!("UPDATE projects SET tenant_id = '{ACME}' WHERE id = 1"), "NT005"),
        (format!("INSERT INTO projects VALUES ('{GLOBEX}', 1, 'x') ON CONFLICT (tenant_id, id) DO UPDATE SET tenant_id = '{ACME}'"), "NT005"),
        (format!("INSERT INTO projects SELECT '{ACME}', id + 100, name FROM projects"), "NT005"),
        (format!("WITH moved AS (UPDATE projects SET tenant_id = '{ACME}' RETURNING *) SELECT count(*) FROM moved"), "NT005"),
    ] {
        assert_fails(s.execute(sql.as_str(), &[]), expected);
    }
    for sql in [
        format!("UPDATE projects SET name = 'hijacked' WHERE tenant_id = '{ACME}'"),
        format!("DELETE FROM projects WHERE tenant_id = '{ACME}'"),
        "DELETE FROM projects WHERE name LIKE 'acme%'".to_string(),
        format!("SELECT * FROM projects WHERE tenant_id = '{ACME}'"),
        "SELECT * FROM projects WHERE name = 'acme-1' OR true AND name LIKE 'acme%'".to_string(),
        format!("SELECT * FROM projects p WHERE EXISTS (SELECT 1 FROM projects q WHERE q.tenant_id = '{ACME}')"),
        "SELECT * FROM nile.tenants WHERE name = 'Acme'".to_string(),
    ] {
        let n = s.execute(sql.as_str(), &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(n, 0, "{sql} reached another tenant's rows");
    }
    let mut su = connect(&db, "postgres");
    assert_eq!(
        visible(&mut su),
        "acme-1,acme-2,acme-3,globex-1,globex-3",
        "nothing of Acme's changed"
    );
}

#[test]
fn table_owner_is_isolated_too_and_bypassrls_is_the_documented_exception() {
    let db = scenario("owner");
    let mut su = connect(&db, "postgres");
    ensure_login_role(&mut su, "it_owner", "");
    ensure_login_role(&mut su, "it_bypass", "BYPASSRLS");
    su.batch_execute(
        "GRANT nile_app TO it_owner;
         ALTER TABLE projects OWNER TO it_owner;
         GRANT SELECT ON projects TO it_bypass;",
    )
    .unwrap();
    // FORCE ROW LEVEL SECURITY: the owner is subject to the policies like everyone else.
    let mut owner = connect(&db, "it_owner");
    assert_fails(owner.query("SELECT * FROM projects", &[]), "NT001");
    owner
        .batch_execute(&format!(
            "SELECT nile.set_tenant('{ACME}', is_local => false)"
        ))
        .unwrap();
    assert_eq!(visible(&mut owner), "acme-1,acme-2");
    // A role with BYPASSRLS sees everything: README "Limits" says to give it to no application role.
    let mut bypass = connect(&db, "it_bypass");
    assert_eq!(visible(&mut bypass), "acme-1,acme-2,globex-1");
    // row_security = off does not help a normal role: Postgres refuses the query instead of bypassing.
    let mut app = connect(&db, "it_app");
    app.batch_execute(&format!(
        "SET row_security = off; SELECT nile.set_tenant('{ACME}', is_local => false)"
    ))
    .unwrap();
    assert_fails(app.query("SELECT * FROM projects", &[]), "42501");
}

#[test]
fn schema_change_applies_to_all_tenants_and_keeps_isolation() {
    let db = scenario("schema_change");
    let mut su = connect(&db, "postgres");
    su.batch_execute("ALTER TABLE projects ADD COLUMN last_login_at timestamptz DEFAULT NULL")
        .unwrap();
    let mut app = connect(&db, "it_app");
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT nile.set_tenant($1::text::uuid)", &[&ACME])
        .unwrap();
    let backfilled = tx
        .execute(
            "UPDATE projects SET last_login_at = now() WHERE last_login_at IS NULL",
            &[],
        )
        .unwrap();
    assert_eq!(
        backfilled, 2,
        "the backfill touches the tenant's own rows only"
    );
    tx.commit().unwrap();
    assert_eq!(
        one::<i64>(
            &mut su,
            "SELECT count(*) FROM projects WHERE last_login_at IS NOT NULL"
        ),
        2
    );
    assert_eq!(one::<i64>(&mut su, &format!("SELECT count(*) FROM projects WHERE last_login_at IS NOT NULL AND tenant_id <> '{ACME}'")), 0);
    assert_eq!(one::<i64>(&mut su, "SELECT count(*) FROM pg_policy WHERE polrelid = 'projects'::regclass AND polname LIKE 'nile_tenant_%'"), 4);
    let mut g = connect(&db, "it_app");
    g.batch_execute(&format!(
        "SELECT nile.set_tenant('{GLOBEX}', is_local => false)"
    ))
    .unwrap();
    assert_eq!(
        one::<i64>(
            &mut g,
            "SELECT count(*) FROM projects WHERE last_login_at IS NOT NULL"
        ),
        0
    );
}
