//! Parallel query: the workers of a parallel scan see only the session's tenant.

use super::*;

#[test]
fn parallel_query_sees_only_own_rows() {
    let mut s = Siege::new("parallel_query");
    s.su.batch_execute(&format!(
        "INSERT INTO projects SELECT CASE WHEN g % 2 = 0 THEN '{ACME}'::uuid ELSE '{GLOBEX}'::uuid END, g, 'bulk-' || g
         FROM generate_series(10, 20009) g; ANALYZE projects;"
    ))
    .unwrap();
    let mut c = s.attacker();
    let force = force_parallel_setting(&mut c);
    c.batch_execute(&format!(
        "SET {force} = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
         SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2; SET enable_indexscan = off;
         SET enable_bitmapscan = off;"
    ))
    .unwrap();
    let plan = attempt(
        &mut c,
        "EXPLAIN (ANALYZE, COSTS OFF) SELECT count(*) FROM projects",
    );
    assert!(
        plan.contains("Workers Launched: ") && !plan.contains("Workers Launched: 0"),
        "no worker ran: {plan}"
    );
    assert_eq!(attempt(&mut c, "SELECT count(*) FROM projects"), "10002");
    assert_eq!(
        attempt(
            &mut c,
            &format!("SELECT count(*) FROM projects WHERE tenant_id = '{GLOBEX}'")
        ),
        "0"
    );
}
