//! pg/spi_util — the only way the extension runs its own SQL (scripts/check_sql.py fails `make test` on any other SPI
//! call in src/), each with the failure handling it needs.
//!
//! Every statement is checked here to run with `search_path = pg_catalog, pg_temp` (src/pg/privilege.rs pins it): SQL
//! of ours that ran in a caller's search_path would call whatever function or operator overloads the caller's schemas
//! hold (issue 17). The check raises XX000 rather than run it; the whole test suite runs through it.
//!
//! Data-changing statements are always run without a row limit: a limited SPI execution stops the executor early,
//! and the statement-level trigger that invalidates the tenant caches (sql/tenants.sql) would not fire.

use crate::pg::errors::OrInternal;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData, SpiTupleTable};
use pgrx::PgOid;

/// The search_path every statement of the extension runs with.
pub(super) const PINNED_SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Raise XX000 unless the session's search_path is `PINNED_SEARCH_PATH`.
#[track_caller]
fn require_pinned_search_path() {
    // SAFETY: namespace_search_path is the search_path GUC's string variable, always set (its boot value is
    // "\"$user\", public") and NUL-terminated; it is only read here.
    let path = unsafe { std::ffi::CStr::from_ptr(pg_sys::namespace_search_path) };
    if path.to_bytes() != PINNED_SEARCH_PATH.as_bytes() {
        crate::pg::errors::Problem::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!(
                "nile_tenancy: a statement of the extension would run with search_path = {}",
                path.to_string_lossy()
            ),
        )
        .raise();
    }
}

/// Run a read-only query; its rows.
#[track_caller]
pub fn select<'c>(
    client: &'c SpiClient<'_>,
    sql: &str,
    limit: Option<libc::c_long>,
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'c> {
    require_pinned_search_path();
    client
        .select(sql, limit, args)
        .or_internal("reading the catalogs")
}

/// Column `ordinal` (1-based) of a row whose query never yields NULL there (catalog columns, expressions over them).
/// A failed read or a NULL is a bug in our query, raised as an internal error rather than replaced by a default.
#[track_caller]
pub fn required_column<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData<'_>, ordinal: usize) -> T {
    match row.get::<T>(ordinal).or_internal("reading a query result") {
        Some(value) => value,
        None => crate::pg::errors::Problem::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("nile_tenancy: column {ordinal} of a catalog query was NULL"),
        )
        .raise(),
    }
}

/// The first column of the first row a read-only query returns, or `None` (no row, or NULL).
pub fn first_value<T: FromDatum + IntoDatum>(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> Option<T> {
    let mut rows = select(client, sql, None, args);
    rows.next()
        .and_then(|row| row.get::<T>(1).or_internal("reading a query result"))
}

/// Run a data-changing statement to completion and return the first column of the first row it returns (RETURNING).
pub fn write_returning<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> Option<T> {
    require_pinned_search_path();
    Spi::connect_mut(|client| {
        let mut rows = client
            .update(sql, None, args)
            .or_internal("changing nile_tenancy's tables");
        rows.next()
            .and_then(|row| row.get::<T>(1).or_internal("reading a RETURNING result"))
    })
}

/// Run a statement to completion for its effect; returns how many rows it processed.
pub fn execute(client: &mut SpiClient<'_>, sql: &str, args: &[DatumWithOid<'_>]) -> usize {
    require_pinned_search_path();
    client
        .update(sql, None, args)
        .or_internal("changing a table")
        .len()
}

/// `first_value` in a connection of its own.
pub fn query_value<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Option<T> {
    Spi::connect(|client| first_value(client, sql, args))
}

thread_local! {
    /// Plans of the queries the DDL event triggers run on every DDL command, prepared once per backend.
    static SAVED_PLANS: std::cell::RefCell<std::collections::HashMap<&'static str, OwnedPreparedStatement>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Run `sql` (read-only unless `mutating`) through a plan saved for the life of the backend, so that a query run on
/// every DDL command is parsed and planned once. Postgres replans it by itself when the objects it uses change.
/// Returns the first column of every row.
pub fn saved_plan_column<T: FromDatum + IntoDatum>(
    client: &mut SpiClient<'_>,
    sql: &'static str,
    mutating: bool,
    arg_types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> Vec<Option<T>> {
    require_pinned_search_path();
    // Taken out of the map while it runs, so that nothing it calls can find the map borrowed.
    let saved = SAVED_PLANS.with_borrow_mut(|plans| plans.remove(sql));
    let plan = match saved {
        Some(plan) => plan,
        None => {
            let prepared = if mutating {
                client.prepare_mut(sql, arg_types)
            } else {
                client.prepare(sql, arg_types)
            };
            prepared.or_internal("preparing a catalog query").keep()
        }
    };
    let rows = if mutating {
        client.update(&plan, None, args)
    } else {
        client.select(&plan, None, args)
    };
    let values = rows
        .or_internal("running a catalog query")
        .map(|row| row.get::<T>(1).or_internal("reading a query result"))
        .collect();
    SAVED_PLANS.with_borrow_mut(|plans| plans.insert(sql, plan));
    values
}
