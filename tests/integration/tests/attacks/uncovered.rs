//! Objects row-level security does not cover: TRUNCATE, views, materialized views, SECURITY DEFINER functions and
//! COPY; what the attacker gets through them, and what nile.verify() reports of them.

use super::*;

#[test]
fn uncovered_truncate() {
    let mut s = Siege::new("truncate");
    let mut c = s.attacker();
    refused(&mut c, "TRUNCATE projects", "42501");
    s.assert_globex_intact();
    // Postgres applies no policy to TRUNCATE: a grant of it is an error in verify().
    s.su.batch_execute("GRANT TRUNCATE ON projects TO it_attacker")
        .unwrap();
    assert!(s
        .finding("table public.projects%TRUNCATE%")
        .contains("it_attacker"));
}

#[test]
fn uncovered_view_without_security_invoker() {
    let mut s = Siege::new("owner_view");
    // A view owned by the table's owner runs with the owner's rights, and the owner is subject to the policies
    // (FORCE ROW LEVEL SECURITY) under the caller's context: still one tenant.
    s.su.batch_execute(
        "SET ROLE it_atk_owner; CREATE VIEW all_projects AS SELECT * FROM projects; RESET ROLE;
         GRANT SELECT ON all_projects TO it_attacker;",
    )
    .unwrap();
    let mut c = s.attacker();
    assert_eq!(
        attempt(
            &mut c,
            "SELECT string_agg(name, ',' ORDER BY name) FROM all_projects"
        ),
        "acme-1,acme-2"
    );
    assert!(s
        .finding("view public.all_projects%")
        .contains("warning view public.all_projects"));
}

#[test]
fn uncovered_view_owned_by_a_superuser() {
    let mut s = Siege::new("superuser_view");
    // A superuser's view reads with superuser rights, which row-level security exempts: verify() reports it as an
    // error, and the caller's context still narrows nothing there (superusers are exempt by design).
    s.su.batch_execute("CREATE VIEW every_project AS SELECT * FROM projects")
        .unwrap();
    assert!(s
        .finding("view public.every_project%bypasses%")
        .contains("error view public.every_project"));
    // Not granted, it is not readable by the application.
    let mut c = s.attacker();
    refused(&mut c, "SELECT * FROM every_project", "42501");
}

#[test]
fn uncovered_materialized_view() {
    let mut s = Siege::new("matview");
    s.su.batch_execute("CREATE MATERIALIZED VIEW project_names AS SELECT name FROM projects")
        .unwrap();
    assert!(s
        .finding("materialized view public.project_names%")
        .contains("error materialized view"));
    let mut c = s.attacker();
    refused(&mut c, "SELECT * FROM project_names", "42501");
    // Refreshing it as the application only re-materialises what the application can see; it does not own it.
    refused(&mut c, "REFRESH MATERIALIZED VIEW project_names", "42501");
}

#[test]
fn uncovered_security_definer_function() {
    let mut s = Siege::new("security_definer");
    s.su.batch_execute(
        "SET ROLE it_atk_owner;
         CREATE FUNCTION definer_names() RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = public
         AS $$ SELECT string_agg(name, ',' ORDER BY name) FROM projects $$;
         RESET ROLE;",
    )
    .unwrap();
    let mut c = s.attacker();
    assert_eq!(attempt(&mut c, "SELECT definer_names()"), "acme-1,acme-2");
}

#[test]
fn uncovered_copy() {
    let mut s = Siege::new("copy");
    let mut c = s.attacker();
    let mut out = String::new();
    std::io::Read::read_to_string(
        &mut c.copy_out("COPY projects TO STDOUT").unwrap(),
        &mut out,
    )
    .unwrap();
    assert!(!leaks(&out) && out.lines().count() == 2, "{out}");
    let mut out = String::new();
    std::io::Read::read_to_string(
        &mut c
            .copy_out("COPY (SELECT * FROM projects) TO STDOUT")
            .unwrap(),
        &mut out,
    )
    .unwrap();
    assert!(!leaks(&out) && out.lines().count() == 2, "{out}");
    // COPY FROM is refused by Postgres for roles subject to row-level security.
    let copy_in = c.copy_in("COPY projects FROM STDIN");
    assert_fails(copy_in, "0A000");
    s.assert_globex_intact();
}
