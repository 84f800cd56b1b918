//! admin — `nile.admin_context(reason)`: cross-tenant work for members of `nile_admin`, audited.
//!
//! The admin context must cost the tenant path nothing, so it is not an `OR is_admin()` in the generated policies
//! (that would stop the tenant comparison from being an index condition). Instead, while `nile.admin_active` is on,
//! a row-security hook adds one permissive policy `USING (true) WITH CHECK (true)` to tables that carry
//! `nile_tenant_*` policies, for queries run by an identity with the privileges of `nile_admin`; the planner folds
//! `(tenant_id = ...) OR true` to `true`. Outside the admin context the hook adds nothing. Since the hook changes what
//! a query is rewritten to, every switch of `nile.admin_active` resets this backend's plan cache (see gucs.rs), so no
//! plan crosses the boundary.

use crate::errors::{raise, Problem};
use crate::gucs;
use crate::privilege::{
    as_extension_owner, held_role, in_transaction_block, require_role, role_name,
};
use crate::rls_policies::{generated_policies, previous_policies};
use pgrx::prelude::*;

static mut PREV_ROW_SECURITY_PERMISSIVE_HOOK: pg_sys::row_security_policy_hook_type = None;

pub fn init() {
    // SAFETY: _PG_init runs once per backend before any query; we save the previous hook and chain to it.
    unsafe {
        PREV_ROW_SECURITY_PERMISSIVE_HOOK = pg_sys::row_security_policy_hook_permissive;
        pg_sys::row_security_policy_hook_permissive = Some(admin_policy_hook);
    }
}

/// `nile.admin_context(reason text) RETURNS void`
#[pg_extern(volatile, parallel_unsafe)]
fn admin_context(reason: Option<&str>) {
    require_role("nile_admin", "nile.admin_context()");
    crate::role_binding::refuse_if_bound("nile.admin_context()");
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
            crate::spi_util::execute(
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
    gucs::set_admin_context();
}

/// A permissive policy for members of `admin_role` that lets every row through, for reads and writes.
unsafe fn allow_all_policy(admin_role: pg_sys::Oid) -> *mut pg_sys::RowSecurityPolicy {
    // SAFETY: everything is palloc'd in the current (query) memory context, which outlives the rewrite.
    unsafe {
        let policy = pg_sys::palloc0(std::mem::size_of::<pg_sys::RowSecurityPolicy>())
            as *mut pg_sys::RowSecurityPolicy;
        (*policy).policy_name = pg_sys::pstrdup(c"nile_admin_context".as_ptr());
        (*policy).polcmd = b'*' as std::ffi::c_char;
        let mut role = pg_sys::Datum::from(admin_role);
        (*policy).roles = pg_sys::construct_array(
            &mut role,
            1,
            pg_sys::OIDOID,
            std::mem::size_of::<pg_sys::Oid>() as i32,
            true,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        );
        (*policy).qual = pg_sys::makeBoolConst(true, false) as *mut pg_sys::Expr;
        (*policy).with_check_qual = pg_sys::makeBoolConst(true, false) as *mut pg_sys::Expr;
        (*policy).hassublinks = false;
        policy
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn admin_policy_hook(
    cmd: pg_sys::CmdType::Type,
    relation: pg_sys::Relation,
) -> *mut pg_sys::List {
    // SAFETY: PREV_ROW_SECURITY_PERMISSIVE_HOOK is only written by init(), before any query.
    let mut policies =
        previous_policies(unsafe { PREV_ROW_SECURITY_PERMISSIVE_HOOK }, cmd, relation);
    if let Some(admin_role) = admin_policy_role() {
        // SAFETY: the rewriter passes an open relation (see generated_policies) and allow_all_policy allocates in
        // the query's memory context; lappend accepts NIL.
        unsafe {
            if !generated_policies(relation).is_empty() {
                policies = pg_sys::lappend(policies, allow_all_policy(admin_role).cast());
            }
        }
    }
    policies
}

/// While the admin context is in force and the current identity has nile_admin's privileges: that role's OID, for
/// which the allow-all policy is added (and policy_guard adds no restrictive copies). Only for an identity with
/// nile_admin's privileges: a SECURITY DEFINER function or a view owner's rights inside the admin transaction get no
/// admin policy; the admin context is not lent to code the admin happens to call.
pub fn admin_policy_role() -> Option<pg_sys::Oid> {
    if gucs::admin_in_force() {
        held_role("nile_admin")
    } else {
        None
    }
}
