//! tenants — a tenant's life, beyond entering its context.
//!
//! - `lifecycle`: creating, updating, deactivating, soft-deleting and purging a tenant, and the tenant tables in
//!   foreign-key order
//! - `storage`: one tenant table's rows and bytes per tenant (`nile.tenant_storage()`)
//! - `import`: the steps of `nile.import_schema()` that read or write user tables
//!
//! The lifecycle tools written in SQL are in sql/lifecycle.sql. No `init()`: nothing here installs a hook.

pub mod import;
pub mod lifecycle;
pub mod storage;
