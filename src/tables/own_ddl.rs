//! tables/own_ddl — the extension's own DDL, which its DDL event triggers leave alone: enrolment, repair and
//! `disable_tenancy()` run inside `own_ddl()`, and user code they run on purpose (a table's triggers during a
//! backfill) inside `running_user_code()`, where DDL is checked again.
//!
//! Design: a per-backend depth counter (own operations nest), restored on every way out of the closure, unwinding
//! included.

use crate::pg::backend_local::BackendLocal;
use std::cell::Cell;

/// How many of the extension's own DDL operations are running in this backend (they nest).
static OWN_DDL_DEPTH: BackendLocal<Cell<u32>> = BackendLocal::new(Cell::new(0));

/// Run the extension's own DDL: the event triggers ignore what happens inside.
pub fn own_ddl<R>(f: impl FnOnce() -> R) -> R {
    with_own_ddl_depth(OWN_DDL_DEPTH.get() + 1, f)
}

/// Run user code (a table's triggers, during a backfill) inside `own_ddl`: DDL it runs is checked as usual.
pub(super) fn running_user_code<R>(f: impl FnOnce() -> R) -> R {
    with_own_ddl_depth(0, f)
}

fn with_own_ddl_depth<R>(depth: u32, f: impl FnOnce() -> R) -> R {
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            OWN_DDL_DEPTH.set(self.0);
        }
    }
    let _restore = Restore(OWN_DDL_DEPTH.replace(depth));
    f()
}

/// Whether the extension's own DDL is running (the event triggers skip the event then).
pub fn in_own_ddl() -> bool {
    OWN_DDL_DEPTH.get() > 0
}
