//! rls/restrictive — the tenant policies cannot be widened by other permissive policies.
//!
//! Postgres ORs every permissive policy of a table together, so one extra `CREATE POLICY ... USING (true)` next to the
//! generated `nile_tenant_*` policies would open every tenant's rows. A row-security hook therefore adds each
//! generated policy a second time as a *restrictive* policy (same name, same expressions, for everyone), which is
//! ANDed with whatever the permissive side admits. Because the copy is the same `tenant_id = nile.policy_read_tenant()`
//! comparison, the planner merges both into one equivalence class: the index condition and the cost are unchanged.
//!
//! The copies are also left out where they cannot change anything: when the table has no permissive policy of its
//! own but the generated ones and no other extension adds permissive policies, the permissive side is exactly the
//! generated policies, and ANDing each with itself again only costs one more policy InitPlan per `WITH CHECK` (an
//! `UPDATE` evaluated six instead of four). Creating any other permissive policy invalidates the table's cached plans,
//! which are then rewritten with the copies.
//!
//! Inside `nile.admin_context()` the copies are left out for the identity that holds `nile_admin`, exactly where the
//! admin hook (src/context/admin.rs) adds its allow-all permissive policy; every switch of the admin context resets the
//! plan cache, so no plan carries the wrong set across the boundary.

use crate::rls::admin_policy::only_hook_adding_permissive_policies;
use crate::rls::policies::{generated_policies, is_generated_name, previous_policies};
use pgrx::prelude::*;

static mut PREV_ROW_SECURITY_RESTRICTIVE_HOOK: pg_sys::row_security_policy_hook_type = None;

pub(super) fn init() {
    // SAFETY: _PG_init runs once per backend before any query; we save the previous hook and chain to it.
    unsafe {
        PREV_ROW_SECURITY_RESTRICTIVE_HOOK = pg_sys::row_security_policy_hook_restrictive;
        pg_sys::row_security_policy_hook_restrictive = Some(tenant_guard_hook);
    }
}

/// The `polcmd` letter of the policies that apply to `cmd` (as stored in pg_policy), or None for other commands
/// (MERGE asks again for each of its actions).
fn policy_command_letter(cmd: pg_sys::CmdType::Type) -> Option<u8> {
    match cmd {
        pg_sys::CmdType::CMD_SELECT => Some(b'r'),
        pg_sys::CmdType::CMD_INSERT => Some(b'a'),
        pg_sys::CmdType::CMD_UPDATE => Some(b'w'),
        pg_sys::CmdType::CMD_DELETE => Some(b'd'),
        _ => None,
    }
}

/// A restrictive copy, for every role, of one generated policy.
unsafe fn restrictive_copy(
    policy: *mut pg_sys::RowSecurityPolicy,
) -> *mut pg_sys::RowSecurityPolicy {
    // SAFETY (caller): `policy` is a valid policy of the relation's row-security descriptor. Everything is palloc'd in
    // the current (query) memory context, which outlives the rewrite; copyObjectImpl deep-copies the expressions so
    // the planner may scribble on them without touching the relcache's copy.
    unsafe {
        let copy = pg_sys::palloc0(std::mem::size_of::<pg_sys::RowSecurityPolicy>())
            as *mut pg_sys::RowSecurityPolicy;
        (*copy).policy_name = pg_sys::pstrdup((*policy).policy_name);
        (*copy).polcmd = (*policy).polcmd;
        let mut public = pg_sys::Datum::from(pg_sys::Oid::INVALID); // ACL_ID_PUBLIC
        (*copy).roles = pg_sys::construct_array(
            &mut public,
            1,
            pg_sys::OIDOID,
            std::mem::size_of::<pg_sys::Oid>() as i32,
            true,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        );
        (*copy).permissive = false;
        (*copy).qual = pg_sys::copyObjectImpl((*policy).qual.cast()).cast();
        (*copy).with_check_qual = pg_sys::copyObjectImpl((*policy).with_check_qual.cast()).cast();
        (*copy).hassublinks = (*policy).hassublinks;
        copy
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tenant_guard_hook(
    cmd: pg_sys::CmdType::Type,
    relation: pg_sys::Relation,
) -> *mut pg_sys::List {
    // SAFETY: PREV_ROW_SECURITY_RESTRICTIVE_HOOK is only written by init(), before any query.
    let mut policies =
        previous_policies(unsafe { PREV_ROW_SECURITY_RESTRICTIVE_HOOK }, cmd, relation);
    let Some(command) = policy_command_letter(cmd) else {
        return policies;
    };
    if crate::context::admin::admin_policy_role().is_some() {
        return policies;
    }
    // SAFETY: the rewriter passes an open relation (see generated_policies).
    if only_hook_adding_permissive_policies() && unsafe { !has_other_permissive_policy(relation) } {
        return policies;
    }
    // SAFETY: the rewriter passes an open relation; lappend accepts NIL and the copies live in the query's memory
    // context.
    unsafe {
        for policy in generated_policies(relation) {
            let applies = (*policy).polcmd as u8 == command || (*policy).polcmd as u8 == b'*';
            if applies {
                policies = pg_sys::lappend(policies, restrictive_copy(policy).cast());
            }
        }
    }
    policies
}

/// Whether the relation has a permissive policy that is not a generated one (for any command and any role; a policy
/// merely named like the generated ones is another one).
///
/// # Safety
/// `relation` must be an open relation, as the rewriter passes to the row-security hooks.
unsafe fn has_other_permissive_policy(relation: pg_sys::Relation) -> bool {
    // SAFETY (caller): rd_rsdesc is NULL or a valid descriptor whose policies list holds RowSecurityPolicy pointers
    // with NUL-terminated names.
    unsafe {
        let rsdesc = (*relation).rd_rsdesc;
        if rsdesc.is_null() {
            return false;
        }
        pgrx::PgList::<pg_sys::RowSecurityPolicy>::from_pg((*rsdesc).policies)
            .iter_ptr()
            .any(|policy| {
                let name = (*policy).policy_name;
                (*policy).permissive
                    && (name.is_null()
                        || !is_generated_name(std::ffi::CStr::from_ptr(name).to_bytes()))
            })
    }
}
