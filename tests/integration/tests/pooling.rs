//! Behind PgBouncer in transaction-pooling mode (scripts/pgbouncer.sh: 2 server connections per pool): many clients
//! alternate tenants over those two connections, with the simple and the extended query protocol, committing, rolling
//! back and failing; no statement ever runs under another client's tenant. The control case shows that the harness
//! sees a leak when there is one: a plain session-level setting (the hand-written `SET app.tenant_id` pattern) does
//! travel from one client to the next over the shared server connection.

use nile_tenancy_integration::*;
use postgres::types::Type;
use postgres::{Client, SimpleQueryMessage};
use std::thread;

const TENANTS: usize = 6;
const CLIENTS: usize = 16;
const ROUNDS: usize = 50;

fn tenant(n: usize) -> String {
    format!("{:08x}-0000-7000-8000-{:012x}", 0x7000_0000 + n, n)
}

fn secret(n: usize) -> String {
    format!("secret-{n}")
}

/// The tenant client `client` works for in round `round`: every client goes through every tenant, and at any moment
/// the clients sharing a server connection work for different tenants.
fn tenant_of(client: usize, round: usize) -> usize {
    (client + round) % TENANTS
}

/// The rows of every statement of a simple-protocol batch, in order (NULL as "NULL").
fn simple_rows(client: &mut Client, sql: &str) -> Result<Vec<Vec<String>>, postgres::Error> {
    let messages = client.simple_query(sql)?;
    let mut rows = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            rows.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// A database with TENANTS tenants, one secret row each in `accounts`, and a `ledger` into which each client
/// transaction writes what it saw: the context, the accounts visible to it, and the server process it ran in.
fn pooling_scenario() -> String {
    let db = "it_pooling".to_string();
    let mut su = connect("postgres", "postgres");
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    ensure_login_role(&mut su, "it_pool", "");
    let mut c = connect(&db, "postgres");
    c.batch_execute(
        "CREATE EXTENSION nile_tenancy;
         GRANT nile_app TO it_pool;
         CREATE TABLE accounts (tenant_id uuid NOT NULL, name text NOT NULL);
         SELECT nile.enable_tenancy('accounts');
         CREATE TABLE ledger (tenant_id uuid NOT NULL, client int NOT NULL, round int NOT NULL, protocol text NOT NULL,
                              seen_tenant uuid, seen_names text, backend int NOT NULL);
         SELECT nile.enable_tenancy('ledger');
         GRANT SELECT ON accounts TO it_pool;
         GRANT SELECT, INSERT ON ledger TO it_pool;",
    )
    .unwrap();
    for n in 0..TENANTS {
        c.execute(
            "SELECT nile.create_tenant($1, $2::text::uuid)",
            &[&format!("tenant-{n}"), &tenant(n)],
        )
        .unwrap();
        // A superuser bypasses row-level security: the fixture rows go in directly.
        c.execute(
            "INSERT INTO accounts VALUES ($1::text::uuid, $2)",
            &[&tenant(n), &secret(n)],
        )
        .unwrap();
    }
    db
}

const RECORD: &str = "INSERT INTO ledger (client, round, protocol, seen_tenant, seen_names, backend)
                      SELECT {client}, {round}, '{protocol}', nile.current_tenant(),
                             (SELECT string_agg(name, ',' ORDER BY name) FROM accounts), pg_backend_pid()";

fn record(client: usize, round: usize, protocol: &str) -> String {
    RECORD
        .replace("{client}", &client.to_string())
        .replace("{round}", &round.to_string())
        .replace("{protocol}", protocol)
}

/// One client's rounds. Returns every violation it saw between its transactions (a context it did not set).
fn run_client(db: &str, client: usize) -> Vec<String> {
    let mut conn = connect_pooled(db, "it_pool");
    let mut violations = Vec::new();
    for round in 0..ROUNDS {
        let t = tenant(tenant_of(client, round));
        match (client + round) % 3 {
            // Simple query protocol, the whole transaction in one batch (as psql and many ORMs send it).
            0 => {
                simple_rows(
                    &mut conn,
                    &format!(
                        "BEGIN; SELECT nile.set_tenant('{t}'); {}; COMMIT",
                        record(client, round, "simple")
                    ),
                )
                .unwrap_or_else(|e| panic!("client {client} round {round}: {e}"));
            }
            // Extended protocol with bound parameters, one message per statement (as JDBC, psycopg and node-postgres).
            1 => {
                let mut tx = conn.transaction().unwrap();
                tx.query_typed("SELECT nile.set_tenant($1::uuid)", &[(&t, Type::TEXT)])
                    .unwrap_or_else(|e| panic!("client {client} round {round}: {e}"));
                tx.query_typed(&record(client, round, "extended"), &[])
                    .unwrap_or_else(|e| panic!("client {client} round {round}: {e}"));
                tx.commit().unwrap();
            }
            // A transaction that enters the tenant and then fails: its row is rolled back and so is its context.
            _ => {
                let failed = simple_rows(
                    &mut conn,
                    &format!(
                        "BEGIN; SELECT nile.set_tenant('{t}'); {}; SELECT 1 / 0",
                        record(client, round, "failed")
                    ),
                );
                assert_fails(failed, "22012");
                conn.batch_execute("ROLLBACK").unwrap();
            }
        }
        // Between transactions, a statement of its own must find no tenant context, whichever server connection runs
        // it and whatever the client before it on that connection did.
        match simple_rows(
            &mut conn,
            "SELECT coalesce(nile.current_tenant()::text, 'none'), pg_backend_pid()",
        ) {
            Ok(rows) if rows[0][0] == "none" => {}
            Ok(rows) => violations.push(format!(
                "client {client} after round {round}: context {} in backend {}",
                rows[0][0], rows[0][1]
            )),
            Err(e) => violations.push(format!("client {client} after round {round}: {e}")),
        }
        if let Ok(rows) = simple_rows(&mut conn, "SELECT count(*) FROM accounts") {
            violations.push(format!(
                "client {client} after round {round}: read accounts without a context ({} rows)",
                rows[0][0]
            ));
        }
    }
    violations
}

#[test]
fn many_clients_alternating_tenants_over_two_server_connections_never_see_another_clients_tenant() {
    let db = pooling_scenario();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let db = db.clone();
            thread::spawn(move || run_client(&db, client))
        })
        .collect();
    let violations: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a client thread panicked"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");

    // Every committed transaction ran entirely in its own client's tenant: the row's tenant (from the column default,
    // i.e. the context at INSERT time), the context it read and the accounts it could see all match the tenant that
    // client chose for that round. No failed transaction left a row.
    let mut su = connect(&db, "postgres");
    let rows = su
        .query(
            "SELECT client, round, protocol, tenant_id::text, coalesce(seen_tenant::text, 'none'),
                    coalesce(seen_names, 'none') FROM ledger",
            &[],
        )
        .unwrap();
    let committed = (0..CLIENTS)
        .flat_map(|c| (0..ROUNDS).map(move |r| (c, r)))
        .filter(|(c, r)| (c + r) % 3 != 2)
        .count();
    assert_eq!(rows.len(), committed, "one row per committed transaction");
    for row in &rows {
        let (client, round): (i32, i32) = (row.get(0), row.get(1));
        let protocol: String = row.get(2);
        let expected = tenant_of(client as usize, round as usize);
        let got: (String, String, String) = (row.get(3), row.get(4), row.get(5));
        assert_ne!(protocol, "failed");
        assert_eq!(
            got,
            (tenant(expected), tenant(expected), secret(expected)),
            "client {client} round {round} ({protocol})"
        );
    }

    // And the clients did share server connections: at most two server processes, each serving many clients and
    // every tenant.
    let (backends, min_clients, min_tenants): (i64, i64, i64) = {
        let row = su
            .query_one(
                "SELECT count(*), min(clients), min(tenants) FROM (
                     SELECT backend, count(DISTINCT client) AS clients, count(DISTINCT tenant_id) AS tenants
                     FROM ledger GROUP BY backend) per_backend",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert!((1..=2).contains(&backends), "{backends} server connections");
    assert!(
        min_clients >= 2 && min_tenants >= 2,
        "each server connection served several clients ({min_clients}) and tenants ({min_tenants})"
    );
}

#[test]
fn a_session_setting_travels_to_the_next_client_but_the_tenant_context_does_not() {
    let db = pooling_scenario();
    let mut first = connect_pooled(&db, "it_pool");
    let mut second = connect_pooled(&db, "it_pool");
    let victim = tenant(1);
    let mut shared = 0;
    for _ in 0..20 {
        // The first client enters a tenant the right way, and also sets a plain session-level setting, as the
        // hand-written pattern does.
        let backend = simple_rows(
            &mut first,
            &format!(
                "BEGIN; SELECT nile.set_tenant('{victim}'); COMMIT;
                 SELECT pg_backend_pid(), set_config('app.tenant_id', '{victim}', false)"
            ),
        )
        .unwrap()
        .pop()
        .expect("the last statement returns one row")[0]
            .clone();
        // The next statement of another client, usually on the same server connection (PgBouncer reuses the most
        // recently released one).
        let seen = simple_rows(
            &mut second,
            "SELECT pg_backend_pid(), coalesce(current_setting('app.tenant_id', true), 'none'),
                    coalesce(nile.current_tenant()::text, 'none')",
        )
        .unwrap()
        .remove(0);
        if seen[0] == backend {
            shared += 1;
            assert_eq!(
                seen[1], victim,
                "the plain session setting leaked, as it must: the control works"
            );
            assert_eq!(seen[2], "none", "the tenant context did not");
            let read = simple_rows(&mut second, "SELECT count(*) FROM accounts");
            assert!(read.is_err(), "no context, no rows: {read:?}");
        }
        first.batch_execute("RESET app.tenant_id").unwrap();
    }
    assert!(
        shared > 0,
        "the two clients never shared a server connection: the test proved nothing"
    );
}
