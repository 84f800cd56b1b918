//! pg/privilege — who may call what, and running the extension's own SQL with the extension's rights.
//!
//! The principle (docs/security.md, "Security model"): no query over a user object is planned or executed with rights
//! its owner does not have. Planning a query over a table evaluates its owner's IMMUTABLE functions (index expressions
//! and predicates, statistics expressions, CHECK constraints of inheritance children), and running it fires the owner's
//! triggers, policies and defaults; so:
//! - `as_extension_owner`: the bootstrap superuser, for the extension's own tables and for catalog reads only;
//! - `as_table_owner_policed`: a user table's owner, its policies forced, inside a security-restricted operation (what
//!   `VACUUM`, `ANALYZE`, `CREATE INDEX` and `REFRESH MATERIALIZED VIEW` do), for every query and every DDL command
//!   over that table; the settings its code changes are rolled back when the operation ends;
//! - `with_safe_search_path`: the caller, with `search_path = pg_catalog, pg_temp`.
//! Each entry point checks the caller's rights itself first. Nothing here is SECURITY DEFINER: a function's `SET`
//! clause would undo the `SET LOCAL` that `nile.set_tenant()` relies on.

use crate::pg::errors::Problem;
use crate::pg::guc::{set_setting, Scope};
use pgrx::prelude::*;
use std::ffi::CString;

/// `role`'s oid if the current user has its privileges (superusers have every role's privileges), else `None`.
pub fn held_role(role: &str) -> Option<pg_sys::Oid> {
    let name = CString::new(role).ok()?;
    // SAFETY: plain catalog lookups with a valid NUL-terminated name; missing_ok = true returns InvalidOid instead of
    // raising an error.
    unsafe {
        let role_oid = pg_sys::get_role_oid(name.as_ptr(), true);
        (role_oid != pg_sys::InvalidOid && pg_sys::has_privs_of_role(pg_sys::GetUserId(), role_oid))
            .then_some(role_oid)
    }
}

/// Raise 42501 unless the current user has the privileges of `role`.
#[track_caller]
pub fn require_role(role: &str, what: &str) {
    if held_role(role).is_none() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied: {what} requires membership in role {role}"),
        )
        .hint(format!("A superuser can run GRANT {role} TO <role>."))
        .raise();
    }
}

/// `nile._require_nile_admin(routine text) RETURNS void`: `require_role("nile_admin", routine)` for the extension's
/// PL/pgSQL routines (sql/lifecycle.sql).
#[pg_extern(stable, parallel_safe)]
fn _require_nile_admin(routine: &str) {
    require_role("nile_admin", routine);
}

/// A role's name, or `None` when no role has that oid (read from the syscache: no SQL, no search_path).
pub fn role_name(role: pg_sys::Oid) -> Option<String> {
    // SAFETY: noerr = true returns NULL instead of raising for a missing role; otherwise the name is a palloc'd
    // NUL-terminated copy, read before anything else runs.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        (!name.is_null()).then(|| {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// Is this backend inside an explicit transaction block (BEGIN ... COMMIT)?
pub fn in_transaction_block() -> bool {
    crate::pg::unguarded::is_transaction_block()
}

/// Run `f` as the bootstrap superuser with `search_path = pg_catalog, pg_temp`, the way a SECURITY DEFINER function
/// would. Only for the extension's own tables, catalog reads, and DDL that evaluates no user expression (`GRANT`, and
/// `CREATE INDEX`, which builds the index as the table's owner itself): a query over a user table is planned with its
/// owner's functions and fires its owner's triggers, so those go through `as_table_owner_policed`.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    run_as(
        pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
        0,
        0,
        Settings::Keep,
        f,
    )
}

/// Run `f` as `owner` (the owner of the user table it reads or changes) in a security-restricted operation, with
/// row-level security as Postgres applies it to that owner, forced policies included, also when an enclosing operation
/// lifted them: whatever of the owner's code runs (planning, triggers, defaults) runs with the owner's own rights and
/// sees only the rows its tables' policies let it see, so nobody gains anything by writing it; the settings it changes
/// are rolled back at the end, as `VACUUM` and `CREATE INDEX` do.
pub fn as_table_owner_policed<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    run_as(
        owner,
        pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        pg_sys::SECURITY_NOFORCE_RLS as i32,
        Settings::RollBack,
        f,
    )
}

/// Run `f` as the caller, with `search_path = pg_catalog, pg_temp`: for SQL the extension runs on behalf of the caller
/// (event triggers), which must not be steered by objects in the caller's schemas.
pub fn with_safe_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: reads the current user id.
    let caller = unsafe { pg_sys::GetUserId() };
    run_as(caller, 0, 0, Settings::Keep, f)
}

/// What happens, when `f` returns, to the settings changed inside it (other than the search_path pinned here, which
/// is always restored).
#[derive(Clone, Copy, PartialEq)]
enum Settings {
    /// Kept, as after a function without SET clauses (the extension's own code sets tenant contexts on purpose).
    Keep,
    /// Rolled back: a table owner's code may not change the caller's session.
    RollBack,
}

/// Run `f` as `role`, with `security_flags` added to the security context and `cleared_flags` taken out of it. The
/// caller's identity and search_path come back when `f` returns; if `f` raises an ERROR, transaction (or
/// subtransaction) abort restores both, as it does for SECURITY DEFINER functions.
fn run_as<R>(
    role: pg_sys::Oid,
    security_flags: i32,
    cleared_flags: i32,
    settings: Settings,
    f: impl FnOnce() -> R,
) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: GetUserIdAndSecContext writes through two valid pointers; NewGUCNestLevel opens a GUC nesting level that
    // `Restore::drop` (or abort) closes.
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::NewGUCNestLevel()
    };
    set_setting(c"search_path", c"pg_catalog, pg_temp", Scope::Level);
    // SAFETY: switches to an existing role (the bootstrap superuser, a table's owner, or the caller itself).
    unsafe {
        pg_sys::SetUserIdAndSecContext(
            role,
            (saved_context & !cleared_flags)
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | security_flags,
        );
    }
    let _restore = Restore {
        saved_user,
        saved_context,
        nest_level,
        settings,
    };
    f()
}

struct Restore {
    saved_user: pg_sys::Oid,
    saved_context: i32,
    nest_level: i32,
    settings: Settings,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // An ERROR is on its way to Postgres; (sub)transaction abort restores the user and the GUC nest level.
            return;
        }
        // SAFETY: closes exactly the nesting level opened in run_as and restores the saved identity; isCommit = false
        // undoes every setting changed at that level, as index_build() and vacuum_rel() do after running an owner's
        // code.
        unsafe {
            pg_sys::AtEOXact_GUC(self.settings == Settings::Keep, self.nest_level);
            pg_sys::SetUserIdAndSecContext(self.saved_user, self.saved_context);
        }
    }
}
