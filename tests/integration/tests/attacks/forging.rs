//! Context forging: no path but nile.set_tenant() (and the token and binding mechanisms) sets the tenant context.

use super::*;

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
