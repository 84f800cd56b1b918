//! nile_tenancy — a multi-tenant PostgreSQL: tenants, an unforgeable tenant context and row-level isolation that the
//! database manages for you.
//!
//! Modules, one concern each:
//! - `gucs`: every `nile.*` setting, and the guard that lets only the extension set the tenant and admin contexts
//! - `context`: `nile.set_tenant()`, `nile.clear_tenant()`, `nile.current_tenant()` and the policy functions
//! - `tenant_cache`: per-backend cache of tenant status, read from `nile.tenants` by index, invalidated on change
//! - `tenants`: the tenant lifecycle (create, update, soft delete, purge), and tenant tables in foreign-key order
//! - `tokens`: signed tenant tokens (`nile.set_tenant_token()`, `nile.sign_tenant_token()`)
//! - `tenancy`: enrolling tables (`nile.enable_tenancy()`, `nile.disable_tenancy()`)
//! - `ddl/`: the DDL event triggers that enroll, protect and forget tables as the schema changes (`events`), and their
//!   SPI-free first look: does this command's table concern tenancy at all? (`prefilter`)
//! - `fk_validation`: foreign keys validated over every tenant's rows, never over one tenant's view
//! - `admin`: `nile.admin_context()`, its audit and its row-security hook
//! - `policy_guard`: restrictive copies of the tenant policies, so that no other permissive policy can widen them
//! - `rls_policies`: the generated policies of a relation and the previous hooks' policies, for both row-security hooks
//! - `role_binding`: tenant-bound roles (`nile.bind_role()`, `nile.unbind_role()`)
//! - `own_ddl`: the extension's own DDL, which its event triggers leave alone
//! - `own_tables`: reading the extension's own tables by heap and index, without SPI or row-level security
//! - `privilege`: role checks and running the extension's own SQL with its rights
//! - `spi_util`: running the extension's own SQL (never with a row limit on writes)
//! - `usage/`: per-tenant usage metering (counters in shared memory, their persistence, the statement hooks, the SQL
//!   views' functions, the durable history and its flush workers; see usage/mod.rs)
//! - `uuid_text`: canonical UUID text and UUIDv7 generation
//! - `errors`: raising errors with a SQLSTATE, detail and hint; Rust backtraces kept out of them (to the server log)

use pgrx::prelude::*;

mod admin;
mod context;
mod ddl;
mod errors;
mod fk_validation;
mod gucs;
mod heap_scan;
mod hook_chain;
mod import_copy;
mod own_ddl;
mod own_tables;
mod policy_guard;
mod pool_guard;
mod privilege;
mod rls_policies;
mod role_binding;
mod spi_util;
mod tenancy;
mod tenant_cache;
mod tenant_storage;
mod tenants;
mod tokens;
mod usage;
mod uuid_text;

pgrx::pg_module_magic!(name, version);

// Roles and tables first; then pgrx creates the functions; then the SQL that needs both.
pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!(
    "../sql/verify.sql",
    name = "verify",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    errors::init();
    gucs::init();
    tenant_cache::init();
    admin::init();
    fk_validation::init();
    policy_guard::init();
    pool_guard::init();
    role_binding::init();
    usage::init();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Used by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'nile_tenancy'"]
    }
}
