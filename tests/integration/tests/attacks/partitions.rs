//! Partitions and inheritance children: read directly, they show only the session's tenant.

use super::*;

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
