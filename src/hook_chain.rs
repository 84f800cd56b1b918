//! hook_chain — passing a utility statement on to the next `ProcessUtility` hook in the chain, or to Postgres' own
//! `standard_ProcessUtility` when there is none: for the modules that install that hook (usage/hooks.rs, which
//! measures statements, pool_guard.rs, which refuses cursors WITH HOLD in a context, and fk_validation.rs, which refuses
//! casts to uuid that would run a user's function as the owner of nile.tenants).

use pgrx::prelude::*;

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
