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

// The install script (docs/contributing.md, "Where a public signature lives"): bootstrap.sql (roles) first; then the
// #[pg_extern] functions; then one file per concern, each after the Rust functions it names (`requires`: their Rust
// idents, without a module path, so moving a module changes nothing here; an unknown one stops the SQL generation)
// and after the concern before it, a fixed chain (it orders pg_extension_config_dump, which the upgrade test compares);
// ddl_triggers.sql last, so that no SQL of the install goes through the event triggers.
pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!(
    "../sql/tenants.sql",
    name = "tenants",
    requires = [
        uuidv7,
        policy_read_tenant,
        policy_write_tenant,
        tenants_changed,
        create_tenant,
        update_tenant,
        delete_tenant
    ]
);
pgrx::extension_sql_file!(
    "../sql/tables.sql",
    name = "tables",
    requires = ["tenants", enable_tenancy, disable_tenancy]
);
pgrx::extension_sql_file!(
    "../sql/context.sql",
    name = "context",
    requires = [
        "tables",
        current_tenant,
        clear_tenant,
        current_user_id,
        policy_read_tenant,
        policy_write_tenant,
        policy_foreign_row,
        set_tenant,
        set_tenant_token,
        sign_tenant_token,
        bind_role,
        unbind_role,
        admin_context,
        tenants_changed
    ]
);
pgrx::extension_sql_file!(
    "../sql/usage.sql",
    name = "usage",
    requires = [
        "context",
        reset_usage,
        flush_usage,
        usage_rows,
        my_usage_rows,
        unflushed_usage,
        tenant_table_storage
    ]
);
pgrx::extension_sql_file!(
    "../sql/lifecycle.sql",
    name = "lifecycle",
    requires = [
        "usage",
        _enter_tenant_for_routine,
        _require_no_transaction_block,
        tenant_tables_in_load_order,
        _require_nile_admin,
        import_step
    ]
);
pgrx::extension_sql_file!(
    "../sql/verify.sql",
    name = "verify",
    requires = ["lifecycle"]
);
pgrx::extension_sql_file!("../sql/ddl_triggers.sql", name = "ddl_triggers", finalize);

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
