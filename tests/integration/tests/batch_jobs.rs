//! `nile.for_each_tenant()` over real sessions: the README's backfill, failures recorded and skipped, isolation of each
//! tenant's run of the statement, an interrupted run resumed exactly where it stopped, a second session refused while
//! a run is alive, and the refusals before anything runs.

use nile_tenancy_integration::*;
use std::time::{Duration, Instant};

/// Ten more tenants after Acme and Globex, in id order: the ids sort after theirs.
fn more_tenants(client: &mut postgres::Client) -> Vec<String> {
    let ids: Vec<String> = (1..=10)
        .map(|i| format!("0c000000-0000-7000-8000-{i:012}"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        client
            .execute(
                "SELECT nile.create_tenant($1, $2::text::uuid)",
                &[&format!("tenant-{}", i + 1), id],
            )
            .unwrap();
    }
    ids
}

/// The tables of the tests that hold a run at a tenant: `hold` (one row, `on_hold` true) and `visits` (a row per
/// tenant visited), readable and writable by it_admin and by a second administrator role, it_admin2.
fn hold_and_visits(su: &mut postgres::Client) {
    ensure_login_role(su, "it_admin2", "");
    su.batch_execute(
        "CREATE TABLE hold (on_hold boolean); INSERT INTO hold VALUES (true);
         CREATE TABLE visits (tenant_id uuid NOT NULL, at timestamptz DEFAULT clock_timestamp());
         GRANT nile_admin TO it_admin2;
         GRANT SELECT ON hold TO it_admin, it_admin2;
         GRANT SELECT, INSERT ON visits TO it_admin, it_admin2;",
    )
    .unwrap();
}

/// The run's (status, tenants_done, tenants_failed, rows_affected).
fn run_state(client: &mut postgres::Client, run_id: i64) -> (String, i32, i32, i64) {
    let row = client
        .query_one(
            "SELECT status, tenants_done, tenants_failed, rows_affected FROM nile.for_each_tenant_runs WHERE id = $1",
            &[&run_id],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

fn latest_run(client: &mut postgres::Client) -> i64 {
    one(client, "SELECT max(id) FROM nile.for_each_tenant_runs")
}

#[test]
fn the_backfill_runs_once_per_active_tenant_and_records_failures() {
    let db = scenario("fet_backfill");
    let mut su = connect(&db, "postgres");
    let others = more_tenants(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE users (tenant_id uuid NOT NULL, id int NOT NULL, created_at timestamptz NOT NULL,
                             last_login_at timestamptz, PRIMARY KEY (tenant_id, id));
         GRANT SELECT, INSERT, UPDATE ON users TO it_app, it_admin;
         BEGIN; SELECT nile.admin_context('test data');
         INSERT INTO users SELECT t.id, g, '2026-01-01', NULL FROM nile.tenants t, generate_series(1, 4) g;
         COMMIT;
         -- tenant 3 refuses the backfill; tenant 4 is inactive and is skipped
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.tenant_id = '{t3}' THEN RAISE EXCEPTION 'frozen account' USING HINT = 'ask support'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION refuse();
         SELECT nile.deactivate_tenant('{t4}');",
        t3 = others[2],
        t4 = others[3],
    ))
    .unwrap();

    let mut admin = connect(&db, "it_admin");
    admin
        .batch_execute(
            "CALL nile.for_each_tenant(
                 'UPDATE users SET last_login_at = created_at WHERE last_login_at IS NULL', batch_size => 5)",
        )
        .unwrap();
    let run = latest_run(&mut admin);
    // 12 tenants, 11 active; 10 succeed with 4 rows each.
    assert_eq!(run_state(&mut admin, run), ("finished".into(), 11, 1, 40));
    let failure = admin
        .query_one(
            "SELECT tenant_id::text, sqlstate, message, hint FROM nile.for_each_tenant_failures WHERE run_id = $1",
            &[&run],
        )
        .unwrap();
    assert_eq!(failure.get::<_, String>(0), others[2]);
    assert_eq!(failure.get::<_, String>(1), "P0001");
    assert_eq!(failure.get::<_, String>(2), "frozen account");
    assert_eq!(failure.get::<_, String>(3), "ask support");
    // The failures' texts can quote a tenant's values: nile_admin only. A monitoring role sees the runs, not them
    // (issue 17: pg_monitor could read them).
    ensure_login_role(&mut su, "it_monitor", "");
    su.batch_execute("GRANT pg_monitor TO it_monitor").unwrap();
    let mut monitor = connect(&db, "it_monitor");
    assert_fails(
        monitor.batch_execute("SELECT * FROM nile.for_each_tenant_failures"),
        "42501",
    );
    assert_eq!(
        one::<i64>(
            &mut monitor,
            "SELECT count(*) FROM nile.for_each_tenant_runs"
        ),
        1
    );
    let left: String = one(
        &mut su,
        "SELECT string_agg(DISTINCT tenant_id::text, ',' ORDER BY tenant_id::text) FROM users WHERE last_login_at IS NULL",
    );
    assert_eq!(left, format!("{},{}", others[2], others[3]));
    // The session is left outside any tenant context.
    assert_eq!(
        one::<Option<String>>(&mut admin, "SELECT nile.current_tenant()::text"),
        None
    );
}

#[test]
fn each_tenant_run_of_the_statement_sees_and_writes_only_that_tenant() {
    let db = scenario("fet_isolation");
    let mut admin = connect(&db, "it_admin");
    // Appends the count of rows the statement can see: each tenant sees only its own.
    admin
        .batch_execute(
            "CALL nile.for_each_tenant('UPDATE projects SET name = name || ''/'' || (SELECT count(*) FROM projects)')",
        )
        .unwrap();
    let mut su = connect(&db, "postgres");
    assert_eq!(
        one::<String>(
            &mut su,
            "SELECT string_agg(name, ',' ORDER BY name) FROM projects"
        ),
        "acme-1/2,acme-2/2,globex-1/1"
    );
    // Writing Acme's row works under Acme and fails under Globex: recorded, and the run goes on.
    admin
        .batch_execute(&format!(
            "CALL nile.for_each_tenant('INSERT INTO projects VALUES (''{ACME}'', 99, ''acme-99'')')"
        ))
        .unwrap();
    let run = latest_run(&mut admin);
    assert_eq!(run_state(&mut admin, run), ("finished".into(), 2, 1, 1));
    assert_eq!(
        one::<String>(
            &mut admin,
            &format!("SELECT tenant_id::text || ' ' || sqlstate FROM nile.for_each_tenant_failures WHERE run_id = {run}")
        ),
        format!("{GLOBEX} NT005")
    );
    assert_eq!(
        one::<String>(
            &mut su,
            "SELECT string_agg(tenant_id::text, ',') FROM projects WHERE id = 99"
        ),
        ACME
    );
    // A statement that fails for every tenant of the first batch is wrong itself: the run stops, keeping nothing.
    let error = assert_fails(
        admin.batch_execute("CALL nile.for_each_tenant('UPDATE projects SET nope = 1')"),
        "42703",
    );
    assert!(
        error.contains("failed for each of the first 2 tenants"),
        "{error}"
    );
    let stopped = latest_run(&mut su);
    assert_eq!(run_state(&mut su, stopped), ("stopped".into(), 0, 0, 0));
}

#[test]
fn an_interrupted_run_resumes_after_its_last_committed_batch() {
    let db = scenario("fet_resume");
    let mut su = connect(&db, "postgres");
    let others = more_tenants(&mut su);
    let slow = &others[2]; // the 5th tenant in id order: in the second batch of 3
    hold_and_visits(&mut su);
    let statement = format!(
        "WITH pause AS (SELECT pg_sleep(CASE WHEN nile.current_tenant() = ''{slow}'' AND (SELECT on_hold FROM hold) THEN 60 ELSE 0 END))
         INSERT INTO visits (tenant_id) SELECT nile.current_tenant() FROM pause"
    );
    let call = format!("CALL nile.for_each_tenant('{statement}', batch_size => 3)");

    let mut runner = connect(&db, "it_admin");
    let runner_pid: i32 = one(&mut runner, "SELECT pg_backend_pid()");
    let background_call = call.clone();
    let running = std::thread::spawn(move || {
        let result = outcome(runner.batch_execute(&background_call));
        (result, runner)
    });

    // Wait until the first batch is committed and the run sleeps in the second. The other administrator is another
    // role: pg_stat_activity hides the runner's details from it, the run's lock does not.
    let mut admin = connect(&db, "it_admin2");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: Option<i32> = one(
            &mut admin,
            "SELECT max(tenants_done) FROM nile.for_each_tenant_runs WHERE status = 'running'",
        );
        let sleeping: bool = one(
            &mut su,
            &format!("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {runner_pid} AND wait_event = 'PgSleep')"),
        );
        if done == Some(3) && sleeping {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run never reached its second batch"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second session cannot take over a run that is alive.
    let refused = assert_fails(admin.batch_execute(&call), "55006");
    assert!(refused.contains("still running"), "{refused}");

    let cancelled: bool = one(&mut su, &format!("SELECT pg_cancel_backend({runner_pid})"));
    assert!(cancelled);
    let (result, runner) = running.join().unwrap();
    assert!(
        result.starts_with("57014"),
        "the CALL is cancelled: {result}"
    );
    // The cancelled run stays with its session while that session lives.
    let refused = assert_fails(admin.batch_execute(&call), "55006");
    assert!(refused.contains(&runner_pid.to_string()), "{refused}");
    drop(runner);
    let deadline = Instant::now() + Duration::from_secs(10);
    while one::<bool>(
        &mut su,
        &format!("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {runner_pid})"),
    ) {
        assert!(
            Instant::now() < deadline,
            "the runner's backend never exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = latest_run(&mut admin);
    assert_eq!(
        run_state(&mut admin, run),
        ("running".into(), 3, 0, 3),
        "progress is the committed batch"
    );
    assert_eq!(
        one::<i64>(&mut su, "SELECT count(*) FROM visits"),
        3,
        "the interrupted batch left nothing"
    );

    su.batch_execute("UPDATE hold SET on_hold = false").unwrap();
    admin.batch_execute(&call).unwrap();
    assert_eq!(latest_run(&mut admin), run, "the same run went on");
    assert_eq!(run_state(&mut admin, run), ("finished".into(), 12, 0, 12));
    let (visits, tenants): (i64, i64) = {
        let row = su
            .query_one(
                "SELECT count(*), count(DISTINCT tenant_id) FROM visits",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((visits, tenants), (12, 12), "every tenant exactly once");
}

#[test]
fn for_each_tenant_refuses_before_running_anything() {
    let db = scenario("fet_refusals");
    let mut admin = connect(&db, "it_admin");
    let mut app = connect(&db, "it_app");
    for (user, call, sqlstate) in [
        ("it_app", "CALL nile.for_each_tenant('SELECT 1')", "42501"),
        ("it_admin", "CALL nile.for_each_tenant('  ')", "22023"),
        (
            "it_admin",
            "CALL nile.for_each_tenant('SELECT 1', 0)",
            "22023",
        ),
        ("it_admin", "CALL nile.for_each_tenant(NULL)", "22023"),
        (
            "it_admin",
            "BEGIN; CALL nile.for_each_tenant('SELECT 1')",
            "25001",
        ),
    ] {
        let client = if user == "it_app" {
            &mut app
        } else {
            &mut admin
        };
        assert_fails(client.batch_execute(call), sqlstate);
        client.batch_execute("ROLLBACK").ok();
    }
    admin
        .batch_execute(&format!(
            "SELECT nile.set_tenant('{ACME}', is_local => false)"
        ))
        .unwrap();
    assert_fails(
        admin.batch_execute("CALL nile.for_each_tenant('SELECT 1')"),
        "55000",
    );
    admin.batch_execute("SELECT nile.clear_tenant()").unwrap();
    assert_eq!(
        one::<i64>(&mut admin, "SELECT count(*) FROM nile.for_each_tenant_runs"),
        0
    );
}

/// Issue 17, finding 9: the claim on a run was an advisory lock on a predictable key (a constant and the run's id), so
/// any role could take it first; the run then went on without its lock, and once that role let go a second
/// administrator's session resumed the same run while the first was still in it (the statement ran twice for some
/// tenants). Now the key is the run's own random `claim_key`, taken in the transaction that creates the run, and a run
/// that cannot take it does not start.
#[test]
fn a_run_claim_cannot_be_taken_first_by_another_role() {
    let db = scenario("fet_claim");
    let mut su = connect(&db, "postgres");
    let others = more_tenants(&mut su);
    let slow = &others[2];
    hold_and_visits(&mut su);
    // The statement waits at the slow tenant while `hold` says so.
    let statement = format!(
        "INSERT INTO visits (tenant_id) SELECT nile.current_tenant() FROM (SELECT nile_test_wait(nile.current_tenant() = ''{slow}'')) w"
    );
    su.batch_execute(
        "CREATE FUNCTION public.nile_test_wait(slow boolean) RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
             WHILE slow AND (SELECT on_hold FROM hold) LOOP PERFORM pg_sleep(0.05); END LOOP;
         END $$;
         GRANT EXECUTE ON FUNCTION public.nile_test_wait(boolean) TO it_admin, it_admin2;",
    )
    .unwrap();
    let call = format!("CALL nile.for_each_tenant('{statement}', batch_size => 3)");

    // A role with no privileges at all takes the keys the claims of the first runs used to have.
    let mut squatter = connect(&db, "it_app");
    squatter
        .batch_execute(
            "SELECT pg_advisory_lock(hashtext('nile.for_each_tenant') & 2147483647, id) FROM generate_series(1, 5) id",
        )
        .unwrap();

    let mut runner = connect(&db, "it_admin");
    let runner_pid: i32 = one(&mut runner, "SELECT pg_backend_pid()");
    let background_call = call.clone();
    let running = std::thread::spawn(move || outcome(runner.batch_execute(&background_call)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: bool = one(
            &mut su,
            &format!("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {runner_pid} AND wait_event = 'PgSleep')"),
        );
        if waiting {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run never reached the slow tenant"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    squatter
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .unwrap();

    // Another administrator cannot resume the run while its session is in it.
    let mut admin2 = connect(&db, "it_admin2");
    // (Before the fix it resumed the run and waited at the slow tenant too: the timeout ends that wait.)
    admin2
        .batch_execute("SET statement_timeout = '5s'")
        .unwrap();
    let refused = assert_fails(admin2.batch_execute(&call), "55006");
    assert!(refused.contains("still running"), "{refused}");

    su.batch_execute("UPDATE hold SET on_hold = false").unwrap();
    let result = running.join().unwrap();
    assert_eq!(result, "ok", "the run finishes");
    let (visits, tenants): (i64, i64) = {
        let row = su
            .query_one(
                "SELECT count(*), count(DISTINCT tenant_id) FROM visits",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((visits, tenants), (12, 12), "every tenant exactly once");
    // pg_monitor sees the runs, not their claim keys.
    ensure_login_role(&mut su, "it_monitor", "");
    su.batch_execute("GRANT pg_monitor TO it_monitor").unwrap();
    let mut monitor = connect(&db, "it_monitor");
    assert_fails(
        monitor.batch_execute("SELECT claim_key FROM nile.for_each_tenant_runs"),
        "42501",
    );
}

/// Issue 17 (review of finding 9): a start was serialized by an advisory lock on a key made of the statement, which any
/// role that can guess the statement (or read it, as pg_monitor reads the runs) could take and keep, so that every
/// administrator's `CALL` of it waited forever. Starts now take a lock on the runs table, which needs UPDATE on it.
#[test]
fn a_start_cannot_be_held_up_by_another_role() {
    let db = scenario("fet_start_lock");
    let mut squatter = connect(&db, "it_app");
    squatter
        .batch_execute(
            "SELECT pg_advisory_lock(hashtext('nile.for_each_tenant'), hashtext('SELECT 1'))",
        )
        .unwrap();
    assert_fails(
        squatter.batch_execute(
            "BEGIN; LOCK TABLE nile.for_each_tenant_runs IN SHARE ROW EXCLUSIVE MODE",
        ),
        "42501",
    );
    squatter.batch_execute("ROLLBACK").unwrap();
    let mut admin = connect(&db, "it_admin");
    admin.batch_execute("SET statement_timeout = '5s'").unwrap();
    admin
        .batch_execute("CALL nile.for_each_tenant('SELECT 1')")
        .unwrap();
    let (status, done): (String, i32) = {
        let row = admin
            .query_one(
                "SELECT status, tenants_done FROM nile.for_each_tenant_runs ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((status.as_str(), done), ("finished", 2));
}
