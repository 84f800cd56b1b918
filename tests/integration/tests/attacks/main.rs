//! The attack suite: each test is one attempt to cross tenants from a hostile SQL session, asserting that no other
//! tenant's row is returned, counted, changed or revealed. docs/security.md's "Attack catalogue" lists them all.
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

mod covert_channels;
mod forging;
mod import_schema;
mod leaky;
mod own_objects;
mod owner_code;
mod parallel;
mod partitions;
mod plans;
mod policies;
mod privileges;
mod uncovered;

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
