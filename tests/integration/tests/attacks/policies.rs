//! Policy composition: a permissive policy the table's owner adds, and the statements the tenant policies must hold
//! for (UPDATE of the tenant column, INSERT, INSERT ... SELECT, ON CONFLICT, MERGE, RETURNING, CTEs and sublinks,
//! WHERE CURRENT OF).

use super::*;

#[test]
fn policy_extra_permissive_policy() {
    let mut s = Siege::new("extra_permissive");
    // The owner adds a policy that admits every row: nile_tenancy applies the tenant policies as restrictive too.
    s.su.batch_execute("SET ROLE it_atk_owner; CREATE POLICY open_all ON projects USING (true) WITH CHECK (true); RESET ROLE")
        .unwrap();
    let mut c = s.attacker();
    assert_sees_only_acme(&mut c);
    refused(
        &mut c,
        &format!("INSERT INTO projects VALUES ('{GLOBEX}', 9, 'planted')"),
        "NT005",
    );
    attempt(
        &mut c,
        &format!("UPDATE projects SET name = 'pwned' WHERE tenant_id = '{GLOBEX}'"),
    );
    s.assert_globex_intact();
    assert!(s
        .finding("policy open_all%")
        .contains("warning policy open_all"));
}

#[test]
fn policy_update_set_tenant_id() {
    let mut s = Siege::new("update_tenant_id");
    let mut c = s.attacker();
    refused(
        &mut c,
        &format!("UPDATE projects SET tenant_id = '{GLOBEX}' WHERE id = 1"),
        "NT005",
    );
    assert_eq!(attempt(&mut c, &format!("WITH u AS (UPDATE projects SET name = 'pwned' WHERE tenant_id = '{GLOBEX}' RETURNING 1) SELECT count(*) FROM u")), "0");
    assert_eq!(attempt(&mut c, &format!("WITH d AS (DELETE FROM projects WHERE tenant_id = '{GLOBEX}' RETURNING 1) SELECT count(*) FROM d")), "0");
    s.assert_globex_intact();
}

#[test]
fn policy_insert_for_another_tenant() {
    let mut s = Siege::new("insert_other");
    let mut c = s.attacker();
    refused(
        &mut c,
        &format!("INSERT INTO projects VALUES ('{GLOBEX}', 9, 'planted')"),
        "NT005",
    );
    refused(&mut c, &format!("INSERT INTO projects (tenant_id, id, name) SELECT '{GLOBEX}', id + 100, name FROM projects"), "NT005");
    s.assert_globex_intact();
}

#[test]
fn policy_insert_select_copies_only_own_rows() {
    let mut s = Siege::new("insert_select");
    let mut c = s.attacker();
    c.batch_execute("CREATE TABLE loot (name text); INSERT INTO loot SELECT name FROM projects")
        .unwrap();
    assert_eq!(
        attempt(
            &mut c,
            "SELECT string_agg(name, ',' ORDER BY name) FROM loot"
        ),
        "acme-1,acme-2"
    );
}

#[test]
fn policy_on_conflict_do_update() {
    let mut s = Siege::new("on_conflict");
    // A table whose unique key lacks the tenant column (verify() warns about it): the conflicting row is Globex's.
    s.su.batch_execute(&format!(
        "CREATE TABLE members (tenant_id uuid NOT NULL, email text NOT NULL UNIQUE, role text NOT NULL);
         GRANT SELECT, INSERT, UPDATE ON members TO it_attacker;
         INSERT INTO members VALUES ('{GLOBEX}', 'ceo@globex.example', 'owner');"
    ))
    .unwrap();
    let mut c = s.attacker();
    refused(
        &mut c,
        "INSERT INTO members (email, role) VALUES ('ceo@globex.example', 'attacker')
         ON CONFLICT (email) DO UPDATE SET role = 'pwned', tenant_id = EXCLUDED.tenant_id RETURNING *",
        "42501",
    );
    let role = one::<String>(
        &mut s.su,
        "SELECT role FROM members WHERE email = 'ceo@globex.example'",
    );
    assert_eq!(role, "owner");
}

#[test]
fn policy_merge() {
    let mut s = Siege::new("merge");
    let mut c = s.attacker();
    if server_version(&mut c) < 150000 {
        return; // MERGE arrived in PostgreSQL 15.
    }
    // Globex's row is invisible, so it never matches; the NOT MATCHED insert of a Globex row is refused.
    refused(
        &mut c,
        &format!(
            "MERGE INTO projects p USING (VALUES ('{GLOBEX}'::uuid, 1::bigint, 'pwned')) AS s(t, i, n)
             ON p.tenant_id = s.t AND p.id = s.i
             WHEN MATCHED THEN UPDATE SET name = s.n
             WHEN NOT MATCHED THEN INSERT VALUES (s.t, s.i, s.n)"
        ),
        "NT005",
    );
    c.batch_execute(&format!(
        "MERGE INTO projects p USING (VALUES ('{GLOBEX}'::uuid, 1::bigint)) AS s(t, i)
         ON p.id = s.i WHEN MATCHED THEN DELETE"
    ))
    .unwrap();
    s.assert_globex_intact();
}

#[test]
fn policy_returning() {
    let mut s = Siege::new("returning");
    let mut c = s.attacker();
    assert_eq!(
        attempt(&mut c, "UPDATE projects SET name = name RETURNING name")
            .split('|')
            .count(),
        2
    );
    attempt(
        &mut c,
        "DELETE FROM projects WHERE name LIKE 'globex%' RETURNING *",
    );
    attempt(&mut c, "INSERT INTO projects (id, name) VALUES (5, 'acme-5') RETURNING *, (SELECT string_agg(name, ',') FROM projects)");
    s.assert_globex_intact();
}

#[test]
fn policy_ctes_and_sublinks() {
    let mut s = Siege::new("ctes_sublinks");
    let mut c = s.attacker();
    let got = attempt(
        &mut c,
        &format!(
            "WITH everything AS (SELECT * FROM projects)
             SELECT (SELECT count(*) FROM everything),
                    EXISTS (SELECT 1 FROM projects WHERE name = '{SECRET}'),
                    (SELECT count(*) FROM projects WHERE tenant_id = '{GLOBEX}'),
                    ARRAY(SELECT name FROM projects ORDER BY name),
                    (SELECT count(*) FROM projects a JOIN LATERAL (SELECT * FROM projects b WHERE b.id = a.id) l ON true)"
        ),
    );
    assert_eq!(got, "2,f,0,{acme-1,acme-2},2");
    let recursive = attempt(
        &mut c,
        "WITH RECURSIVE r(n) AS (SELECT count(*) FROM projects UNION ALL SELECT n - 1 FROM r WHERE n > 0) SELECT max(n) FROM r",
    );
    assert_eq!(recursive, "2");
}

#[test]
fn policy_where_current_of() {
    let mut s = Siege::new("current_of");
    let mut c = s.attacker();
    c.batch_execute(
        "BEGIN; DECLARE cur CURSOR FOR SELECT * FROM projects ORDER BY id, name FOR UPDATE",
    )
    .unwrap();
    assert_eq!(
        attempt(&mut c, "FETCH 1 FROM cur"),
        format!("{ACME},1,acme-1")
    );
    refused(
        &mut c,
        &format!("UPDATE projects SET tenant_id = '{GLOBEX}' WHERE CURRENT OF cur"),
        "NT005",
    );
    s.assert_globex_intact();
}

#[test]
fn policy_extra_permissive_policy_after_plans_are_cached() {
    // With no permissive policy of its own, a table's plans are built without the restrictive copies of the tenant
    // policies (they would change nothing). A permissive policy the owner adds afterwards must reach the plans
    // already cached: they are planned again, with the copies.
    let mut s = Siege::new("extra_permissive_later");
    let mut c = s.attacker();
    c.batch_execute(&format!(
        "PREPARE names AS SELECT string_agg(name, ',' ORDER BY name) FROM projects;
         PREPARE plant AS INSERT INTO projects VALUES ('{GLOBEX}', 9, 'planted');
         PREPARE rename AS UPDATE projects SET name = 'pwned' WHERE tenant_id = '{GLOBEX}';"
    ))
    .unwrap();
    for _ in 0..6 {
        assert_eq!(attempt(&mut c, "EXECUTE names"), "acme-1,acme-2");
        refused(&mut c, "EXECUTE plant", "NT005");
        attempt(&mut c, "EXECUTE rename");
    }
    s.su.batch_execute("SET ROLE it_atk_owner; CREATE POLICY open_all ON projects USING (true) WITH CHECK (true); RESET ROLE")
        .unwrap();
    assert_eq!(attempt(&mut c, "EXECUTE names"), "acme-1,acme-2");
    refused(&mut c, "EXECUTE plant", "NT005");
    attempt(&mut c, "EXECUTE rename");
    assert_sees_only_acme(&mut c);
    s.assert_globex_intact();
}

#[test]
fn policy_named_like_a_generated_one_does_not_widen() {
    // A policy named nile_tenant_<anything> is not one of the four generated policies: it must not pass for one, or
    // the restrictive copies that neutralise other permissive policies would be left out and it would open every
    // tenant's rows.
    let mut s = Siege::new("lookalike_policy");
    let mut c = s.attacker();
    c.batch_execute("PREPARE names AS SELECT string_agg(name, ',' ORDER BY name) FROM projects")
        .unwrap();
    assert_eq!(attempt(&mut c, "EXECUTE names"), "acme-1,acme-2");
    s.su.batch_execute(
        "SET ROLE it_atk_owner;
         CREATE POLICY nile_tenant_extra ON projects AS PERMISSIVE FOR ALL TO PUBLIC USING (true) WITH CHECK (true);
         RESET ROLE",
    )
    .unwrap();
    assert_eq!(attempt(&mut c, "EXECUTE names"), "acme-1,acme-2");
    assert_sees_only_acme(&mut c);
    refused(
        &mut c,
        &format!("INSERT INTO projects VALUES ('{GLOBEX}', 9, 'planted')"),
        "NT005",
    );
    s.su.batch_execute("SET ROLE it_atk_owner; ALTER POLICY nile_tenant_extra ON projects RENAME TO nile_tenant_x2; RESET ROLE")
        .unwrap();
    assert_sees_only_acme(&mut c);
    s.assert_globex_intact();
}
