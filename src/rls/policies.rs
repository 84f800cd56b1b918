//! rls/policies — what the two row-security hooks (admin_policy.rs adds the admin context's allow-all policy,
//! restrictive.rs the restrictive copies of the tenant policies) both need: a relation's generated `nile_tenant_*`
//! policies, read off its relcache entry, and the policies of the hook installed before theirs.

use crate::tables::enrolment::POLICY_PREFIX;
use pgrx::prelude::*;
use std::ffi::CStr;

/// The relation's generated `nile_tenant_*` policies (permissive, as enable_tenancy creates them).
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
                    && CStr::from_ptr(name)
                        .to_bytes()
                        .starts_with(POLICY_PREFIX.as_bytes())
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
