//! pg/unguarded — Postgres functions that cannot raise an ERROR, called without pgrx's guard.
//!
//! pgrx wraps every call into Postgres in a `sigsetjmp` so that an ERROR becomes a Rust panic instead of a `longjmp`
//! over Rust frames. For a function that only reads backend state and can never raise, the guard is pure cost (about
//! 20 ns a call here), and the hot paths call a few of them on every `nile.set_tenant()` and every policy evaluation.
//! They are declared here directly, each with the reason it cannot raise; anything that can raise (a catalog lookup,
//! an allocation, invalidation processing) stays on pgrx's guarded bindings.

use pgrx::pg_sys;

mod raw {
    use pgrx::pg_sys;
    extern "C-unwind" {
        pub fn IsTransactionBlock() -> bool;
        pub fn IsInParallelMode() -> bool;
        pub fn GetUserId() -> pg_sys::Oid;
        pub fn GetSessionUserId() -> pg_sys::Oid;
        pub fn GetOuterUserId() -> pg_sys::Oid;
    }
}

/// Whether the session is inside `BEGIN ... COMMIT` (reads the current transaction state's block state).
#[inline]
pub fn is_transaction_block() -> bool {
    // SAFETY: reads a field of the backend's current transaction state, which always exists; never raises.
    unsafe { raw::IsTransactionBlock() }
}

/// Whether the backend is in parallel mode (reads the current transaction state, and on PostgreSQL 17 and later the
/// list of active parallel contexts).
#[inline]
pub fn is_in_parallel_mode() -> bool {
    // SAFETY: reads backend-local state; never raises.
    unsafe { raw::IsInParallelMode() }
}

/// The current user id (a backend global, valid once the session has a user).
#[inline]
pub fn current_user_id() -> pg_sys::Oid {
    // SAFETY: returns a backend global (asserting it is valid in assert-enabled builds); never raises.
    unsafe { raw::GetUserId() }
}

/// The session user id (a backend global).
#[inline]
pub fn session_user_id() -> pg_sys::Oid {
    // SAFETY: returns a backend global (asserting it is valid in assert-enabled builds); never raises.
    unsafe { raw::GetSessionUserId() }
}

/// The outer user id: the current user outside any SECURITY DEFINER function (a backend global).
#[inline]
pub fn outer_user_id() -> pg_sys::Oid {
    // SAFETY: returns a backend global (asserting it is valid in assert-enabled builds); never raises.
    unsafe { raw::GetOuterUserId() }
}
