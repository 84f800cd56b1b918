//! Leaky functions, operators and statistics: the attacker's own code, run by the planner, and the planner's
//! statistics reveal nothing of the rows the policies hide.

use super::*;

#[test]
fn leaky_function() {
    let mut s = Siege::new("leaky_function");
    let mut c = s.attacker();
    c.batch_execute(
        "CREATE FUNCTION f_leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001
         AS $$ BEGIN RAISE NOTICE 'f_leak => %', $1; RETURN true; END $$;",
    )
    .unwrap();
    attempt(&mut c, "SELECT * FROM projects WHERE f_leak(name)");
    attempt(
        &mut c,
        "SELECT * FROM projects WHERE f_leak(name) AND id = 1",
    );
    attempt(
        &mut c,
        "SELECT count(*) FROM projects GROUP BY name HAVING f_leak(name)",
    );
    s.assert_no_leak_in_notices();
    assert!(
        s.notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("acme-1")),
        "the function ran"
    );
}

#[test]
fn leaky_operator() {
    let mut s = Siege::new("leaky_operator");
    let mut c = s.attacker();
    c.batch_execute(
        "CREATE FUNCTION leak_eq(text, text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001
         AS $$ BEGIN RAISE NOTICE 'leak_eq => %', $1; RETURN $1 = $2; END $$;
         CREATE OPERATOR <<< (LEFTARG = text, RIGHTARG = text, FUNCTION = leak_eq, RESTRICT = eqsel);",
    )
    .unwrap();
    attempt(
        &mut c,
        &format!("SELECT * FROM projects WHERE name <<< '{SECRET}'"),
    );
    s.assert_no_leak_in_notices();
}

#[test]
fn leaky_planner_statistics() {
    let mut s = Siege::new("pg_stats");
    s.su.batch_execute("ANALYZE projects").unwrap();
    let mut c = s.attacker();
    assert_eq!(
        attempt(
            &mut c,
            "SELECT count(*) FROM pg_stats WHERE tablename = 'projects'"
        ),
        "0"
    );
    refused(&mut c, "SELECT * FROM pg_statistic", "42501");
    assert_eq!(
        attempt(
            &mut c,
            "SELECT count(*) FROM pg_stats_ext WHERE tablename = 'projects'"
        ),
        "0"
    );
}
