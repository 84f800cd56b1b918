//! pg/hook_chain — the hook chains: passing a utility statement, a plan or a query on to the next hook, or to
//! Postgres' own `standard_*` function when there is none (for usage/hooks.rs, which wraps every statement to measure
//! it, and src/context/read_only.rs), with the standard functions declared directly: pgrx's bindings would turn an
//! ERROR raised inside them into a Rust panic and re-raise it without its context. And one `ProcessUtility` hook
//! shared by the modules that only look at a statement before it runs and may refuse it
//! (`check_before_running`: src/context/pool_guard.rs refuses cursors WITH HOLD in a context,
//! src/context/read_only.rs notes utility statements in a read-only context, src/tables/fk_validation.rs casts to uuid
//! that would run a user's function as the owner of nile.tenants), so that a utility statement passes one such hook,
//! not one per check.

use pgrx::prelude::*;

/// A look at a utility statement's parse tree (never NULL) before it runs; it raises to refuse the statement.
pub(super) type UtilityCheck = unsafe fn(*mut pg_sys::Node);

/// The checks registered so far, in registration order (there are three; the room is fixed, registration happens in
/// `_PG_init`).
static mut CHECKS: [Option<UtilityCheck>; 4] = [None; 4];
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// Called from an `init()` in `_PG_init`: run `check` on every utility statement before it runs. The first call
/// installs the shared hook.
pub fn check_before_running(check: UtilityCheck) {
    // SAFETY: _PG_init runs once per process, on its only thread, before any statement; the previous hook is saved and
    // called by ours.
    unsafe {
        let checks = &mut *(&raw mut CHECKS);
        if checks[0].is_none() {
            PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
            pg_sys::ProcessUtility_hook = Some(run_checks);
        }
        let Some(free) = checks.iter_mut().find(|c| c.is_none()) else {
            panic!("hook_chain: more utility checks than CHECKS has room for");
        };
        *free = Some(check);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn run_checks(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: pstmt is the statement Postgres is about to run, its utilityStmt a valid node; CHECKS is only written in
    // _PG_init; the next hook gets the arguments Postgres gave this one, unchanged.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if !stmt.is_null() {
            for check in (*(&raw const CHECKS)).iter().map_while(|c| *c) {
                check(stmt);
            }
        }
        next_process_utility(
            PREV_PROCESS_UTILITY,
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        )
    }
}

extern "C-unwind" {
    #[link_name = "standard_ProcessUtility"]
    fn raw_standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// Run the utility statement through `prev` (the hook that was installed before the caller's), or through
/// `standard_ProcessUtility`.
///
/// # Safety
/// The arguments must be those Postgres passed to the caller's `ProcessUtility` hook.
#[allow(clippy::too_many_arguments)]
pub unsafe fn next_process_utility(
    prev: pg_sys::ProcessUtility_hook_type,
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the caller passes the arguments Postgres gave its hook, unchanged.
    unsafe {
        match prev {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => raw_standard_process_utility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

extern "C-unwind" {
    #[link_name = "standard_planner"]
    fn raw_standard_planner(
        parse: *mut pg_sys::Query,
        query_string: *const std::ffi::c_char,
        cursor_options: i32,
        bound_params: pg_sys::ParamListInfo,
    ) -> *mut pg_sys::PlannedStmt;
    #[link_name = "standard_ExecutorStart"]
    fn raw_standard_executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32);
    #[cfg(not(feature = "pg18"))]
    #[link_name = "standard_ExecutorRun"]
    fn raw_standard_executor_run(
        query_desc: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
        execute_once: bool,
    );
    #[cfg(feature = "pg18")]
    #[link_name = "standard_ExecutorRun"]
    fn raw_standard_executor_run(
        query_desc: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
    );
    #[link_name = "standard_ExecutorFinish"]
    fn raw_standard_executor_finish(query_desc: *mut pg_sys::QueryDesc);
    #[link_name = "standard_ExecutorEnd"]
    fn raw_standard_executor_end(query_desc: *mut pg_sys::QueryDesc);
}

/// Plan through `prev` (the planner hook installed before the caller's), or `standard_planner`.
///
/// # Safety
/// The arguments must be those Postgres passed to the caller's planner hook.
pub unsafe fn next_planner(
    prev: pg_sys::planner_hook_type,
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: i32,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: the caller passes the arguments Postgres gave its hook, unchanged.
    unsafe {
        match prev {
            Some(prev) => prev(parse, query_string, cursor_options, bound_params),
            None => raw_standard_planner(parse, query_string, cursor_options, bound_params),
        }
    }
}

/// Start the query through `prev`, or `standard_ExecutorStart`.
///
/// # Safety
/// The arguments must be those Postgres passed to the caller's ExecutorStart hook.
pub unsafe fn next_executor_start(
    prev: pg_sys::ExecutorStart_hook_type,
    query_desc: *mut pg_sys::QueryDesc,
    eflags: i32,
) {
    // SAFETY: the caller passes the arguments Postgres gave its hook, unchanged.
    unsafe {
        match prev {
            Some(prev) => prev(query_desc, eflags),
            None => raw_standard_executor_start(query_desc, eflags),
        }
    }
}

/// Run the query through `prev`, or `standard_ExecutorRun`.
///
/// # Safety
/// The arguments must be those Postgres passed to the caller's ExecutorRun hook.
#[cfg(not(feature = "pg18"))]
pub unsafe fn next_executor_run(
    prev: pg_sys::ExecutorRun_hook_type,
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: the caller passes the arguments Postgres gave its hook, unchanged.
    unsafe {
        match prev {
            Some(prev) => prev(query_desc, direction, count, execute_once),
            None => raw_standard_executor_run(query_desc, direction, count, execute_once),
        }
    }
}

/// Run the query through `prev`, or `standard_ExecutorRun` (PostgreSQL 18 has no `execute_once`).
///
/// # Safety
/// The arguments must be those Postgres passed to the caller's ExecutorRun hook.
#[cfg(feature = "pg18")]
pub unsafe fn next_executor_run(
    prev: pg_sys::ExecutorRun_hook_type,
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    // SAFETY: the caller passes the arguments Postgres gave its hook, unchanged.
    unsafe {
        match prev {
            Some(prev) => prev(query_desc, direction, count),
            None => raw_standard_executor_run(query_desc, direction, count),
        }
    }
}

/// Finish the query through `prev`, or `standard_ExecutorFinish`.
///
/// # Safety
/// The arguments must be those Postgres passed to the caller's ExecutorFinish hook.
pub unsafe fn next_executor_finish(
    prev: pg_sys::ExecutorFinish_hook_type,
    query_desc: *mut pg_sys::QueryDesc,
) {
    // SAFETY: the caller passes the arguments Postgres gave its hook, unchanged.
    unsafe {
        match prev {
            Some(prev) => prev(query_desc),
            None => raw_standard_executor_finish(query_desc),
        }
    }
}

/// End the query through `prev`, or `standard_ExecutorEnd`.
///
/// # Safety
/// The arguments must be those Postgres passed to the caller's ExecutorEnd hook.
pub unsafe fn next_executor_end(
    prev: pg_sys::ExecutorEnd_hook_type,
    query_desc: *mut pg_sys::QueryDesc,
) {
    // SAFETY: the caller passes the arguments Postgres gave its hook, unchanged.
    unsafe {
        match prev {
            Some(prev) => prev(query_desc),
            None => raw_standard_executor_end(query_desc),
        }
    }
}
