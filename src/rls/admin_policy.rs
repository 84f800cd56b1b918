//! rls/admin_policy — the admin context's row-security hook.
//!
//! The admin context must cost the tenant path nothing, so it is not an `OR is_admin()` in the generated policies
//! (that would stop the tenant comparison from being an index condition). Instead, while `nile.admin_active` is on,
//! this hook adds one permissive policy `USING (true) WITH CHECK (true)` to tables that carry `nile_tenant_*`
//! policies, for queries run by an identity with the privileges of `nile_admin` (`admin_policy_role()`, in
//! src/context/admin.rs); the planner folds `(tenant_id = ...) OR true` to `true`. Outside the admin context the hook
//! adds nothing. Since the hook changes what a query is rewritten to, every switch of `nile.admin_active` resets this
//! backend's plan cache (src/context/guard.rs), so no plan crosses the boundary.

use super::policies::{generated_policies, previous_policies};
use crate::context::admin::admin_policy_role;
use pgrx::prelude::*;

static mut PREV_ROW_SECURITY_PERMISSIVE_HOOK: pg_sys::row_security_policy_hook_type = None;
/// The hook as init() installed it.
static mut INSTALLED_PERMISSIVE_HOOK: pg_sys::row_security_policy_hook_type = None;

pub(super) fn init() {
    // SAFETY: _PG_init runs once per backend before any query; we save the previous hook and chain to it.
    unsafe {
        PREV_ROW_SECURITY_PERMISSIVE_HOOK = pg_sys::row_security_policy_hook_permissive;
        pg_sys::row_security_policy_hook_permissive = Some(admin_policy_hook);
        // Read back: what another library that chains after ours would have replaced.
        INSTALLED_PERMISSIVE_HOOK = pg_sys::row_security_policy_hook_permissive;
    }
}

/// Whether this hook is the only source of permissive policies besides the catalog: no other extension installed a
/// permissive row-security hook, before ours or after it. (Ours adds a policy only inside the admin context.)
pub(super) fn only_hook_adding_permissive_policies() -> bool {
    // SAFETY: both hook variables are only written while libraries load, before any query.
    unsafe {
        (*(&raw const PREV_ROW_SECURITY_PERMISSIVE_HOOK)).is_none()
            && hook_address(pg_sys::row_security_policy_hook_permissive)
                == hook_address(*(&raw const INSTALLED_PERMISSIVE_HOOK))
    }
}

fn hook_address(hook: pg_sys::row_security_policy_hook_type) -> Option<usize> {
    hook.map(|f| f as usize)
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
