//! The attack suite: each test is one attempt to cross tenants from a hostile SQL session, asserting that no other
//! tenant's row is returned, counted, changed or revealed. The README's "Attack catalogue" lists them all.
//!
//! The victim is Globex, whose one row in `projects` is named `globex-secret`. The attackers, all non-owner,
//! non-superuser roles:
//! - `it_attacker`: the application's role in Acme's context, entered with a signed token; `nile.require_token` is on
//!   for it, so it cannot call `nile.set_tenant()` (the model of an SQL injection in a token-based application). It
//!   may create functions, operators, views and tables in `public`.
//! - `it_noexec`: can read and write the tenant tables but has no EXECUTE on `nile.set_tenant()` (not in `nile_app`).
//! - `it_atk_bound`: bound to Acme with `nile.bind_role()`.
//! - `it_app`: a plain `nile_app` member, which may switch tenants; used where the attack is on what a switch leaves
//!   behind (cached plans).

use nile_tenancy_integration::*;
use postgres::{Client, Config, NoTls, SimpleQueryMessage};
use std::sync::{Arc, Mutex, Once};

const TOKEN_KEY: &str = "attack-suite-key-0123456789abcdef0123456789";
const SECRET: &str = "globex-secret";
const INITECH: &str = "0c0c0c0c-0000-7000-8000-000000000003";

/// Cluster-wide set-up, once per run (after the first CREATE EXTENSION): the attacker roles and a token key.
fn roles_and_key() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut su = connect("postgres", "postgres");
        for role in ["it_attacker", "it_noexec", "it_atk_bound", "it_app", "it_atk_owner"] {
            ensure_login_role(&mut su, role, "");
        }
        ensure_login_role(&mut su, "it_bypass", "BYPASSRLS");
        su.batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'it_atk_helper') THEN CREATE ROLE it_atk_helper; END IF;
             END $$;
             GRANT nile_app TO it_attacker, it_atk_bound, it_app, it_atk_helper;
             GRANT it_atk_helper TO it_attacker;
             ALTER ROLE it_attacker SET nile.require_token = on;",
        )
        .unwrap();
        su.batch_execute(&format!("ALTER SYSTEM SET nile.token_key = '{TOKEN_KEY}'"))
            .unwrap();
        su.batch_execute("SELECT pg_reload_conf()").unwrap();
        // The postmaster and every new backend read the file on reload; give the signal time to arrive.
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
}

/// One attack's world: a fresh database `it_atk_<name>` with tenants Acme and Globex, the enrolled table `projects`
/// (owned by it_atk_owner, a login role for the owner attacks) holding acme-1, acme-2 and globex-secret.
struct Siege {
    db: String,
    su: Client,
    notices: Arc<Mutex<Vec<String>>>,
}

impl Siege {
    fn new(name: &str) -> Siege {
        let db = format!("it_atk_{name}");
        let mut admin = connect("postgres", "postgres");
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
        let mut su = connect(&db, "postgres");
        // The extension creates nile_app and nile_admin, which the attackers' roles are granted.
        su.batch_execute("CREATE EXTENSION nile_tenancy").unwrap();
        roles_and_key();
        su.batch_execute(&format!(
            "SELECT nile.create_tenant('Acme', '{ACME}'), nile.create_tenant('Globex', '{GLOBEX}');
             CREATE TABLE projects (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
             ALTER TABLE projects OWNER TO it_atk_owner;
             SELECT nile.enable_tenancy('projects');
             GRANT SELECT, INSERT, UPDATE, DELETE ON projects TO it_attacker, it_noexec, it_atk_bound, it_app, it_bypass, it_atk_helper;
             GRANT USAGE, CREATE ON SCHEMA public TO it_attacker, it_atk_owner;
             INSERT INTO projects VALUES ('{ACME}', 1, 'acme-1'), ('{ACME}', 2, 'acme-2'), ('{GLOBEX}', 1, '{SECRET}');
             SELECT nile.bind_role('it_atk_bound', '{ACME}');"
        ))
        .unwrap();
        Siege {
            db,
            su,
            notices: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A connection as `role` whose notices are collected into `self.notices`.
    fn login(&self, role: &str) -> Client {
        self.login_with(role, "")
    }

    fn login_with(&self, role: &str, options: &str) -> Client {
        self.try_login(role, options)
            .unwrap_or_else(|e| panic!("login as {role}: {e}"))
    }

    fn try_login(&self, role: &str, options: &str) -> Result<Client, postgres::Error> {
        let notices = Arc::clone(&self.notices);
        let mut config: Config = dsn(&self.db, role).parse().unwrap();
        if !options.is_empty() {
            config.options(options);
        }
        config.notice_callback(move |notice| {
            notices.lock().unwrap().push(notice.message().to_string())
        });
        config.connect(NoTls)
    }

    /// A signed token for `tenant`, valid for an hour.
    fn token(&mut self, tenant: &str) -> String {
        self.su
            .query_one(
                "SELECT nile.sign_tenant_token($1::text::uuid, '1 hour')",
                &[&tenant],
            )
            .unwrap()
            .get(0)
    }

    /// it_attacker, in Acme's context for the whole session by its token.
    fn attacker(&mut self) -> Client {
        let token = self.token(ACME);
        let mut c = self.login("it_attacker");
        c.execute(
            "SELECT nile.set_tenant_token($1, is_local => false)",
            &[&token],
        )
        .unwrap();
        c
    }

    /// Globex's rows, read by the superuser: they must be exactly as the fixture wrote them.
    #[track_caller]
    fn assert_globex_intact(&mut self) {
        let globex: Option<String> = self
            .su
            .query_one(
                &format!(
                    "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM projects WHERE tenant_id = '{GLOBEX}'"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            globex.as_deref(),
            Some("1:globex-secret"),
            "Globex's rows changed"
        );
    }

    /// Nothing the attacker received as notices names Globex or its row.
    #[track_caller]
    fn assert_no_leak_in_notices(&self) {
        let notices = self.notices.lock().unwrap();
        assert!(
            !notices.iter().any(|n| leaks(n)),
            "a notice leaked: {notices:?}"
        );
    }

    fn finding(&mut self, pattern: &str) -> String {
        one::<Option<String>>(
            &mut self.su,
            &format!(
                "SELECT string_agg(severity || ' ' || object || ': ' || problem, E'\\n')
                 FROM nile.verify() WHERE object || ' ' || problem LIKE '{pattern}'"
            ),
        )
        .unwrap_or_default()
    }
}

/// Does this text reveal the victim: its row's value or its tenant id?
fn leaks(text: &str) -> bool {
    let lower = text.to_lowercase();
    lower.contains(SECRET) || lower.contains(GLOBEX)
}

/// Every value of every row of a simple-protocol batch, joined with '|', or the error.
fn all_values(client: &mut Client, sql: &str) -> Result<String, postgres::Error> {
    let mut out = Vec::new();
    for message in client.simple_query(sql)? {
        if let SimpleQueryMessage::Row(row) = message {
            out.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    Ok(out.join("|"))
}

/// Run `sql`; whatever it returns (or the error it raises) must not reveal Globex. Returns the values or the error.
#[track_caller]
fn attempt(client: &mut Client, sql: &str) -> String {
    let got = match all_values(client, sql) {
        Ok(values) => values,
        Err(e) => outcome::<()>(Err(e)),
    };
    assert!(!leaks(&got), "{sql}\n  revealed: {got}");
    got
}

/// Run `sql`, which must fail with `sqlstate` without revealing Globex in its message, detail or hint.
#[track_caller]
fn refused(client: &mut Client, sql: &str, sqlstate: &str) {
    let err = client.batch_execute(sql).expect_err(&format!(
        "{sql}: expected SQLSTATE {sqlstate}, but it succeeded"
    ));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a server error: {err}"));
    assert_eq!(db.code().code(), sqlstate, "{sql}: {}", db.message());
    let text = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
    assert!(!leaks(&text), "{sql}: the error reveals Globex: {text}");
    // A failed statement inside a transaction block aborts it; outside, this is a harmless warning.
    let _ = client.batch_execute("ROLLBACK");
}

/// The session sees exactly Acme's two projects.
#[track_caller]
fn assert_sees_only_acme(client: &mut Client) {
    assert_eq!(
        attempt(
            client,
            "SELECT string_agg(name, ',' ORDER BY name) FROM projects"
        ),
        "acme-1,acme-2"
    );
}

/// The tenant context of the session, or "none".
fn context(client: &mut Client) -> String {
    one::<Option<String>>(client, "SELECT nile.current_tenant()::text").unwrap_or("none".into())
}

fn server_version(client: &mut Client) -> i32 {
    one::<String>(client, "SHOW server_version_num")
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------------------------------
// Context forging: no path but nile.set_tenant() (and the token and binding mechanisms) sets the tenant context.
// ---------------------------------------------------------------------------------------------------------------------

#[test]
fn forge_set_command() {
    let s = Siege::new("set_command");
    let mut c = s.login("it_noexec");
    refused(&mut c, &format!("SET nile.tenant_id = '{GLOBEX}'"), "NT006");
    refused(
        &mut c,
        &format!("BEGIN; SET LOCAL nile.tenant_id = '{GLOBEX}'"),
        "NT006",
    );
    assert_eq!(context(&mut c), "none");
    refused(&mut c, "SELECT * FROM projects", "NT001");
}

#[test]
fn forge_set_config() {
    let s = Siege::new("set_config");
    let mut c = s.login("it_noexec");
    refused(
        &mut c,
        &format!("SELECT set_config('nile.tenant_id', '{GLOBEX}', false)"),
        "NT006",
    );
    refused(
        &mut c,
        &format!("BEGIN; SELECT set_config('nile.tenant_id', '{GLOBEX}', true)"),
        "NT006",
    );
    assert_eq!(context(&mut c), "none");
    refused(&mut c, "SELECT * FROM projects", "NT001");
}

#[test]
fn forge_startup_options() {
    let s = Siege::new("startup_options");
    // PGOPTIONS='-c nile.tenant_id=...' reaches the server as the startup packet's options: the login is refused.
    let login = s.try_login("it_noexec", &format!("-c nile.tenant_id={GLOBEX}"));
    assert_fails(login, "NT006");
    // The token-only attacker cannot switch require_token off that way either.
    let login = s.try_login("it_attacker", "-c nile.require_token=off");
    assert_fails(login, "42501");
}

#[test]
fn forge_alter_role_set() {
    let mut s = Siege::new("alter_role_set");
    // A role may store its own defaults, and a superuser anyone's: the value is refused when stored, for both.
    let mut c = s.login("it_noexec");
    let store = format!(
        "ALTER ROLE it_noexec IN DATABASE {} SET nile.tenant_id = '{GLOBEX}'",
        s.db
    );
    refused(&mut c, &store, "NT006");
    assert_fails(s.su.batch_execute(&store), "NT006");
    // Written into the catalog behind the extension's back (as a value stored before the library was preloaded
    // would be), it is refused at login: the session starts without a context.
    s.su.batch_execute(&format!(
        "INSERT INTO pg_db_role_setting VALUES ((SELECT oid FROM pg_database WHERE datname = current_database()),
                                                'it_noexec'::regrole, ARRAY['nile.tenant_id={GLOBEX}'])"
    ))
    .unwrap();
    let mut c = s.login("it_noexec");
    assert_eq!(context(&mut c), "none");
    refused(&mut c, "SELECT * FROM projects", "NT001");
    s.su.batch_execute("DELETE FROM pg_db_role_setting WHERE setrole = 'it_noexec'::regrole")
        .unwrap();
    assert!(s
        .notices
        .lock()
        .unwrap()
        .iter()
        .any(|n| n.contains("can only be set by nile.set_tenant()")));
}

#[test]
fn forge_alter_database_set() {
    let mut s = Siege::new("alter_database_set");
    // The database owner's path (a superuser stands in for the owner): refused when stored.
    let store = format!("ALTER DATABASE {} SET nile.tenant_id = '{GLOBEX}'", s.db);
    assert_fails(s.su.batch_execute(&store), "NT006");
    // And refused at login if it got into the catalog anyway.
    s.su.batch_execute(&format!(
        "INSERT INTO pg_db_role_setting VALUES ((SELECT oid FROM pg_database WHERE datname = current_database()), 0,
                                                ARRAY['nile.tenant_id={GLOBEX}'])"
    ))
    .unwrap();
    let mut c = s.login("it_noexec");
    assert_eq!(context(&mut c), "none");
    refused(&mut c, "SELECT * FROM projects", "NT001");
    s.su.batch_execute("DELETE FROM pg_db_role_setting WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())")
        .unwrap();
}

#[test]
fn forge_function_set_clause() {
    let s = Siege::new("function_set_clause");
    let mut c = s.login("it_attacker");
    // CREATE FUNCTION validates the SET clause: refused before the function exists.
    refused(
        &mut c,
        &format!(
            "CREATE FUNCTION peek() RETURNS text LANGUAGE sql SET nile.tenant_id = '{GLOBEX}'
             AS $$ SELECT string_agg(name, ',') FROM projects $$"
        ),
        "NT006",
    );
    // A function that sets it in its body is refused when it runs.
    c.batch_execute(&format!(
        "CREATE FUNCTION peek() RETURNS text LANGUAGE plpgsql
         AS $$ BEGIN PERFORM set_config('nile.tenant_id', '{GLOBEX}', true); RETURN (SELECT string_agg(name, ',') FROM projects); END $$"
    ))
    .unwrap();
    refused(&mut c, "SELECT peek()", "NT006");
}

#[test]
fn forge_set_role_to_a_role_without_require_token() {
    let mut s = Siege::new("set_role");
    let mut c = s.attacker();
    // it_atk_helper is in nile_app and has no require_token of its own; the setting stays with the session.
    c.batch_execute("SET ROLE it_atk_helper").unwrap();
    refused(
        &mut c,
        &format!("BEGIN; SELECT nile.set_tenant('{GLOBEX}')"),
        "NT010",
    );
    refused(&mut c, "SET nile.require_token = off", "42501");
    assert_sees_only_acme(&mut c);
}

#[test]
fn forge_reset_and_discard() {
    let mut s = Siege::new("reset_discard");
    let mut c = s.attacker();
    for reset in [
        "RESET nile.tenant_id",
        "RESET ALL",
        "DISCARD ALL",
        "RESET nile.require_token",
    ] {
        c.batch_execute(reset).ok();
        let now = context(&mut c);
        assert!(now == "none" || now == ACME, "{reset} left context {now}");
        refused(
            &mut c,
            &format!("BEGIN; SELECT nile.set_tenant('{GLOBEX}')"),
            "NT010",
        );
    }
    let rows = attempt(
        &mut c,
        "SELECT string_agg(name, ',' ORDER BY name) FROM projects",
    );
    assert!(
        rows == "acme-1,acme-2" || rows.starts_with("NT001"),
        "{rows}"
    );
}

#[test]
fn forge_rollback_and_savepoint_tricks() {
    let mut s = Siege::new("rollback_tricks");
    let mut c = s.attacker();
    // A refused SET inside a savepoint, an exception handler swallowing it, and a rolled-back transaction all leave
    // the context where it was.
    c.batch_execute(&format!(
        "BEGIN; SAVEPOINT a;
         DO $$ BEGIN PERFORM set_config('nile.tenant_id', '{GLOBEX}', true); EXCEPTION WHEN OTHERS THEN NULL; END $$;"
    ))
    .unwrap();
    assert_eq!(context(&mut c), ACME);
    c.batch_execute("ROLLBACK TO SAVEPOINT a").unwrap();
    assert_eq!(context(&mut c), ACME);
    refused(
        &mut c,
        &format!("SET LOCAL nile.tenant_id = '{GLOBEX}'"),
        "NT006",
    );
    c.batch_execute("BEGIN; SELECT nile.clear_tenant(); ROLLBACK")
        .unwrap();
    assert_eq!(context(&mut c), ACME);
    assert_sees_only_acme(&mut c);
}

#[test]
fn forge_in_a_parallel_worker() {
    let mut s = Siege::new("parallel_forge");
    let mut c = s.attacker();
    let force = force_parallel_setting(&mut c);
    c.batch_execute(&format!(
        "CREATE FUNCTION switch_in_worker(text) RETURNS boolean LANGUAGE sql PARALLEL SAFE
         AS $$ SELECT set_config('nile.tenant_id', $1, true) IS NOT NULL $$;
         SET {force} = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;"
    ))
    .unwrap();
    let got = attempt(
        &mut c,
        &format!("SELECT name FROM projects WHERE switch_in_worker('{GLOBEX}')"),
    );
    assert!(
        got.starts_with("42501") || got.starts_with("25000"),
        "{got}"
    );
    assert_eq!(context(&mut c), ACME);
}

#[test]
fn forge_empty_and_null_contexts() {
    let mut s = Siege::new("empty_null");
    let mut c = s.login("it_noexec");
    // Empty and NULL mean "no tenant": they are accepted, and they open nothing.
    for sql in [
        "SET nile.tenant_id = ''",
        "SELECT set_config('nile.tenant_id', '', false)",
        "SELECT set_config('nile.tenant_id', NULL, false)",
    ] {
        let _ = c.batch_execute(sql);
        assert_eq!(context(&mut c), "none", "{sql}");
        refused(&mut c, "SELECT * FROM projects", "NT001");
    }
    let mut a = s.attacker();
    refused(
        &mut a,
        "SELECT nile.set_tenant_token('', is_local => false)",
        "NT008",
    );
    refused(
        &mut a,
        "SELECT nile.set_tenant_token(NULL, is_local => false)",
        "22004",
    );
    assert_eq!(context(&mut a), ACME);
}

#[test]
fn forge_malformed_tenant_ids() {
    let s = Siege::new("malformed_ids");
    let mut c = s.login("it_noexec");
    let upper = GLOBEX.to_uppercase();
    let braces = format!("{{{GLOBEX}}}");
    let padded = format!(" {GLOBEX} ");
    for value in [
        upper.as_str(),
        braces.as_str(),
        padded.as_str(),
        "globex",
        "0b0b0b0b00007000800000000000000 2",
    ] {
        refused(&mut c, &format!("SET nile.tenant_id = '{value}'"), "NT006");
    }
    // A nile_app member passing garbage to set_tenant() gets a type error, never a context.
    let mut app = s.login("it_app");
    refused(&mut app, "BEGIN; SELECT nile.set_tenant('globex')", "22P02");
    refused(&mut app, "BEGIN; SELECT nile.set_tenant(NULL)", "22004");
    assert_eq!(context(&mut app), "none");
}

#[test]
fn forge_deleted_tenant() {
    let mut s = Siege::new("deleted_tenant");
    // A token minted for Globex while it was active (say, stolen from a log), used after Globex was deleted.
    let stolen = s.token(GLOBEX);
    s.su.batch_execute(&format!("SELECT nile.delete_tenant('{GLOBEX}')"))
        .unwrap();
    let mut c = s.login("it_attacker");
    let err = c.execute(
        "SELECT nile.set_tenant_token($1, is_local => false)",
        &[&stolen],
    );
    let got = outcome(err);
    assert!(!got.starts_with("ok"), "{got}");
    assert_eq!(context(&mut c), "none");
    assert!(
        got.starts_with("NT004"),
        "refused as a deleted tenant: {got}"
    );
    // Nor can a nile_app member (which may enter any live tenant) enter it.
    let mut app = s.login("it_app");
    assert_fails(
        app.batch_execute(&format!("BEGIN; SELECT nile.set_tenant('{GLOBEX}')")),
        &got[..5],
    );
    app.batch_execute("ROLLBACK").unwrap();
    assert_eq!(context(&mut app), "none");
    s.assert_globex_intact();
}

#[test]
fn forge_token_for_another_tenant() {
    let mut s = Siege::new("forged_token");
    let acme = s.token(ACME);
    let mut c = s.login("it_attacker");
    // Swap the payload for one naming Globex, keep Acme's signature; and the same with alg "none".
    let parts: Vec<&str> = acme.split('.').collect();
    let payload = format!(r#"{{"tid":"{GLOBEX}","exp":4102444800}}"#);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64url(payload.as_bytes()),
        parts[2]
    );
    let header_none = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header_none}.{}.", base64url(payload.as_bytes()));
    for token in [forged, unsigned] {
        let got = outcome(c.execute(
            "SELECT nile.set_tenant_token($1, is_local => false)",
            &[&token],
        ));
        assert!(
            got.starts_with("NT008") || got.starts_with("22023"),
            "{got}"
        );
        assert!(!leaks(&got), "{got}");
    }
    assert_eq!(context(&mut c), "none");
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn forge_token_minting_and_key_reading() {
    let mut s = Siege::new("token_minting");
    let mut c = s.attacker();
    refused(
        &mut c,
        &format!("SELECT nile.sign_tenant_token('{GLOBEX}', '1 hour')"),
        "42501",
    );
    refused(&mut c, "SELECT current_setting('nile.token_key')", "42501");
    refused(&mut c, "SHOW nile.token_key", "42501");
    let visible = attempt(&mut c, "SELECT coalesce(string_agg(setting, ','), '') FROM pg_settings WHERE name LIKE 'nile.token_key%'");
    assert!(!visible.contains(TOKEN_KEY), "{visible}");
    refused(
        &mut c,
        "SELECT pg_read_file('postgresql.auto.conf')",
        "42501",
    );
}

#[test]
fn forge_token_read_from_pg_stat_activity() {
    let mut s = Siege::new("stat_activity");
    // Another session of the same role enters Globex with its token as a bound parameter and stays in the transaction.
    let token = s.token(GLOBEX);
    let mut victim = s.login("it_attacker");
    let mut tx = victim.transaction().unwrap();
    tx.execute("SELECT nile.set_tenant_token($1)", &[&token])
        .unwrap();
    // The attacker sees the statement text of sessions of its own role: a parameter, not the token.
    let mut c = s.attacker();
    let seen = one::<Option<String>>(
        &mut c,
        "SELECT string_agg(query, ' | ') FROM pg_stat_activity WHERE usename = 'it_attacker' AND pid <> pg_backend_pid()",
    )
    .unwrap_or_default();
    assert!(
        seen.contains("$1") && !seen.contains(&token[token.len() - 20..]),
        "{seen}"
    );
    tx.rollback().unwrap();
}

// ---------------------------------------------------------------------------------------------------------------------
// Privilege paths
// ---------------------------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------------------
// Policy composition
// ---------------------------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------------------
// Plan caching
// ---------------------------------------------------------------------------------------------------------------------

#[test]
fn plans_prepared_statement_under_force_generic_plan() {
    let s = Siege::new("generic_plan");
    let mut c = s.login("it_app");
    c.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE names AS SELECT string_agg(name, ',' ORDER BY name) FROM projects;
         PREPARE by_tenant(uuid) AS SELECT count(*) FROM projects WHERE tenant_id = $1;",
    )
    .unwrap();
    for _ in 0..6 {
        c.batch_execute(&format!("BEGIN; SELECT nile.set_tenant('{ACME}')"))
            .unwrap();
        assert_eq!(attempt(&mut c, "EXECUTE names"), "acme-1,acme-2");
        assert_eq!(
            attempt(&mut c, &format!("EXECUTE by_tenant('{GLOBEX}')")),
            "0"
        );
        c.batch_execute("COMMIT").unwrap();
    }
    // The same generic plan after the context ended: nothing.
    refused(&mut c, "EXECUTE names", "NT001");
}

#[test]
fn plans_protocol_level_prepared_statement_after_the_transaction() {
    let s = Siege::new("protocol_prepared");
    let mut c = s.login("it_app");
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT nile.set_tenant($1::text::uuid)", &[&ACME])
        .unwrap();
    let statement = tx.prepare("SELECT name FROM projects").unwrap();
    assert_eq!(tx.query(&statement, &[]).unwrap().len(), 2);
    tx.commit().unwrap();
    assert_fails(c.query(&statement, &[]), "NT001");
}

#[test]
fn plans_plpgsql_cached_plan() {
    let mut s = Siege::new("plpgsql_plan");
    s.su.batch_execute(
        "CREATE FUNCTION project_names() RETURNS text LANGUAGE plpgsql AS $$
         BEGIN RETURN (SELECT string_agg(name, ',' ORDER BY name) FROM projects); END $$;",
    )
    .unwrap();
    let mut c = s.attacker();
    for _ in 0..6 {
        assert_eq!(attempt(&mut c, "SELECT project_names()"), "acme-1,acme-2");
    }
    c.batch_execute("RESET ALL").ok();
    let after = attempt(&mut c, "SELECT project_names()");
    assert!(
        after == "acme-1,acme-2" || after.starts_with("NT001"),
        "{after}"
    );
}

// ---------------------------------------------------------------------------------------------------------------------
// Parallel query
// ---------------------------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------------------
// Partitions and inheritance children
// ---------------------------------------------------------------------------------------------------------------------

#[test]
fn partitions_read_directly() {
    let mut s = Siege::new("partitions");
    s.su.batch_execute(&format!(
        "CREATE TABLE events (tenant_id uuid NOT NULL, at date NOT NULL, name text NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         CREATE TABLE events_2028 (tenant_id uuid NOT NULL, at date NOT NULL, name text NOT NULL);
         INSERT INTO events VALUES ('{ACME}', '2027-05-01', 'acme-27'), ('{GLOBEX}', '2027-05-01', '{SECRET}');
         INSERT INTO events_2028 VALUES ('{GLOBEX}', '2028-05-01', '{SECRET}');
         ALTER TABLE events ATTACH PARTITION events_2028 FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
         GRANT SELECT, INSERT ON events, events_2027, events_2028 TO it_attacker;"
    ))
    .unwrap();
    let mut c = s.attacker();
    assert_eq!(
        attempt(&mut c, "SELECT string_agg(name, ',') FROM events_2027"),
        "acme-27"
    );
    assert_eq!(attempt(&mut c, "SELECT count(*) FROM events_2028"), "0");
    assert_eq!(attempt(&mut c, "SELECT count(*) FROM events"), "1");
    refused(
        &mut c,
        &format!("INSERT INTO events_2027 VALUES ('{GLOBEX}', '2027-06-01', 'planted')"),
        "NT005",
    );
}

#[test]
fn inheritance_child_read_directly() {
    let mut s = Siege::new("inheritance");
    s.su.batch_execute(&format!(
        "CREATE TABLE docs (tenant_id uuid NOT NULL, name text NOT NULL);
         CREATE TABLE docs_archive () INHERITS (docs);
         INSERT INTO docs_archive VALUES ('{ACME}', 'acme-old'), ('{GLOBEX}', '{SECRET}');
         GRANT SELECT ON docs, docs_archive TO it_attacker;"
    ))
    .unwrap();
    let mut c = s.attacker();
    assert_eq!(
        attempt(&mut c, "SELECT string_agg(name, ',') FROM docs_archive"),
        "acme-old"
    );
    assert_eq!(
        attempt(&mut c, "SELECT string_agg(name, ',') FROM docs"),
        "acme-old"
    );
    assert_eq!(attempt(&mut c, "SELECT count(*) FROM ONLY docs"), "0");
}

// ---------------------------------------------------------------------------------------------------------------------
// Objects row-level security does not cover
// ---------------------------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------------------
// Leaky functions, operators and statistics
// ---------------------------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------------------
// Covert channels through keys: Postgres checks uniqueness and foreign keys across all rows. verify() flags keys
// without the tenant column; the composite keys it recommends close the channel.
// ---------------------------------------------------------------------------------------------------------------------

#[test]
fn covert_channel_unique_key() {
    let mut s = Siege::new("unique_channel");
    s.su.batch_execute(&format!(
        "CREATE TABLE members (tenant_id uuid NOT NULL, email text NOT NULL, CONSTRAINT members_email_key UNIQUE (email));
         GRANT SELECT, INSERT ON members TO it_attacker;
         INSERT INTO members VALUES ('{GLOBEX}', 'ceo@globex.example');"
    ))
    .unwrap();
    let mut c = s.attacker();
    // The channel: a duplicate-key error tells Acme that some tenant has this address.
    let probe = c.batch_execute("INSERT INTO members (email) VALUES ('ceo@globex.example')");
    let got = assert_fails(probe, "23505");
    assert!(!leaks(&got), "{got}");
    assert!(s
        .finding("constraint members_email_key%")
        .contains("unique key without the tenant column"));
    // The recommended fix closes it: the same insert now succeeds, and tells nothing.
    s.su.batch_execute(
        "ALTER TABLE members DROP CONSTRAINT members_email_key, ADD CONSTRAINT members_email_key UNIQUE (tenant_id, email)",
    )
    .unwrap();
    c.batch_execute("INSERT INTO members (email) VALUES ('ceo@globex.example')")
        .unwrap();
    assert_eq!(s.finding("constraint members_email_key%"), "");
}

#[test]
fn covert_channel_exclusion_constraint() {
    let mut s = Siege::new("exclusion_channel");
    s.su.batch_execute(&format!(
        "CREATE EXTENSION btree_gist;
         CREATE TABLE bookings (tenant_id uuid NOT NULL, room int NOT NULL, during tsrange NOT NULL,
                                CONSTRAINT bookings_room_excl EXCLUDE USING gist (room WITH =, during WITH &&));
         GRANT SELECT, INSERT ON bookings TO it_attacker;
         INSERT INTO bookings VALUES ('{GLOBEX}', 7, '[2026-12-24 09:00, 2026-12-24 17:00)');"
    ))
    .unwrap();
    let mut c = s.attacker();
    let probe =
        "INSERT INTO bookings (room, during) VALUES (7, '[2026-12-24 10:00, 2026-12-24 11:00)')";
    // The channel: a conflict tells Acme that some tenant has room 7 booked then (issue 17: verify() said nothing).
    let got = assert_fails(c.batch_execute(probe), "23P01");
    assert!(!leaks(&got), "{got}");
    assert!(s
        .finding("constraint bookings_room_excl%")
        .contains("exclusion constraint without the tenant column"));
    // The fix verify() gives closes it: the same insert now succeeds, and tells nothing.
    let fix: String = one(
        &mut s.su,
        "SELECT fix FROM nile.verify() WHERE object LIKE 'constraint bookings_room_excl%'",
    );
    s.su.batch_execute(&fix).unwrap();
    c.batch_execute(probe).unwrap();
    assert_eq!(s.finding("constraint bookings_room_excl%"), "");
    s.assert_globex_intact();
}

#[test]
fn covert_channel_foreign_key() {
    let mut s = Siege::new("foreign_key_channel");
    s.su.batch_execute(&format!(
        "CREATE TABLE accounts (tenant_id uuid NOT NULL, id bigint PRIMARY KEY);
         CREATE TABLE invoices (tenant_id uuid NOT NULL, account_id bigint NOT NULL,
                                CONSTRAINT invoices_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id));
         GRANT SELECT, INSERT ON accounts, invoices TO it_attacker;
         INSERT INTO accounts VALUES ('{GLOBEX}', 42);"
    ))
    .unwrap();
    let mut c = s.attacker();
    // The channel: the foreign-key check reads every tenant's rows, so Acme can point at (and so detect) Globex's
    // account 42.
    c.batch_execute("INSERT INTO invoices (account_id) VALUES (42)")
        .unwrap();
    assert!(s
        .finding("constraint invoices_account_fk%")
        .contains("does not include the tenant column"));
    // The recommended fix closes it: a key on (tenant_id, id) and a foreign key over both columns.
    s.su.batch_execute(
        "DELETE FROM invoices;
         ALTER TABLE accounts ADD CONSTRAINT accounts_tenant_id_key UNIQUE (tenant_id, id);
         ALTER TABLE invoices DROP CONSTRAINT invoices_account_fk,
             ADD CONSTRAINT invoices_account_fk FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, id);"
    )
    .unwrap();
    let probe = c.batch_execute("INSERT INTO invoices (account_id) VALUES (42)");
    let got = assert_fails(probe, "23503");
    assert!(!leaks(&got), "{got}");
    assert_eq!(s.finding("constraint invoices_account_fk%"), "");
}

// ---------------------------------------------------------------------------------------------------------------------
// The extension's own objects
// ---------------------------------------------------------------------------------------------------------------------

#[test]
fn own_objects_tenants_catalog() {
    let mut s = Siege::new("tenants_catalog");
    let mut c = s.attacker();
    assert_eq!(
        attempt(&mut c, "SELECT string_agg(name, ',') FROM nile.tenants"),
        "Acme"
    );
    let mut none = s.login("it_noexec");
    let got = attempt(&mut none, "SELECT count(*) FROM nile.tenants");
    assert!(got == "0" || got.starts_with("NT001"), "{got}");
}

#[test]
fn own_objects_audit_bindings_and_registry() {
    let mut s = Siege::new("own_tables");
    let mut c = s.attacker();
    // The audit and the bindings name tenants and people: nile_admin only. (The registry of tenant tables is
    // readable by everyone: it describes the schema, not any tenant.)
    for table in ["nile.admin_audit", "nile.role_bindings"] {
        refused(&mut c, &format!("SELECT * FROM {table}"), "42501");
    }
    refused(
        &mut c,
        "BEGIN; SELECT nile.admin_context('curious')",
        "42501",
    );
    refused(
        &mut c,
        &format!("SELECT nile.bind_role('it_attacker', '{GLOBEX}')"),
        "42501",
    );
    refused(&mut c, "SELECT nile.enable_tenancy('projects')", "42501");
    refused(
        &mut c,
        &format!("SELECT nile.delete_tenant('{GLOBEX}')"),
        "42501",
    );
    s.assert_globex_intact();
}

#[test]
fn own_objects_bound_role_cannot_leave() {
    let mut s = Siege::new("bound_role");
    let mut c = s.login("it_atk_bound");
    for (sql, sqlstate) in [
        (format!("BEGIN; SELECT nile.set_tenant('{GLOBEX}')"), "42501"),
        (format!("SET nile.tenant_id = '{GLOBEX}'"), "NT006"),
        ("SELECT nile.clear_tenant()".to_string(), "42501"),
        (
            format!(
                "SELECT nile.set_tenant_token('{}', is_local => false)",
                s.token(GLOBEX)
            ),
            "42501",
        ),
    ] {
        refused(&mut c, &sql, sqlstate);
    }
    // SET ROLE to an unbound role keeps the login role's binding.
    s.su.batch_execute("GRANT it_app TO it_atk_bound").unwrap();
    c.batch_execute("SET ROLE it_app").unwrap();
    assert_sees_only_acme(&mut c);
    refused(
        &mut c,
        &format!("BEGIN; SELECT nile.set_tenant('{GLOBEX}')"),
        "42501",
    );
    s.su.batch_execute("REVOKE it_app FROM it_atk_bound")
        .unwrap();
}

#[test]
fn own_objects_usage_views() {
    let mut s = Siege::new("usage_views");
    // Globex works a little, so that there is a Globex usage row to steal.
    s.su.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{GLOBEX}'); SELECT * FROM projects; COMMIT;"
    ))
    .unwrap();
    let mut c = s.attacker();
    for sql in [
        "SELECT * FROM nile.tenant_usage",
        "SELECT * FROM nile._usage()",
        "SELECT nile.reset_usage()",
        "SELECT * FROM nile.usage_history",
        "DELETE FROM nile.usage_history",
        "SELECT * FROM nile.noisy_neighbours",
        "SELECT * FROM nile.noisy_neighbours('1 day')",
        "SELECT * FROM nile._unflushed_usage()",
        "SELECT nile.flush_usage()",
    ] {
        refused(&mut c, sql, "42501");
    }
    assert_eq!(
        attempt(
            &mut c,
            "SELECT string_agg(tenant_id::text, ',') FROM nile.my_usage"
        ),
        ACME
    );
}

/// Issue 17, finding 3: an overload planted in a schema on the administrator's search_path must not run while
/// `nile.enable_tenancy()` / `nile.disable_tenancy()` read the table's catalog entry. `format(text, name, name)`
/// matches the catalog query's `format('%I.%I', nspname, relname)` better than `pg_catalog.format(text, VARIADIC
/// "any")`, so before the fix it ran with the caller's rights (here a superuser's) on every call.
#[test]
fn hijack_search_path_of_enable_and_disable_tenancy() {
    let mut s = Siege::new("search_path_format");
    let mut c = s.attacker();
    c.batch_execute(
        "CREATE TABLE public.loot (who text, superuser text);
         GRANT INSERT ON public.loot TO PUBLIC;
         CREATE FUNCTION public.format(text, name, name) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.loot VALUES (current_user, current_setting('is_superuser'));
             RETURN pg_catalog.format($1, $2, $3);
         END $$;",
    )
    .unwrap();
    s.su.batch_execute(
        "SET search_path = \"$user\", public;
         SET nile.auto_enable = off;
         CREATE TABLE public.invoices (tenant_id uuid NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id));
         SELECT nile.enable_tenancy('public.invoices');
         SELECT nile.disable_tenancy('public.invoices');
         SELECT nile.enable_tenancy('public.invoices');",
    )
    .unwrap();
    let fired: i64 = one(&mut s.su, "SELECT count(*) FROM public.loot");
    assert_eq!(
        fired, 0,
        "the planted format() ran inside enable/disable_tenancy"
    );
    // The table is enrolled as asked.
    let enrolled: bool = one(
        &mut s.su,
        "SELECT EXISTS (SELECT 1 FROM nile.tenant_tables WHERE relid = 'public.invoices'::regclass)",
    );
    assert!(enrolled);
    s.assert_globex_intact();
}

/// Issue 17, finding 4: `nile.for_each_tenant()` commits, so it cannot pin its search_path, and ran in the caller's:
/// overloads planted in `public` (`cardinality(uuid[])`, `format(text, bigint)`, `/(integer, numeric)`) beat
/// pg_catalog's polymorphic, variadic or casting ones and ran with the administrator's rights. Every call of its own is
/// now schema-qualified; the statement it is given still runs in the caller's search_path, as it should.
#[test]
fn hijack_search_path_of_for_each_tenant() {
    let mut s = Siege::new("search_path_for_each");
    let mut c = s.attacker();
    c.batch_execute(
        "CREATE TABLE public.loot (what text, who text);
         GRANT INSERT ON public.loot TO PUBLIC;
         CREATE FUNCTION public.cardinality(uuid[]) RETURNS integer LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.loot VALUES ('cardinality', current_user); RETURN pg_catalog.cardinality($1); END $$;
         CREATE FUNCTION public.format(text, bigint) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.loot VALUES ('format', current_user); RETURN pg_catalog.format($1, $2); END $$;
         CREATE FUNCTION public.trap_div(integer, numeric) RETURNS numeric LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.loot VALUES ('/', current_user); RETURN $1::numeric OPERATOR(pg_catalog./) $2; END $$;
         CREATE OPERATOR public./ (LEFTARG = integer, RIGHTARG = numeric, FUNCTION = public.trap_div);",
    )
    .unwrap();
    // The administrator's run: a statement that fails for Globex (so the failure path runs too), from a session
    // whose search_path has the attacker's schema on it.
    s.su.batch_execute(&format!(
        "SET search_path = \"$user\", public;
         CREATE FUNCTION public.refuse_globex() RETURNS integer LANGUAGE plpgsql AS $$
         BEGIN IF nile.current_tenant() = '{GLOBEX}' THEN RAISE EXCEPTION 'no'; END IF; RETURN 1; END $$;"
    ))
    .unwrap();
    // A statement of its own: the procedure commits.
    s.su.batch_execute(
        "CALL nile.for_each_tenant('SELECT public.refuse_globex()', batch_size => 1)",
    )
    .unwrap();
    let fired: Option<String> = one(
        &mut s.su,
        "SELECT string_agg(DISTINCT what || ' as ' || who, ', ') FROM public.loot",
    );
    assert_eq!(
        fired, None,
        "a planted overload ran inside nile.for_each_tenant()"
    );
    let (done, failed): (i32, i32) = {
        let row = s
            .su
            .query_one(
                "SELECT tenants_done, tenants_failed FROM nile.for_each_tenant_runs ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((done, failed), (2, 1));
    s.assert_globex_intact();
}

/// Issue 17 ("also seen"): with RUST_BACKTRACE set in the server's environment (scripts/cluster.sh starts every test
/// server so), an error that PostgreSQL raised inside the extension's Rust code reached the client with a Rust
/// backtrace in its DETAIL: file names, symbols and the extension's inner structure, to whoever can provoke an error.
/// Here `enable_tenancy()` waits for a lock past `lock_timeout`; the client must get 55P03 and nothing of Rust.
#[test]
fn leak_rust_backtrace_in_error_detail() {
    let mut s = Siege::new("backtrace");
    s.su.batch_execute(
        "SET nile.auto_enable = off;
         CREATE TABLE public.ledger (tenant_id uuid NOT NULL, amount int);",
    )
    .unwrap();
    let mut holder = connect(&s.db, "postgres");
    holder
        .batch_execute("BEGIN; LOCK TABLE public.ledger IN ACCESS SHARE MODE")
        .unwrap();
    s.su.batch_execute("SET lock_timeout = '200ms'").unwrap();
    let err =
        s.su.batch_execute("SELECT nile.enable_tenancy('public.ledger')")
            .expect_err("the table is locked by another session");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55P03", "{db:?}");
    for text in [Some(db.message()), db.detail(), db.hint(), db.where_()]
        .into_iter()
        .flatten()
    {
        assert!(
            !text.contains("backtrace")
                && !text.contains("rust_begin_unwind")
                && !text.contains(".rs:"),
            "a Rust backtrace reached the client: {text}"
        );
    }
    holder.batch_execute("ROLLBACK").unwrap();
    s.su.batch_execute("RESET lock_timeout; SELECT nile.enable_tenancy('public.ledger')")
        .unwrap();
}

/// Functions a table owner (`it_atk_owner`) hangs on its tables to learn who runs them: each records `current_user`,
/// `is_superuser` and the place it hangs in `public.trap_log`. The IMMUTABLE ones take no argument, so the planner
/// folds them to constants wherever it plans a query over their table.
const OWNER_TRAPS: &str = "
    CREATE TABLE public.trap_log (who text, super text, place text);
    GRANT INSERT ON public.trap_log TO PUBLIC;
    CREATE FUNCTION public.trap(place text) RETURNS int LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO public.trap_log VALUES (current_user, current_setting('is_superuser'), place); RETURN 1; END $$;
    CREATE FUNCTION public.trap_check() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('check'); END $$;
    CREATE FUNCTION public.trap_stat() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('statistics'); END $$;
    CREATE FUNCTION public.trap_pred() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.trap('predicate'); END $$;";

impl Siege {
    /// Every trap run with rights other than its owner's, as `who:place` (empty when there was none).
    fn traps_run_by_others(&mut self) -> String {
        one::<Option<String>>(
            &mut self.su,
            "SELECT string_agg(DISTINCT who || ':' || place, ', ') FROM public.trap_log WHERE who <> 'it_atk_owner'",
        )
        .unwrap_or_default()
    }
}

/// Issue 17, finding 1 (critical): the DDL event trigger's automatic enrolment, and `nile.enable_tenancy()`, planned
/// queries over the user's table as the bootstrap superuser (the NULL-tenant check, the foreign key's validation), and
/// planning evaluates the table owner's IMMUTABLE functions: CHECK constraints of inheritance children, statistics
/// and index-predicate expressions. Any role that could create a table ran code as superuser. Now every query over a
/// table and every change to it runs as its owner in a security-restricted operation.
#[test]
fn run_owner_code_as_superuser_through_enrolment() {
    let mut s = Siege::new("owner_code_enrolment");
    let mut owner = s.login("it_atk_owner");
    owner.batch_execute(OWNER_TRAPS).unwrap();
    owner
        .batch_execute(
            "-- The review's repro: a parent whose inheritance child has a trapping CHECK, given a tenant column.
             CREATE TABLE public.p (a int);
             CREATE TABLE public.c (CHECK (a > public.trap_check())) INHERITS (public.p);
             ALTER TABLE public.p ADD COLUMN tenant_id uuid;
             -- Statistics and a partial index over a table that is given a tenant column.
             CREATE TABLE public.s (a int);
             CREATE STATISTICS public.s_stat ON (a + public.trap_stat()), a FROM public.s;
             CREATE INDEX ON public.s (a) WHERE a > public.trap_pred();
             ALTER TABLE public.s ADD COLUMN tenant_id uuid;
             -- A table that joins an enrolled tree, with rows its foreign key validates.
             SET nile.auto_enable = off;
             CREATE TABLE public.kid (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL);
             CREATE STATISTICS public.kid_stat ON (id + public.trap_stat()), id FROM public.kid;
             RESET nile.auto_enable;",
        )
        .unwrap();
    s.su.batch_execute(&format!(
        "INSERT INTO public.kid VALUES ('{ACME}', 7, 'kid-row');
         SET nile.auto_enable = off;
         CREATE TABLE public.s2 (tenant_id uuid, a int);
         ALTER TABLE public.s2 OWNER TO it_atk_owner;"
    ))
    .unwrap();
    owner
        .batch_execute(
            "CREATE STATISTICS public.s2_stat ON (a + public.trap_stat()), a FROM public.s2;
             ALTER TABLE public.kid INHERIT public.projects;",
        )
        .unwrap();
    // An administrator (here the superuser) enrolls the owner's table by hand, from a fresh backend.
    let mut su = connect(&s.db, "postgres");
    su.batch_execute(&format!(
        "INSERT INTO public.s2 VALUES ('{ACME}', 1), (NULL, 2);
         SELECT nile.enable_tenancy('public.s2', backfill_tenant => '{ACME}');"
    ))
    .unwrap();
    let enrolled: i64 = one(
        &mut s.su,
        "SELECT count(*) FROM nile.tenant_tables
         WHERE relid IN ('public.p'::regclass, 'public.c'::regclass, 'public.s'::regclass, 'public.kid'::regclass,
                         'public.s2'::regclass)",
    );
    assert_eq!(enrolled, 5, "every table was enrolled");
    assert_eq!(s.traps_run_by_others(), "", "a table owner's function ran with other rights");
    let owner_is_superuser: bool = one(
        &mut s.su,
        "SELECT rolsuper FROM pg_roles WHERE rolname = 'it_atk_owner'",
    );
    assert!(!owner_is_superuser);
    // The owner was given no lasting REFERENCES on nile.tenants along the way.
    let references: bool = one(
        &mut s.su,
        "SELECT has_table_privilege('it_atk_owner', 'nile.tenants', 'REFERENCES')
                OR has_column_privilege('it_atk_owner', 'nile.tenants', 'id', 'REFERENCES')",
    );
    assert!(!references, "the owner kept REFERENCES on nile.tenants");
    s.assert_globex_intact();
}

/// Issue 17, finding 2: `nile.tenant_storage()` is SECURITY DEFINER and planned a query over every tenant table with
/// the superuser's rights, so a tenant table's owner ran code as superuser when an administrator called it. It now
/// reads each table with a heap scan that evaluates nothing of anybody's.
#[test]
fn run_owner_code_as_superuser_through_tenant_storage() {
    let mut s = Siege::new("owner_code_storage");
    let mut owner = s.login("it_atk_owner");
    owner.batch_execute(OWNER_TRAPS).unwrap();
    owner
        .batch_execute(
            "CREATE STATISTICS public.projects_stat ON (id + public.trap_stat()), id FROM public.projects;
             CREATE INDEX ON public.projects (id) WHERE id > public.trap_pred();",
        )
        .unwrap();
    let mut su = connect(&s.db, "postgres");
    let storage: String = one(
        &mut su,
        "SELECT string_agg(concat_ws(':', tenant_name, table_name, row_count), ',' ORDER BY tenant_name)
         FROM nile.tenant_storage()",
    );
    assert_eq!(storage, "Acme:projects:2,Globex:projects:1");
    assert_eq!(s.traps_run_by_others(), "", "a table owner's function ran with other rights");
}

/// Issue 17, finding 7: a purge deleted each table's rows as its owner with row-level security not forced, so a
/// statement trigger the owner added saw (and copied) every tenant's rows; and a setting the trigger changed stayed
/// changed in the administrator's session. Now the deletes run with the policies forced, in the purged tenant's
/// context, and the owner's setting changes are rolled back.
#[test]
fn copy_every_tenant_from_a_purge_trigger() {
    let mut s = Siege::new("purge_trigger");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.loot (name text);
             CREATE FUNCTION public.grab() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO public.loot SELECT name FROM public.projects;
                 PERFORM set_config('search_path', 'public', false);
                 PERFORM set_config('work_mem', '7777kB', false);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER grab BEFORE DELETE ON public.projects FOR EACH STATEMENT EXECUTE FUNCTION public.grab();",
        )
        .unwrap();
    let mut admin = connect(&s.db, "postgres");
    admin
        .batch_execute("SET search_path = pg_catalog; SET work_mem = '4MB';")
        .unwrap();
    admin
        .batch_execute(&format!(
            "SELECT nile.delete_tenant('{ACME}', purge => true)"
        ))
        .unwrap();
    let settings: String = one(
        &mut admin,
        "SELECT current_setting('search_path') || ' ' || current_setting('work_mem')",
    );
    assert_eq!(settings, "pg_catalog 4MB", "the purge trigger changed the session's settings");
    let loot: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM public.loot",
    );
    assert_eq!(loot, "acme-1,acme-2", "the purge trigger saw other tenants' rows");
    s.assert_globex_intact();
    let acme_rows: i64 = one(
        &mut s.su,
        &format!("SELECT count(*) FROM public.projects WHERE tenant_id = '{ACME}'"),
    );
    assert_eq!(acme_rows, 0, "the purge deleted Acme's rows");
}

/// Issue 17, finding 6: `ALTER TABLE projects INHERIT base` was accepted, and reading `base` (no row-level security)
/// returned the rows of `projects` of every tenant; `nile.verify()` said nothing. Now the DDL event trigger refuses it,
/// `nile.enable_tenancy()` refuses a table with such a parent, and `nile.verify()` reports one made behind the event
/// trigger's back.
#[test]
fn read_every_tenant_through_an_unprotected_parent() {
    let mut s = Siege::new("unprotected_parent");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.base (name text);
             GRANT SELECT ON public.base TO it_attacker;",
        )
        .unwrap();
    refused(
        &mut owner,
        "ALTER TABLE public.projects INHERIT public.base",
        "55000",
    );
    owner
        .batch_execute(
            "SET nile.auto_enable = off;
             CREATE TABLE public.kid (tenant_id uuid NOT NULL, name text) INHERITS (public.base);",
        )
        .unwrap();
    refused(&mut s.su, "SELECT nile.enable_tenancy('public.kid')", "55000");
    let mut c = s.attacker();
    assert_eq!(attempt(&mut c, "SELECT name FROM public.base"), "");
    // Made behind the event trigger's back (a superuser restoring with row_security off skips it): verify() says so.
    s.su.batch_execute(
        "SET row_security = off; ALTER TABLE public.projects INHERIT public.base; RESET row_security;",
    )
    .unwrap();
    let found = s.finding("%projects%inherits from public.base%");
    assert!(found.starts_with("error table public.projects"), "{found}");
    s.assert_globex_intact();
}

/// Issue 17, finding 5: `nile.import_schema()` read the legacy tables as the importing administrator, so a legacy
/// schema's owner ran code with the administrator's rights through a policy on its table (or any other code it hangs
/// there). Now each step reads a table as that table's owner; with two owners, the rows pass through a staging table.
#[test]
fn run_legacy_owner_code_as_the_importing_admin() {
    let mut s = Siege::new("import_legacy_code");
    ensure_login_role(&mut s.su, "it_atk_admin", "");
    s.su.batch_execute(&format!(
        "GRANT nile_admin TO it_atk_admin;
         CREATE SCHEMA legacy AUTHORIZATION it_attacker;
         GRANT USAGE ON SCHEMA legacy TO it_atk_admin;
         GRANT SELECT, INSERT ON public.projects TO it_atk_admin;
         SELECT nile.create_tenant('Initech', '{INITECH}');"
    ))
    .unwrap();
    // The legacy schema's owner (it_attacker, not an administrator) plants its code on its table: a policy it forces
    // on itself, and statistics the planner folds.
    let mut legacy_owner = s.login("it_attacker");
    legacy_owner.batch_execute(OWNER_TRAPS).unwrap();
    legacy_owner
        .batch_execute(
            "CREATE TABLE legacy.projects (id bigint NOT NULL, name text NOT NULL);
             INSERT INTO legacy.projects VALUES (1, 'initech-1'), (2, 'initech-2');
             ALTER TABLE legacy.projects ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
             CREATE POLICY spy ON legacy.projects USING (public.trap('policy') = 1);
             GRANT SELECT ON legacy.projects TO it_atk_admin;",
        )
        .unwrap();
    // A policy that applies to the administrator: refused (the owner would read rows it hides), and never run.
    let mut admin = s.login("it_atk_admin");
    refused(
        &mut admin,
        &format!("SELECT * FROM nile.import_schema('legacy', '{INITECH}')"),
        "42501",
    );
    // Planner-time code instead: statistics (with data) and a partial index, which the administrator's backend folds
    // when it plans its first query over the table.
    legacy_owner
        .batch_execute(
            "DROP POLICY spy ON legacy.projects;
             ALTER TABLE legacy.projects NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY;
             CREATE STATISTICS legacy.projects_stat ON (id + public.trap_stat()), id FROM legacy.projects;
             CREATE INDEX ON legacy.projects (id) WHERE id > public.trap_pred();
             ANALYZE legacy.projects;",
        )
        .unwrap();
    let mut admin = s.login("it_atk_admin");
    let copied: String = one(
        &mut admin,
        &format!(
            "SELECT string_agg(target_table || ':' || rows_copied, ',') FROM nile.import_schema('legacy', '{INITECH}')"
        ),
    );
    assert_eq!(copied, "projects:2");
    let imported: String = one(
        &mut s.su,
        &format!("SELECT string_agg(name, ',' ORDER BY id) FROM public.projects WHERE tenant_id = '{INITECH}'"),
    );
    assert_eq!(imported, "initech-1,initech-2");
    let runs: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT who, ','), '') FROM public.trap_log",
    );
    assert_eq!(runs, "it_attacker", "the legacy owner's code ran with other rights (or not at all)");
    s.assert_globex_intact();
}

/// Issue 17 review of the fix for finding 1: enrolment ran the owner's planner-time code as the owner but with row-level
/// security lifted (`SECURITY_NOFORCE_RLS`), so a table owner's IMMUTABLE function, folded while the extension
/// checked a new child of `projects` for rows of unknown tenants, read every tenant's rows of `projects`. Those checks
/// are heap scans now, and everything else runs as the owner with its tables' policies forced.
#[test]
fn read_every_tenant_from_owner_code_during_enrolment() {
    let mut s = Siege::new("owner_code_noforce");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.loot (name text);
             CREATE FUNCTION public.steal() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN
                 BEGIN INSERT INTO public.loot SELECT name FROM public.projects; EXCEPTION WHEN OTHERS THEN NULL; END;
                 RETURN 1;
             END $$;
             CREATE FUNCTION public.grab() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.steal(); END $$;
             SET nile.auto_enable = off;
             CREATE TABLE public.kid (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL);
             CREATE STATISTICS public.kid_stat ON (id + public.grab()), id FROM public.kid;
             RESET nile.auto_enable;
             ALTER TABLE public.kid INHERIT public.projects;
             CREATE TABLE public.p2 (a int);
             CREATE TABLE public.c2 (CHECK (a > public.grab())) INHERITS (public.p2);
             ALTER TABLE public.p2 ADD COLUMN tenant_id uuid;",
        )
        .unwrap();
    let enrolled: i64 = one(
        &mut s.su,
        "SELECT count(*) FROM nile.tenant_tables WHERE relid IN ('public.kid'::regclass, 'public.p2'::regclass)",
    );
    assert_eq!(enrolled, 2);
    let loot: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT name, ','), '') FROM public.loot",
    );
    assert!(!leaks(&loot), "the owner's code read other tenants' rows: {loot}");
    s.assert_globex_intact();
}

/// Review of issue 17's import (finding 5) fix, 1: the staging table had a predictable name and was created with IF NOT
/// EXISTS, so a nile_admin member could create it first, with a trigger, and have its function run as the source
/// table's owner (a superuser) when the rows went in. Each step now creates a table under a fresh random name.
#[test]
fn run_code_as_a_source_owner_through_a_staging_table_made_in_advance() {
    let mut s = Siege::new("import_stage_planted");
    ensure_login_role(&mut s.su, "it_atk_admin", "");
    s.su.batch_execute(
        "GRANT nile_admin TO it_atk_admin;
         GRANT CREATE ON SCHEMA public TO it_atk_admin;
         CREATE TABLE public.su_src (id bigint NOT NULL, a int);
         INSERT INTO public.su_src VALUES (1, 1);
         GRANT SELECT ON public.su_src TO it_atk_admin;
         CREATE TABLE public.stage_log (who text);
         GRANT INSERT ON public.stage_log TO PUBLIC;",
    )
    .unwrap();
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(
            "CREATE TABLE public.adm_t (tenant_id uuid NOT NULL, id bigint NOT NULL, a int);
             CREATE FUNCTION public.planted() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.stage_log VALUES (current_user); RETURN NULL; END $$;",
        )
        .unwrap();
    let target_oid: u32 = one(&mut admin, "SELECT 'public.adm_t'::regclass::oid");
    admin
        .batch_execute(&format!(
            "BEGIN;
             SELECT nile.set_tenant('{ACME}');
             CREATE TEMP TABLE nile_import_stage_{target_oid} (id bigint, a int);
             CREATE TRIGGER planted BEFORE INSERT ON pg_temp.nile_import_stage_{target_oid}
                 FOR EACH STATEMENT EXECUTE FUNCTION public.planted();
             SELECT nile._import_step('copy', 'public.su_src'::regclass, 'public.adm_t'::regclass, '{ACME}');
             COMMIT;"
        ))
        .unwrap();
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(who, ','), '') FROM public.stage_log",
    );
    assert_eq!(ran, "", "the planted trigger ran");
    let copied: i64 = one(&mut s.su, "SELECT count(*) FROM public.adm_t");
    assert_eq!(copied, 1);
}

impl Siege {
    /// Tenant Initech, a nile_admin member `it_atk_admin` with SELECT and INSERT on `projects`, and a legacy schema
    /// `legacy_su` of the superuser's with one table `projects (columns)` holding `rows`, which it_atk_admin may read.
    fn legacy_schema_of_a_superuser(&mut self, columns: &str, rows: &str) {
        ensure_login_role(&mut self.su, "it_atk_admin", "");
        self.su
            .batch_execute(&format!(
                "GRANT nile_admin TO it_atk_admin;
                 SELECT nile.create_tenant('Initech', '{INITECH}');
                 CREATE SCHEMA legacy_su;
                 CREATE TABLE legacy_su.projects ({columns});
                 INSERT INTO legacy_su.projects VALUES {rows};
                 GRANT USAGE ON SCHEMA legacy_su TO it_atk_admin;
                 GRANT SELECT ON legacy_su.projects TO it_atk_admin;
                 GRANT SELECT, INSERT ON public.projects TO it_atk_admin;"
            ))
            .unwrap();
    }
}

/// Review of issue 17's import fix, 2: with two owners, the staging table had the target's column types, so the
/// conversion into them, domain checks included, ran as the source's owner: a tenant table's owner whose column has
/// a domain with a CHECK of its own ran that function as the legacy table's owner (here a superuser). The values now
/// pass as text, converted by the target's owner.
#[test]
fn run_code_as_a_legacy_owner_through_a_domain_of_the_target() {
    let mut s = Siege::new("import_domain");
    s.legacy_schema_of_a_superuser("id bigint NOT NULL, name text NOT NULL, note text", "(1, 'initech-1', 'n1'), (2, 'initech-2', 'n2')");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.domain_log (who text);
             GRANT INSERT ON public.domain_log TO PUBLIC;
             CREATE FUNCTION public.note_ok(text) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.domain_log VALUES (current_user); RETURN true; END $$;
             CREATE DOMAIN public.note_t AS text CHECK (public.note_ok(VALUE));
             ALTER TABLE public.projects ADD COLUMN note public.note_t;",
        )
        .unwrap();
    let mut admin = s.login("it_atk_admin");
    let copied: String = one(
        &mut admin,
        &format!(
            "SELECT string_agg(target_table || ':' || rows_copied, ',') FROM nile.import_schema('legacy_su', '{INITECH}')"
        ),
    );
    assert_eq!(copied, "projects:2");
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT who, ','), '') FROM public.domain_log",
    );
    assert_eq!(ran, "it_atk_owner", "the target owner's domain ran with other rights");
    let notes: String = one(
        &mut s.su,
        &format!("SELECT string_agg(name || '/' || note, ',' ORDER BY id) FROM public.projects WHERE tenant_id = '{INITECH}'"),
    );
    assert_eq!(notes, "initech-1/n1,initech-2/n2");
}

/// Review of issue 17's finding 6 fix: `ALTER TABLE p ATTACH PARTITION projects` is reported to the event trigger
/// for `p` only, so with automatic enrolment off a tenant table became a partition of a table without row-level
/// security, through which every tenant's rows could be read. The tenant tables below a changed table are checked too.
#[test]
fn read_every_tenant_through_a_parent_it_is_attached_to() {
    let mut s = Siege::new("attach_to_parent");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "SET nile.auto_enable = off;
             CREATE TABLE public.p (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL) PARTITION BY LIST (tenant_id);
             GRANT SELECT ON public.p TO it_attacker;",
        )
        .unwrap();
    refused(
        &mut owner,
        "SET nile.auto_enable = off; ALTER TABLE public.p ATTACH PARTITION public.projects DEFAULT",
        "55000",
    );
    let mut c = s.attacker();
    assert_eq!(attempt(&mut c, "SELECT name FROM public.p"), "");
    s.assert_globex_intact();
}

/// Second review of issue 17's import fix, 1 and 3: the typecheck planned the conversion into the tenant table's types
/// as the legacy table's owner, so the tenant table's owner's cast (inlined, and its IMMUTABLE call folded) ran as that
/// owner, here a superuser; and a type name was split at a newline, which a quoted name may hold. Each half of the
/// copy is now planned as its own owner, and type names are never split.
#[test]
fn run_code_as_a_legacy_owner_through_a_cast_or_a_type_name_of_the_target() {
    let mut s = Siege::new("import_cast");
    s.legacy_schema_of_a_superuser("id bigint NOT NULL, name text NOT NULL, mood text, note text", "(1, 'initech-1', 'ok', 'n1')");
    s.su.batch_execute("CREATE TABLE public.canary ();").unwrap();
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE TABLE public.cast_log (who text);
             GRANT INSERT ON public.cast_log TO PUBLIC;
             CREATE FUNCTION public.cast_trap() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.cast_log VALUES (current_user); RETURN 1; END $$;
             CREATE FUNCTION public.cast_trap0() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.cast_trap(); END $$;
             CREATE TYPE public.mood AS ENUM ('ok', 'meh');
             CREATE FUNCTION public.to_mood(text) RETURNS public.mood IMMUTABLE LANGUAGE sql
                 AS $$ SELECT CASE WHEN public.cast_trap0() = 1 THEN (CASE $1 WHEN 'ok' THEN 'ok'::public.mood ELSE 'meh'::public.mood END) END $$;
             CREATE CAST (text AS public.mood) WITH FUNCTION public.to_mood(text) AS ASSIGNMENT;
             ALTER TABLE public.projects ADD COLUMN mood public.mood;
             CREATE DOMAIN public.\"x\n);DROP TABLE public.canary;--\" AS text;
             ALTER TABLE public.projects ADD COLUMN note public.\"x\n);DROP TABLE public.canary;--\";",
        )
        .unwrap();
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(&format!(
            "SELECT * FROM nile.import_schema('legacy_su', '{INITECH}')"
        ))
        .unwrap();
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT who, ','), '') FROM public.cast_log WHERE who <> 'it_atk_owner'",
    );
    assert_eq!(ran, "", "the target owner's cast ran with other rights");
    let canary: bool = one(&mut s.su, "SELECT to_regclass('public.canary') IS NOT NULL");
    assert!(canary, "a type name injected SQL");
    let imported: String = one(
        &mut s.su,
        &format!("SELECT string_agg(name || '/' || mood || '/' || note, ',') FROM public.projects WHERE tenant_id = '{INITECH}'"),
    );
    assert_eq!(imported, "initech-1/ok/n1");
}

/// Second review of issue 17's import fix, 2: a nile_admin member that owns the legacy table ran its own code while
/// the staging table was filled (as itself, the source's owner), renamed the staging table away and put a table of
/// its own, with statistics calling its function, under that name, which the tenant table's owner (a superuser) then
/// planned. The staging table is the extension's own now, and checked by name and contents before it is read.
#[test]
fn swap_the_staging_table_while_it_is_filled() {
    let mut s = Siege::new("import_swap");
    ensure_login_role(&mut s.su, "it_atk_admin", "");
    s.su.batch_execute(
        "GRANT nile_admin TO it_atk_admin;
         GRANT CREATE ON SCHEMA public TO it_atk_admin;
         CREATE TABLE public.su_target (tenant_id uuid NOT NULL, id bigint NOT NULL, a int);
         GRANT SELECT, INSERT ON public.su_target TO it_atk_admin;
         CREATE TABLE public.swap_log (who text, what text);
         GRANT INSERT ON public.swap_log TO PUBLIC;",
    )
    .unwrap();
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(
            "CREATE FUNCTION public.boom() RETURNS int LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.swap_log VALUES (current_user, 'boom'); RETURN 1; END $$;
             CREATE FUNCTION public.boom0() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.boom(); END $$;
             CREATE FUNCTION public.swap() RETURNS int LANGUAGE plpgsql AS $$
             DECLARE stage text;
             BEGIN
                 SELECT c.relname INTO stage FROM pg_class c
                 WHERE c.relnamespace = pg_my_temp_schema() AND c.relname LIKE 'nile_import_%';
                 IF stage IS NOT NULL THEN
                     BEGIN
                         EXECUTE format('ALTER TABLE pg_temp.%I RENAME TO nile_gone', stage);
                         EXECUTE format('ALTER TABLE pg_temp.evil RENAME TO %I', stage);
                         INSERT INTO public.swap_log VALUES (current_user, 'swapped');
                     EXCEPTION WHEN OTHERS THEN
                         INSERT INTO public.swap_log VALUES (current_user, 'refused: ' || SQLERRM);
                     END;
                 END IF;
                 RETURN 1;
             END $$;
             CREATE FUNCTION public.swap0() RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN RETURN public.swap(); END $$;
             CREATE TABLE public.adm_src (id bigint NOT NULL, a int);
             INSERT INTO public.adm_src SELECT g, g FROM generate_series(1, 20) g;
             CREATE STATISTICS public.adm_src_stat ON (a + public.swap0()), a FROM public.adm_src;
             ANALYZE public.adm_src;",
        )
        .unwrap();
    admin
        .batch_execute(&format!(
            "BEGIN;
             SELECT nile.set_tenant('{ACME}');
             CREATE TEMP TABLE evil (id text, a text);
             INSERT INTO evil SELECT g, g FROM generate_series(1, 20) g;
             CREATE STATISTICS evil_stat ON ((a::int) + public.boom0()), a FROM pg_temp.evil;
             ANALYZE pg_temp.evil;
             SELECT nile._import_step('copy', 'public.adm_src'::regclass, 'public.su_target'::regclass, '{ACME}');
             COMMIT;"
        ))
        .ok();
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(DISTINCT who || ':' || what, ','), '') FROM public.swap_log
         WHERE what = 'swapped' OR (what = 'boom' AND who <> 'it_atk_admin')",
    );
    assert_eq!(ran, "", "the staging table was swapped, or the admin's code ran as the superuser");
    let reached: i64 = one(&mut s.su, "SELECT count(*) FROM public.swap_log WHERE what LIKE 'refused%'");
    assert!(reached > 0, "the admin's code never reached the staging table: the test no longer tries the swap");
}

/// Third review of issue 17's import fix, 4: between two owners, values were converted from text with `format_type(…,
/// NULL)`'s name, `character`, which is char(1): a char(10) value lost all but its first character. And a caller's
/// `extra_float_digits = 0` dropped digits of floats. Both now read back exactly.
#[test]
fn lose_data_in_a_two_owner_import() {
    let mut s = Siege::new("import_text_round_trip");
    s.legacy_schema_of_a_superuser("id bigint NOT NULL, name text NOT NULL, code char(10), ratio float8", "(1, 'initech-1', 'ABCDEFGHIJ', 0.1 + 0.2)");
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute("ALTER TABLE public.projects ADD COLUMN code char(10), ADD COLUMN ratio float8")
        .unwrap();
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(&format!(
            "SET extra_float_digits = 0; SELECT * FROM nile.import_schema('legacy_su', '{INITECH}')"
        ))
        .unwrap();
    let same: bool = one(
        &mut s.su,
        &format!(
            "SELECT p.code = l.code AND p.ratio = l.ratio FROM public.projects p, legacy_su.projects l
             WHERE p.tenant_id = '{INITECH}' AND p.id = l.id"
        ),
    );
    assert!(same, "a value changed on its way through the staging table");
}

/// Third review of issue 17's import fix, 1: the names of the tables and types were read once, then used again after
/// the legacy owner's code had run: a nile_admin member owning the legacy table and the tenant table's schema renamed
/// that schema from its cast and put its own table, with a trigger, under the tenant table's name, which the tenant
/// table's owner (a superuser) then wrote to. The names are checked again before the second half runs.
#[test]
fn rename_the_target_while_the_source_is_read() {
    let mut s = Siege::new("import_rename");
    ensure_login_role(&mut s.su, "it_atk_admin", "");
    let db = s.db.clone();
    s.su.batch_execute(&format!(
        "GRANT nile_admin TO it_atk_admin;
         GRANT CREATE ON DATABASE {db} TO it_atk_admin;
         CREATE SCHEMA app AUTHORIZATION it_atk_admin;
         CREATE TABLE app.orders (tenant_id uuid NOT NULL, id bigint NOT NULL, note text);
         GRANT SELECT, INSERT ON app.orders TO it_atk_admin;
         CREATE TABLE public.rename_log (who text);
         GRANT INSERT ON public.rename_log TO PUBLIC;"
    ))
    .unwrap();
    let enrolled: bool = one(
        &mut s.su,
        "SELECT EXISTS (SELECT 1 FROM nile.tenant_tables WHERE relid = 'app.orders'::regclass)",
    );
    assert!(enrolled);
    let mut admin = s.login("it_atk_admin");
    admin
        .batch_execute(
            "CREATE SCHEMA lg;
             CREATE TYPE lg.c AS (x int);
             CREATE FUNCTION lg.c2t(lg.c) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN
                 IF to_regclass('app_real.orders') IS NULL THEN
                     ALTER SCHEMA app RENAME TO app_real;
                     CREATE SCHEMA app;
                     CREATE TABLE app.orders (tenant_id uuid, id bigint, note text);
                     GRANT INSERT, SELECT ON app.orders TO PUBLIC;
                     GRANT USAGE ON SCHEMA app TO PUBLIC;
                     CREATE FUNCTION app.p() RETURNS trigger LANGUAGE plpgsql AS $p$
                     BEGIN INSERT INTO public.rename_log VALUES (current_user); RETURN NEW; END $p$;
                     CREATE TRIGGER p BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.p();
                 END IF;
                 RETURN 'x';
             END $f$;
             CREATE CAST (lg.c AS text) WITH FUNCTION lg.c2t(lg.c);
             CREATE TABLE lg.orders (id bigint NOT NULL, note lg.c);
             INSERT INTO lg.orders VALUES (1, row(1));",
        )
        .unwrap();
    let outcome = admin.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{ACME}');
         SELECT nile._import_step('copy', 'lg.orders'::regclass, 'app.orders'::regclass, '{ACME}');
         COMMIT;"
    ));
    let _ = admin.batch_execute("ROLLBACK");
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(who, ','), '') FROM public.rename_log",
    );
    assert_eq!(ran, "", "the tenant table's owner wrote into a table put under its name");
    assert!(outcome.is_err(), "the import went on after the rename");
}

/// Third review of issue 17's purge fix: a purge formatted every table's name up front, then deleted table by table,
/// each as its owner, after earlier tables' triggers had run: an owner whose table is purged first, owning the schema
/// of another owner's tenant table, renamed that schema from its trigger and put its own table, with a trigger,
/// under that name, whose trigger then ran as the other owner. Each table is named from its oid just before its
/// delete.
#[test]
fn rename_a_table_purged_later_from_a_purge_trigger() {
    let mut s = Siege::new("purge_rename");
    ensure_login_role(&mut s.su, "it_atk_victim", "");
    let db = s.db.clone();
    s.su.batch_execute(&format!(
        "GRANT CREATE ON DATABASE {db} TO it_atk_owner;
         CREATE TABLE public.purge_log (who text);
         GRANT INSERT ON public.purge_log TO PUBLIC;"
    ))
    .unwrap();
    let mut owner = s.login("it_atk_owner");
    owner
        .batch_execute(
            "CREATE SCHEMA vs;
             GRANT USAGE, CREATE ON SCHEMA vs TO it_atk_victim;
             CREATE FUNCTION public.rename_vs() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
                 IF to_regclass('vs_real.victim') IS NULL THEN
                     ALTER SCHEMA vs RENAME TO vs_real;
                     CREATE SCHEMA vs;
                     GRANT USAGE ON SCHEMA vs TO PUBLIC;
                     SET LOCAL nile.auto_enable = off;
                     CREATE TABLE vs.victim (tenant_id uuid);
                     GRANT DELETE, SELECT ON vs.victim TO PUBLIC;
                     CREATE FUNCTION vs.p() RETURNS trigger LANGUAGE plpgsql AS $p$
                     BEGIN
                         -- As the second owner: it can empty its real table, so that the purge succeeds and commits.
                         DELETE FROM vs_real.victim;
                         INSERT INTO public.purge_log VALUES (current_user);
                         RETURN NULL;
                     END $p$;
                     CREATE TRIGGER p BEFORE DELETE ON vs.victim FOR EACH STATEMENT EXECUTE FUNCTION vs.p();
                 END IF;
                 RETURN NULL;
             END $f$;
             CREATE TRIGGER rename_vs BEFORE DELETE ON public.projects FOR EACH STATEMENT EXECUTE FUNCTION public.rename_vs();",
        )
        .unwrap();
    let mut victim = s.login("it_atk_victim");
    victim
        .batch_execute("CREATE TABLE vs.victim (tenant_id uuid NOT NULL, note text)")
        .unwrap();
    s.su.batch_execute(&format!(
        "BEGIN; SELECT nile.set_tenant('{ACME}'); INSERT INTO vs.victim VALUES ('{ACME}', 'v'); COMMIT;"
    ))
    .unwrap();
    let order: String = one(
        &mut s.su,
        "SELECT string_agg(relid::regclass::text, ',' ORDER BY load_order DESC) FROM nile._tenant_tables_in_load_order()",
    );
    // The purge goes through the tables in the reverse of their load order: projects before vs.victim here.
    assert!(order.ends_with("projects,vs.victim"), "projects must be purged before vs.victim: {order}");
    let _ = s
        .su
        .batch_execute(&format!("SELECT nile.delete_tenant('{ACME}', purge => true)"));
    let ran: String = one(
        &mut s.su,
        "SELECT coalesce(string_agg(who, ','), '') FROM public.purge_log",
    );
    assert_eq!(ran, "", "the first owner's trigger ran as the second owner");
}
