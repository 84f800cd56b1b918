//! context/read_only — what lets a read-only tenant context (`nile.set_tenant_read_only()`, issue 20) end without a
//! COMMIT of the client's: its transaction may be the implicit one of a pipeline, committed by the pipeline's Sync, so
//! the client must be able to trust that it did nothing a ROLLBACK of the unit of work would have undone.
//! `transaction_read_only = on` refuses writes, but not alone: a refusal can be caught (a PL/pgSQL exception block)
//! and the read go on as if the write had happened, and a function's `SET transaction_read_only = off` clause lifts
//! it for that function's statements. So from the moment the context is entered until its transaction ends, this
//! module notes anything that may have written or hidden a refusal: a plan that writes or locks rows, a plan started
//! while the transaction is not read-only (ExecutorStart), a utility statement other than SHOW and transaction
//! control, a subtransaction that aborts (a caught error), and, as a backstop for writes made some other way (a C
//! function, a temporary table, a cursor opened earlier), a transaction id assigned since the context was entered
//! (every write needs one; a read never does). The commit of a transaction that noted one is refused
//! with 25006: nothing of it stays, and the client (the Python SDK does) runs the unit of work again in a transaction
//! of its own, entered with `nile.set_tenant()`. A SELECT (or VALUES, TABLE) sent by the client is refused the same
//! way at the end of its own run, as that statement's error: a client that pipelines the context and its read without
//! BEGIN gets it before the pipeline's Sync. `nile.assert_read_only()` raises it as a statement of its own.
//!
//! Design: three backend-local cells (the nesting level the context was entered at, whether the transaction had an id
//! then, and the first thing noted), ExecutorStart and ExecutorRun hooks (src/usage/hooks.rs installs its own later
//! and calls these; they only note and refuse, so the order does not matter), a utility check (src/pg/hook_chain.rs),
//! and a transaction and a subtransaction callback; installed whenever the library is loaded, as `nile.set_tenant_read_only()` is in it. The
//! transaction callback must run after src/context/pool_guard.rs's (context/mod.rs registers this one first: Postgres
//! calls the last registered first), so that a refused commit never skips dropping a cursor WITH HOLD.
//! Nothing is shared between backends, so there is no lock. Erring on the side of refusing costs the client a round
//! trip, never a lost write.

use crate::pg::backend_local::BackendLocal;
use crate::pg::errors::Problem;
use crate::pg::hook_chain::{next_executor_run, next_executor_start};
use pgrx::prelude::*;
use std::cell::Cell;

/// The transaction nesting level at which the read-only context was entered; 0 when there is none.
static ENTERED_AT: BackendLocal<Cell<i32>> = BackendLocal::new(Cell::new(0));
/// Whether the transaction had an id when the context was entered (a write before it, in an explicit block).
static HAD_XID: BackendLocal<Cell<bool>> = BackendLocal::new(Cell::new(false));
/// The first thing the context's transaction did that it must not commit.
static NOTED: BackendLocal<Cell<Option<&'static str>>> = BackendLocal::new(Cell::new(None));

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;

pub(super) fn init() {
    crate::pg::hook_chain::check_before_running(check_utility);
    // SAFETY: _PG_init runs once per process before any query; the previous hook is saved and called by ours. The
    // callbacks are registered for the life of the process.
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
}

/// The read-only context was entered (`nile.set_tenant_read_only()`): watch the transaction from here on. Entered
/// again deeper (a savepoint), it keeps the outermost level.
pub(super) fn begin() {
    // SAFETY: reads the current transaction's nesting level, valid inside a transaction (a function call is).
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    ENTERED_AT.with(|e| {
        if e.get() == 0 {
            HAD_XID.with(|h| h.set(has_xid()));
        }
        if e.get() == 0 || level < e.get() {
            e.set(level);
        }
    });
}

fn has_xid() -> bool {
    // SAFETY: reads the top transaction's id, or InvalidTransactionId (0) when it has none; assigns nothing.
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() };
    xid != pg_sys::InvalidTransactionId
}

/// What the context's transaction did that it must not commit, if anything, including the transaction-id backstop.
fn noted_so_far() -> Option<&'static str> {
    if !watching() {
        return None;
    }
    NOTED.with(|n| n.get()).or_else(|| {
        (!HAD_XID.with(|h| h.get()) && has_xid()).then_some("was given a transaction id (a write)")
    })
}

fn watching() -> bool {
    ENTERED_AT.with(|e| e.get()) != 0
}

fn note(what: &'static str) {
    NOTED.with(|n| {
        if n.get().is_none() {
            n.set(Some(what));
        }
    });
}

fn forget() {
    ENTERED_AT.with(|e| e.set(0));
    HAD_XID.with(|h| h.set(false));
    NOTED.with(|n| n.set(None));
}

/// `nile.assert_read_only() RETURNS void`: raise 25006 now if the read-only tenant context's transaction noted
/// something it must not commit, rather than at its commit. For a client that pipelines, without BEGIN, a statement
/// whose query is not checked at the end of its run (see `after_run`: anything but a SELECT, VALUES or TABLE) and
/// wants the refusal before the Sync: an error of the commit the Sync makes comes after the statements' answers,
/// where a client library may not expect one (psycopg 3.3 cannot leave pipeline mode after it), while this is a
/// statement's error like any other. Does nothing outside such a context. What was noted stays noted (a caller that
/// catches this error still cannot commit).
#[pg_extern(volatile, parallel_unsafe)]
fn assert_read_only() {
    if let Some(what) = noted_so_far() {
        refuse(what);
    }
}

fn refuse(what: &str) -> ! {
    Problem::new(
        PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        format!("the transaction of a read-only tenant context {what}: it cannot commit"),
    )
    .detail("nile.set_tenant_read_only() promises that its transaction wrote nothing and hid no refused write, so that it may end without a COMMIT of its client's. Nothing of it is kept.")
    .hint("Run the statement in a transaction whose context is entered with nile.set_tenant() (the Python SDK does so by itself).")
    .raise()
}

/// SAFETY: called by Postgres as ExecutorStart_hook, with a valid QueryDesc whose plannedstmt is set. Reads the plan
/// only, then the previous hook or the standard function with the arguments we were given.
#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    // SAFETY: see above; XactReadOnly is a plain global of the backend.
    unsafe {
        if watching() {
            let plan = (*query_desc).plannedstmt;
            if (*query_desc).operation != pg_sys::CmdType::CMD_SELECT
                || (*plan).hasModifyingCTE
                || !(*plan).rowMarks.is_null()
            {
                note("started a statement that writes or locks rows");
            } else if !pg_sys::XactReadOnly {
                note("started a statement while it was not read-only");
            }
        }
        next_executor_start(PREV_EXECUTOR_START, query_desc, eflags);
    }
}

/// SAFETY: called by Postgres as ExecutorRun_hook; a trampoline that holds nothing needing a drop while Postgres code
/// runs, so an ERROR raised below it passes through untouched (src/usage/hooks.rs explains the pattern).
#[cfg(not(feature = "pg18"))]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: the previous hook or the standard function with the arguments we were given, then our check.
    unsafe {
        next_executor_run(
            PREV_EXECUTOR_RUN,
            query_desc,
            direction,
            count,
            execute_once,
        );
        // watching() reads a const-initialised thread-local Cell: it cannot panic, so it needs no guard here.
        if watching() {
            after_run(query_desc);
        }
    }
}

/// SAFETY: as the function above (PostgreSQL 18's ExecutorRun has no `execute_once`).
#[cfg(feature = "pg18")]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    // SAFETY: the previous hook or the standard function with the arguments we were given, then our check.
    unsafe {
        next_executor_run(PREV_EXECUTOR_RUN, query_desc, direction, count);
        // watching() reads a const-initialised thread-local Cell: it cannot panic, so it needs no guard here.
        if watching() {
            after_run(query_desc);
        }
    }
}

/// After the query of the statement the client sent (the active portal's own query, not one a function runs) has
/// run: refuse it now if its transaction noted something, so that the refusal is the statement's error and not the
/// commit's (see `assert_read_only`). A query run again for more rows (a cursor, a row limit) is checked after each
/// run; a statement whose query is run elsewhere (an INSERT, a utility) is refused at the commit, as before.
#[pg_guard]
unsafe extern "C-unwind" fn after_run(query_desc: *mut pg_sys::QueryDesc) {
    // SAFETY: ActivePortal is NULL or the portal being run, whose queryDesc is NULL or the query it runs.
    let own_query = unsafe {
        let portal = pg_sys::ActivePortal;
        !portal.is_null() && (*portal).queryDesc == query_desc
    };
    if own_query {
        if let Some(what) = noted_so_far() {
            refuse(what);
        }
    }
}

/// The utility check (src/pg/hook_chain.rs): while watching, anything but SHOW and transaction control is noted.
///
/// # Safety
/// `stmt` must be the valid parse tree of the utility statement about to run.
unsafe fn check_utility(stmt: *mut pg_sys::Node) {
    if !watching() {
        return;
    }
    // SAFETY (caller): a valid node; only its tag is read.
    let tag = unsafe { (*stmt).type_ };
    if tag != pg_sys::NodeTag::T_VariableShowStmt && tag != pg_sys::NodeTag::T_TransactionStmt {
        note("ran a utility statement");
    }
}

/// A subtransaction ends. One the context was entered in: aborted, it takes the context (and read-only) with it;
/// released, the context now belongs to its parent. One inside the context that aborts hid an error, maybe a refused
/// write.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if !watching() {
        return;
    }
    // SAFETY: reads the ending subtransaction's nesting level.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    let entered_at = ENTERED_AT.with(|e| e.get());
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB if level <= entered_at => forget(),
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            note("caught an error (which may have hidden a refused write)")
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB if level == entered_at => {
            ENTERED_AT.with(|e| e.set(level - 1));
        }
        _ => {}
    }
}

/// Before a commit (or PREPARE TRANSACTION): refuse it if the context's transaction noted something. At its end:
/// forget.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            let noted = noted_so_far();
            forget();
            if let Some(what) = noted {
                refuse(what);
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => forget(),
        _ => {}
    }
}
