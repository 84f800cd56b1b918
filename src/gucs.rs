//! gucs — every `nile.*` setting, and the guard that makes the tenant and admin contexts unforgeable.
//!
//! The tenant context is the setting `nile.tenant_id` and the admin context is `nile.admin_active`. Both are ordinary
//! user-settable GUCs so that Postgres' own machinery gives them exactly the scoping users expect: `SET LOCAL`
//! semantics, `ROLLBACK`, `ROLLBACK TO SAVEPOINT`, `RESET ALL`, `DISCARD ALL`, and copying into parallel workers.
//!
//! What makes them unforgeable is their check hook: a non-empty tenant id (or admin `on`) is accepted only while
//! `nile.set_tenant()` (or `nile.admin_context()`) is applying exactly that value, or while a parallel worker copies
//! its leader's state. `SET nile.tenant_id`, `set_config()`, `PGOPTIONS`, `ALTER ROLE/DATABASE ... SET` and a
//! function's `SET` clause all reach the check hook through another path and are refused. Clearing (the empty value,
//! `off`) is always allowed: it can only take access away.
//!
//! The assign hooks keep a parsed copy of the tenant id in backend memory, so the policy functions never parse text.

use crate::uuid_text::{format_uuid, parse_canonical_uuid};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::PostgresGucEnum;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr, CString};

pub const TENANT_ID_GUC: &CStr = c"nile.tenant_id";
pub const ADMIN_ACTIVE_GUC: &CStr = c"nile.admin_active";

/// What a statement on a tenant table does when the session has neither a tenant nor the admin context.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum MissingTenant {
    /// Raise an error (SQLSTATE 42501). The default.
    #[name = c"error"]
    Error,
    /// See no rows and write none.
    #[name = c"deny"]
    Deny,
}

/// `nile.missing_tenant`: fail-closed behaviour without a tenant context (`error` or `deny`). Never "all rows".
pub static MISSING_TENANT: GucSetting<MissingTenant> =
    GucSetting::<MissingTenant>::new(MissingTenant::Error);

/// `nile.auto_enable`: whether DDL that creates a table with a tenant column (or adds one) enrolls it at once (on, the
/// default) or only warns (off). See src/ddl_events.rs.
pub static AUTO_ENABLE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `nile.tenant_id`: the tenant this session works for (empty: none). Written only through `nile.set_tenant()`.
static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// `nile.admin_active`: whether `nile.admin_context()` is in force for this transaction. Written only by that function.
static ADMIN_ACTIVE: GucSetting<bool> = GucSetting::<bool>::new(false);

thread_local! {
    /// The parsed value of `nile.tenant_id`, kept in step by its assign hook.
    static CURRENT_TENANT: Cell<Option<[u8; 16]>> = const { Cell::new(None) };
    /// Whether the admin context is in force, kept in step by the assign hook of `nile.admin_active`.
    static ADMIN_IN_FORCE: Cell<bool> = const { Cell::new(false) };
    /// The one tenant-id value the check hook will accept, set only while `set_tenant_context` applies it.
    static AUTHORIZED_TENANT: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// Whether the check hook will accept `nile.admin_active = on`, set only while `set_admin_context` applies it.
    static AUTHORIZED_ADMIN: Cell<bool> = const { Cell::new(false) };
}

pub fn init() {
    // SAFETY: called once from _PG_init; the hooks are `#[pg_guard]`ed functions that never raise an ERROR, and the
    // settings are statics that live for the life of the backend.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            TENANT_ID_GUC,
            c"The tenant this session works for (read-only: use nile.set_tenant()).",
            c"Empty when the session has no tenant context. Only nile.set_tenant() can set it; SET, set_config(), \
              startup options and role or database defaults are refused.",
            &TENANT_ID,
            GucContext::Userset,
            GucFlags::from_bits_retain(pg_sys::GUC_NOT_IN_SAMPLE as i32) | GucFlags::DISALLOW_IN_FILE,
            Some(check_tenant_id),
            Some(assign_tenant_id),
            None,
        );
        GucRegistry::define_bool_guc_with_hooks(
            ADMIN_ACTIVE_GUC,
            c"Whether nile.admin_context() is in force for this transaction (read-only).",
            c"Only nile.admin_context() can turn it on, for the rest of the transaction.",
            &ADMIN_ACTIVE,
            GucContext::Userset,
            GucFlags::from_bits_retain(pg_sys::GUC_NOT_IN_SAMPLE as i32)
                | GucFlags::DISALLOW_IN_FILE,
            Some(check_admin_active),
            Some(assign_admin_active),
            None,
        );
    }
    GucRegistry::define_enum_guc(
        c"nile.missing_tenant",
        c"What a statement on a tenant table does without a tenant context: error or deny.",
        c"error (the default) raises SQLSTATE 42501; deny returns no rows and lets no row be written.",
        &MISSING_TENANT,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"nile.auto_enable",
        c"Enroll tables that DDL creates with a tenant column, or gives one, as tenant tables.",
        c"on (the default): CREATE TABLE and ALTER TABLE ... ADD COLUMN tenant_id enroll the table at once. \
          off: they raise a WARNING naming the table and the call that enrolls it.",
        &AUTO_ENABLE,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: plain call into Postgres during _PG_init.
    unsafe { reserve_prefix() };
}

/// Stop anyone from creating placeholder settings under `nile.` (typos, or names a later version will define).
#[cfg(not(feature = "pg14"))]
unsafe fn reserve_prefix() {
    // SAFETY: the argument is a valid NUL-terminated string with static lifetime.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"nile".as_ptr()) }
}

#[cfg(feature = "pg14")]
unsafe fn reserve_prefix() {
    // SAFETY: the argument is a valid NUL-terminated string with static lifetime.
    unsafe { pg_sys::EmitWarningsOnPlaceholders(c"nile".as_ptr()) }
}

/// The tenant this session works for, as parsed by the assign hook.
#[inline]
pub fn current_tenant() -> Option<[u8; 16]> {
    CURRENT_TENANT.with(Cell::get)
}

#[inline]
pub fn admin_in_force() -> bool {
    ADMIN_IN_FORCE.with(Cell::get)
}

/// Apply `tenant` (or clear the context with `None`) through the GUC machinery. `is_local` gives `SET LOCAL`
/// semantics: the value reverts at the end of the transaction.
pub fn set_tenant_context(tenant: Option<[u8; 16]>, is_local: bool) {
    let value = match tenant {
        Some(bytes) => CString::new(format_uuid(&bytes)).unwrap_or_default(),
        None => CString::default(),
    };
    let _authorization = AuthorizedTenant::grant(value.clone());
    apply(TENANT_ID_GUC, &value, is_local);
}

/// Turn the admin context on for the rest of the current transaction.
pub fn set_admin_context() {
    let _authorization = AuthorizedAdmin::grant();
    apply(ADMIN_ACTIVE_GUC, c"on", true);
}

fn apply(name: &CStr, value: &CStr, is_local: bool) {
    let action = if is_local {
        pg_sys::GucAction::GUC_ACTION_LOCAL
    } else {
        pg_sys::GucAction::GUC_ACTION_SET
    };
    // SAFETY: both strings are valid NUL-terminated C strings that outlive the call; set_config_option copies them.
    // An ERROR inside it unwinds through the authorization guards, which withdraw the authorization.
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

/// Withdraws the tenant authorization when dropped, including when an ERROR unwinds through `apply`.
struct AuthorizedTenant;
impl AuthorizedTenant {
    fn grant(value: CString) -> Self {
        AUTHORIZED_TENANT.with(|a| *a.borrow_mut() = Some(value));
        AuthorizedTenant
    }
}
impl Drop for AuthorizedTenant {
    fn drop(&mut self) {
        AUTHORIZED_TENANT.with(|a| *a.borrow_mut() = None);
    }
}

struct AuthorizedAdmin;
impl AuthorizedAdmin {
    fn grant() -> Self {
        AUTHORIZED_ADMIN.with(|a| a.set(true));
        AuthorizedAdmin
    }
}
impl Drop for AuthorizedAdmin {
    fn drop(&mut self) {
        AUTHORIZED_ADMIN.with(|a| a.set(false));
    }
}

/// A parallel worker copying its leader's settings: the values were accepted in the leader already.
fn restoring_parallel_worker_state() -> bool {
    // SAFETY: reading a plain global flag of the backend.
    unsafe { pg_sys::InitializingParallelWorker }
}

/// Report why a value was refused; the GUC machinery turns this into the error (or warning) for the caller.
unsafe fn refuse(message: &CStr, hint: &CStr) -> bool {
    // SAFETY: GUC_check_* strings must be palloc'd; pstrdup copies our static strings into the current context.
    unsafe {
        pg_sys::GUC_check_errcode(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32);
        pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(message.as_ptr());
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
    }
    false
}

#[pg_guard]
unsafe extern "C-unwind" fn check_tenant_id(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the proposed value, which is NULL or a NUL-terminated string.
    let proposed = unsafe {
        let value = *newval;
        if value.is_null() {
            c""
        } else {
            CStr::from_ptr(value)
        }
    };
    if proposed.is_empty() {
        return true;
    }
    let authorized = AUTHORIZED_TENANT.with(|a| a.borrow().as_deref() == Some(proposed));
    if (authorized || restoring_parallel_worker_state())
        && parse_canonical_uuid(proposed.to_bytes()).is_some()
    {
        return true;
    }
    // SAFETY: see `refuse`.
    unsafe {
        refuse(
            c"nile.tenant_id can only be set by nile.set_tenant()",
            c"Call SELECT nile.set_tenant('<tenant uuid>') inside a transaction, or nile.clear_tenant() to leave.",
        )
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn assign_tenant_id(newval: *const c_char, _extra: *mut c_void) {
    // SAFETY: Postgres passes NULL or a NUL-terminated string that the check hook accepted earlier.
    let value = if newval.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(newval) })
    };
    // A value that does not parse can only be the empty one; treating it as "no tenant" fails closed.
    let parsed = value.and_then(|v| parse_canonical_uuid(v.to_bytes()));
    CURRENT_TENANT.with(|c| c.set(parsed));
}

#[pg_guard]
unsafe extern "C-unwind" fn check_admin_active(
    newval: *mut bool,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the proposed value.
    if !unsafe { *newval } {
        return true;
    }
    if AUTHORIZED_ADMIN.with(Cell::get) || restoring_parallel_worker_state() {
        return true;
    }
    // SAFETY: see `refuse`.
    unsafe {
        refuse(
            c"nile.admin_active can only be turned on by nile.admin_context()",
            c"Members of nile_admin call SELECT nile.admin_context('<reason>') inside a transaction.",
        )
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn assign_admin_active(newval: bool, _extra: *mut c_void) {
    let was = ADMIN_IN_FORCE.with(|a| a.replace(newval));
    if was != newval {
        // Plans built with the admin policy must not outlive it, and plans built without it must not be used inside
        // it: mark every cached plan of this backend for re-planning. This only flips flags; it cannot fail.
        // SAFETY: plain call into Postgres; valid in any transaction state, including abort.
        unsafe { pg_sys::ResetPlanCache() };
    }
}
