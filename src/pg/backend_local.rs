//! pg/backend_local — the extension's per-backend state, as plain statics instead of Rust thread-locals.
//!
//! A Postgres backend is one process that runs the extension's code on one thread: Postgres is not thread-safe, the
//! extension starts no thread, and its only signal handlers (pgrx's, in the usage flusher worker) set flags of their
//! own (pgrx's thread check covers only calls into Postgres). So the state a backend keeps for itself (the tenant
//! context's flags, the usage hooks' nesting and open statements) needs no thread-local storage. In a shared library
//! a `thread_local!` costs a call of `__tls_get_addr` at every access: 0.56-0.86 µs per point-read transaction in
//! `perf`, more than any function of the extension's own. A [`BackendLocal`] is a static: an access is a plain load.
//! Debug builds (the tests' `#[pg_test]`s and integration suites) assert at every access that it is the thread that
//! first touched any of them.
//!
//! It keeps `thread_local!`'s shape (`X.with(|x| …)`, and for a `RefCell` `with_borrow` / `with_borrow_mut`), so the
//! state's users read the same. Only the thread-safety assertion changes: `Sync` is asserted for the wrapper, on the
//! grounds above. The wrapped value must be const-constructible (a `Cell` or `RefCell` of plain data, a `Vec`, an
//! `Option`): a value that needs a runtime constructor (a hash map with a random seed) goes in as an `Option` filled
//! on first use (context/role_binding.rs's bindings), or stays in `thread_local!` (the tenant cache, the usage store's
//! row cache).
//! A forked backend starts with a copy of the postmaster's values, as it would with thread-locals.

use std::cell::RefCell;

/// Per-backend state in a static (see the module comment).
pub struct BackendLocal<T>(T);

// SAFETY: a Postgres backend runs extension code on its one thread only (Postgres is not thread-safe; the extension
// starts no thread; its only signal handlers, pgrx's in the flusher worker, touch no BackendLocal; its plain
// `#[test]`s touch none either), so the wrapped Cell / RefCell is never reached from two threads, nor from a signal
// handler. Debug builds check the thread (`same_thread`).
unsafe impl<T> Sync for BackendLocal<T> {}

/// Debug builds: panic unless the caller is the thread that first touched a BackendLocal in this process (a forked
/// backend's only thread has the postmaster's thread's id, so the fork does not trip it).
#[inline(always)]
fn same_thread() {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        static OWNER: AtomicUsize = AtomicUsize::new(0);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        if let Err(owner) = OWNER.compare_exchange(0, me, Relaxed, Relaxed) {
            assert_eq!(owner, me, "a BackendLocal was reached from a second thread");
        }
    }
}

impl<T> BackendLocal<T> {
    pub const fn new(value: T) -> Self {
        BackendLocal(value)
    }

    /// The value, as `LocalKey::with` gives it.
    #[inline(always)]
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        same_thread();
        f(&self.0)
    }
}

impl<T> std::ops::Deref for BackendLocal<T> {
    type Target = T;

    /// The value itself (`X.get()`, `X.set(…)` of a `Cell`, as `LocalKey<Cell<_>>` allows).
    #[inline(always)]
    fn deref(&self) -> &T {
        same_thread();
        &self.0
    }
}

impl<T> BackendLocal<RefCell<T>> {
    /// `LocalKey::with_borrow`.
    #[inline(always)]
    pub fn with_borrow<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        same_thread();
        f(&self.0.borrow())
    }

    /// `LocalKey::with_borrow_mut`.
    #[inline(always)]
    pub fn with_borrow_mut<R>(&'static self, f: impl FnOnce(&mut T) -> R) -> R {
        same_thread();
        f(&mut self.0.borrow_mut())
    }
}
