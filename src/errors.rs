//! errors — raising Postgres errors and warnings with a specific SQLSTATE, an optional DETAIL and an optional HINT.
//!
//! Every error the user can trigger goes through `raise`, so that no message is raised without a SQLSTATE and the
//! `#[track_caller]` location points at the code that decided to fail.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

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
