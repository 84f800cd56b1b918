//! Upgrades: a database made with an earlier release (0.1.0 or 0.2.0, their install scripts kept in tests/upgrade/
//! and installed by scripts/install.sh), filled with tenants and rows, `ALTER EXTENSION nile_tenancy UPDATE` (from
//! 0.1.0 through every upgrade script in between): the data and the isolation are intact, the new functions work, and
//! the catalog is exactly what a fresh `CREATE EXTENSION` of this release makes.

use nile_tenancy_integration::*;

/// This release: the version in the extension's Cargo.toml.
fn current_version() -> String {
    include_str!("../../../Cargo.toml")
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("Cargo.toml has a version")
        .to_string()
}

/// Every object of the extension, one line each with its definition, privileges and comment, sorted.
const CATALOG: &str = r#"
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'nile_tenancy'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
),
nile_relations AS (SELECT oid FROM pg_class WHERE relnamespace = 'nile'::regnamespace)
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
    SELECT 'member ' || pg_describe_object(classid, objid, 0) AS line FROM members
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure || ' acl ' || coalesce(p.proacl::text, '-') || E'\n' || pg_get_functiondef(p.oid)
    FROM pg_proc p WHERE p.pronamespace = 'nile'::regnamespace
    UNION ALL
    SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || ' acl ' || coalesce(c.relacl::text, '-')
           || ' rls ' || c.relrowsecurity || '/' || c.relforcerowsecurity
    FROM pg_class c WHERE c.oid IN (SELECT oid FROM nile_relations)
    UNION ALL
    SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || ' notnull ' || a.attnotnull || ' identity ' || a.attidentity::text || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
    FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid IN (SELECT oid FROM nile_relations) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'nile'::regnamespace
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid IN (SELECT oid FROM nile_relations)
    UNION ALL
    SELECT 'view ' || c.oid::regclass || ' ' || pg_get_viewdef(c.oid) FROM pg_class c
    WHERE c.oid IN (SELECT oid FROM nile_relations) AND c.relkind = 'v'
    UNION ALL
    SELECT 'policy ' || polrelid::regclass || ' ' || polname || ' ' || polcmd::text || ' ' || polpermissive
           || ' using ' || coalesce(pg_get_expr(polqual, polrelid), '-') || ' check ' || coalesce(pg_get_expr(polwithcheck, polrelid), '-')
    FROM pg_policy WHERE polrelid IN (SELECT oid FROM nile_relations)
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid IN (SELECT oid FROM nile_relations) AND NOT tgisinternal
    UNION ALL
    SELECT 'event trigger ' || evtname || ' ' || evtevent || ' ' || evtfoid::regproc || ' ' || evtenabled::text || ' ' || coalesce(evttags::text, '-')
    FROM pg_event_trigger
    UNION ALL
    SELECT 'comment ' || pg_describe_object(classoid, objoid, objsubid) || ': ' || description
    FROM pg_description WHERE (classoid, objoid) IN (SELECT classid, objid FROM members)
    UNION ALL
    SELECT 'dumped ' || array_to_string(extconfig::regclass[], ', ') || ' where ' || coalesce(array_to_string(extcondition, ', '), '-')
    FROM pg_extension WHERE extname = 'nile_tenancy'
) lines
"#;

#[test]
fn an_upgraded_database_keeps_its_data_and_isolation_and_matches_a_fresh_install() {
    upgrade_from("0.1.0", "it_upgrade");
}

#[test]
fn a_database_of_the_last_release_upgrades_and_matches_a_fresh_install() {
    upgrade_from("0.2.0", "it_upgrade_020");
}

fn upgrade_from(previous: &str, db: &str) {
    let current = current_version();
    let mut su = connect("postgres", "postgres");
    let available: i64 = one(
        &mut su,
        &format!("SELECT count(*) FROM pg_available_extension_versions WHERE name = 'nile_tenancy' AND version IN ('{previous}', '{current}')"),
    );
    assert_eq!(available, 2, "nile_tenancy {previous} and {current} must both be installed (scripts/install.sh copies tests/upgrade/*.sql)");
    ensure_login_role(&mut su, "it_app", "");
    ensure_login_role(&mut su, "it_admin", "");
    ensure_login_role(&mut su, "it_bound_upgrade", "");
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();

    // The previous release, with tenants, a plain and a partitioned tenant table, a shared table, a bound role, an
    // admin audit row, usage history.
    let mut old = connect(db, "postgres");
    old.batch_execute(&format!(
        "CREATE EXTENSION nile_tenancy VERSION '{previous}';
         GRANT nile_app TO it_app; GRANT nile_admin TO it_admin;
         SELECT nile.create_tenant('Acme', '{ACME}'), nile.create_tenant('Globex', '{GLOBEX}');
         CREATE TABLE projects (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
         CREATE TABLE events (tenant_id uuid NOT NULL, at date NOT NULL, name text NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         SET nile.auto_enable = off;
         CREATE TABLE announcements (tenant_id uuid, name text);
         SELECT nile.disable_tenancy('announcements');
         RESET nile.auto_enable;
         GRANT SELECT, INSERT, UPDATE, DELETE ON projects, events, announcements TO it_app, it_admin;
         GRANT SELECT ON projects TO it_bound_upgrade;
         INSERT INTO projects VALUES ('{ACME}', 1, 'acme-1'), ('{ACME}', 2, 'acme-2'), ('{GLOBEX}', 1, 'globex-1');
         INSERT INTO events VALUES ('{ACME}', '2026-05-01', 'acme-may'), ('{GLOBEX}', '2026-06-01', 'globex-june');
         INSERT INTO announcements VALUES (NULL, 'for-everyone');
         SELECT nile.bind_role('it_bound_upgrade', '{GLOBEX}');
         BEGIN; SELECT nile.admin_context('before the upgrade'); COMMIT;
         SELECT nile.flush_usage();"
    ))
    .unwrap();
    assert_eq!(
        one::<String>(
            &mut old,
            "SELECT extversion FROM pg_extension WHERE extname = 'nile_tenancy'"
        ),
        previous
    );
    let counts = "SELECT (SELECT count(*) FROM nile.tenants) || ' ' || (SELECT count(*) FROM nile.tenant_tables) || ' '
                  || (SELECT count(*) FROM nile.excluded_tables) || ' ' || (SELECT count(*) FROM nile.role_bindings) || ' '
                  || (SELECT count(*) FROM nile.admin_audit) || ' ' || (SELECT count(*) > 0 FROM nile.usage_history) || ' '
                  || (SELECT count(*) FROM projects) || ' ' || (SELECT count(*) FROM events)";
    let before: String = one(&mut old, counts);
    assert_eq!(before, "2 3 1 1 1 true 3 2");

    // A session of the old version is connected while the upgrade runs, and goes on working afterwards.
    let mut app = connect(db, "it_app");
    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, ACME);
    assert_eq!(visible(&mut tx), "acme-1,acme-2");
    tx.commit().unwrap();

    // A run of 0.2.0 still going on during the upgrade: its session holds the 0.2.0 key (made of the run's id), and
    // 0.3.0 must claim the run by that same key, or another session could resume it meanwhile.
    if previous == "0.2.0" {
        old.batch_execute(
            "INSERT INTO nile.for_each_tenant_runs (statement, batch_size, tenants_total) VALUES ('SELECT 1', 10, 2)",
        )
        .unwrap();
    }
    old.batch_execute("ALTER EXTENSION nile_tenancy UPDATE")
        .unwrap();
    if previous == "0.2.0" {
        let same_key: bool = one(
            &mut old,
            "SELECT nile._run_lock_keys(id) = ARRAY[hashtext('nile.for_each_tenant') & 2147483647, (id % 2147483647)::integer]
             FROM nile.for_each_tenant_runs WHERE statement = 'SELECT 1' AND status = 'running'",
        );
        assert!(same_key, "a running run keeps the key its session holds");
    }
    assert_eq!(
        one::<String>(
            &mut old,
            "SELECT extversion FROM pg_extension WHERE extname = 'nile_tenancy'"
        ),
        current
    );
    assert_eq!(
        one::<String>(&mut old, counts),
        before,
        "the extension's tables and the user's rows are intact"
    );
    assert_eq!(
        one::<String>(&mut old, "SELECT coalesce(string_agg(severity || ' ' || object || ': ' || problem, E'\\n'), '') FROM nile.verify() WHERE object NOT LIKE 'role it_%'"),
        "",
        "verify() is clean after the upgrade"
    );

    // Isolation, from the session that was open across the upgrade and from a new one.
    for client in [&mut app, &mut connect(db, "it_app")] {
        let mut tx = begin_as(client, postgres::IsolationLevel::ReadCommitted, GLOBEX);
        assert_eq!(visible(&mut tx), "globex-1");
        assert_eq!(visible_in(&mut tx, "events"), "globex-june");
        assert_eq!(visible_in(&mut tx, "announcements"), "for-everyone");
        tx.rollback().unwrap();
        assert_acme_out_of_reach(client);
    }
    let mut bound = connect(db, "it_bound_upgrade");
    assert_eq!(
        visible(&mut bound),
        "globex-1",
        "the role binding survived the upgrade"
    );
    assert_fails(
        bound.batch_execute(&format!("SELECT nile.set_tenant('{ACME}', false)")),
        "42501",
    );
    // What the new release adds works on the upgraded database.
    let mut admin = connect(db, "it_admin");
    admin
        .batch_execute("CALL nile.for_each_tenant('UPDATE projects SET name = upper(name)')")
        .unwrap();
    assert_eq!(
        one::<String>(
            &mut old,
            "SELECT string_agg(name, ',' ORDER BY name) FROM projects"
        ),
        "ACME-1,ACME-2,GLOBEX-1"
    );
    assert_eq!(
        one::<i64>(
            &mut admin,
            &format!("SELECT count(*) FROM nile.export_tenant('{ACME}')")
        ),
        2
    );

    // The upgraded catalog is exactly a fresh install's.
    let fresh = &format!("{db}_fresh");
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {fresh} WITH (FORCE)"))
        .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {fresh}"))
        .unwrap();
    let mut new = connect(fresh, "postgres");
    new.batch_execute("CREATE EXTENSION nile_tenancy").unwrap();
    let upgraded: String = one(&mut old, CATALOG);
    let installed: String = one(&mut new, CATALOG);
    if upgraded != installed {
        let (up_lines, inst_lines): (Vec<&str>, Vec<&str>) =
            (upgraded.lines().collect(), installed.lines().collect());
        let up: std::collections::BTreeSet<&str> = up_lines.iter().copied().collect();
        let inst: std::collections::BTreeSet<&str> = inst_lines.iter().copied().collect();
        // Lines that are in both but in other places (a function definition with one more or one less of a line
        // that other definitions have, such as STRICT) only show in the first place the two texts part.
        let first = up_lines
            .iter()
            .zip(&inst_lines)
            .position(|(a, b)| a != b)
            .unwrap_or(up_lines.len().min(inst_lines.len()));
        let around = |lines: &[&str]| {
            lines[first.saturating_sub(6)..(first + 3).min(lines.len())].join("\n")
        };
        panic!(
            "the upgraded catalog differs from a fresh install's:\nonly after the upgrade:\n{:#?}\nonly in a fresh install:\n{:#?}\nwhere they part (line {first}), upgraded:\n{}\nfresh:\n{}",
            up.difference(&inst).collect::<Vec<_>>(),
            inst.difference(&up).collect::<Vec<_>>(),
            around(&up_lines),
            around(&inst_lines)
        );
    }
    assert!(
        upgraded.lines().count() > 300,
        "the comparison covers the catalog"
    );
}
