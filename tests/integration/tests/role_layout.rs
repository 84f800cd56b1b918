//! The role layout of examples/role_layout.sql (issue 18, problems 1–4): a migration role that is neither superuser
//! nor administrator changes the schema of tenant tables with no tenant context; foreign keys are validated over every
//! tenant's rows, never over one tenant's view; and no foreign key to nile.tenants can run its creator's code with the
//! rights of that table's owner.

use nile_tenancy_integration::*;

const LAYOUT: &str = include_str!("../../../examples/role_layout.sql");

/// A fresh database with the extension, tenants Acme and Globex, and the layout applied.
fn layout_scenario(name: &str) -> String {
    let db = format!("it_{name}");
    let mut su = connect("postgres", "postgres");
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut c = connect(&db, "postgres");
    c.batch_execute("CREATE EXTENSION nile_tenancy").unwrap();
    c.batch_execute(LAYOUT)
        .unwrap_or_else(|e| panic!("examples/role_layout.sql: {e:?}"));
    c.batch_execute(&format!(
        "SELECT nile.create_tenant('Acme', '{ACME}'), nile.create_tenant('Globex', '{GLOBEX}')"
    ))
    .unwrap();
    db
}

/// `nile.verify()`'s findings, except those about roles other than the layout's (the cluster is shared with the other
/// tests, whose roles are not this database's concern).
fn findings(client: &mut postgres::Client) -> String {
    one::<Option<String>>(
        client,
        "SELECT string_agg(severity || ' ' || object || ': ' || problem, E'\\n' ORDER BY object)
         FROM nile.verify()
         WHERE object NOT LIKE 'role %' OR object IN ('role app_migrator', 'role app_user')",
    )
    .unwrap_or_default()
}

#[test]
fn the_documented_layout_passes_verify_and_its_migration_role_changes_the_schema_without_a_context()
{
    let db = layout_scenario("layout_migrations");
    let mut migrator = connect(&db, "app_migrator");
    // Problem 3: REFERENCES nile.tenants (id) written by a role that is not a superuser. Problem 1: a composite foreign
    // key between two enrolled (here empty) tables, and Django's single-column, deferrable one.
    migrator
        .batch_execute(
            "CREATE TABLE accounts (
                 tenant_id uuid NOT NULL REFERENCES nile.tenants (id) ON DELETE CASCADE,
                 id bigint GENERATED ALWAYS AS IDENTITY,
                 name text NOT NULL,
                 PRIMARY KEY (tenant_id, id));
             CREATE TABLE invoices (
                 tenant_id uuid NOT NULL REFERENCES nile.tenants (id) ON DELETE CASCADE,
                 id bigint GENERATED ALWAYS AS IDENTITY,
                 account_id bigint NOT NULL,
                 PRIMARY KEY (tenant_id, id));
             ALTER TABLE invoices ADD CONSTRAINT invoices_account_fk
                 FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, id);
             ALTER TABLE invoices ADD COLUMN total numeric NOT NULL DEFAULT 0;
             CREATE INDEX invoices_total_idx ON invoices (tenant_id, total);",
        )
        .unwrap_or_else(|e| panic!("the migration role's DDL: {e:?}"));
    // Problem 4: the owner enrolls a table itself, without being an administrator.
    migrator
        .batch_execute(
            "BEGIN; SET LOCAL nile.auto_enable = off;
             CREATE TABLE notes (tenant_id uuid NOT NULL, id bigint NOT NULL, body text, PRIMARY KEY (tenant_id, id));
             COMMIT;
             SELECT nile.enable_tenancy('notes');",
        )
        .unwrap_or_else(|e| panic!("enable_tenancy() by the owner: {e:?}"));
    assert_eq!(
        one::<i64>(
            &mut migrator,
            "SELECT count(*) FROM nile.tenant_tables WHERE relid::text IN ('accounts', 'invoices', 'notes')"
        ),
        3
    );
    // Removing the protection stays an administrator's decision, and so does undoing it.
    assert_fails(
        migrator.batch_execute("SELECT nile.disable_tenancy('notes')"),
        "42501",
    );
    let mut su = connect(&db, "postgres");
    su.batch_execute("SELECT nile.disable_tenancy('notes')")
        .unwrap();
    assert_fails(
        migrator.batch_execute("SELECT nile.enable_tenancy('notes')"),
        "42501",
    );
    su.batch_execute("SELECT nile.enable_tenancy('notes')")
        .unwrap();

    // The application works in its tenants' contexts with what the default privileges gave it.
    let mut app = connect(&db, "app_user");
    for (tenant, name) in [(ACME, "acme"), (GLOBEX, "globex")] {
        let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, tenant);
        tx.batch_execute(&format!(
            "INSERT INTO accounts (name) VALUES ('{name}');
             INSERT INTO invoices (account_id, total) SELECT id, 10 FROM accounts;"
        ))
        .unwrap_or_else(|e| panic!("the application's writes for {name}: {e:?}"));
        assert_eq!(visible_in(&mut tx, "accounts"), name);
        tx.commit().unwrap();
    }
    // Django's foreign key: one column, deferrable, added while both tables hold rows of two tenants.
    migrator
        .batch_execute(
            "ALTER TABLE accounts ADD CONSTRAINT accounts_id_key UNIQUE (id);
             ALTER TABLE invoices ADD CONSTRAINT invoices_account_id_fk_accounts_id
                 FOREIGN KEY (account_id) REFERENCES accounts (id) DEFERRABLE INITIALLY DEFERRED",
        )
        .unwrap_or_else(|e| panic!("a single-column deferrable foreign key: {e:?}"));
    migrator
        .batch_execute(
            "ALTER TABLE invoices DROP CONSTRAINT invoices_account_id_fk_accounts_id;
             ALTER TABLE accounts DROP CONSTRAINT accounts_id_key;",
        )
        .unwrap();

    let mut su = connect(&db, "postgres");
    assert_eq!(
        findings(&mut su),
        "",
        "nile.verify() with the documented layout"
    );

    // The migration role can take it all down again.
    migrator
        .batch_execute("DROP TABLE invoices; DROP TABLE accounts; DROP TABLE notes;")
        .unwrap_or_else(|e| panic!("DROP TABLE by the migration role: {e:?}"));
    assert_eq!(findings(&mut su), "");
}

#[test]
fn a_foreign_key_is_validated_over_every_tenants_rows_never_over_one_tenants_view() {
    let db = layout_scenario("layout_fk_validation");
    let mut migrator = connect(&db, "app_migrator");
    migrator
        .batch_execute(
            "CREATE TABLE parents (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id));
             CREATE TABLE children (tenant_id uuid NOT NULL, id int NOT NULL, parent_id int NOT NULL, PRIMARY KEY (tenant_id, id));",
        )
        .unwrap();
    // Acme's child has its parent; Globex's child points at a parent that does not exist.
    let mut app = connect(&db, "app_user");
    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, ACME);
    tx.batch_execute(
        "INSERT INTO parents VALUES (DEFAULT, 1); INSERT INTO children VALUES (DEFAULT, 1, 1);",
    )
    .unwrap();
    tx.commit().unwrap();
    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, GLOBEX);
    tx.batch_execute("INSERT INTO children VALUES (DEFAULT, 1, 99)")
        .unwrap();
    tx.commit().unwrap();

    let add = "ALTER TABLE children ADD CONSTRAINT children_parent_fk FOREIGN KEY (tenant_id, parent_id) REFERENCES parents (tenant_id, id)";
    // Without a context: before the fix, 42501 (no tenant context) from the validation query.
    assert_fails(migrator.batch_execute(add), "23503");
    assert_fails(
        migrator.batch_execute(&format!(
            "BEGIN; {add} NOT VALID; ALTER TABLE children VALIDATE CONSTRAINT children_parent_fk; COMMIT;"
        )),
        "23503",
    );
    migrator.batch_execute("ROLLBACK").unwrap();

    // In Acme's context, as an owner that may enter one: before the fix, the validation saw Acme's rows only and
    // marked the constraint valid while Globex's row dangled.
    let mut su = connect(&db, "postgres");
    su.batch_execute("GRANT nile_app TO app_migrator").unwrap();
    let mut migrator = connect(&db, "app_migrator");
    for mode in [
        "",
        " NOT VALID; ALTER TABLE children VALIDATE CONSTRAINT children_parent_fk",
    ] {
        let mut tx = begin_as(&mut migrator, postgres::IsolationLevel::ReadCommitted, ACME);
        assert_fails(tx.batch_execute(&format!("{add}{mode}")), "23503");
        tx.rollback().unwrap();
    }
    su.batch_execute("REVOKE nile_app FROM app_migrator")
        .unwrap();

    // Once the dangling row is gone, the same statement passes, without a context.
    let mut tx = begin_as(&mut app, postgres::IsolationLevel::ReadCommitted, GLOBEX);
    tx.batch_execute("DELETE FROM children").unwrap();
    tx.commit().unwrap();
    let mut migrator = connect(&db, "app_migrator");
    migrator
        .batch_execute(add)
        .unwrap_or_else(|e| panic!("the foreign key over sound rows: {e:?}"));
    assert_eq!(
        one::<bool>(
            &mut su,
            "SELECT convalidated FROM pg_constraint WHERE conname = 'children_parent_fk'"
        ),
        true
    );
}

#[test]
fn no_foreign_key_to_nile_tenants_can_run_its_creators_cast_as_the_tables_owner() {
    let db = layout_scenario("layout_casts");
    let mut migrator = connect(&db, "app_migrator");
    migrator
        .batch_execute(
            "CREATE TYPE org_ref AS (id text);
             CREATE FUNCTION org_ref_uuid(org_ref) RETURNS uuid LANGUAGE sql
                 AS $$ SELECT ($1).id::uuid $$;",
        )
        .unwrap();
    // With a cast to uuid, a foreign key from an org_ref column to nile.tenants would run org_ref_uuid() as the owner
    // of nile.tenants (a superuser) on every lookup; the lookup writes $1::uuid, which applies an explicit cast too.
    for context in ["AS IMPLICIT", "AS ASSIGNMENT", ""] {
        assert_fails(
            migrator.batch_execute(&format!(
                "CREATE CAST (org_ref AS uuid) WITH FUNCTION org_ref_uuid(org_ref) {context}"
            )),
            "42501",
        );
    }
    // A cast a superuser made, and a foreign key from a column that is not uuid, are reported.
    let mut su = connect(&db, "postgres");
    su.batch_execute(
        "CREATE CAST (org_ref AS uuid) WITH FUNCTION org_ref_uuid(org_ref) AS IMPLICIT;
         CREATE TABLE org_refs (org org_ref REFERENCES nile.tenants (id));",
    )
    .unwrap();
    assert_eq!(
        findings(&mut su),
        "error cast from public.org_ref to uuid: runs function public.org_ref_uuid(public.org_ref): a foreign key from a column of type public.org_ref to nile.tenants would run it with the rights of the owner of nile.tenants\n\
         error constraint org_refs_org_fkey on public.org_refs: foreign key to nile.tenants from column org of type public.org_ref, not uuid: each lookup converts it with a cast, run with the rights of the owner of nile.tenants"
    );
}

#[test]
fn a_purge_never_runs_a_table_owners_trigger_with_the_administrators_rights() {
    let db = layout_scenario("layout_purge");
    let mut migrator = connect(&db, "app_migrator");
    // A table that is not a tenant table (its column is not called tenant_id), cascading from nile.tenants, with AFTER
    // triggers (row and statement level) that record the role they run as (as a superuser, they could make their
    // owner one). Its owner's forced policies hide the row from the purge's own DELETE, so that deleting the tenant
    // cascades into it.
    migrator
        .batch_execute(
            "CREATE TABLE seats (org uuid NOT NULL REFERENCES nile.tenants (id) ON DELETE CASCADE);
             CREATE TABLE seen_as (who text, level text);
             CREATE FUNCTION note_role() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO public.seen_as VALUES (current_user, TG_LEVEL); RETURN NULL; END $$;
             CREATE TRIGGER seats_after_statement AFTER DELETE ON seats FOR EACH STATEMENT EXECUTE FUNCTION note_role();
             CREATE TRIGGER seats_after_row AFTER DELETE ON seats FOR EACH ROW EXECUTE FUNCTION note_role();
             ALTER TABLE seats ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
             CREATE POLICY seats_read ON seats FOR SELECT USING (true);
             CREATE POLICY seats_keep ON seats FOR DELETE USING (false);
             -- Where the triggers run as nile_purger (14-17), they may record it: the owner lets them.
             GRANT INSERT ON seen_as TO nile_purger;",
        )
        .unwrap();
    let mut su = connect(&db, "postgres");
    su.batch_execute(&format!("INSERT INTO seats VALUES ('{GLOBEX}')"))
        .unwrap();
    su.batch_execute(&format!(
        "SELECT nile.delete_tenant('{GLOBEX}', purge => true)"
    ))
    .unwrap_or_else(|e| panic!("the purge: {e:?}"));
    assert_eq!(one::<i64>(&mut su, "SELECT count(*) FROM seats"), 0);
    // PostgreSQL 14-17 fire the cascade's AFTER triggers as the role that deleted the tenant's row: before the fix,
    // the superuser; now nile_purger, which can do nothing. PostgreSQL 18 fires them as the table's owner.
    let seen = one::<String>(
        &mut su,
        "SELECT string_agg(DISTINCT who, ',' ORDER BY who) FROM seen_as",
    );
    assert!(
        seen.split(',')
            .all(|who| who == "app_migrator" || who == "nile_purger"),
        "the owner's triggers ran as {seen}"
    );
    assert_eq!(
        one::<String>(
            &mut su,
            "SELECT string_agg(DISTINCT level, ',' ORDER BY level) FROM seen_as"
        ),
        "ROW,STATEMENT"
    );
    assert_eq!(
        one::<i64>(
            &mut su,
            &format!("SELECT count(*) FROM nile.tenants WHERE id = '{GLOBEX}'")
        ),
        0
    );
}

#[test]
fn the_enrolments_index_is_kept_while_it_is_the_tenant_columns_only_index() {
    let db = layout_scenario("layout_index");
    let mut migrator = connect(&db, "app_migrator");
    migrator
        .batch_execute(
            "CREATE TABLE events (tenant_id uuid NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        )
        .unwrap();
    let index = one::<String>(
        &mut migrator,
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'events'::regclass",
    );
    assert_eq!(index, "nile_events_tenant_id_idx");
    // What drizzle-kit push and Alembic's autogenerate (without the filter) propose: refused while it is the only index
    // leading with the tenant column (before the fix, the drop went through).
    let refused = assert_fails(
        migrator.batch_execute(&format!("DROP INDEX {index}")),
        "2BP01",
    );
    assert!(
        refused.contains("no other index leading with its tenant column"),
        "{refused}"
    );
    // With another such index it may go, and the table itself may always go.
    migrator
        .batch_execute(&format!(
            "CREATE INDEX events_by_tenant_and_time ON events (tenant_id, at); DROP INDEX {index}; DROP TABLE events;"
        ))
        .unwrap_or_else(|e| panic!("dropping the index once another one leads with tenant_id: {e:?}"));
}
