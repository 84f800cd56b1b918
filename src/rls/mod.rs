//! rls — the hooks that shape every query on a tenant table beyond its generated policies: two row-security hooks and
//! the planner's estimate of the tenant policy.
//!
//! - `restrictive`: each generated `nile_tenant_*` policy added again as a restrictive policy, so that no other
//!   permissive policy can widen it
//! - `admin_policy`: inside `nile.admin_context()`, one allow-all permissive policy for the identity that holds
//!   `nile_admin`
//! - `tenant_estimates`: the planner's estimate of the tenant policy for a big tenant (its share of the table instead
//!   of an average tenant's), and re-planning when the session switches to another tenant
//! - `policies`: what the hooks read: a relation's generated policies, its tenant column and the previous hooks'
//!   policies
//!
//! `init()` installs the hooks, each chaining to the hook installed before it.

mod admin_policy;
mod policies;
mod restrictive;
mod tenant_estimates;

/// Called from `_PG_init`.
pub fn init() {
    admin_policy::init();
    restrictive::init();
    tenant_estimates::init();
}
