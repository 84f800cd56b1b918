//! pg — Postgres plumbing that every other concern uses and that knows nothing of tenants' rules: errors with their
//! SQLSTATE, settings written the way `SET` does, role checks and running the extension's own SQL with its rights,
//! SPI, reading the extension's own tables and any table's heap without SPI, the `ProcessUtility` hook chain, UUID
//! text, and the hash maps of ids a backend keeps for itself.
//!
//! - `backend_local`: a backend's own state in plain statics (one thread per backend), not thread-locals
//! - `errors`: the one error builder (`raise`, `Problem`), the NT codes, and Rust backtraces kept out of messages
//! - `guc`: `set_setting()` with its scope, and how a check hook refuses a value
//! - `privilege`: who may call what, and the extension's own SQL run with the right role and a safe `search_path`
//! - `spi_util`: the only way the extension runs SQL (scripts/check_sql.py enforces it)
//! - `own_tables`: `nile.*` tables read by heap and index, without SPI or row-level security
//! - `heap_scan`: a table's rows read without planner, policies or expressions
//! - `hook_chain`: the next `ProcessUtility`, planner and executor hooks (or the standard functions), and the one
//!   `ProcessUtility` hook that runs the registered statement checks
//! - `local_map`: the backend's own hash maps of ids, with a cheaper seeded hash than SipHash
//! - `uuid_text`: canonical UUID text and UUIDv7 generation
//! - `unguarded`: the few Postgres functions that cannot raise, called without pgrx's `sigsetjmp` guard
//!
//! Nothing here imports another folder of src/; every other folder may import this one.

pub mod backend_local;
pub mod errors;
pub mod guc;
pub mod heap_scan;
pub mod hook_chain;
pub mod local_map;
pub mod own_tables;
pub mod privilege;
pub mod spi_util;
pub mod unguarded;
pub mod uuid_text;

/// Called first from `_PG_init`: the panic hook that keeps backtraces out of client messages, and the invalidation of
/// the cached oid of schema `nile`.
pub fn init() {
    errors::init();
    own_tables::init();
}
