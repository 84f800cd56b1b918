//! tables — tenant tables: enrolling a table (its policies, its foreign key to `nile.tenants`, its index), what the
//! extension's own DDL is, and foreign keys validated over every tenant's rows.
//!
//! - `enrolment`: `nile.enable_tenancy()`, `nile.disable_tenancy()`, the generated objects and their names
//! - `own_ddl`: the extension's own DDL, which the DDL event triggers (src/ddl/) leave alone
//! - `fk_validation`: foreign keys validated row by row whenever row-level security applies, and no cast to uuid that
//!   runs a non-superuser's function
//!
//! `init()` installs the foreign-key validation hooks.

pub mod enrolment;
pub mod fk_validation;
pub mod own_ddl;

/// Called from `_PG_init`.
pub fn init() {
    fk_validation::init();
}
