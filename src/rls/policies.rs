//! rls/policies — what the two row-security hooks (admin_policy.rs adds the admin context's allow-all policy,
//! restrictive.rs the restrictive copies of the tenant policies) both need: a relation's generated `nile_tenant_*`
//! policies, read off its relcache entry, and the policies of the hook installed before theirs.

use crate::tables::enrolment::POLICY_NAMES;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Whether `name` is exactly one of the generated policies' names (a policy merely named like them is not one: the
/// DDL event triggers guard the four generated ones, nothing guards the others).
pub(super) fn is_generated_name(name: &[u8]) -> bool {
    POLICY_NAMES.iter().any(|n| n.as_bytes() == name)
}

/// The relation's generated policies: the permissive ones named exactly as enable_tenancy names them (`POLICY_NAMES`).
///
/// # Safety
/// `relation` must be an open relation, as the rewriter passes to the row-security hooks.
pub(super) unsafe fn generated_policies(
    relation: pg_sys::Relation,
) -> Vec<*mut pg_sys::RowSecurityPolicy> {
    // SAFETY (caller): rd_rsdesc is NULL or a valid descriptor whose policies list holds RowSecurityPolicy pointers
    // with NUL-terminated names.
    unsafe {
        let rsdesc = (*relation).rd_rsdesc;
        if rsdesc.is_null() {
            return Vec::new();
        }
        pgrx::PgList::<pg_sys::RowSecurityPolicy>::from_pg((*rsdesc).policies)
            .iter_ptr()
            .filter(|&policy| {
                let name = (*policy).policy_name;
                (*policy).permissive
                    && !name.is_null()
                    && is_generated_name(CStr::from_ptr(name).to_bytes())
            })
            .collect()
    }
}

/// The policies of the hook that was installed before ours (NIL if none), for a row-security hook to add to.
pub(super) fn previous_policies(
    previous: pg_sys::row_security_policy_hook_type,
    cmd: pg_sys::CmdType::Type,
    relation: pg_sys::Relation,
) -> *mut pg_sys::List {
    match previous {
        // SAFETY: the previous hook was installed by another library with this same signature; an ERROR it raises
        // is turned into a Rust panic at the FFI boundary instead of jumping over our frames.
        Some(prev) => unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| prev(cmd, relation)) },
        None => std::ptr::null_mut(),
    }
}

/// The tenant column of a relation with generated policies (the `uuid` column their expressions compare, `tenant_id =
/// (SELECT nile.policy_read_tenant())`), or None.
///
/// # Safety
/// `relation` must be an open relation.
pub(super) unsafe fn tenant_column(relation: pg_sys::Relation) -> Option<i16> {
    // SAFETY (caller): the generated policies' quals are valid expression trees of the relcache entry.
    unsafe {
        generated_policies(relation).into_iter().find_map(|policy| {
            let qual = (*policy).qual as *mut pg_sys::Node;
            if qual.is_null() || (*qual).type_ != pg_sys::NodeTag::T_OpExpr {
                return None;
            }
            let args = pgrx::PgList::<pg_sys::Node>::from_pg((*(qual as *mut pg_sys::OpExpr)).args);
            let mut first = args.get_ptr(0)?;
            if (*first).type_ == pg_sys::NodeTag::T_RelabelType {
                first = (*(first as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
            }
            if (*first).type_ != pg_sys::NodeTag::T_Var {
                return None;
            }
            let var = first as *mut pg_sys::Var;
            ((*var).vartype == pg_sys::UUIDOID && (*var).varlevelsup == 0).then(|| (*var).varattno)
        })
    }
}
