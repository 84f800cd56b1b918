//! context — who a session works for: a tenant's context, the admin context, and the guard that makes both
//! unforgeable.
//!
//! - `guard`: `nile.tenant_id`, `nile.user_id` and `nile.admin_active`, settings that only this folder's functions can
//!   turn on, kept parsed in backend memory
//! - `tenant`: `nile.set_tenant()`, `nile.set_tenant_read_only()`, `nile.clear_tenant()`, `nile.current_tenant()`, and
//!   the policy functions the generated policies call
//! - `tenant_cache`: each tenant's status as this backend knows it, read from `nile.tenants` by index and invalidated
//!   on change
//! - `tokens`: signed tenant tokens (`nile.set_tenant_token()`, `nile.set_tenant_token_read_only()`,
//!   `nile.sign_tenant_token()`, `nile.current_user_id()`)
//! - `role_binding`: tenant-bound roles (`nile.bind_role()`, `nile.unbind_role()`)
//! - `admin`: `nile.admin_context()` and its audit; whether the admin context applies to the current identity
//! - `pool_guard`: what a context may not leave behind on a pooled connection (`WITH HOLD` cursors)
//! - `read_only`: what a read-only context's transaction may not commit (a write, a hidden refusal), so that it can end
//!   without the client's COMMIT
//!
//! `init()` defines the guarded settings, then registers the cache invalidations, the read-only guard and the pool
//! guard.

pub mod admin;
pub mod guard;
pub mod pool_guard;
pub mod read_only;
pub mod role_binding;
pub mod tenant;
pub mod tenant_cache;
pub mod tokens;

/// Called from `_PG_init`, after the plain settings are defined and before they reserve the `nile.` prefix.
pub fn init() {
    guard::init();
    tenant_cache::init();
    tenant::init();
    role_binding::init();
    // Before the pool guard: Postgres calls transaction callbacks the last registered first, and the pool guard must
    // drop a cursor WITH HOLD before the read-only guard may refuse the commit.
    read_only::init();
    pool_guard::init();
}
