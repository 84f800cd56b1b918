//! Tenancy that follows the schema, over real connections: what DDL in one session does to the isolation another
//! session sees, attempts by a table owner to switch isolation off, and pg_dump / pg_restore round trips.

use nile_tenancy_integration::*;
use std::path::PathBuf;
use std::process::Command;

fn bin(tool: &str) -> PathBuf {
    let dir = std::env::var("NILE_TEST_BINDIR").expect(
        "NILE_TEST_BINDIR is not set: run the integration tests through scripts/test.sh (make test)",
    );
    PathBuf::from(dir).join(tool)
}

#[track_caller]
fn run_tool(tool: &str, args: &[&str]) {
    let output = Command::new(bin(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What nile.verify() reports, one finding a line ("" when the tenancy is sound).
fn findings(client: &mut impl postgres::GenericClient) -> String {
    one::<Option<String>>(
        client,
        // it_bypass is the BYPASSRLS login role that tests/isolation.rs creates on purpose in this shared cluster.
        "SELECT string_agg(severity || ' ' || object || ': ' || problem, E'\\n' ORDER BY object)
         FROM nile.verify() WHERE object <> 'role it_bypass'",
    )
    .unwrap_or_default()
}

/// The database of `scenario`, plus a partitioned tenant table `events` (two partitions, rows of both tenants), a
/// deliberately shared table, and privileges for it_app.
fn schema_scenario(name: &str) -> String {
    let db = scenario(name);
    let mut su = connect(&db, "postgres");
    su.batch_execute(&format!(
        "CREATE TABLE events (tenant_id uuid NOT NULL, at date NOT NULL, name text NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         INSERT INTO events VALUES ('{ACME}', '2026-05-01', 'acme-26'), ('{GLOBEX}', '2026-06-01', 'globex-26'),
                                   ('{ACME}', '2027-05-01', 'acme-27'), ('{GLOBEX}', '2027-06-01', 'globex-27');
         SET nile.auto_enable = off;
         CREATE TABLE announcements (tenant_id uuid, name text);
         RESET nile.auto_enable;
         SELECT nile.disable_tenancy('announcements');
         INSERT INTO announcements VALUES (NULL, 'for-everyone');
         GRANT SELECT, INSERT, UPDATE, DELETE ON events, events_2026, events_2027, announcements TO it_app;"
    ))
    .unwrap();
    db
}

#[test]
fn a_partition_created_in_one_session_is_isolated_in_another_at_once() {
    let db = schema_scenario("new_partition");
    let mut app = connect(&db, "it_app");
    let mut ddl = connect(&db, "postgres");
    // The application session is already connected and working for Acme while the schema changes.
    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, ACME);
    assert_eq!(visible_in(&mut tx, "events"), "acme-26,acme-27");
    tx.commit().unwrap();

    ddl.batch_execute(&format!(
        "CREATE TABLE events_2028 PARTITION OF events FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
         CREATE TABLE events_2029 (LIKE events);
         INSERT INTO events_2029 VALUES ('{ACME}', '2029-01-01', 'acme-29'), ('{GLOBEX}', '2029-01-01', 'globex-29');
         ALTER TABLE events ATTACH PARTITION events_2029 FOR VALUES FROM ('2029-01-01') TO ('2030-01-01');
         INSERT INTO events VALUES ('{ACME}', '2028-02-01', 'acme-28'), ('{GLOBEX}', '2028-03-01', 'globex-28');
         GRANT SELECT, INSERT ON events_2028, events_2029 TO it_app;"
    ))
    .unwrap();

    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, ACME);
    // Directly, not through the parent: as isolated as the parent.
    assert_eq!(visible_in(&mut tx, "events_2028"), "acme-28");
    assert_eq!(visible_in(&mut tx, "events_2029"), "acme-29");
    assert_eq!(
        visible_in(&mut tx, "events"),
        "acme-26,acme-27,acme-28,acme-29"
    );
    assert_fails(
        tx.execute(
            &format!("INSERT INTO events_2028 VALUES ('{GLOBEX}', '2028-04-01', 'forged')"),
            &[],
        ),
        "NT005",
    );
    tx.rollback().unwrap();
    // Without a tenant, the new partition fails closed like the others.
    assert_fails(app.query("SELECT * FROM events_2028", &[]), "NT001");
}

#[test]
fn ddl_rolled_back_leaves_no_trace_and_ddl_committed_is_protected() {
    let db = schema_scenario("ddl_transaction");
    let mut su = connect(&db, "postgres");
    let mut tx = su.transaction().unwrap();
    tx.batch_execute("CREATE TABLE notes (tenant_id uuid, name text); ALTER TABLE projects ADD COLUMN done boolean")
        .unwrap();
    assert_eq!(
        one::<i64>(
            &mut tx,
            "SELECT count(*) FROM nile.tenant_tables WHERE relid::text = 'notes'"
        ),
        1
    );
    tx.rollback().unwrap();
    assert_eq!(
        one::<i64>(
            &mut su,
            "SELECT count(*) FROM nile.tenant_tables WHERE relid::text NOT IN ('projects', 'events', 'events_2026', 'events_2027')"
        ),
        0
    );
    assert_eq!(
        one::<i64>(
            &mut su,
            "SELECT count(*) FROM pg_class WHERE relname = 'notes'"
        ),
        0
    );

    // The same DDL committed: the table is enrolled, and an application session sees only its tenant's rows.
    su.batch_execute(&format!(
        "CREATE TABLE notes (tenant_id uuid, name text);
         INSERT INTO notes VALUES ('{ACME}', 'acme-note'), ('{GLOBEX}', 'globex-note');
         GRANT SELECT ON notes TO it_app;"
    ))
    .unwrap();
    let mut app = connect(&db, "it_app");
    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, GLOBEX);
    assert_eq!(visible_in(&mut tx, "notes"), "globex-note");
    tx.commit().unwrap();
    assert_eq!(findings(&mut su), "");
}

/// A table owner (not a superuser, not nile_admin) tries every DDL route to take isolation off its table, including
/// the `row_security = off` that restores run with. Each is refused, and the application still sees one tenant.
#[test]
fn a_table_owner_cannot_switch_isolation_off_with_ddl() {
    let db = schema_scenario("owner_attack");
    let mut su = connect(&db, "postgres");
    ensure_login_role(&mut su, "it_owner", "");
    su.batch_execute(
        "ALTER TABLE projects OWNER TO it_owner;
         ALTER TABLE events OWNER TO it_owner; ALTER TABLE events_2026 OWNER TO it_owner;
         ALTER TABLE events_2027 OWNER TO it_owner;",
    )
    .unwrap();
    let mut owner = connect(&db, "it_owner");
    let attacks: &[(&str, &str)] = &[
        ("ALTER TABLE projects DISABLE ROW LEVEL SECURITY", "55000"),
        ("ALTER TABLE projects NO FORCE ROW LEVEL SECURITY", "55000"),
        ("ALTER TABLE events_2027 DISABLE ROW LEVEL SECURITY", "55000"),
        ("ALTER TABLE events NO FORCE ROW LEVEL SECURITY", "55000"),
        ("DROP POLICY nile_tenant_select ON projects", "2BP01"),
        ("DROP POLICY nile_tenant_insert ON events_2026", "2BP01"),
        ("ALTER POLICY nile_tenant_select ON projects USING (true)", "55000"),
        ("ALTER POLICY nile_tenant_select ON projects TO nile_admin", "55000"),
        ("ALTER POLICY nile_tenant_delete ON projects RENAME TO gone", "55000"),
        ("ALTER TABLE projects DROP COLUMN tenant_id CASCADE", "2BP01"),
        ("ALTER TABLE projects ALTER COLUMN tenant_id TYPE text", "0A000"),
        ("ALTER TABLE events DETACH PARTITION events_2027; ALTER TABLE events_2027 DISABLE ROW LEVEL SECURITY", "55000"),
        ("SET row_security = off; ALTER TABLE projects DISABLE ROW LEVEL SECURITY", "55000"),
        ("SET row_security = off; DROP POLICY nile_tenant_select ON projects", "2BP01"),
        ("DO $$ BEGIN EXECUTE 'ALTER TABLE projects NO FORCE ROW LEVEL SECURITY'; END $$", "55000"),
        ("SELECT nile.disable_tenancy('projects')", "42501"),
        ("ALTER EVENT TRIGGER nile_ddl_command_end DISABLE", "42501"),
        // Issue 18: what a migration tool's autogenerate proposes (Alembic's drop_constraint).
        ("ALTER TABLE projects DROP CONSTRAINT nile_tenant_fk", "2BP01"),
    ];
    for (attack, sqlstate) in attacks {
        let mut tx = owner.transaction().unwrap();
        let got = outcome(tx.batch_execute(attack));
        tx.rollback().unwrap();
        assert!(
            got.starts_with(sqlstate),
            "{attack}: expected {sqlstate}, got {got}"
        );
    }
    owner.batch_execute("RESET ALL").unwrap();
    let mut app = connect(&db, "it_app");
    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, ACME);
    assert_eq!(visible(&mut tx), "acme-1,acme-2");
    assert_eq!(visible_in(&mut tx, "events_2027"), "acme-27");
    tx.commit().unwrap();
    // What DDL does allow (another permissive policy) widens nothing, and verify() reports it.
    owner
        .batch_execute("CREATE POLICY peek ON projects FOR SELECT USING (true)")
        .unwrap();
    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, ACME);
    assert_eq!(visible(&mut tx), "acme-1,acme-2");
    tx.commit().unwrap();
    let found = findings(&mut su);
    assert!(
        found.contains("warning policy peek on public.projects")
            && found.contains("warning role it_owner"),
        "{found}"
    );
}

/// pg_dump and pg_restore (custom format) and a plain SQL dump through psql: the restored database keeps its tenants,
/// registry, exclusions, usage history and policies, isolation holds there, and verify() is clean.
#[test]
fn a_dumped_and_restored_database_keeps_its_isolation() {
    let db = schema_scenario("dump_source");
    let mut su = connect("postgres", "postgres");
    let dump_dir = std::env::temp_dir().join(format!("nile_it_dump_{}", std::process::id()));
    std::fs::create_dir_all(&dump_dir).unwrap();
    // The usage so far (the scenario's set-up) goes into the history, which the dump must carry.
    let history_rows: i64 = {
        let mut source = connect(&db, "postgres");
        one::<i64>(&mut source, "SELECT nile.flush_usage()");
        // A nile.for_each_tenant() run with a failure: its run and failure tables are dumped too.
        source
            .batch_execute(&format!(
                "CALL nile.for_each_tenant('SELECT 1 / (nile.current_tenant() <> ''{ACME}'')::int')"
            ))
            .unwrap();
        one(&mut source, "SELECT count(*) FROM nile.usage_history")
    };
    assert!(history_rows > 0);
    let custom = dump_dir.join("source.dump");
    let plain = dump_dir.join("source.sql");
    let port = port().to_string();
    let conn = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres"];
    let with = |extra: &[&str]| -> Vec<String> {
        conn.iter()
            .chain(extra.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let args = with(&["-Fc", "-f", custom.to_str().unwrap(), &db]);
    run_tool(
        "pg_dump",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let args = with(&["-Fp", "-f", plain.to_str().unwrap(), &db]);
    run_tool(
        "pg_dump",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    for (restored, how) in [
        ("it_restored_custom", "pg_restore"),
        ("it_restored_plain", "psql"),
    ] {
        su.batch_execute(&format!("DROP DATABASE IF EXISTS {restored} WITH (FORCE)"))
            .unwrap();
        su.batch_execute(&format!("CREATE DATABASE {restored}"))
            .unwrap();
        let args = match how {
            "pg_restore" => with(&["--exit-on-error", "-d", restored, custom.to_str().unwrap()]),
            _ => with(&[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                restored,
                "-f",
                plain.to_str().unwrap(),
            ]),
        };
        run_tool(how, &args.iter().map(String::as_str).collect::<Vec<_>>());

        let mut r = connect(restored, "postgres");
        assert_eq!(
            one::<String>(
                &mut r,
                "SELECT string_agg(relid::text || ':' || coalesce(parent::text, '-'), ',' ORDER BY relid::text) FROM nile.tenant_tables"
            ),
            "events:-,events_2026:events,events_2027:events,projects:-",
            "{how}"
        );
        assert_eq!(
            one::<String>(
                &mut r,
                "SELECT string_agg(relid::text, ',') FROM nile.excluded_tables"
            ),
            "announcements"
        );
        assert_eq!(one::<i64>(&mut r, "SELECT count(*) FROM nile.tenants"), 2);
        assert_eq!(
            one::<String>(
                &mut r,
                "SELECT string_agg(r.status || ' ' || r.tenants_done || ' ' || f.tenant_id || ' ' || f.sqlstate, ',')
                 FROM nile.for_each_tenant_runs r JOIN nile.for_each_tenant_failures f ON f.run_id = r.id"
            ),
            format!("finished 2 {ACME} 22012"),
            "{how}"
        );
        assert_eq!(
            one::<i64>(&mut r, "SELECT count(*) FROM nile.usage_history"),
            history_rows,
            "{how}"
        );
        assert_eq!(findings(&mut r), "", "{how}");

        let mut app = connect(restored, "it_app");
        let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, GLOBEX);
        assert_eq!(visible(&mut tx), "globex-1", "{how}");
        assert_eq!(visible_in(&mut tx, "events"), "globex-26,globex-27");
        assert_eq!(visible_in(&mut tx, "events_2026"), "globex-26");
        assert_eq!(visible_in(&mut tx, "announcements"), "for-everyone");
        tx.rollback().unwrap();
        assert_acme_out_of_reach(&mut app);
        // The restored database's event triggers work: a new partition is protected there too.
        r.batch_execute(
            "CREATE TABLE events_2028 PARTITION OF events FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')",
        )
        .unwrap();
        assert_eq!(
            one::<i64>(
                &mut r,
                "SELECT count(*) FROM pg_policy WHERE polrelid = 'events_2028'::regclass"
            ),
            4
        );
    }
    std::fs::remove_dir_all(&dump_dir).ok();
}

/// Enrolment changes every table as its owner (issue 17): a tree whose tables have different owners is refused up
/// front, naming the table and the fix, with nothing changed; once the tree has one owner it enrolls; a partition of
/// another owner attached later is protected as its own owner.
#[test]
fn a_tree_with_two_owners_is_refused_with_the_fix() {
    let db = scenario("schema_two_owners");
    let mut su = connect(&db, "postgres");
    su.batch_execute(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'it_owner_a') THEN CREATE ROLE it_owner_a; END IF;
             IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'it_owner_b') THEN CREATE ROLE it_owner_b; END IF;
         END $$;
         SET nile.auto_enable = off;
         CREATE TABLE ledger (a int) PARTITION BY RANGE (a);
         CREATE TABLE ledger_1 PARTITION OF ledger FOR VALUES FROM (0) TO (10);
         ALTER TABLE ledger OWNER TO it_owner_a;
         ALTER TABLE ledger_1 OWNER TO it_owner_b;",
    )
    .unwrap();
    let err = su
        .batch_execute("SELECT nile.enable_tenancy('ledger')")
        .unwrap_err();
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "42501");
    assert!(
        db_err
            .message()
            .contains("public.ledger_1 below it has another owner"),
        "{}",
        db_err.message()
    );
    assert_eq!(
        db_err.hint(),
        Some("Give the tree one owner first: ALTER TABLE public.ledger_1 OWNER TO it_owner_a")
    );
    let columns: i64 = one(
        &mut su,
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'ledger'::regclass AND attname = 'tenant_id'",
    );
    assert_eq!(columns, 0, "nothing was changed");
    su.batch_execute(
        "ALTER TABLE ledger_1 OWNER TO it_owner_a;
         SELECT nile.enable_tenancy('ledger');
         CREATE TABLE ledger_2 (tenant_id uuid NOT NULL, a int);
         ALTER TABLE ledger_2 OWNER TO it_owner_b;
         ALTER TABLE ledger ATTACH PARTITION ledger_2 FOR VALUES FROM (10) TO (20);",
    )
    .unwrap();
    let protected: i64 = one(
        &mut su,
        "SELECT count(*) FROM pg_policy WHERE polrelid = 'ledger_2'::regclass AND polname LIKE 'nile_tenant_%'",
    );
    assert_eq!(protected, 4);
    assert_eq!(findings(&mut su), "");
}
