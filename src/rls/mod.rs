//! rls — the two row-security hooks that shape every query on a tenant table beyond its generated policies.
//!
//! - `restrictive`: each generated `nile_tenant_*` policy added again as a restrictive policy, so that no other
//!   permissive policy can widen it
//! - `admin_policy`: inside `nile.admin_context()`, one allow-all permissive policy for the identity that holds
//!   `nile_admin`
//! - `policies`: what both hooks read: a relation's generated policies and the previous hooks' policies
//!
//! `init()` installs both hooks, each chaining to the hook installed before it.

mod admin_policy;
mod policies;
mod restrictive;

/// Called from `_PG_init`.
pub fn init() {
    admin_policy::init();
    restrictive::init();
}
