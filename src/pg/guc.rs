//! pg/guc — setting a Postgres setting from Rust the way `SET` does, and reporting a refused value from a check hook.
//!
//! Used by the context guard (src/context/guard.rs), the plain settings (src/settings.rs) and by every piece of code
//! that pins a setting for the SQL it runs (src/pg/privilege.rs opens a GUC nesting level around it).

use super::backend_local::BackendLocal;
use pgrx::prelude::*;
use std::ffi::{c_char, CStr};

/// How long a setting made by `set_setting` lasts.
pub enum Scope {
    /// The session (`SET`).
    Session,
    /// The transaction (`SET LOCAL`).
    Transaction,
    /// The current GUC nesting level: restored when it ends, as a function's `SET` clause is (src/pg/privilege.rs opens
    /// one around every piece of SQL the extension runs as another role).
    Level,
}

/// Set a setting the way `SET` does, for `scope`. Raises the setting's own error for a bad name or value.
pub fn set_setting(name: &CStr, value: &CStr, scope: Scope) {
    let action = action_of(scope);
    // SAFETY: both strings are valid NUL-terminated C strings that outlive the call; set_config_option copies them.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}

/// `set_setting` for a setting that exists for the backend's whole life (a built-in one, or one of the extension's,
/// which `_PG_init` defines and nothing removes), named by a `'static` name: on PostgreSQL 17 and later it is looked
/// up by name once per backend and then reached through its handle (`get_config_handle`), which spares every later
/// call the lookup (the context guard sets `nile.tenant_id` on every `nile.set_tenant()`). Earlier majors have no
/// handles and take `set_setting`'s path.
pub fn set_own_setting(name: &'static CStr, value: &CStr, scope: Scope) {
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        let handle = own_setting_handle(name);
        if !handle.is_null() {
            // SAFETY: as in set_setting; `handle` is the live handle of `name`. PGC_S_SESSION is an interactive source,
            // for which set_config_option itself checks privileges as the current user, as passed here.
            unsafe {
                pg_sys::set_config_with_handle(
                    name.as_ptr(),
                    handle,
                    value.as_ptr(),
                    pg_sys::GucContext::PGC_USERSET,
                    pg_sys::GucSource::PGC_S_SESSION,
                    crate::pg::unguarded::current_user_id(),
                    action_of(scope),
                    true,
                    0,
                    false,
                );
            }
            return;
        }
    }
    set_setting(name, value, scope);
}

#[cfg(any(feature = "pg17", feature = "pg18"))]
/// The handles `set_own_setting` has looked up, by the address of their setting's static name.
static OWN_HANDLES: BackendLocal<std::cell::RefCell<Vec<(usize, usize)>>> =
    BackendLocal::new(std::cell::RefCell::new(Vec::new()));

/// The handle of setting `name` (NULL if there is no such setting), looked up once per backend.
#[cfg(any(feature = "pg17", feature = "pg18"))]
fn own_setting_handle(name: &'static CStr) -> *mut pg_sys::config_handle {
    let key = name.as_ptr() as usize;
    if let Some(handle) =
        OWN_HANDLES.with(|h| h.borrow().iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
    {
        return handle as *mut pg_sys::config_handle;
    }
    // SAFETY: a lookup by a valid NUL-terminated name; NULL when the setting does not exist.
    let handle = unsafe { pg_sys::get_config_handle(name.as_ptr()) };
    if !handle.is_null() {
        OWN_HANDLES.with(|h| h.borrow_mut().push((key, handle as usize)));
    }
    handle
}

fn action_of(scope: Scope) -> pg_sys::GucAction::Type {
    match scope {
        Scope::Session => pg_sys::GucAction::GUC_ACTION_SET,
        Scope::Transaction => pg_sys::GucAction::GUC_ACTION_LOCAL,
        Scope::Level => pg_sys::GucAction::GUC_ACTION_SAVE,
    }
}

/// The value a string setting's check hook is asked about (empty for NULL).
///
/// # Safety
/// `newval` is the pointer Postgres passed to the check hook: valid, pointing at NULL or a NUL-terminated string
/// that outlives the hook call.
pub unsafe fn proposed_string<'a>(newval: *mut *mut c_char) -> &'a CStr {
    // SAFETY (caller): see above.
    unsafe {
        let value = *newval;
        if value.is_null() {
            c""
        } else {
            CStr::from_ptr(value)
        }
    }
}

/// Report why a value was refused; the GUC machinery turns this into the error (or warning) for the caller.
pub unsafe fn refuse(code: i32, message: &CStr, hint: &CStr) -> bool {
    // SAFETY: GUC_check_* strings must be palloc'd; pstrdup copies our static strings into the current context.
    unsafe {
        pg_sys::GUC_check_errcode(code);
        pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(message.as_ptr());
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
    }
    false
}
