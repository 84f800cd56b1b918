//! usage/hooks — measuring each top-level statement for its tenant's usage row (usage/store.rs).
//!
//! The executor hooks (start, run, finish, end) and the utility hook, each chained to the previous one, measure in
//! backend memory only: wall time and CPU time (getrusage) spent in ExecutorRun / ExecutorFinish or in the utility,
//! shared buffers hit / read / dirtied, and rows. Nested statements (inside functions, DO blocks, procedures,
//! EXECUTE) count once, with the top-level statement that ran them; the rows they insert, update or delete are added
//! to it. Shared memory is touched once per statement, at its end (ExecutorEnd or the end of the utility): never in
//! ExecutorStart. A statement counts for the tenant whose context it started in (a bound role's tenant, else the
//! tenant context; the admin context and no context have rows of their own).
//!
//! Errors must reach the client exactly as Postgres raised them (CONTEXT lines, constraint and column names, error
//! position). So the hooks are thin trampolines that are not `#[pg_guard]`ed and hold nothing that needs dropping
//! while Postgres code runs: an ERROR raised below them longjmps through their frames untouched, never through pgrx's
//! conversion to a Rust panic. Their bookkeeping is done in separate `#[pg_guard]` functions before and after.
//! Because an ERROR skips the "after" half, the nesting level is put back by the (sub)transaction abort callbacks,
//! and a top-level statement still open when its transaction aborts is recorded there as a failed statement.

use crate::context::guard;
use crate::pg::backend_local::BackendLocal;
use crate::pg::hook_chain::{
    next_executor_end, next_executor_finish, next_executor_run, next_executor_start, next_planner,
};
use crate::settings;
use crate::usage::store::{self, CounterValues, RowKind, StatementUsage, UsageKey};
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::time::Instant;

static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;
static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

/// A top-level statement being measured.
struct Measured {
    /// The QueryDesc of an executor statement (null for a utility statement).
    query_desc: *mut pg_sys::QueryDesc,
    key: UsageKey,
    usage: StatementUsage,
    /// Set while its ExecutorRun / ExecutorFinish (or the utility) is running: wall time counts only then, not while
    /// a portal waits for the client's next fetch.
    running: Option<Instant>,
    /// Buffer counters when it first ran (a process waiting for its client reads no buffers, so one reading at the
    /// start and one at the end suffice).
    since: Option<Buffers>,
}

/// How deep inside a top-level statement the executor currently is (0: at top level).
static NESTING: BackendLocal<Cell<u32>> = BackendLocal::new(Cell::new(0));
/// Above 0 while the extension does its own bookkeeping (see `not_counted`).
static OWN_WORK: BackendLocal<Cell<u32>> = BackendLocal::new(Cell::new(0));
/// Top-level executor statements started and not ended (usually one; more with interleaved portals).
static OPEN: BackendLocal<RefCell<Vec<Measured>>> = BackendLocal::new(RefCell::new(Vec::new()));
/// Finished statements of this transaction, per row, recorded when it ends.
static PENDING: BackendLocal<RefCell<Vec<(UsageKey, CounterValues)>>> =
    BackendLocal::new(RefCell::new(Vec::new()));
/// This process's CPU time (user, system) at the last reading, and when that was; None before any tracked work.
static CPU_READ: BackendLocal<Cell<Option<((u64, u64), Instant)>>> =
    BackendLocal::new(Cell::new(None));
/// Execution time per row since that reading: the CPU used meanwhile is shared out in these proportions.
static CPU_DEBT: BackendLocal<RefCell<Vec<(UsageKey, u64)>>> =
    BackendLocal::new(RefCell::new(Vec::new()));
/// Whether this backend's exit callback (which settles the CPU debt) is registered.
static EXIT_CALLBACK: BackendLocal<Cell<bool>> = BackendLocal::new(Cell::new(false));
/// (nesting level, open top-level statements) at the start of each open subtransaction: what an abort of it puts
/// back.
static AT_SUBXACT_START: BackendLocal<RefCell<Vec<(u32, usize)>>> =
    BackendLocal::new(RefCell::new(Vec::new()));

pub fn init() {
    if !usage_store_possible() {
        return;
    }
    // SAFETY: _PG_init runs once per process before any query; each previous hook is saved beside ours and called by
    // it. The callbacks are registered for the life of the process.
    unsafe {
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
}

/// Counting needs the shared memory, which only exists when the library is preloaded.
fn usage_store_possible() -> bool {
    settings::preloaded()
}

/// Should this top-level statement be measured? Only with tracking on, in a database that has the extension (its
/// schema `nile`: a syscache lookup), in a client backend (not autovacuum, not a parallel or other background
/// worker), for a statement a client sent: one that runs in a portal. (Executor work at level 0 outside a portal is
/// the deferred triggers of a commit, which are not a statement of their own.)
fn tracking() -> bool {
    // SAFETY: reads process-global state.
    let client_statement = unsafe {
        pg_sys::IsUnderPostmaster
            && pg_sys::MyBackendType == pg_sys::BackendType::B_BACKEND
            && pg_sys::MyDatabaseId != pg_sys::InvalidOid
            && !pg_sys::ActivePortal.is_null()
    };
    settings::track_usage()
        && client_statement
        && store::available()
        && crate::pg::own_tables::nile_namespace().is_some()
}

/// The row a statement starting now counts in.
fn current_key() -> UsageKey {
    let database = crate::usage::store::this_database();
    if guard::admin_in_force() {
        return UsageKey::new(database, RowKind::Admin, None);
    }
    match crate::context::tenant::effective_tenant() {
        Some(tenant) => UsageKey::new(database, RowKind::Tenant, Some(tenant)),
        None => UsageKey::new(database, RowKind::NoTenant, None),
    }
}

/// CPU time of this process so far (user, system), in nanoseconds.
fn cpu_times() -> (u64, u64) {
    // SAFETY: getrusage writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    (ns(usage.ru_utime), ns(usage.ru_stime))
}

/// Shared buffers hit, read and dirtied by this process (and the parallel workers it has collected) so far.
fn buffers() -> (u64, u64, u64) {
    // SAFETY: pgBufferUsage is this process's own counter struct.
    unsafe {
        let b = &raw const pg_sys::pgBufferUsage;
        (
            (*b).shared_blks_hit as u64,
            (*b).shared_blks_read as u64,
            (*b).shared_blks_dirtied as u64,
        )
    }
}

/// This process's buffer counters at one moment.
struct Buffers(u64, u64, u64);

impl Buffers {
    fn now() -> Buffers {
        let (hit, read, dirtied) = buffers();
        Buffers(hit, read, dirtied)
    }

    /// What was used since `self`, added to `usage`.
    fn add_since(&self, usage: &mut StatementUsage) {
        let now = Buffers::now();
        usage.blks_hit += now.0.saturating_sub(self.0);
        usage.blks_read += now.1.saturating_sub(self.1);
        usage.blks_dirtied += now.2.saturating_sub(self.2);
    }
}

impl Measured {
    fn start_running(&mut self) {
        self.running = Some(Instant::now());
        if self.since.is_none() {
            self.since = Some(Buffers::now());
        }
    }

    fn stop_running(&mut self) {
        if let Some(started) = self.running.take() {
            self.usage.time_ns += started.elapsed().as_nanos() as u64;
        }
    }

    /// The statement is over: its last running time and its buffer use.
    fn conclude(&mut self) {
        self.stop_running();
        if let Some(since) = self.since.take() {
            since.add_since(&mut self.usage);
        }
    }
}

fn nesting() -> u32 {
    NESTING.with(Cell::get)
}

/// One level deeper. Called straight from the trampolines, without a `#[pg_guard]` (which costs a catch_unwind per
/// call): it cannot panic, since NESTING is a const-initialised thread-local without a destructor and the arithmetic
/// wraps.
#[inline]
fn enter_nested() {
    NESTING.with(|n| n.set(n.get().wrapping_add(1)));
}

/// One level back up (see enter_nested).
#[inline]
fn leave_nested() {
    NESTING.with(|n| n.set(n.get().saturating_sub(1)));
}

fn open_position(query_desc: *mut pg_sys::QueryDesc) -> Option<usize> {
    OPEN.with(|open| {
        open.borrow()
            .iter()
            .rposition(|m| m.query_desc == query_desc)
    })
}

/// Apply `f` to the open top-level statement of `query_desc`, if there is one.
fn with_open(query_desc: *mut pg_sys::QueryDesc, f: impl FnOnce(&mut Measured)) {
    OPEN.with(|open| {
        if let Some(m) = open
            .borrow_mut()
            .iter_mut()
            .rev()
            .find(|m| m.query_desc == query_desc)
        {
            f(m);
        }
    });
}

fn open_statement(query_desc: *mut pg_sys::QueryDesc, running: bool) {
    if CPU_READ.with(Cell::get).is_none() {
        CPU_READ.with(|r| r.set(Some((cpu_times(), Instant::now()))));
    }
    if !EXIT_CALLBACK.with(|e| e.replace(true)) {
        // SAFETY: registers a process-exit callback of this backend (the postmaster's list is reset in each child).
        // on_shmem_exit, not before_shmem_exit: it runs after the transaction a dying backend aborts (in
        // ShutdownPostgres) has been recorded, and before the backend leaves shared memory.
        unsafe { pg_sys::on_shmem_exit(Some(settle_cpu_at_exit), pg_sys::Datum::from(0)) };
    }
    let mut measured = Measured {
        query_desc,
        key: current_key(),
        usage: StatementUsage::default(),
        running: None,
        since: None,
    };
    if running {
        measured.start_running();
    }
    OPEN.with(|open| open.borrow_mut().push(measured));
}

fn close_statement(query_desc: *mut pg_sys::QueryDesc) -> Option<Measured> {
    let i = open_position(query_desc)?;
    let mut measured = OPEN.with(|open| open.borrow_mut().remove(i));
    measured.conclude();
    Some(measured)
}

// ---- ExecutorStart ------------------------------------------------------------------------------------------------

/// A top-level statement starts: note its tenant (backend memory only: no shared memory, no lock). Noted before the
/// standard start, so that a statement failing there is counted as an error by the abort callback. Then one level
/// deeper for the start itself.
#[pg_guard]
unsafe extern "C-unwind" fn before_executor_start(query_desc: *mut pg_sys::QueryDesc) {
    if nesting() == 0 && tracking() {
        open_statement(query_desc, false);
    }
    enter_nested();
}

// ---- Planner ------------------------------------------------------------------------------------------------------

/// SAFETY: called by Postgres as planner_hook; a trampoline (see the module comment). Functions the planner runs
/// (constant folding, estimates) and the statements inside them are nested, not top-level statements.
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: i32,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: our bookkeeping around the previous hook or the standard function, with the arguments we were given.
    unsafe {
        enter_nested();
        let plan = next_planner(
            PREV_PLANNER,
            parse,
            query_string,
            cursor_options,
            bound_params,
        );
        leave_nested();
        plan
    }
}

/// SAFETY: called by Postgres as ExecutorStart_hook. Holds nothing that needs dropping while Postgres code runs (see
/// the module comment).
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    // SAFETY: our bookkeeping, then the previous hook or the standard function with the arguments we were given.
    unsafe {
        // Statements run while a plan starts up (initial partition pruning calling functions) are nested ones.
        before_executor_start(query_desc);
        next_executor_start(PREV_EXECUTOR_START, query_desc, eflags);
        leave_nested();
    }
}

// ---- ExecutorRun / ExecutorFinish ---------------------------------------------------------------------------------

/// Before ExecutorRun or ExecutorFinish: start timing a top-level statement, and go one level deeper.
#[pg_guard]
unsafe extern "C-unwind" fn before_run(query_desc: *mut pg_sys::QueryDesc) {
    if nesting() == 0 {
        with_open(query_desc, Measured::start_running);
    }
    enter_nested();
}

/// After ExecutorRun or ExecutorFinish returned: back up a level, and stop timing a top-level statement.
#[pg_guard]
unsafe extern "C-unwind" fn after_run(query_desc: *mut pg_sys::QueryDesc) {
    leave_nested();
    if nesting() == 0 {
        with_open(query_desc, Measured::stop_running);
    }
}

/// SAFETY: called by Postgres as ExecutorRun_hook; a trampoline (see the module comment).
#[cfg(not(feature = "pg18"))]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: our bookkeeping around the previous hook or the standard function, with the arguments we were given.
    unsafe {
        before_run(query_desc);
        next_executor_run(
            PREV_EXECUTOR_RUN,
            query_desc,
            direction,
            count,
            execute_once,
        );
        after_run(query_desc);
    }
}

/// SAFETY: called by Postgres as ExecutorRun_hook; a trampoline (see the module comment).
#[cfg(feature = "pg18")]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    // SAFETY: our bookkeeping around the previous hook or the standard function, with the arguments we were given.
    unsafe {
        before_run(query_desc);
        next_executor_run(PREV_EXECUTOR_RUN, query_desc, direction, count);
        after_run(query_desc);
    }
}

/// SAFETY: called by Postgres as ExecutorFinish_hook; a trampoline (see the module comment).
unsafe extern "C-unwind" fn executor_finish(query_desc: *mut pg_sys::QueryDesc) {
    // SAFETY: our bookkeeping around the previous hook or the standard function, with the argument we were given.
    unsafe {
        before_run(query_desc);
        next_executor_finish(PREV_EXECUTOR_FINISH, query_desc);
        after_run(query_desc);
    }
}

// ---- ExecutorEnd --------------------------------------------------------------------------------------------------

/// The statement's command and row count, read before ExecutorEnd frees its state.
#[pg_guard]
unsafe extern "C-unwind" fn rows_of(query_desc: *mut pg_sys::QueryDesc) -> u64 {
    // SAFETY: ExecutorEnd is called with a started QueryDesc whose estate is still there.
    unsafe {
        let estate = (*query_desc).estate;
        if estate.is_null() {
            0
        } else {
            (*estate).es_processed
        }
    }
}

/// Run `f`, the extension's own bookkeeping (writing the usage history), without adding the rows it writes to the
/// statement that runs it: they are not the user's work.
pub(super) fn not_counted<R>(f: impl FnOnce() -> R) -> R {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            OWN_WORK.with(|w| w.set(w.get().saturating_sub(1)));
        }
    }
    OWN_WORK.with(|w| w.set(w.get() + 1));
    let _leave = Leave;
    f()
}

/// After ExecutorEnd: a top-level statement is finished and recorded; a nested one adds the rows it wrote to the
/// top-level statement running it.
#[pg_guard]
unsafe extern "C-unwind" fn after_executor_end(
    query_desc: *mut pg_sys::QueryDesc,
    operation: pg_sys::CmdType::Type,
    processed: u64,
) {
    if let Some(mut measured) = close_statement(query_desc) {
        count_rows(&mut measured.usage, operation, processed, true);
        finish(measured);
    } else if nesting() > 0 && OWN_WORK.with(Cell::get) == 0 {
        // The top-level statement running now (the one whose ExecutorRun, ExecutorFinish or utility is in progress).
        OPEN.with(|open| {
            if let Some(m) = open
                .borrow_mut()
                .iter_mut()
                .rev()
                .find(|m| m.running.is_some())
            {
                count_rows(&mut m.usage, operation, processed, false);
            }
        });
    }
}

/// SAFETY: called by Postgres as ExecutorEnd_hook; a trampoline (see the module comment).
unsafe extern "C-unwind" fn executor_end(query_desc: *mut pg_sys::QueryDesc) {
    // SAFETY: the QueryDesc is valid until the call below frees its state; we read what we need first.
    unsafe {
        let operation = (*query_desc).operation;
        let processed = rows_of(query_desc);
        next_executor_end(PREV_EXECUTOR_END, query_desc);
        after_executor_end(query_desc, operation, processed);
    }
}

fn count_rows(
    usage: &mut StatementUsage,
    operation: pg_sys::CmdType::Type,
    rows: u64,
    top_level: bool,
) {
    match operation {
        pg_sys::CmdType::CMD_SELECT if top_level => usage.rows_returned += rows,
        pg_sys::CmdType::CMD_INSERT => usage.rows_inserted += rows,
        pg_sys::CmdType::CMD_UPDATE => usage.rows_updated += rows,
        pg_sys::CmdType::CMD_DELETE => usage.rows_deleted += rows,
        #[cfg(not(feature = "pg14"))]
        pg_sys::CmdType::CMD_MERGE => usage.rows_updated += rows,
        _ => {}
    }
}

/// Record a finished top-level statement, and log it when it was slow.
fn finish(measured: Measured) {
    // A statement that changed the context (`SELECT nile.set_tenant(…)`, `set_tenant_token()`, `admin_context()`,
    // `clear_tenant()`) is nobody's work: it is not counted, neither for the tenant it entered (billing it the switch
    // would count every transaction twice) nor in the shared no-tenant row (written by every transaction of every
    // backend, its counters' cache lines would bounce between cores). A failed one is counted where it started.
    if measured.usage.failed || measured.key == current_key() {
        add_pending(measured.key, &measured.usage);
    }
    let slow_ms = settings::slow_statement_ms();
    let elapsed_ms = measured.usage.time_ns as f64 / 1_000_000.0;
    if slow_ms >= 0 && !measured.usage.failed && elapsed_ms >= slow_ms as f64 {
        let who = match measured.key.kind() {
            RowKind::Tenant => format!(
                "tenant {}",
                crate::pg::uuid_text::format_uuid(&measured.key.tenant)
            ),
            kind => kind.label().to_string(),
        };
        crate::pg::errors::Problem::new(
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            // The server log's STATEMENT line that follows carries the statement's text.
            format!("nile_tenancy: slow statement for {who}: {elapsed_ms:.3} ms"),
        )
        .log();
    }
}

// ---- ProcessUtility -----------------------------------------------------------------------------------------------

/// How a utility statement is handled.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum UtilityRole {
    /// Transaction control at top level (BEGIN, COMMIT, SAVEPOINT ...): not counted, and not a level deeper, so that
    /// the portals COMMIT closes end as the top-level statements they are.
    Passthrough = 0,
    /// Nested, or not tracked: only a level deeper.
    Nested = 1,
    /// A counted top-level statement (an open statement without a QueryDesc) and a level deeper.
    Counted = 2,
}

#[pg_guard]
unsafe extern "C-unwind" fn before_utility(pstmt: *mut pg_sys::PlannedStmt) -> UtilityRole {
    // SAFETY: pstmt is the statement about to run.
    let transaction_control = unsafe { is_transaction_control(pstmt) };
    let role = if nesting() > 0 {
        UtilityRole::Nested
    } else if transaction_control {
        UtilityRole::Passthrough
    } else if tracking() {
        // The utility is an open top-level statement too, so that the rows written by the executor statements it
        // runs (DO, CALL, EXECUTE, CREATE TABLE AS) are added to it.
        open_statement(std::ptr::null_mut(), true);
        UtilityRole::Counted
    } else {
        UtilityRole::Nested
    };
    if role != UtilityRole::Passthrough {
        enter_nested();
    }
    role
}

#[pg_guard]
unsafe extern "C-unwind" fn after_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    qc: *mut pg_sys::QueryCompletion,
    role: UtilityRole,
) {
    if role == UtilityRole::Passthrough {
        return;
    }
    leave_nested();
    if role != UtilityRole::Counted {
        return;
    }
    let Some(mut measured) = close_statement(std::ptr::null_mut()) else {
        return;
    };
    // Rows the utility returned itself: EXECUTE of a SELECT and FETCH report them in their completion, COPY in its
    // row count (COPY ... FROM inserts them).
    // SAFETY: qc is NULL or the completion the utility filled in; pstmt is the statement that ran.
    if let Some(qc) = unsafe { qc.as_ref() } {
        let copy_from = unsafe { copy_from(pstmt) };
        // CREATE TABLE AS / SELECT INTO / CREATE MATERIALIZED VIEW report SELECT n for the rows they wrote.
        let creates_table =
            unsafe { utility_node(pstmt) } == Some(pg_sys::NodeTag::T_CreateTableAsStmt);
        match qc.commandTag {
            pg_sys::CommandTag::CMDTAG_SELECT if creates_table => {
                measured.usage.rows_inserted += qc.nprocessed
            }
            pg_sys::CommandTag::CMDTAG_SELECT | pg_sys::CommandTag::CMDTAG_FETCH => {
                measured.usage.rows_returned += qc.nprocessed
            }
            pg_sys::CommandTag::CMDTAG_COPY if copy_from == Some(true) => {
                measured.usage.rows_inserted += qc.nprocessed
            }
            pg_sys::CommandTag::CMDTAG_COPY => measured.usage.rows_returned += qc.nprocessed,
            _ => {}
        }
    }
    finish(measured);
}

/// SAFETY: called by Postgres as ProcessUtility_hook; a trampoline (see the module comment).
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: our bookkeeping around the previous hook or the standard function, with the arguments we were given.
    unsafe {
        let role = before_utility(pstmt);
        crate::pg::hook_chain::next_process_utility(
            PREV_PROCESS_UTILITY,
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        );
        after_utility(pstmt, qc, role);
    }
}

/// Is this utility statement transaction control (BEGIN, COMMIT, SAVEPOINT ...), which is not counted?
unsafe fn is_transaction_control(pstmt: *mut pg_sys::PlannedStmt) -> bool {
    // SAFETY (caller): pstmt is the utility statement being run.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_TransactionStmt
    }
}

/// The node type of a utility statement.
unsafe fn utility_node(pstmt: *mut pg_sys::PlannedStmt) -> Option<pg_sys::NodeTag> {
    // SAFETY (caller): pstmt is the utility statement that ran.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        (!stmt.is_null()).then(|| (*stmt).type_)
    }
}

/// For a COPY statement, whether it is COPY ... FROM.
unsafe fn copy_from(pstmt: *mut pg_sys::PlannedStmt) -> Option<bool> {
    // SAFETY (caller): pstmt is the utility statement that ran.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        (!stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_CopyStmt)
            .then(|| (*(stmt as *mut pg_sys::CopyStmt)).is_from)
    }
}

// ---- Transaction ends ---------------------------------------------------------------------------------------------

fn add_pending(key: UsageKey, usage: &StatementUsage) {
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        match pending.iter_mut().find(|(k, _)| *k == key) {
            Some((_, p)) => p.add_statement(usage),
            None => {
                let mut p = CounterValues::default();
                p.add_statement(usage);
                pending.push((key, p));
            }
        }
    });
}

/// The top-level statements opened since `from` (an index into the open list), whose end will never come: their
/// portals died with the (sub)transaction (failed when it aborted, done when it committed). They join the pending
/// usage.
fn close_leftovers(from: usize, aborted: bool) {
    let leftovers: Vec<Measured> = OPEN.with(|open| {
        let mut open = open.borrow_mut();
        let from = from.min(open.len());
        open.drain(from..).collect()
    });
    for mut measured in leftovers {
        measured.conclude();
        measured.usage.failed = aborted;
        add_pending(measured.key, &measured.usage);
    }
}

/// How often CPU time is read: getrusage is a system call (about 1 µs here), too dear for every transaction.
const CPU_READ_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// At the end of the transaction (after an abort has released its locks): record the pending usage, with one lock
/// acquisition for all its rows.
///
/// CPU time is the process's (one getrusage call at most every 10 ms, not per statement), shared among the rows
/// worked for since the previous reading in proportion to their execution time. It includes parsing, planning and
/// commit work, which the tenants caused too. It reaches the rows up to 10 ms of work late; the exit callback
/// settles the rest.
fn record_pending() {
    let mut pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return;
    }
    CPU_DEBT.with(|debt| {
        let mut debt = debt.borrow_mut();
        for (key, p) in &pending {
            match debt.iter_mut().find(|(k, _)| k == key) {
                Some((_, time)) => *time += p.total_time_ns,
                None => debt.push((*key, p.total_time_ns)),
            }
        }
    });
    let due = CPU_READ
        .with(Cell::get)
        .is_none_or(|(_, at)| at.elapsed() >= CPU_READ_INTERVAL);
    if due {
        settle_cpu(&mut pending);
    }
    store::record(&pending);
}

/// Read the CPU time, and share what was used since the last reading among the rows of the CPU debt, adding it to
/// `rows` (a row of its own, with no statements, for a key `rows` does not have).
fn settle_cpu(rows: &mut Vec<(UsageKey, CounterValues)>) {
    let now = cpu_times();
    let (user, system) = match CPU_READ.with(|r| r.replace(Some((now, Instant::now())))) {
        Some((before, _)) => (
            now.0.saturating_sub(before.0),
            now.1.saturating_sub(before.1),
        ),
        None => (0, 0),
    };
    let debt = CPU_DEBT.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let total_time: u64 = debt.iter().map(|(_, t)| *t).sum();
    for (key, time) in &debt {
        let (share, whole) = if total_time > 0 {
            (*time, total_time)
        } else {
            (1, debt.len() as u64)
        };
        let i = match rows.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                rows.push((*key, CounterValues::default()));
                rows.len() - 1
            }
        };
        rows[i].1.cpu_user_ns += (user as u128 * share as u128 / whole as u128) as u64;
        rows[i].1.cpu_system_ns += (system as u128 * share as u128 / whole as u128) as u64;
    }
}

/// At backend exit: the CPU time not yet shared out.
#[pg_guard]
unsafe extern "C-unwind" fn settle_cpu_at_exit(_code: i32, _arg: pg_sys::Datum) {
    if CPU_DEBT.with(|d| d.borrow().is_empty()) {
        return;
    }
    let mut rows = Vec::new();
    settle_cpu(&mut rows);
    store::record(&rows);
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    let aborted = match event {
        pg_sys::XactEvent::XACT_EVENT_ABORT => true,
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PREPARE => false,
        _ => return,
    };
    // A transaction that ends while a statement is still running (a procedure's COMMIT or ROLLBACK, VACUUM's
    // transaction per table, CREATE INDEX CONCURRENTLY) ends inside that statement's portal: the statement goes on,
    // at its level. Otherwise the transaction ended between statements or in error recovery, where Postgres has
    // already left every portal (PortalRun puts ActivePortal back as an ERROR passes): whatever is still open is
    // over, and an ERROR may have skipped the "after" halves of the hooks, so the level goes back to 0.
    // SAFETY: reads a process-global pointer.
    let inside_statement = unsafe { !pg_sys::ActivePortal.is_null() };
    if !inside_statement {
        close_leftovers(0, aborted);
        NESTING.with(|n| n.set(0));
        AT_SUBXACT_START.with(|s| s.borrow_mut().clear());
    }
    record_pending();
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_START_SUB => {
            let open = OPEN.with(|o| o.borrow().len());
            AT_SUBXACT_START.with(|s| s.borrow_mut().push((nesting(), open)));
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            AT_SUBXACT_START.with(|s| s.borrow_mut().pop());
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            // An ERROR skipped the "after" halves of the hooks it went through: go back to the level the
            // subtransaction started at. Back at top level, the statements opened inside it failed; those opened
            // before it (a portal still being fetched from) go on.
            let (level, open) = AT_SUBXACT_START
                .with(|s| s.borrow_mut().pop())
                .unwrap_or((0, 0));
            NESTING.with(|n| n.set(level));
            if level == 0 {
                close_leftovers(open, true);
            }
        }
        _ => {}
    }
}
