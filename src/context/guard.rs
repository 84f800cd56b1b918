//! context/guard — the guard that makes the tenant and admin contexts unforgeable (the plain settings are in
//! src/settings.rs).
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

use crate::pg::backend_local::BackendLocal;
use crate::pg::errors::NileCode;
use crate::pg::guc::{proposed_string, refuse, set_own_setting, Scope};
use crate::pg::uuid_text::{parse_canonical_uuid, uuid_c_text};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr, CString};

pub(super) const TENANT_ID_GUC: &CStr = c"nile.tenant_id";
pub(super) const USER_ID_GUC: &CStr = c"nile.user_id";
pub(super) const ADMIN_ACTIVE_GUC: &CStr = c"nile.admin_active";

/// `nile.user_id`: the user id of the signed token the session entered its tenant with (empty: none).
static USER_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// `nile.tenant_id`: the tenant this session works for (empty: none). Written only through `nile.set_tenant()`.
static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// `nile.admin_active`: whether `nile.admin_context()` is in force for this transaction. Written only by that function.
static ADMIN_ACTIVE: GucSetting<bool> = GucSetting::<bool>::new(false);

/// The parsed value of `nile.tenant_id`, kept in step by its assign hook.
static CURRENT_TENANT: BackendLocal<Cell<Option<[u8; 16]>>> = BackendLocal::new(Cell::new(None));
/// Whether the admin context is in force, kept in step by the assign hook of `nile.admin_active`.
static ADMIN_IN_FORCE: BackendLocal<Cell<bool>> = BackendLocal::new(Cell::new(false));
/// The one tenant-id value (its canonical text) the check hook will accept, set only while `set_tenant_context`
/// applies it.
static AUTHORIZED_TENANT: BackendLocal<Cell<Option<[u8; 36]>>> = BackendLocal::new(Cell::new(None));
/// Whether `nile.user_id` is not empty, kept in step by its assign hook.
static USER_ID_SET: BackendLocal<Cell<bool>> = BackendLocal::new(Cell::new(false));
/// The one user-id value the check hook will accept, set only while `set_tenant_context` applies it.
static AUTHORIZED_USER: BackendLocal<RefCell<Option<CString>>> =
    BackendLocal::new(RefCell::new(None));
/// Whether the check hook will accept `nile.admin_active = on`, set only while `set_admin_context` applies it.
static AUTHORIZED_ADMIN: BackendLocal<Cell<bool>> = BackendLocal::new(Cell::new(false));

/// Defines the three guarded settings (called from `context::init()`).
pub(super) fn init() {
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
        GucRegistry::define_string_guc_with_hooks(
            USER_ID_GUC,
            c"The user id of the signed token this session entered its tenant with (read-only).",
            c"Empty unless nile.set_tenant_token() set it; nile.current_user_id() returns it.",
            &USER_ID,
            GucContext::Userset,
            GucFlags::from_bits_retain(pg_sys::GUC_NOT_IN_SAMPLE as i32)
                | GucFlags::DISALLOW_IN_FILE,
            Some(check_user_id),
            Some(assign_user_id),
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
}

/// Told the new tenant whenever `nile.tenant_id` takes another value (see `on_tenant_switch`).
static SWITCH_LISTENER: BackendLocal<Cell<Option<fn(Option<[u8; 16]>)>>> =
    BackendLocal::new(Cell::new(None));

/// Call `listener` with the new tenant (None: no context) whenever this backend's tenant context changes to another
/// value: entered, switched, cleared, or restored by the end of a transaction or a rollback to a savepoint. Registered
/// from an `init()` in `_PG_init`; the listener runs inside the setting's assign hook, so it must never raise.
pub fn on_tenant_switch(listener: fn(Option<[u8; 16]>)) {
    SWITCH_LISTENER.with(|l| l.set(Some(listener)));
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

/// Whether a tenant context or the admin context was entered in the current transaction (src/context/pool_guard.rs
/// resets it when the transaction ends).
static CONTEXT_ENTERED: BackendLocal<Cell<bool>> = BackendLocal::new(Cell::new(false));

/// Whether a tenant context or the admin context was entered since `forget_context_entered()`.
pub(super) fn context_entered() -> bool {
    CONTEXT_ENTERED.with(Cell::get)
}

/// Start counting `context_entered()` afresh (at the end of a transaction).
pub(super) fn forget_context_entered() {
    CONTEXT_ENTERED.with(|c| c.set(false));
}

/// Apply `tenant` (or clear the context with `None`) and the token's `user` id (or none) through the GUC machinery.
/// `is_local` gives `SET LOCAL` semantics: the values revert at the end of the transaction.
///
/// A `SET LOCAL` to the value a setting already has changes nothing, not even what `ROLLBACK TO SAVEPOINT` or the end
/// of the transaction restore (they restore the value from before the first change at their level, which is the same
/// value either way), so such a write is skipped: the common `nile.set_tenant()` (no token before, none now) applies
/// one setting instead of two. A session-wide `SET` is always applied: it replaces the value the transaction's end
/// restores.
pub(super) fn set_tenant_context(tenant: Option<[u8; 16]>, user: Option<&str>, is_local: bool) {
    if tenant.is_some() {
        CONTEXT_ENTERED.with(|c| c.set(true));
    }
    if !(is_local && current_tenant() == tenant) {
        let text = tenant.map(|bytes| uuid_c_text(&bytes));
        let value = text
            .as_ref()
            .and_then(|t| CStr::from_bytes_with_nul(t).ok())
            .unwrap_or(c"");
        let _tenant = AuthorizedTenant::grant(text.map(|t| {
            let mut digits = [0u8; 36];
            digits.copy_from_slice(&t[..36]);
            digits
        }));
        apply(TENANT_ID_GUC, value, is_local);
    }
    // A user id with a NUL byte cannot come from a verified token (JSON strings are checked before); treat as none.
    let user = user.and_then(|u| CString::new(u).ok());
    if user.is_some() || !is_local || USER_ID_SET.with(Cell::get) {
        let user = user.unwrap_or_default();
        let _user = Authorized::grant(&AUTHORIZED_USER, user.clone());
        apply(USER_ID_GUC, &user, is_local);
    }
}

/// The user id of the token the session entered its tenant with.
pub(super) fn current_user_id() -> Option<String> {
    USER_ID
        .get()
        .and_then(|v| v.into_string().ok())
        .filter(|v| !v.is_empty())
}

/// Turn the admin context on for the rest of the current transaction.
pub(super) fn set_admin_context() {
    CONTEXT_ENTERED.with(|c| c.set(true));
    let _authorization = AuthorizedAdmin::grant();
    apply(ADMIN_ACTIVE_GUC, c"on", true);
}

fn apply(name: &'static CStr, value: &CStr, is_local: bool) {
    // An ERROR inside it unwinds through the authorization guards, which withdraw the authorization.
    set_own_setting(
        name,
        value,
        if is_local {
            Scope::Transaction
        } else {
            Scope::Session
        },
    );
}

/// Withdraws an authorization when dropped, including when an ERROR unwinds through `apply`.
struct Authorized(&'static BackendLocal<RefCell<Option<CString>>>);
impl Authorized {
    fn grant(slot: &'static BackendLocal<RefCell<Option<CString>>>, value: CString) -> Self {
        slot.with(|a| *a.borrow_mut() = Some(value));
        Authorized(slot)
    }
}
impl Drop for Authorized {
    fn drop(&mut self) {
        self.0.with(|a| *a.borrow_mut() = None);
    }
}

/// Withdraws the tenant authorization when dropped, including when an ERROR unwinds through `apply`.
struct AuthorizedTenant;
impl AuthorizedTenant {
    fn grant(value: Option<[u8; 36]>) -> Self {
        AUTHORIZED_TENANT.with(|a| a.set(value));
        AuthorizedTenant
    }
}
impl Drop for AuthorizedTenant {
    fn drop(&mut self) {
        AUTHORIZED_TENANT.with(|a| a.set(None));
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

#[pg_guard]
unsafe extern "C-unwind" fn check_tenant_id(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the proposed value.
    let proposed = unsafe { proposed_string(newval) };
    if proposed.is_empty() {
        return true;
    }
    // The authorized value is canonical text by construction (set_tenant_context formats it); a parallel worker's
    // copy of its leader's value is parsed to make sure.
    let authorized = AUTHORIZED_TENANT
        .with(Cell::get)
        .is_some_and(|a| a[..] == *proposed.to_bytes());
    if authorized
        || (restoring_parallel_worker_state()
            && parse_canonical_uuid(proposed.to_bytes()).is_some())
    {
        return true;
    }
    // SAFETY: see `refuse`.
    unsafe {
        refuse(
            NileCode::ContextForgery.packed(),
            c"nile.tenant_id can only be set by nile.set_tenant()",
            c"Call SELECT nile.set_tenant('<tenant uuid>') inside a transaction, or nile.clear_tenant() to leave.",
        )
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_user_id(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the proposed value.
    let proposed = unsafe { proposed_string(newval) };
    if proposed.is_empty()
        || AUTHORIZED_USER.with(|a| a.borrow().as_deref() == Some(proposed))
        || restoring_parallel_worker_state()
    {
        return true;
    }
    // SAFETY: see `refuse`.
    unsafe {
        refuse(
            NileCode::ContextForgery.packed(),
            c"nile.user_id can only be set by nile.set_tenant_token()",
            c"It carries the user id of a verified tenant token.",
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
    if CURRENT_TENANT.with(|c| c.replace(parsed)) != parsed {
        if let Some(listener) = SWITCH_LISTENER.with(Cell::get) {
            listener(parsed);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn assign_user_id(newval: *const c_char, _extra: *mut c_void) {
    // SAFETY: Postgres passes NULL or a NUL-terminated string that the check hook accepted earlier.
    let set = !newval.is_null() && unsafe { *newval } != 0;
    USER_ID_SET.with(|s| s.set(set));
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
            NileCode::ContextForgery.packed(),
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
