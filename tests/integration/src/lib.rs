//! Harness for the multi-session integration tests: real connections to the throwaway cluster that scripts/test.sh
//! starts (it exports NILE_TEST_PORT). Each test works in a database of its own, created fresh with the extension.

use postgres::{Client, GenericClient, NoTls};

pub const ACME: &str = "0a0a0a0a-0000-7000-8000-000000000001";
pub const GLOBEX: &str = "0b0b0b0b-0000-7000-8000-000000000002";

/// The port of the cluster under test. Missing is an error, never a skip: these tests must run.
pub fn port() -> u16 {
    let port = std::env::var("NILE_TEST_PORT").expect(
        "NILE_TEST_PORT is not set: run the integration tests through scripts/test.sh (make test)",
    );
    port.parse().expect("NILE_TEST_PORT must be a port number")
}

/// The port of the PgBouncer (transaction pooling, 2 server connections per pool) that scripts/test.sh starts in front
/// of the cluster. Missing is an error, never a skip.
pub fn pgbouncer_port() -> u16 {
    let port = std::env::var("NILE_TEST_PGBOUNCER_PORT").expect(
        "NILE_TEST_PGBOUNCER_PORT is not set: run the integration tests through scripts/test.sh (make test)",
    );
    port.parse()
        .expect("NILE_TEST_PGBOUNCER_PORT must be a port number")
}

/// A client connection through that PgBouncer.
pub fn connect_pooled(db: &str, user: &str) -> Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user={user} dbname={db}",
        pgbouncer_port()
    );
    Client::connect(&dsn, NoTls)
        .unwrap_or_else(|e| panic!("connect to {db} as {user} through PgBouncer: {e}"))
}

pub fn dsn(db: &str, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname={db} application_name=nile_it",
        port()
    )
}

pub fn connect(db: &str, user: &str) -> Client {
    Client::connect(&dsn(db, user), NoTls)
        .unwrap_or_else(|e| panic!("connect to {db} as {user}: {e}"))
}

/// SQLSTATE and message of a failed call ("42501: ..."), or "ok" when it succeeded.
pub fn outcome<T>(result: Result<T, postgres::Error>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(e) => match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => format!("client error: {e}"),
        },
    }
}

#[track_caller]
pub fn assert_fails<T>(result: Result<T, postgres::Error>, sqlstate: &str) -> String {
    let got = outcome(result);
    assert!(
        got.starts_with(sqlstate),
        "expected SQLSTATE {sqlstate}, got {got}"
    );
    got
}

/// One value of the first row.
#[track_caller]
pub fn one<T: for<'a> postgres::types::FromSql<'a>>(
    client: &mut impl GenericClient,
    sql: &str,
) -> T {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A fresh database `it_<name>` with the extension, tenants Acme and Globex, an enrolled table `projects`
/// (primary key (tenant_id, id)) holding acme-1, acme-2 and globex-1, and login roles:
/// `it_app` (nile_app, a plain application role) and `it_admin` (nile_admin).
pub fn scenario(name: &str) -> String {
    let db = format!("it_{name}");
    let mut su = connect("postgres", "postgres");
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    ensure_login_role(&mut su, "it_app", "");
    ensure_login_role(&mut su, "it_admin", "");
    let mut c = connect(&db, "postgres");
    c.batch_execute(&format!(
        "CREATE EXTENSION nile_tenancy;
         GRANT nile_app TO it_app; GRANT nile_admin TO it_admin;
         SELECT nile.create_tenant('Acme', '{ACME}'), nile.create_tenant('Globex', '{GLOBEX}');
         CREATE TABLE projects (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
         SELECT nile.enable_tenancy('projects');
         GRANT SELECT, INSERT, UPDATE, DELETE ON projects TO it_app, it_admin;
         INSERT INTO projects VALUES ('{ACME}', 1, 'acme-1'), ('{ACME}', 2, 'acme-2'), ('{GLOBEX}', 1, 'globex-1');"
    ))
    .unwrap();
    db
}

/// The setting that forces parallel plans on this server: `debug_parallel_query` from PostgreSQL 16 on,
/// `force_parallel_mode` before.
pub fn force_parallel_setting(client: &mut Client) -> &'static str {
    let version: i32 = one::<String>(client, "SHOW server_version_num")
        .parse()
        .expect("server_version_num is a number");
    if version >= 160000 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    }
}

/// A transaction at `level` that has entered `tenant`'s context.
pub fn begin_as<'a>(
    client: &'a mut Client,
    level: postgres::IsolationLevel,
    tenant: &str,
) -> postgres::Transaction<'a> {
    let mut tx = client
        .build_transaction()
        .isolation_level(level)
        .start()
        .unwrap();
    tx.execute("SELECT nile.set_tenant($1::text::uuid)", &[&tenant])
        .unwrap();
    tx
}

/// Create the login role `name` with `attributes` (e.g. "BYPASSRLS") unless it exists: roles belong to the cluster,
/// which every test shares.
pub fn ensure_login_role(client: &mut Client, name: &str, attributes: &str) {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN CREATE ROLE {name} LOGIN {attributes}; END IF;
             END $$"
        ))
        .unwrap_or_else(|e| panic!("create role {name}: {e}"));
}

/// Names of the projects the session can see, sorted, comma-separated.
pub fn visible(client: &mut impl GenericClient) -> String {
    visible_in(client, "projects")
}

/// The `name` column of the rows of `table` the session can see, sorted, comma-separated.
pub fn visible_in(client: &mut impl GenericClient, table: &str) -> String {
    one::<Option<String>>(
        client,
        &format!("SELECT string_agg(name, ',' ORDER BY name) FROM {table}"),
    )
    .unwrap_or_default()
}

/// What an application session of `client` cannot do to Acme's rows: write one from Globex's context (NT005), read without
/// a context (NT001), or set the context by hand (NT006).
#[track_caller]
pub fn assert_acme_out_of_reach(client: &mut Client) {
    let mut tx = begin_as(client, postgres::IsolationLevel::ReadCommitted, GLOBEX);
    assert_fails(
        tx.execute(
            &format!("INSERT INTO projects VALUES ('{ACME}', 9, 'forged')"),
            &[],
        ),
        "NT005",
    );
    tx.rollback().unwrap();
    assert_fails(client.query("SELECT * FROM projects", &[]), "NT001");
    assert_fails(
        client.batch_execute(&format!("SET nile.tenant_id = '{ACME}'")),
        "NT006",
    );
}
