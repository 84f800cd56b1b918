//! Privilege paths: the table's owner, a member of the owner's role, a BYPASSRLS role and `row_security = off`
//! get no other tenant's rows and cannot switch the protection off.

use super::*;

#[test]
fn privilege_table_owner() {
    let mut s = Siege::new("table_owner");
    let mut owner = s.login("it_atk_owner");
    // FORCE ROW LEVEL SECURITY: no context, no rows, even for the owner; and it cannot switch the protection off.
    refused(&mut owner, "SELECT * FROM projects", "NT001");
    for ddl in [
        "ALTER TABLE projects DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE projects NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY nile_tenant_select ON projects",
        "ALTER POLICY nile_tenant_select ON projects USING (true)",
    ] {
        let got = outcome(owner.batch_execute(ddl));
        assert!(
            got.starts_with("42501") || got.starts_with("55000") || got.starts_with("2BP01"),
            "{ddl}: {got}"
        );
    }
    refused(
        &mut owner,
        &format!("INSERT INTO projects VALUES ('{GLOBEX}', 9, 'planted')"),
        "NT001",
    );
    s.assert_globex_intact();
}

#[test]
fn privilege_member_of_the_owner_role() {
    let mut s = Siege::new("owner_member");
    s.su.batch_execute("GRANT it_atk_owner TO it_attacker")
        .unwrap();
    let mut c = s.attacker();
    c.batch_execute("SET ROLE it_atk_owner").unwrap();
    assert_sees_only_acme(&mut c);
    let got = outcome(c.batch_execute("ALTER TABLE projects DISABLE ROW LEVEL SECURITY"));
    assert!(!got.starts_with("ok"), "{got}");
    s.su.batch_execute("REVOKE it_atk_owner FROM it_attacker")
        .unwrap();
}

#[test]
fn privilege_bypassrls() {
    let mut s = Siege::new("bypassrls");
    // Postgres exempts BYPASSRLS roles from row-level security. nile_tenancy refuses them a tenant context (so an
    // application wrongly run as such a role fails instead of silently seeing everyone), and verify() names them.
    let mut c = s.login("it_bypass");
    refused(
        &mut c,
        &format!("BEGIN; SELECT nile.set_tenant('{ACME}')"),
        "42501",
    );
    refused(
        &mut c,
        &format!("SELECT nile.set_tenant('{ACME}', is_local => false)"),
        "42501",
    );
    assert!(s
        .finding("role it_bypass%BYPASSRLS%")
        .contains("warning role it_bypass"));
}

#[test]
fn privilege_row_security_off() {
    let mut s = Siege::new("row_security_off");
    let mut c = s.attacker();
    c.batch_execute("SET row_security = off").unwrap();
    refused(&mut c, "SELECT * FROM projects", "42501");
    refused(&mut c, "UPDATE projects SET name = 'x'", "42501");
    s.assert_globex_intact();
}
