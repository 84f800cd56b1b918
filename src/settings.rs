//! settings — the plain `nile.*` settings, each behind a typed getter.
//!
//! Every setting here is an ordinary GUC that administrators (or, for `nile.auto_enable`, any user) set with `SET`,
//! `ALTER ROLE/DATABASE ... SET`, postgresql.conf or `ALTER SYSTEM`; docs/settings.md describes them. The three
//! settings that carry the tenant and admin contexts (`nile.tenant_id`, `nile.user_id`, `nile.admin_active`) are not
//! here: their guard makes them unforgeable, in src/context/guard.rs.
//!
//! The statics are private; code reads a setting through its getter, so that a setting's type and its one place of
//! definition are the only things a caller depends on. `init()` defines them; `reserve_prefix()`, called once every
//! `nile.*` setting is defined, stops anyone from creating placeholders under `nile.`.

use crate::pg::guc::{proposed_string, refuse};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::PostgresGucEnum;
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};

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
static MISSING_TENANT: GucSetting<MissingTenant> =
    GucSetting::<MissingTenant>::new(MissingTenant::Error);

/// `nile.auto_enable`: whether DDL that creates a table with a tenant column (or adds one) enrolls it at once (on, the
/// default) or only warns (off). See src/ddl/events.rs.
static AUTO_ENABLE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `nile.require_token`: when on (set per role by a superuser: `ALTER ROLE app SET nile.require_token = on`), the
/// session can enter a tenant's context only with a signed token (`nile.set_tenant_token()`), not `nile.set_tenant()`.
static REQUIRE_TOKEN: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `nile.allow_session_scope`: whether `nile.set_tenant(…, is_local => false)` (a context for the whole session) is
/// allowed. Superuser-only; off for the roles of pooled applications, whose next client would inherit the context.
static ALLOW_SESSION_SCOPE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `nile.track_usage`: whether statements are counted per tenant in shared memory (superuser; see usage/hooks.rs).
static TRACK_USAGE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `nile.max_tracked_tenants`: how many tenants (over all databases) get a usage row of their own; more go to their
/// database's overflow row. Sizes shared memory, so it takes a restart.
static MAX_TRACKED_TENANTS: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// `nile.usage_flush_interval`: seconds between two flushes of usage into `nile.usage_history` (0: no background
/// flush).
static USAGE_FLUSH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);

/// `nile.slow_statement_ms`: log every top-level statement slower than this, with its tenant (-1: off).
static SLOW_STATEMENT_MS: GucSetting<i32> = GucSetting::<i32>::new(-1);

/// `nile.token_key`: the HMAC-SHA256 key of tenant tokens (postgresql.conf or ALTER SYSTEM; superuser-only).
static TOKEN_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// `nile.token_key_previous`: the key before the last change, still accepted during a changeover.
static TOKEN_KEY_PREVIOUS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));

/// The shortest token key accepted, in bytes.
pub const TOKEN_KEY_MIN_LEN: usize = 32;

thread_local! {
    /// The token key a superuser's SHOW printed last (the show hook returns a pointer into it).
    static SHOWN_KEY: RefCell<CString> = RefCell::new(CString::default());
}

/// Whether the library was loaded by shared_preload_libraries (set once in _PG_init, before any backend starts).
static PRELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether nile_tenancy is in shared_preload_libraries: its settings then exist in every backend from the start.
pub fn preloaded() -> bool {
    PRELOADED.load(std::sync::atomic::Ordering::Relaxed)
}

/// `nile.missing_tenant`.
pub fn missing_tenant() -> MissingTenant {
    MISSING_TENANT.get()
}

/// `nile.auto_enable`.
pub fn auto_enable() -> bool {
    AUTO_ENABLE.get()
}

/// `nile.require_token`.
pub fn require_token() -> bool {
    REQUIRE_TOKEN.get()
}

/// `nile.allow_session_scope`.
pub fn allow_session_scope() -> bool {
    ALLOW_SESSION_SCOPE.get()
}

/// `nile.track_usage`.
pub fn track_usage() -> bool {
    TRACK_USAGE.get()
}

/// `nile.max_tracked_tenants` (its default when the library is not preloaded: the setting then does not exist).
pub fn max_tracked_tenants() -> i32 {
    MAX_TRACKED_TENANTS.get()
}

/// `nile.usage_flush_interval`, in seconds.
pub fn usage_flush_interval() -> i32 {
    USAGE_FLUSH_INTERVAL.get()
}

/// `nile.slow_statement_ms` (-1: off).
pub fn slow_statement_ms() -> i32 {
    SLOW_STATEMENT_MS.get()
}

/// The current and previous token keys (empty when unset).
pub fn token_keys() -> (Vec<u8>, Vec<u8>) {
    let bytes =
        |s: &GucSetting<Option<CString>>| s.get().map(|v| v.into_bytes()).unwrap_or_default();
    (bytes(&TOKEN_KEY), bytes(&TOKEN_KEY_PREVIOUS))
}

/// Defines the plain settings (called from `_PG_init`).
pub fn init() {
    // SAFETY: reads a plain global flag that Postgres sets while it loads shared_preload_libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    PRELOADED.store(preloading, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: called once from _PG_init; the hooks are `#[pg_guard]`ed functions that never raise an ERROR, and the
    // settings are statics that live for the life of the backend.
    unsafe {
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
}

/// Stop anyone from creating placeholder settings under `nile.` (typos, or names a later version will define). Called
/// from `_PG_init` once every `nile.*` setting is defined.
pub fn reserve_prefix() {
    // SAFETY: plain call into Postgres during _PG_init.
    unsafe { reserve_nile_prefix() };
}

/// Stop anyone from creating placeholder settings under `nile.` (typos, or names a later version will define).
#[cfg(not(feature = "pg14"))]
unsafe fn reserve_nile_prefix() {
    // SAFETY: the argument is a valid NUL-terminated string with static lifetime.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"nile".as_ptr()) }
}

#[cfg(feature = "pg14")]
unsafe fn reserve_nile_prefix() {
    // SAFETY: the argument is a valid NUL-terminated string with static lifetime.
    unsafe { pg_sys::EmitWarningsOnPlaceholders(c"nile".as_ptr()) }
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
