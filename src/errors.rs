//! errors — raising Postgres errors and warnings with a specific SQLSTATE, an optional DETAIL and an optional HINT;
//! and keeping Rust backtraces out of every error a client receives.
//!
//! Every error the user can trigger goes through `raise`, so that no message is raised without a SQLSTATE and the
//! `#[track_caller]` location points at the code that decided to fail.
//!
//! Backtraces: pgrx's panic hook (installed by `Pg_magic_func`, before `_PG_init`) calls `Backtrace::capture()` whenever
//! a Rust panic, or a Postgres error caught at an FFI call (SPI included), unwinds through the extension, and pgrx then
//! appends a captured backtrace to the error's DETAIL, which goes to the client. Whether anything is captured depends
//! on RUST_BACKTRACE / RUST_LIB_BACKTRACE in the server's environment, which is not ours to choose (many containers set
//! RUST_BACKTRACE=1). `init()` sets RUST_LIB_BACKTRACE=0, which takes precedence for `Backtrace::capture()` (not for
//! the standard panic message), so nothing is captured for the DETAIL; a real Rust panic (a bug: not an ERROR travelling
//! as a panic) still gets its backtrace written to the server log by the hook `init()` puts around pgrx's. A panic
//! reaches the client as an ERROR with SQLSTATE XX000 and the panic's message.

use pgrx::pg_sys::panic::{CaughtError, ErrorReport, ErrorReportWithLevel};
use pgrx::prelude::*;
use std::io::Write;

/// Called from `_PG_init`: Rust backtraces go to the server log, never into an error (see the module header).
pub fn init() {
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
pub struct Problem(ErrorReport);

impl Problem {
    #[track_caller]
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Problem(ErrorReport::new(code, message.into(), "nile_tenancy"))
    }

    pub fn detail(self, detail: impl Into<String>) -> Self {
        Problem(self.0.set_detail(detail))
    }

    pub fn hint(self, hint: impl Into<String>) -> Self {
        Problem(self.0.set_hint(hint))
    }

    /// Raise as an ERROR: aborts the statement (and, through Postgres, everything it did).
    pub fn raise(self) -> ! {
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
