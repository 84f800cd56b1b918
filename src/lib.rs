//! nile_tenancy — a multi-tenant PostgreSQL: tenants, an unforgeable tenant context and row-level isolation that the
//! database manages for you.
//!
//! Folders and modules, one concern each (each folder's mod.rs lists its files; docs/contributing.md explains the
//! layout; scripts/check_layout.py proves that no two of them import each other):
//! - `pg/`: Postgres plumbing that knows nothing of tenants: errors with their SQLSTATE, settings written the way `SET`
//!   does, privileges and the extension's own SQL, SPI, reading its own tables, the `ProcessUtility` chain, UUID text
//! - `settings`: the plain `nile.*` settings behind typed getters
//! - `context/`: who a session works for: the unforgeable tenant and admin contexts, tenant status cache, tokens,
//!   tenant-bound roles, `nile.admin_context()`, and what a context may not leave on a pooled connection
//! - `rls/`: the row-security hooks: restrictive copies of the tenant policies, the admin context's allow-all policy
//! - `tables/`: enrolling tenant tables, the extension's own DDL, foreign keys validated over every tenant's rows
//! - `ddl/`: the DDL event triggers that enroll, protect and forget tables as the schema changes
//! - `tenants/`: the tenant lifecycle (create, update, soft delete, purge), storage per tenant, the import's steps
//! - `usage/`: per-tenant usage metering: shared-memory counters, their persistence, the statement hooks, the views'
//!   functions, the durable history and its flush workers
//!
//! A folder imports only folders listed above it, never one below (`pg/` none; `usage/` and `tenants/` may use
//! `context/`; `ddl/` uses `tables/`).

use pgrx::prelude::*;

mod context;
mod ddl;
mod pg;
mod rls;
mod settings;
mod tables;
mod tenants;
mod usage;

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
        set_tenant_read_only,
        set_tenant_token_read_only,
        assert_read_only,
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
    pg::init();
    // First after the panic hook: settings::init() records whether the library is being preloaded, which later
    // init()s read through settings::preloaded().
    settings::init();
    context::init();
    // After every `nile.*` setting is defined (the guarded ones by context::init(); no later init() defines one):
    // reserving the prefix stops placeholders from being created under it.
    settings::reserve_prefix();
    rls::init();
    tables::init();
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
