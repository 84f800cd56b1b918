//! context/pool_guard — what a tenant context may not leave behind on a server connection that a pool hands to the next
//! client (issue 18): a cursor declared `WITH HOLD` inside a tenant's context, or inside the admin context, outlives
//! the transaction that had the context, so the next client on the same connection could `FETCH` the rows it was
//! planned and opened to read. Such a `DECLARE` is refused (with or without a pooler: the rule has to hold for both),
//! and so is the commit of a transaction that declared one and entered a context (in either order: Postgres runs a
//! holdable cursor to its end when the transaction commits, with what its plan computed in the context, the tenant
//! included).
//!
//! Design: a check before each utility statement (src/pg/hook_chain.rs) that looks at `DeclareCursorStmt` only, and one
//! transaction callback; installed whenever the library is loaded, which any tenant context needs (`nile.set_tenant()`
//! is in it).

use super::guard;
use crate::context::tenant::effective_tenant;
use crate::pg::backend_local::BackendLocal;
use crate::pg::errors::Problem;
use pgrx::prelude::*;

/// The names of the cursors WITH HOLD the current transaction declared.
static HOLDABLE_DECLARED: BackendLocal<std::cell::RefCell<Vec<std::ffi::CString>>> =
    BackendLocal::new(std::cell::RefCell::new(Vec::new()));

pub(super) fn init() {
    crate::pg::hook_chain::check_before_running(check_cursor_declaration);
    // SAFETY: _PG_init runs once per process before any query; the callback is registered for the life of the process.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
    }
}

/// Before a commit: refuse it if this transaction declared a cursor WITH HOLD and entered a context (the cursor is
/// about to be run to its end, keeping rows read in the context). At its end: forget both.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            let declared = HOLDABLE_DECLARED.with(|h| std::mem::take(&mut *h.borrow_mut()));
            if !declared.is_empty() && guard::context_entered() {
                guard::forget_context_entered();
                // Postgres has just run them to their end and made them outlive the transaction, even one that
                // aborts now: close them first.
                for name in &declared {
                    // SAFETY: looks the portal up by its NUL-terminated name; a cursor closed meanwhile is not found
                    // (null). Dropping a held, inactive portal is what CLOSE does.
                    unsafe {
                        let portal = pg_sys::GetPortalByName(name.as_ptr());
                        if !portal.is_null() {
                            pg_sys::PortalDrop(portal, false);
                        }
                    }
                }
                Problem::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "a transaction that entered a tenant's or the admin context cannot keep a cursor WITH HOLD",
                )
                .detail("The cursor would keep rows read in the context after it ends: the next client of a pooled connection could fetch them. It was closed.")
                .hint("Declare the cursor WITHOUT HOLD and fetch its rows within the transaction, or declare it in a transaction that enters no context.")
                .raise();
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            HOLDABLE_DECLARED.with(|h| h.borrow_mut().clear());
            guard::forget_context_entered();
        }
        _ => {}
    }
}

/// The utility check (src/pg/hook_chain.rs): a `DECLARE … WITH HOLD` is refused in a context, and remembered otherwise.
///
/// # Safety
/// `stmt` must be the valid parse tree of the utility statement about to run.
unsafe fn check_cursor_declaration(stmt: *mut pg_sys::Node) {
    // SAFETY (caller): a valid node, read only here; a DeclareCursorStmt's portalname is a NUL-terminated string.
    let holdable_cursor = unsafe {
        if (*stmt).type_ == pg_sys::NodeTag::T_DeclareCursorStmt {
            let declare = stmt as *mut pg_sys::DeclareCursorStmt;
            ((*declare).options & pg_sys::CURSOR_OPT_HOLD as i32 != 0)
                .then(|| std::ffi::CStr::from_ptr((*declare).portalname).to_owned())
        } else {
            None
        }
    };
    if let Some(name) = holdable_cursor {
        refuse_if_in_a_context();
        HOLDABLE_DECLARED.with(|h| h.borrow_mut().push(name));
    }
}

/// Raise 0A000 inside a tenant's context or the admin context.
fn refuse_if_in_a_context() {
    let which = if guard::admin_in_force() {
        "the admin context"
    } else if effective_tenant().is_some() {
        "a tenant's context"
    } else {
        return;
    };
    Problem::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("a cursor WITH HOLD cannot be declared in {which}"),
    )
    .detail("It would outlive the transaction, and with it the context: the next client of a pooled connection could fetch its rows.")
    .hint("Declare the cursor WITHOUT HOLD and fetch its rows within the transaction.")
    .raise();
}
