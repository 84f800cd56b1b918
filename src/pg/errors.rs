//! pg/errors — raising Postgres errors and warnings with a specific SQLSTATE, an optional DETAIL and an optional HINT;
//! and keeping Rust backtraces out of every error a client receives.
//!
//! Every error the user can trigger goes through `raise`, so that no message is raised without a SQLSTATE and the
//! `#[track_caller]` location points at the code that decided to fail.
//!
//! Backtraces: pgrx's panic hook (installed by `Pg_magic_func`, before `_PG_init`) calls `Backtrace::capture()`
//! whenever a Rust panic, or a Postgres error caught at an FFI call (SPI included), unwinds through the extension, and
//! pgrx then appends a captured backtrace to the error's DETAIL, which goes to the client. Whether anything is captured
//! depends on RUST_BACKTRACE / RUST_LIB_BACKTRACE in the server's environment, which is not ours to choose (many
//! containers set RUST_BACKTRACE=1). `init()` sets RUST_LIB_BACKTRACE=0, which takes precedence for
//! `Backtrace::capture()` (not for the standard panic message), so nothing is captured for the DETAIL; a real Rust
//! panic (a bug: not an ERROR travelling as a panic) still gets its backtrace written to the server log by the hook
//! `init()` puts around pgrx's. A panic reaches the client as an ERROR with SQLSTATE XX000 and the panic's message.
//!
//! The extension's own SQLSTATEs (class NT, `NileCode`): the situations an application must tell apart (no tenant
//! context, tenant not found, inactive, deleted, …) each have a code of their own, listed in docs/errors.md
//! and stable across server languages. pgrx can only raise the codes Postgres defines (its `PgSqlErrorCode` enum), so
//! `Problem::nile` raises with the closest standard code and arranges for Postgres to put the NT code in its place:
//! just before the error unwinds, a static `ErrorContextCallback` is pushed onto Postgres' `error_context_stack`;
//! `errfinish()` runs every context callback before it throws, and ours replaces the code (`errcode()`), once. The
//! frame that catches the error (Postgres' main loop, a PL/pgSQL exception block, a `PG_TRY`) restores the stack it
//! saved, which removes the entry (pgrx's boundary around a call into Postgres restores it too); the one place that
//! catches errors in Rust (ddl/events.rs) raises again. Errors set in a GUC check hook (`GUC_check_errcode`) take the
//! NT code directly.
//! One limit: an NT error raised inside a query that the extension's own Rust code runs through SPI (an administrator's
//! function, not an application's statement) is turned into XX000 by pgrx on its way out; the message stays.

use super::backend_local::BackendLocal;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport, ErrorReportWithLevel};
use pgrx::prelude::*;
use std::cell::Cell;
use std::io::Write;

/// The extension's own SQLSTATEs (class NT). Each is what an application gets in the situation it names; the table in
/// docs/errors.md says what the application should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NileCode {
    /// NT001: a tenant table was used with no tenant context (and `nile.missing_tenant = error`).
    NoTenantContext,
    /// NT002: the tenant named by `set_tenant()` or a token does not exist.
    TenantNotFound,
    /// NT003: the tenant is inactive: its rows can be read, not written.
    TenantInactive,
    /// NT004: the tenant has been deleted (at `set_tenant()`, or in the middle of a transaction).
    TenantDeleted,
    /// NT005: a written row belongs to another tenant than the context's.
    OtherTenantRow,
    /// NT006: `nile.tenant_id` or `nile.user_id` set directly instead of by the extension's functions.
    ContextForgery,
    /// NT007: `set_tenant(…, is_local => false)` while `nile.allow_session_scope` is off.
    SessionScopeRefused,
    /// NT008: a tenant token that is malformed, altered, signed with an unknown key or not valid yet.
    InvalidToken,
    /// NT009: a tenant token that has expired.
    TokenExpired,
    /// NT010: `nile.require_token` is on and the session called `set_tenant()` without a token.
    TokenRequired,
}

impl NileCode {
    pub const fn sqlstate(self) -> &'static str {
        match self {
            NileCode::NoTenantContext => "NT001",
            NileCode::TenantNotFound => "NT002",
            NileCode::TenantInactive => "NT003",
            NileCode::TenantDeleted => "NT004",
            NileCode::OtherTenantRow => "NT005",
            NileCode::ContextForgery => "NT006",
            NileCode::SessionScopeRefused => "NT007",
            NileCode::InvalidToken => "NT008",
            NileCode::TokenExpired => "NT009",
            NileCode::TokenRequired => "NT010",
        }
    }

    /// The code as Postgres stores it (`MAKE_SQLSTATE`: six bits per character, the first in the lowest bits).
    pub const fn packed(self) -> i32 {
        let code = self.sqlstate().as_bytes();
        let mut packed = 0;
        let mut i = 0;
        while i < 5 {
            packed |= ((code[i] as i32 - b'0' as i32) & 0x3F) << (6 * i);
            i += 1;
        }
        packed
    }
}

/// The NT error being raised: (the standard code it was raised with, the NT code to put in its place).
static PENDING_CODE: BackendLocal<Cell<Option<(i32, i32)>>> = BackendLocal::new(Cell::new(None));

extern "C-unwind" {
    // Excluded from pgrx's bindings (like its other err*() functions); sets the code of the error being reported.
    fn errcode(sqlerrcode: std::ffi::c_int) -> std::ffi::c_int;
}

/// The context-stack entry that puts the pending NT code in place (see the module header). One per process: an
/// error is raised by one thread, and at most once at a time.
static mut CODE_CALLBACK: pg_sys::ErrorContextCallback = pg_sys::ErrorContextCallback {
    previous: std::ptr::null_mut(),
    callback: Some(put_pending_code),
    arg: std::ptr::null_mut(),
};

#[pg_guard]
unsafe extern "C-unwind" fn put_pending_code(_arg: *mut std::ffi::c_void) {
    let Some((standard, nile)) = PENDING_CODE.with(|p| p.get()) else {
        return;
    };
    // SAFETY: called by errfinish() for the report being finished, whose code geterrcode()/errcode() read and change.
    unsafe {
        // Only the report it was set up for, by its code (a WARNING or NOTICE reported while the error unwinds has a
        // code of class 01 or 00, keeps it, and leaves the pending code alone).
        if pg_sys::geterrcode() == standard {
            PENDING_CODE.with(|p| p.set(None));
            errcode(nile);
        }
    }
}

/// Arrange for the error about to be raised with `standard` to carry `nile` instead.
fn expect_code(standard: PgSqlErrorCode, nile: NileCode) {
    PENDING_CODE.with(|p| p.set(Some((standard as i32, nile.packed()))));
    // SAFETY: error_context_stack is the backend's list of live context entries; CODE_CALLBACK is static, so it
    // outlives any use. It is pushed only when it is not in the list already (pushing it twice would make a cycle).
    unsafe {
        let entry = &raw mut CODE_CALLBACK;
        let mut cursor = pg_sys::error_context_stack;
        while !cursor.is_null() {
            if cursor == entry {
                return;
            }
            cursor = (*cursor).previous;
        }
        (*entry).previous = pg_sys::error_context_stack;
        pg_sys::error_context_stack = entry;
    }
}

/// Called from `_PG_init`: Rust backtraces go to the server log, never into an error (see the module header).
pub(super) fn init() {
    // `set_var` is not thread-safe; `_PG_init` runs on the only thread of the postmaster (preloaded) or of a backend,
    // before the extension has captured any backtrace in this process.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let pgrx_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let is_error_report = payload.is::<CaughtError>()
            || payload.is::<ErrorReportWithLevel>()
            || payload.is::<ErrorReport>();
        if !is_error_report {
            // Never panic here (a panic in a panic hook aborts the backend): a failed write is dropped.
            let _ = writeln!(
                std::io::stderr(),
                "nile_tenancy: Rust panic {info}\n{}",
                std::backtrace::Backtrace::force_capture()
            );
        }
        pgrx_hook(info);
    }));
}

/// One error or warning, built fluently: `Problem::new(code, msg).hint(..).raise()`.
pub struct Problem(ErrorReport, Option<(PgSqlErrorCode, NileCode)>);

impl Problem {
    #[track_caller]
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Problem(ErrorReport::new(code, message.into(), "nile_tenancy"), None)
    }

    /// An error with one of the extension's own SQLSTATEs; `standard` is the code it would otherwise have (and has in
    /// the one case of the module header's limit).
    #[track_caller]
    pub fn nile(code: NileCode, standard: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Problem(
            ErrorReport::new(standard, message.into(), "nile_tenancy"),
            Some((standard, code)),
        )
    }

    pub fn detail(self, detail: impl Into<String>) -> Self {
        Problem(self.0.set_detail(detail), self.1)
    }

    pub fn hint(self, hint: impl Into<String>) -> Self {
        Problem(self.0.set_hint(hint), self.1)
    }

    /// Raise as an ERROR: aborts the statement (and, through Postgres, everything it did).
    pub fn raise(self) -> ! {
        if let Some((standard, nile)) = self.1 {
            expect_code(standard, nile);
        }
        self.0.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }

    pub fn warning(self) {
        self.0.report(PgLogLevel::WARNING)
    }

    pub fn notice(self) {
        self.0.report(PgLogLevel::NOTICE)
    }

    pub fn log(self) {
        self.0.report(PgLogLevel::LOG)
    }
}

/// Shorthand for the most common case: an ERROR with a code, a message and a hint.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    Problem::new(code, message).hint(hint).raise()
}

/// The value of a nullable SQL argument, or 22004 naming the argument.
#[track_caller]
pub fn require_not_null<T>(value: Option<T>, argument: &str) -> T {
    match value {
        Some(v) => v,
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{argument} must not be NULL"),
            "Pass a value.",
        ),
    }
}

/// Turns a failure that user input cannot cause (SPI, where user input only arrives as parameters; converting values
/// the extension made itself) into an internal error that still carries the query's context.
pub trait OrInternal<T> {
    fn or_internal(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrInternal<T> for Result<T, E> {
    #[track_caller]
    fn or_internal(self, what: &str) -> T {
        match self {
            Ok(value) => value,
            Err(e) => Problem::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("nile_tenancy: {what} failed: {e}"),
            )
            .raise(),
        }
    }
}
