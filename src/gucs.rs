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

use crate::errors::NileCode;
use crate::uuid_text::{format_uuid, parse_canonical_uuid};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::PostgresGucEnum;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr, CString};

pub const TENANT_ID_GUC: &CStr = c"nile.tenant_id";
pub const USER_ID_GUC: &CStr = c"nile.user_id";
pub const ADMIN_ACTIVE_GUC: &CStr = c"nile.admin_active";

/// What a statement on a tenant table does when the session has neither a tenant nor the admin context.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum MissingTenant {
    /// Raise an error (SQLSTATE NT001). The default.
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
/// default) or only warns (off). See src/ddl/events.rs.
pub static AUTO_ENABLE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `nile.require_token`: when on (set per role by a superuser: `ALTER ROLE app SET nile.require_token = on`), the
/// session can enter a tenant's context only with a signed token (`nile.set_tenant_token()`), not `nile.set_tenant()`.
pub static REQUIRE_TOKEN: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `nile.allow_session_scope`: whether `nile.set_tenant(…, is_local => false)` (a context for the whole session) is
/// allowed. Superuser-only; off for the roles of pooled applications, whose next client would inherit the context.
pub static ALLOW_SESSION_SCOPE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `nile.track_usage`: whether statements are counted per tenant in shared memory (superuser; see usage/hooks.rs).
pub static TRACK_USAGE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `nile.max_tracked_tenants`: how many tenants (over all databases) get a usage row of their own; more go to their
/// database's overflow row. Sizes shared memory, so it takes a restart.
pub static MAX_TRACKED_TENANTS: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// `nile.usage_flush_interval`: seconds between two flushes of usage into `nile.usage_history` (0: no background
/// flush).
pub static USAGE_FLUSH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);

/// `nile.slow_statement_ms`: log every top-level statement slower than this, with its tenant (-1: off).
pub static SLOW_STATEMENT_MS: GucSetting<i32> = GucSetting::<i32>::new(-1);

/// `nile.token_key`: the HMAC-SHA256 key of tenant tokens (postgresql.conf or ALTER SYSTEM; superuser-only).
pub static TOKEN_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// `nile.token_key_previous`: the key before the last change, still accepted during a changeover.
pub static TOKEN_KEY_PREVIOUS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));

/// The shortest token key accepted, in bytes.
pub const TOKEN_KEY_MIN_LEN: usize = 32;

/// `nile.user_id`: the user id of the signed token the session entered its tenant with (empty: none).
static USER_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

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
    /// The one user-id value the check hook will accept, set only while `set_tenant_context` applies it.
    static AUTHORIZED_USER: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// The token key a superuser's SHOW printed last (the show hook returns a pointer into it).
    static SHOWN_KEY: RefCell<CString> = RefCell::new(CString::default());
    /// Whether the check hook will accept `nile.admin_active = on`, set only while `set_admin_context` applies it.
    static AUTHORIZED_ADMIN: Cell<bool> = const { Cell::new(false) };
}

/// Whether the library was loaded by shared_preload_libraries (set once in _PG_init, before any backend starts).
static PRELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether nile_tenancy is in shared_preload_libraries: its settings then exist in every backend from the start.
pub fn preloaded() -> bool {
    PRELOADED.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn init() {
    // SAFETY: reads a plain global flag that Postgres sets while it loads shared_preload_libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    PRELOADED.store(preloading, std::sync::atomic::Ordering::Relaxed);
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
            None,
            None,
        );
        let token_keys: [(&'static CStr, &'static GucSetting<Option<CString>>, &'static CStr, pg_sys::GucShowHook); 2] = [
            (
                c"nile.token_key",
                &TOKEN_KEY,
                c"The HMAC-SHA256 key that signs tenant tokens (at least 32 bytes; superuser-only).",
                Some(show_token_key),
            ),
            (
                c"nile.token_key_previous",
                &TOKEN_KEY_PREVIOUS,
                c"The previous tenant-token key, still accepted while tokens signed with it expire (superuser-only).",
                Some(show_token_key_previous),
            ),
        ];
        for (name, setting, short, show) in token_keys {
            GucRegistry::define_string_guc_with_hooks(
                name,
                short,
                c"Set it in postgresql.conf or with ALTER SYSTEM, then SELECT pg_reload_conf(). Only superusers can \
                  see it; nile.set_tenant_token() verifies tokens and nile.sign_tenant_token() signs them with it.",
                setting,
                GucContext::Sighup,
                GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
                Some(check_token_key),
                None,
                show,
            );
        }
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
        c"error (the default) raises SQLSTATE NT001; deny returns no rows and lets no row be written. Superuser-only \
          (set it per role or database with ALTER ROLE/DATABASE ... SET): through a pool, a client's session-level SET \
          would change what the next clients get.",
        &MISSING_TENANT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"nile.require_token",
        c"Whether this session may enter a tenant's context only with a signed token.",
        c"Set it for a role with ALTER ROLE ... SET nile.require_token = on (superuser only): nile.set_tenant() is \
          then refused and only nile.set_tenant_token() with a valid token enters a tenant.",
        &REQUIRE_TOKEN,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"nile.allow_session_scope",
        c"Whether this session may enter a tenant's context for the whole session (is_local => false).",
        c"Set it off for the roles of pooled applications with ALTER ROLE ... SET nile.allow_session_scope = off \
          (superuser only): a context kept beyond the transaction would reach the next client of the connection.",
        &ALLOW_SESSION_SCOPE,
        GucContext::Suset,
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
    GucRegistry::define_bool_guc(
        c"nile.track_usage",
        c"Count every top-level statement in its tenant's usage row (nile.tenant_usage).",
        c"Needs nile_tenancy in shared_preload_libraries. Superuser-only, so a tenant cannot hide its usage.",
        &TRACK_USAGE,
        GucContext::Suset,
        GucFlags::default(),
    );
    // A server-start setting can only be defined while the library is preloaded (Postgres refuses it later, with a
    // FATAL error); it only sizes the shared memory that preloading creates.
    if preloading {
        GucRegistry::define_int_guc(
            c"nile.max_tracked_tenants",
            c"How many tenants, over all databases, get a usage row of their own.",
            c"Usage of further tenants goes to their database's overflow row, so totals stay exact. Each row takes about 1.8 kB of shared memory. Takes effect at server start.",
            &MAX_TRACKED_TENANTS,
            16,
            10_000_000,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"nile.usage_flush_interval",
        c"Seconds between two flushes of the usage counters into nile.usage_history.",
        c"A crash loses at most this much usage history. 0 turns the background flush off.",
        &USAGE_FLUSH_INTERVAL,
        0,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"nile.slow_statement_ms",
        c"Log every top-level statement that runs longer than this many milliseconds, with its tenant.",
        c"-1 (the default) turns it off; 0 logs every statement.",
        &SLOW_STATEMENT_MS,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
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

thread_local! {
    /// Whether a tenant context or the admin context was entered in the current transaction (pool_guard.rs resets it
    /// when the transaction ends).
    static CONTEXT_ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// Whether a tenant context or the admin context was entered since `forget_context_entered()`.
pub fn context_entered() -> bool {
    CONTEXT_ENTERED.with(Cell::get)
}

/// Start counting `context_entered()` afresh (at the end of a transaction).
pub fn forget_context_entered() {
    CONTEXT_ENTERED.with(|c| c.set(false));
}

/// Apply `tenant` (or clear the context with `None`) and the token's `user` id (or none) through the GUC machinery.
/// `is_local` gives `SET LOCAL` semantics: the values revert at the end of the transaction.
pub fn set_tenant_context(tenant: Option<[u8; 16]>, user: Option<&str>, is_local: bool) {
    let value = match tenant {
        Some(bytes) => CString::new(format_uuid(&bytes)).unwrap_or_default(),
        None => CString::default(),
    };
    // A user id with a NUL byte cannot come from a verified token (JSON strings are checked before); treat as none.
    let user = user.and_then(|u| CString::new(u).ok()).unwrap_or_default();
    if tenant.is_some() {
        CONTEXT_ENTERED.with(|c| c.set(true));
    }
    let _tenant = Authorized::grant(&AUTHORIZED_TENANT, value.clone());
    let _user = Authorized::grant(&AUTHORIZED_USER, user.clone());
    apply(TENANT_ID_GUC, &value, is_local);
    apply(USER_ID_GUC, &user, is_local);
}

/// The user id of the token the session entered its tenant with.
pub fn current_user_id() -> Option<String> {
    USER_ID
        .get()
        .and_then(|v| v.into_string().ok())
        .filter(|v| !v.is_empty())
}

/// The current and previous token keys (empty when unset).
pub fn token_keys() -> (Vec<u8>, Vec<u8>) {
    let bytes =
        |s: &GucSetting<Option<CString>>| s.get().map(|v| v.into_bytes()).unwrap_or_default();
    (bytes(&TOKEN_KEY), bytes(&TOKEN_KEY_PREVIOUS))
}

/// Turn the admin context on for the rest of the current transaction.
pub fn set_admin_context() {
    CONTEXT_ENTERED.with(|c| c.set(true));
    let _authorization = AuthorizedAdmin::grant();
    apply(ADMIN_ACTIVE_GUC, c"on", true);
}

fn apply(name: &CStr, value: &CStr, is_local: bool) {
    // An ERROR inside it unwinds through the authorization guards, which withdraw the authorization.
    set_setting(
        name,
        value,
        if is_local {
            Scope::Transaction
        } else {
            Scope::Session
        },
    );
}

/// How long a setting made by `set_setting` lasts.
pub enum Scope {
    /// The session (`SET`).
    Session,
    /// The transaction (`SET LOCAL`).
    Transaction,
    /// The current GUC nesting level: restored when it ends, as a function's `SET` clause is (privilege.rs opens one
    /// around every piece of SQL the extension runs as another role).
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

/// Withdraws an authorization when dropped, including when an ERROR unwinds through `apply`.
struct Authorized(&'static std::thread::LocalKey<RefCell<Option<CString>>>);
impl Authorized {
    fn grant(
        slot: &'static std::thread::LocalKey<RefCell<Option<CString>>>,
        value: CString,
    ) -> Self {
        slot.with(|a| *a.borrow_mut() = Some(value));
        Authorized(slot)
    }
}
impl Drop for Authorized {
    fn drop(&mut self) {
        self.0.with(|a| *a.borrow_mut() = None);
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

/// The value a string setting's check hook is asked about (empty for NULL).
///
/// # Safety
/// `newval` is the pointer Postgres passed to the check hook: valid, pointing at NULL or a NUL-terminated string
/// that outlives the hook call.
unsafe fn proposed_string<'a>(newval: *mut *mut c_char) -> &'a CStr {
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
unsafe fn refuse(code: i32, message: &CStr, hint: &CStr) -> bool {
    // SAFETY: GUC_check_* strings must be palloc'd; pstrdup copies our static strings into the current context.
    unsafe {
        pg_sys::GUC_check_errcode(code);
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
    // SAFETY: Postgres passes a valid pointer to the proposed value.
    let proposed = unsafe { proposed_string(newval) };
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

/// A token key must be empty (no tokens) or long enough to be a real secret.
#[pg_guard]
unsafe extern "C-unwind" fn check_token_key(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the proposed value.
    let length = unsafe { proposed_string(newval) }.to_bytes().len();
    if length == 0 || length >= TOKEN_KEY_MIN_LEN {
        return true;
    }
    // SAFETY: see `refuse`.
    unsafe {
        refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32,
            c"a tenant-token key must be at least 32 bytes long",
            c"Use a random secret, e.g. the output of: openssl rand -base64 48",
        )
    }
}

/// What `SHOW`, `current_setting()` and `pg_settings` print for a token key: the key itself for superusers, a mask
/// for everyone else (roles that may read superuser-only settings through pg_read_all_settings, such as pg_monitor
/// members, would otherwise see it).
fn show_key(setting: &GucSetting<Option<CString>>) -> *const c_char {
    // SAFETY: superuser() reads the current user's catalog entry.
    if !unsafe { pg_sys::superuser() } {
        return c"********".as_ptr();
    }
    // Postgres copies the string right after the hook returns; keep it alive until the next call.
    let value = setting.get().unwrap_or_default();
    SHOWN_KEY.with(|shown| {
        let mut shown = shown.borrow_mut();
        *shown = value;
        shown.as_ptr()
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn show_token_key() -> *const c_char {
    show_key(&TOKEN_KEY)
}

#[pg_guard]
unsafe extern "C-unwind" fn show_token_key_previous() -> *const c_char {
    show_key(&TOKEN_KEY_PREVIOUS)
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
