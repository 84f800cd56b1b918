//! context/admin — `nile.admin_context(reason)`: cross-tenant work for members of `nile_admin`, audited.
//!
//! `nile.admin_context()` checks the caller, writes the audit row and a server log line, and turns `nile.admin_active`
//! on for the rest of the transaction through the guard (guard.rs). `admin_policy_role()` tells the row-security
//! hooks (src/rls/) whether the admin context applies to the identity running the current query.

use super::guard;
use crate::pg::errors::{raise, Problem};
use crate::pg::privilege::{
    as_extension_owner, held_role, in_transaction_block, require_role, role_name,
};
use pgrx::prelude::*;

/// `nile.admin_context(reason text) RETURNS void`
#[pg_extern(volatile, parallel_unsafe)]
fn admin_context(reason: Option<&str>) {
    require_role("nile_admin", "nile.admin_context()");
    super::role_binding::refuse_if_bound("nile.admin_context()");
    let Some(reason) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "nile.admin_context() needs a reason",
            "Say why cross-tenant access is needed, e.g. nile.admin_context('monthly usage report').",
        );
    };
    if !in_transaction_block() {
        raise(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            "nile.admin_context() must be called inside a transaction block",
            "Run BEGIN first; the admin context lasts until the end of that transaction.",
        );
    }
    // SAFETY: reads this session's user ids.
    let (session_role, acting_role) = unsafe {
        (
            role_name(pg_sys::GetSessionUserId()),
            role_name(pg_sys::GetUserId()),
        )
    };
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            crate::pg::spi_util::execute(
                client,
                "INSERT INTO nile.admin_audit (session_role, acting_role, reason) VALUES ($1, $2, $3)",
                &[
                    session_role.clone().into(),
                    acting_role.clone().into(),
                    reason.into(),
                ],
            )
        })
    });
    // The audit row is transactional; this line in the server log is not, so a ROLLBACK cannot hide the access.
    // Control characters are escaped so that a reason cannot forge log lines.
    let printable_reason = reason.escape_debug();
    Problem::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!(
            "nile_tenancy: admin context entered by {} (as {}): {printable_reason}",
            session_role.unwrap_or_default(),
            acting_role.unwrap_or_default()
        ),
    )
    .log();
    guard::set_admin_context();
}

/// While the admin context is in force and the current identity has nile_admin's privileges: that role's OID, for
/// which the allow-all policy is added (and src/rls/restrictive.rs adds no restrictive copies). Only for an identity
/// with nile_admin's privileges: a SECURITY DEFINER function or a view owner's rights inside the admin transaction get
/// no admin policy; the admin context is not lent to code the admin happens to call.
pub fn admin_policy_role() -> Option<pg_sys::Oid> {
    if guard::admin_in_force() {
        held_role("nile_admin")
    } else {
        None
    }
}
