//! pg_tests — in-server unit tests (`cargo pgrx test`). Each test runs in one transaction of one session, as a
//! superuser, and is rolled back at the end; roles it creates vanish with it. Multi-session behaviour (transaction
//! boundaries, concurrent sessions, connection options, parallel workers) is in tests/integration.
//!
//! pgrx runs a test by calling the SQL function `tests.<name>()`, and creates a function in the schema of the
//! `#[pgrx::pg_schema]` module that declares it (not of an enclosing one), so each file below declares its tests in a
//! `#[pgrx::pg_schema] mod tests` of its own; this file holds what they share: the tenants' ids, the fixture and the
//! SPI helpers.
//!
//! - `tenants`: UUIDv7, bad arguments, the tenant lifecycle and purge
//! - `context`: `set_tenant()`'s checks, forging the context, subtransactions and prepared statements
//! - `tables`: enrolment refused and repeated, partitions, `disable_tenancy()`
//! - `isolation`: own rows only, no context fails closed, inactive and deleted tenants, the index condition
//! - `admin`: the admin context

mod admin;
mod context;
mod isolation;
mod tables;
mod tenants;

use pgrx::prelude::*;

const ACME: &str = "0a0a0a0a-0000-7000-8000-000000000001";
const GLOBEX: &str = "0b0b0b0b-0000-7000-8000-000000000002";
const GONE: &str = "0c0c0c0c-0000-7000-8000-000000000003";

fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// First column of the first row; runs read-write so that EXECUTE, EXPLAIN and friends work too.
fn value<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
    Spi::connect_mut(|client| {
        let mut rows = client
            .update(sql, None, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.next()
            .and_then(|row| row.get::<T>(1).unwrap_or_else(|e| panic!("{sql}: {e}")))
    })
}

/// Runs `sql` in a subtransaction (a PL/pgSQL exception block) and returns "SQLSTATE: message" if it failed, None if
/// it succeeded. A failed attempt is rolled back completely, including any SET LOCAL ROLE it began with.
fn failure_of(sql: &str) -> Option<String> {
    Spi::get_one_with_args::<String>("SELECT pg_temp.failure_of($1)", &[sql.into()])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[track_caller]
fn assert_sqlstate(sql: &str, sqlstate: &str) {
    match failure_of(sql) {
        Some(failure) => assert!(
            failure.starts_with(sqlstate),
            "{sql}\n  expected SQLSTATE {sqlstate}, got {failure}"
        ),
        None => panic!("{sql}\n  expected SQLSTATE {sqlstate}, but it succeeded"),
    }
}

/// Two tenants, a deleted one, an enrolled table `projects` with a row per live tenant, and a role `app` that may
/// set the tenant context and use the table (a plain application role: not the owner, no BYPASSRLS).
fn fixture() {
    // Policy expressions as pg_get_expr prints them, without the column alias it adds to the subquery.
    run(
        r"CREATE FUNCTION pg_temp.policy_text(e text) RETURNS text LANGUAGE sql IMMUTABLE
          AS $f$ SELECT regexp_replace(regexp_replace(e, ' AS \w+\)', ')', 'g'), '\( SELECT ', '(SELECT ', 'g') $f$",
    );
    run(
        "CREATE FUNCTION pg_temp.failure_of(sql text) RETURNS text LANGUAGE plpgsql AS $f$
         BEGIN EXECUTE sql; RETURN NULL;
         EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $f$",
    );
    run(&format!(
        "SELECT nile.create_tenant('Acme', '{ACME}'), nile.create_tenant('Globex', '{GLOBEX}'),
                nile.create_tenant('Gone', '{GONE}');
         SELECT nile.delete_tenant('{GONE}');
         CREATE TABLE public.projects (tenant_id uuid NOT NULL, id bigint NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
         SELECT nile.enable_tenancy('public.projects');
         CREATE ROLE app NOLOGIN; GRANT nile_app TO app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.projects TO app;
         SET LOCAL ROLE app;
         SELECT nile.set_tenant('{ACME}');  INSERT INTO public.projects (id, name) VALUES (1, 'acme-1'), (2, 'acme-2');
         SELECT nile.set_tenant('{GLOBEX}'); INSERT INTO public.projects (id, name) VALUES (1, 'globex-1');
         SELECT nile.clear_tenant();
         RESET ROLE;"
    ));
}
