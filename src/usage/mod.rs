//! usage — per-tenant usage metering for billing and for finding noisy neighbours: every top-level statement's
//! time, CPU, rows and buffers, counted per tenant in shared memory and flushed into a durable history.
//!
//! - `store`: the counters in shared memory (one row per tenant, bounded, with an overflow row), and their lock
//! - `persist`: the counters saved at a clean shutdown and loaded at start
//! - `hooks`: measuring each top-level statement for its tenant (executor and utility hooks)
//! - `api`: the SQL functions under the live usage views
//! - `history`: the durable history (`nile.flush_usage()`, `nile.reset_usage()`, `nile.usage_history`)
//! - `flusher`: the background workers that flush usage into the history every interval
//!
//! `init()` installs, in this order, the shared memory, its persistence (whose startup hook runs after the store's),
//! the statement hooks and the flush workers.

pub mod api;
pub mod flusher;
pub mod history;
pub mod hooks;
pub mod persist;
pub mod store;

/// Called from `_PG_init`.
pub fn init() {
    store::init();
    persist::init();
    hooks::init();
    flusher::init();
}
