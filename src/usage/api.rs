//! usage/api — the SQL functions under the live usage views (`nile.tenant_usage`, `nile.my_usage`). The views
//! themselves, and who may read them, are in sql/usage.sql; the history and `nile.reset_usage()` are in
//! usage/history.rs.

use crate::usage::store::{self, count, ms, this_database, CounterValues, RowKind, UsageKey};
use pgrx::prelude::*;
use pgrx::Uuid;

/// Declares `UsageRow` and the set-returning SQL functions that return it. `#[pg_extern]` needs the column list
/// written out in each signature, so it is written once here and pasted into each.
macro_rules! usage_functions {
    (columns = $columns:tt; $($(#[$doc:meta])* fn $rust_name:ident as $sql_name:literal $body:block)*) => {
        /// One row of the usage views.
        type UsageRow = $columns;
        $(
            $(#[$doc])*
            #[pg_extern(volatile, parallel_restricted, name = $sql_name)]
            fn $rust_name() -> TableIterator<'static, $columns> {
                let rows: Vec<UsageRow> = $body;
                TableIterator::new(rows)
            }
        )*
    };
}

fn timestamp(t: i64) -> Option<TimestampWithTimeZone> {
    if t == 0 {
        None
    } else {
        TimestampWithTimeZone::try_from(t).ok()
    }
}

fn usage_row(key: &UsageKey, v: &CounterValues) -> UsageRow {
    let kind = if key.database == 0 {
        "lost".to_string()
    } else {
        key.kind().label().to_string()
    };
    (
        kind,
        (key.kind() == RowKind::Tenant).then(|| Uuid::from_bytes(key.tenant)),
        count(v.statements),
        count(v.errors),
        count(v.rows_returned),
        count(v.rows_inserted),
        count(v.rows_updated),
        count(v.rows_deleted),
        ms(v.total_time_ns),
        (v.statements > 0).then(|| ms(v.total_time_ns) / v.statements as f64),
        ms(v.max_time_ns),
        v.percentile_ms(0.50),
        v.percentile_ms(0.95),
        v.percentile_ms(0.99),
        ms(v.cpu_user_ns),
        ms(v.cpu_system_ns),
        count(v.blks_hit),
        count(v.blks_read),
        count(v.blks_dirtied),
        timestamp(v.first_activity),
        timestamp(v.last_activity),
    )
}

usage_functions! {
    columns = (
    name!(kind, String),
    name!(tenant_id, Option<Uuid>),
    name!(statements, i64),
    name!(errors, i64),
    name!(rows_returned, i64),
    name!(rows_inserted, i64),
    name!(rows_updated, i64),
    name!(rows_deleted, i64),
    name!(total_time_ms, f64),
    name!(mean_time_ms, Option<f64>),
    name!(max_time_ms, f64),
    name!(p50_ms, Option<f64>),
    name!(p95_ms, Option<f64>),
    name!(p99_ms, Option<f64>),
    name!(cpu_user_ms, f64),
    name!(cpu_system_ms, f64),
    name!(shared_blks_hit, i64),
    name!(shared_blks_read, i64),
    name!(shared_blks_dirtied, i64),
    name!(first_activity, Option<TimestampWithTimeZone>),
    name!(last_activity, Option<TimestampWithTimeZone>),
);

    /// `nile._usage()`: every usage row of this database (under `nile.tenant_usage`; nile_admin and pg_monitor).
    fn usage_rows as "_usage" {
        store::require_available("nile.tenant_usage");
        store::snapshot(this_database())
            .iter()
            .map(|(key, values)| usage_row(key, values))
            .collect()
    }

    /// `nile._my_usage()`: the usage row of the session's own tenant only (under `nile.my_usage`; everyone).
    fn my_usage_rows as "_my_usage" {
        store::require_available("nile.my_usage");
        match crate::context::tenant::effective_tenant() {
            Some(tenant) => {
                let mine = UsageKey::new(this_database(), RowKind::Tenant, Some(tenant));
                store::snapshot(this_database())
                    .iter()
                    .filter(|(key, _)| *key == mine)
                    .map(|(key, values)| usage_row(key, values))
                    .collect()
            }
            None => Vec::new(),
        }
    }
}
