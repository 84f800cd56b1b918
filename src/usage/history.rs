//! usage/history — the durable usage history: `nile.flush_usage()` writes what the shared counters gained since the
//! last flush into `nile.usage_history` (one row per tenant per period), and the rows count as flushed only when that
//! transaction commits; `nile._unflushed_usage()` shows the period still open.
//!
//! Exactly-once: a flush takes the history table's lock in SHARE ROW EXCLUSIVE mode (one flush per database at a
//! time), reads each row's counters and subtracts what the row's flushed copy says is already written. The flushed
//! copies are updated in the commit callback, which runs before the table lock is released, so the next flush (of any
//! session, or the background worker in usage/flusher.rs) starts from exactly what this one wrote. A flush that rolls
//! back, wholly or to a savepoint, leaves the flushed copies as they were.

use crate::pg::backend_local::BackendLocal;
use crate::pg::errors::{OrInternal, Problem};
use crate::pg::privilege::require_role;
use crate::usage::store::{self, CounterValues, FlushView, RowKind, UsageKey};
use crate::usage::store::{count, ms, this_database};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::{Cell, RefCell};

/// What a transaction will do to the shared rows when it commits.
enum AtCommit {
    /// `values` of row `key` (incarnation `epoch`) are in the history as of `at`.
    Flushed {
        key: UsageKey,
        epoch: u64,
        values: Box<CounterValues>,
        at: i64,
    },
    /// `nile.reset_usage()`: remove rows (see store::reset).
    Reset {
        database: pg_sys::Oid,
        tenant: Option<[u8; 16]>,
        live_databases: Vec<u32>,
    },
}

/// This transaction's changes for commit time, each with the subtransaction that made it.
static AT_COMMIT: BackendLocal<RefCell<Vec<(pg_sys::SubTransactionId, AtCommit)>>> =
    BackendLocal::new(RefCell::new(Vec::new()));
static CALLBACKS_REGISTERED: BackendLocal<Cell<bool>> = BackendLocal::new(Cell::new(false));

/// One period of one row: what it did between `start` and `end`.
pub(super) struct Period {
    pub key: UsageKey,
    pub start: i64,
    pub end: i64,
    pub usage: CounterValues,
}

/// The usage of this database not yet in the history, one period per row that did anything, measured from what the
/// history has (or what this transaction's earlier flush wrote). With the `FlushView` each period came from.
fn open_periods(database: pg_sys::Oid, now: i64) -> Vec<(Period, FlushView)> {
    let written_here: Vec<(UsageKey, u64, CounterValues, i64)> = AT_COMMIT.with_borrow(|pending| {
        pending
            .iter()
            .filter_map(|(_, change)| match change {
                AtCommit::Flushed {
                    key,
                    epoch,
                    values,
                    at,
                } => Some((*key, *epoch, (**values).clone(), *at)),
                AtCommit::Reset { .. } => None,
            })
            .collect()
    });
    store::flush_view(database)
        .into_iter()
        .filter_map(|row| {
            // The latest flush of this row in this transaction, if any, is the baseline.
            let (baseline, since) = written_here
                .iter()
                .rev()
                .find(|(key, epoch, _, _)| *key == row.key && *epoch == row.epoch)
                .map(|(_, _, values, at)| (values.clone(), *at))
                .unwrap_or_else(|| (row.flushed.clone(), row.flushed_at));
            let usage = row.current.since(&baseline);
            (!usage.is_empty()).then(|| {
                let period = Period {
                    key: row.key,
                    start: since,
                    end: now,
                    usage,
                };
                (period, row)
            })
        })
        .collect()
}

fn now() -> i64 {
    // SAFETY: plain call.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn current_subtransaction() -> pg_sys::SubTransactionId {
    // SAFETY: reads transaction state.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

fn register_callbacks() {
    if CALLBACKS_REGISTERED.get() {
        return;
    }
    // SAFETY: registers backend-lifetime callbacks once per backend.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
    CALLBACKS_REGISTERED.set(true);
}

fn at_commit(change: AtCommit) {
    register_callbacks();
    let sub = current_subtransaction();
    AT_COMMIT.with_borrow_mut(|pending| pending.push((sub, change)));
}

const INSERT_PERIODS: &str = "
    INSERT INTO nile.usage_history
        (period_start, period_end, kind, tenant_id, statements, errors,
         rows_returned, rows_inserted, rows_updated, rows_deleted,
         total_time_ms, p50_ms, p95_ms, p99_ms, cpu_user_ms, cpu_system_ms,
         shared_blks_hit, shared_blks_read, shared_blks_dirtied)
    SELECT * FROM unnest(  -- unqualified: the many-array form; the search_path is pg_catalog (as_extension_owner)
        $1::timestamptz[], $2::timestamptz[], $3::text[], $4::uuid[], $5::int8[], $6::int8[],
        $7::int8[], $8::int8[], $9::int8[], $10::int8[],
        $11::float8[], $12::float8[], $13::float8[], $14::float8[], $15::float8[], $16::float8[],
        $17::int8[], $18::int8[], $19::int8[])";

fn timestamp(t: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(t).or_internal("converting a usage period's time")
}

/// One column of `rows`, as the array an `unnest` parameter of INSERT_PERIODS takes.
fn column<T>(rows: &[PeriodRow], field: impl Fn(&PeriodRow) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

/// Write this database's usage not yet in the history into `nile.usage_history`; the rows count as flushed when
/// the transaction commits. Returns how many history rows were written. Runs as the extension's owner: callers check
/// the caller's rights first.
pub(super) fn flush_database() -> i64 {
    store::require_available("nile.flush_usage()");
    crate::usage::hooks::not_counted(|| {
        crate::pg::privilege::as_extension_owner(|| {
            Spi::connect_mut(|client| {
                // One flush per database at a time, held to the end of the transaction (see the module header).
                crate::pg::spi_util::execute(
                    client,
                    "LOCK TABLE nile.usage_history IN SHARE ROW EXCLUSIVE MODE",
                    &[],
                );
                let periods = open_periods(this_database(), now());
                if periods.is_empty() {
                    return 0;
                }
                // The same rows `nile._unflushed_usage()` shows, passed column by column (one array each).
                let rows: Vec<PeriodRow> = periods.iter().map(|(p, _)| period_row(p)).collect();
                let args: Vec<DatumWithOid<'_>> = vec![
                    column(&rows, |r| r.0).into(),
                    column(&rows, |r| r.1).into(),
                    column(&rows, |r| r.2.clone()).into(),
                    column(&rows, |r| r.3).into(),
                    column(&rows, |r| r.4).into(),
                    column(&rows, |r| r.5).into(),
                    column(&rows, |r| r.6).into(),
                    column(&rows, |r| r.7).into(),
                    column(&rows, |r| r.8).into(),
                    column(&rows, |r| r.9).into(),
                    column(&rows, |r| r.10).into(),
                    column(&rows, |r| r.11).into(),
                    column(&rows, |r| r.12).into(),
                    column(&rows, |r| r.13).into(),
                    column(&rows, |r| r.14).into(),
                    column(&rows, |r| r.15).into(),
                    column(&rows, |r| r.16).into(),
                    column(&rows, |r| r.17).into(),
                    column(&rows, |r| r.18).into(),
                ];
                let written = crate::pg::spi_util::execute(client, INSERT_PERIODS, &args);
                for (period, row) in periods {
                    at_commit(AtCommit::Flushed {
                        key: row.key,
                        epoch: row.epoch,
                        values: Box::new(row.current),
                        at: period.end,
                    });
                }
                written as i64
            })
        })
    })
}

/// `nile.flush_usage() RETURNS bigint`: write the usage not yet in `nile.usage_history` now, without waiting for the
/// background worker; returns the number of history rows written. nile_admin only.
#[pg_extern(volatile, parallel_unsafe)]
fn flush_usage() -> i64 {
    require_role("nile_admin", "nile.flush_usage()");
    flush_database()
}

/// `nile.reset_usage(tenant_id uuid DEFAULT NULL) RETURNS void`: forget the live usage of one tenant of this database,
/// or (NULL) of every row of this database, after writing what the history does not have yet; the reset takes
/// effect when the transaction commits. Rows of dropped databases are removed on the way. nile_admin only.
#[pg_extern(volatile, parallel_unsafe)]
fn reset_usage(tenant_id: default!(Option<Uuid>, "NULL")) {
    require_role("nile_admin", "nile.reset_usage()");
    store::require_available("nile.reset_usage()");
    flush_database();
    // pg_database is shared: every database sees all of them.
    let live_databases: Vec<u32> = crate::pg::privilege::as_extension_owner(|| {
        Spi::connect(|client| {
            crate::pg::spi_util::select(client, "SELECT oid FROM pg_catalog.pg_database", None, &[])
                .filter_map(|row| row.get::<pg_sys::Oid>(1).ok().flatten())
                .map(|o| o.to_u32())
                .collect()
        })
    });
    at_commit(AtCommit::Reset {
        database: this_database(),
        tenant: tenant_id.map(|t| *t.as_bytes()),
        live_databases,
    });
}

/// The commit-time changes of a committed transaction, in the order they were made.
fn apply(changes: Vec<(pg_sys::SubTransactionId, AtCommit)>) {
    for (_, change) in changes {
        match change {
            AtCommit::Flushed {
                key,
                epoch,
                values,
                at,
            } => store::mark_flushed(&key, epoch, &values, at),
            AtCommit::Reset {
                database,
                tenant,
                live_databases,
            } => {
                store::reset(database, tenant, &live_databases);
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        // A prepared transaction commits later, maybe in another session, which would not know to mark the rows.
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE
            if AT_COMMIT.with_borrow(|pending| !pending.is_empty()) =>
        {
            Problem::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that ran nile.flush_usage() or nile.reset_usage()",
            )
            .hint("Flush or reset usage in a transaction of its own.")
            .raise();
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            apply(AT_COMMIT.with_borrow_mut(std::mem::take));
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            AT_COMMIT.with_borrow_mut(|pending| pending.clear());
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // Subtransaction ids grow through a transaction: what was queued at or after `sub` was queued inside it.
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        AT_COMMIT.with_borrow_mut(|pending| pending.retain(|(queued_in, _)| *queued_in < sub));
    }
}

/// A period as a row of `nile.usage_history` (without the column names, which `#[pg_extern]` wants written out).
type PeriodRow = (
    TimestampWithTimeZone,
    TimestampWithTimeZone,
    String,
    Option<Uuid>,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
    f64,
    i64,
    i64,
    i64,
);

fn period_row(p: &Period) -> PeriodRow {
    let u = &p.usage;
    (
        timestamp(p.start),
        timestamp(p.end),
        p.key.kind().label().to_string(),
        (p.key.kind() == RowKind::Tenant).then(|| Uuid::from_bytes(p.key.tenant)),
        count(u.statements),
        count(u.errors),
        count(u.rows_returned),
        count(u.rows_inserted),
        count(u.rows_updated),
        count(u.rows_deleted),
        ms(u.total_time_ns),
        u.percentile_ms(0.50),
        u.percentile_ms(0.95),
        u.percentile_ms(0.99),
        ms(u.cpu_user_ns),
        ms(u.cpu_system_ns),
        count(u.blks_hit),
        count(u.blks_read),
        count(u.blks_dirtied),
    )
}

/// `nile._unflushed_usage()`: the usage of this database not yet in `nile.usage_history`, as the rows the next flush
/// would write (under `nile.noisy_neighbours`; nile_admin and pg_monitor).
#[allow(clippy::type_complexity)] // the column list #[pg_extern] needs written out
#[pg_extern(volatile, parallel_restricted, name = "_unflushed_usage")]
fn unflushed_usage() -> TableIterator<
    'static,
    (
        name!(period_start, TimestampWithTimeZone),
        name!(period_end, TimestampWithTimeZone),
        name!(kind, String),
        name!(tenant_id, Option<Uuid>),
        name!(statements, i64),
        name!(errors, i64),
        name!(rows_returned, i64),
        name!(rows_inserted, i64),
        name!(rows_updated, i64),
        name!(rows_deleted, i64),
        name!(total_time_ms, f64),
        name!(p50_ms, Option<f64>),
        name!(p95_ms, Option<f64>),
        name!(p99_ms, Option<f64>),
        name!(cpu_user_ms, f64),
        name!(cpu_system_ms, f64),
        name!(shared_blks_hit, i64),
        name!(shared_blks_read, i64),
        name!(shared_blks_dirtied, i64),
    ),
> {
    store::require_available("nile._unflushed_usage()");
    let rows: Vec<PeriodRow> = open_periods(this_database(), now())
        .iter()
        .map(|(period, _)| period_row(period))
        .collect();
    TableIterator::new(rows)
}
