//! Covert channels through keys: Postgres checks uniqueness and foreign keys across all rows. verify() flags keys
//! without the tenant column; the composite keys it recommends close the channel.

use super::*;

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
