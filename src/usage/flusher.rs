//! usage/flusher — the background workers that write usage into `nile.usage_history` every
//! `nile.usage_flush_interval`.
//!
//! Several databases can use the extension, and a background worker connects to one database for its life. So one
//! launcher per cluster (registered at start when the library is preloaded, connected to no database) wakes up every
//! interval, finds in shared memory the databases that have usage not yet in their history, and runs one short-lived
//! worker per such database, one after the other; each connects to its database and runs the same flush as
//! `nile.flush_usage()` (usage/history.rs). Databases without new usage cost nothing. The launcher also forgets the
//! rows of databases that were dropped, and a worker those of its database when the extension is no longer there.

use crate::usage::store;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

const LIBRARY: &str = "nile_tenancy";
const LAUNCHER_NAME: &str = "nile_tenancy usage flusher";
const WORKER_TYPE: &str = "nile_tenancy usage flush";
/// How long a flush waits for the history table's lock (held by a user's `nile.flush_usage()` or `reset_usage()`)
/// before giving up until the next interval.
const LOCK_TIMEOUT: &std::ffi::CStr = c"10s";

/// Called from _PG_init: register the launcher when the library is being preloaded.
pub fn init() {
    if !crate::settings::preloaded() {
        return;
    }
    BackgroundWorkerBuilder::new(LAUNCHER_NAME)
        .set_library(LIBRARY)
        .set_function("nile_usage_flush_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

fn interval() -> Option<Duration> {
    let seconds = crate::settings::usage_flush_interval();
    (seconds > 0).then(|| Duration::from_secs(seconds as u64))
}

/// The launcher: sleeps until the next flush is due, then flushes every database with new usage.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn nile_usage_flush_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: only the shared catalogs (pg_database) can be read.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let mut last_flush = Instant::now();
    loop {
        // With flushing off (interval 0), wake up once a minute to see whether it was turned on.
        let due = interval().map(|every| last_flush + every);
        let sleep = match due {
            Some(due) => due.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(60),
        };
        if !BackgroundWorker::wait_latch(Some(sleep.max(Duration::from_millis(10)))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to reload postgresql.conf after SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        match interval() {
            Some(every) if last_flush.elapsed() >= every => {
                last_flush = Instant::now();
                flush_every_database();
            }
            _ => {}
        }
    }
    // Exit code 1: unless the server is shutting down, the postmaster starts the launcher again after its restart
    // time (10 s), also after an administrator's pg_terminate_backend(); exit code 0 would unregister it for good.
    // SAFETY: ends this background worker process the way Postgres expects (exit callbacks run).
    unsafe { pg_sys::proc_exit(1) };
}

/// One round: forget dropped databases, then flush each database with new usage in a worker of its own.
fn flush_every_database() {
    let connectable = connectable_databases();
    store::forget_databases(|database| database != 0 && !connectable.contains(&database));
    for database in store::databases_with_unflushed_usage() {
        if !connectable.contains(&database) {
            continue;
        }
        // SAFETY: reads this process's pid.
        let my_pid = unsafe { pg_sys::MyProcPid };
        let started =
            BackgroundWorkerBuilder::new(&format!("{WORKER_TYPE} of database {database}"))
                .set_type(WORKER_TYPE)
                .set_library(LIBRARY)
                .set_function("nile_usage_flush_worker_main")
                .enable_spi_access()
                .set_argument(Some(pg_sys::Datum::from(database)))
                .set_notify_pid(my_pid)
                .load_dynamic();
        match started {
            // The worker's own errors are in the server log; the next round tries again.
            Ok(worker) => {
                let _ = worker.wait_for_shutdown();
            }
            Err(_) => {
                pgrx::log!(
                    "nile_tenancy: no background worker slot free to flush the usage of database {database}; \
                     retrying next interval (raise max_worker_processes)"
                );
                return;
            }
        }
    }
}

/// The databases a worker can connect to, read from pg_database by a catalog scan (the launcher has no database, so
/// no SQL).
fn connectable_databases() -> Vec<u32> {
    let mut databases = Vec::new();
    // SAFETY: a background worker with a (database-less) connection may scan the shared catalog pg_database inside a
    // transaction, as the autovacuum launcher does; each tuple's fixed part is a FormData_pg_database.
    unsafe {
        pg_sys::StartTransactionCommand();
        let relation =
            pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let database = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            // datconnlimit -2: a database whose DROP DATABASE was interrupted.
            if database.datallowconn && database.datconnlimit != -2 {
                databases.push(database.oid.to_u32());
            }
        }
        // table_endscan is inline in C: call the access method's end-of-scan directly.
        if let Some(scan_end) = (*(*(*scan).rs_rd).rd_tableam).scan_end {
            scan_end(scan);
        }
        pg_sys::table_close(relation, pg_sys::AccessShareLock as i32);
        pg_sys::CommitTransactionCommand();
    }
    databases
}

/// A flush worker: connects to the database it was started for and writes its usage into the history.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn nile_usage_flush_worker_main(arg: pg_sys::Datum) {
    // SIGTERM keeps the background worker default: the flush is abandoned (rolled back) at once.
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    BackgroundWorker::transaction(|| {
        crate::pg::privilege::with_safe_search_path(|| {
            let installed = crate::pg::spi_util::query_value::<bool>(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'nile_tenancy')
                    AND pg_catalog.to_regclass('nile.usage_history') IS NOT NULL",
                &[],
            )
            .unwrap_or(false);
            if !installed {
                // The extension was dropped: nothing more will be counted here, and nothing can be written.
                store::forget_databases(|d| d == database.to_u32());
                return;
            }
            crate::pg::guc::set_setting(
                c"lock_timeout",
                LOCK_TIMEOUT,
                crate::pg::guc::Scope::Transaction,
            );
            crate::usage::history::flush_database();
        })
    });
}
