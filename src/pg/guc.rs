//! pg/guc — setting a Postgres setting from Rust the way `SET` does, and reporting a refused value from a check hook.
//!
//! Used by the context guard (src/context/guard.rs), the plain settings (src/settings.rs) and by every piece of code
//! that pins a setting for the SQL it runs (src/pg/privilege.rs opens a GUC nesting level around it).

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
    let action = match scope {
        Scope::Session => pg_sys::GucAction::GUC_ACTION_SET,
        Scope::Transaction => pg_sys::GucAction::GUC_ACTION_LOCAL,
        Scope::Level => pg_sys::GucAction::GUC_ACTION_SAVE,
    };
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
