//! pg/own_tables — reading the extension's own tables (`nile.tenants`, `nile.tenant_tables`, `nile.role_bindings`, ...)
//! straight from heap and index, without SPI and without row-level security, for code that runs on hot paths or
//! inside event triggers and parallel workers.
//!
//! Reads use the newest snapshot (this transaction's own changes included), so a change made a moment ago is seen;
//! in parallel mode, which may not take snapshots, they use the statement's.

use super::backend_local::BackendLocal;
use pgrx::prelude::*;
use std::ffi::CStr;

/// One of the extension's tables, open for reading with its snapshot.
pub struct NileTable {
    heap: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    registered: bool,
}

impl NileTable {
    /// Open `nile.<name>`; `None` when there is no such table.
    pub fn open(name: &CStr) -> Option<NileTable> {
        // SAFETY: a syscache lookup with a valid NUL-terminated name.
        let relid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), nile_namespace()?) };
        (relid != pg_sys::InvalidOid).then(|| NileTable::open_relid(relid))
    }

    /// Open the table `relid` (which the caller looked up).
    pub fn open_relid(relid: pg_sys::Oid) -> NileTable {
        // SAFETY: opens an existing table with a lock that Drop releases; the snapshot taken here is released in Drop
        // when it was registered here.
        unsafe {
            let heap = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let (snapshot, registered) = if pg_sys::IsInParallelMode() {
                (pg_sys::GetActiveSnapshot(), false)
            } else {
                (pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot()), true)
            };
            NileTable {
                heap,
                snapshot,
                registered,
            }
        }
    }

    /// The open relation.
    pub fn heap(&self) -> pg_sys::Relation {
        self.heap
    }

    /// The oid of the index `nile.<name>`.
    pub fn index(&self, name: &CStr) -> Option<pg_sys::Oid> {
        // SAFETY: a syscache lookup with a valid NUL-terminated name.
        let index = unsafe { pg_sys::get_relname_relid(name.as_ptr(), nile_namespace()?) };
        (index != pg_sys::InvalidOid).then_some(index)
    }

    /// The number of one of the table's columns.
    pub fn attnum(&self, column: &CStr) -> Option<i16> {
        // SAFETY: the table is open; a syscache lookup with a valid NUL-terminated name.
        let attnum = unsafe { pg_sys::get_attnum((*self.heap).rd_id, column.as_ptr()) };
        (attnum > 0).then_some(attnum)
    }

    /// Scan the table, through `index` with `keys` (or the whole heap with `None` and no keys), passing each row's
    /// values and nulls (indexed by attnum - 1) to `row` until it returns `Some`, which `find` returns. By-reference
    /// values point into the row and must be copied out inside `row`.
    pub fn find<R>(
        &self,
        index: Option<pg_sys::Oid>,
        keys: &mut [pg_sys::ScanKeyData],
        mut row: impl FnMut(&[pg_sys::Datum], &[bool]) -> Option<R>,
    ) -> Option<R> {
        // SAFETY: the table is open and the snapshot valid; the keys outlive the scan; each tuple is deformed and
        // handed to `row` before the scan moves on, and the scan ends before this returns (on an ERROR the resource
        // owner releases it).
        unsafe {
            let scan = pg_sys::systable_beginscan(
                self.heap,
                index.unwrap_or(pg_sys::InvalidOid),
                index.is_some(),
                self.snapshot,
                keys.len() as i32,
                keys.as_mut_ptr(),
            );
            let tupdesc = (*self.heap).rd_att;
            let natts = (*tupdesc).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0); natts];
            let mut nulls = vec![true; natts];
            let mut found = None;
            loop {
                let tuple = pg_sys::systable_getnext(scan);
                if tuple.is_null() {
                    break;
                }
                pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
                found = row(&values, &nulls);
                if found.is_some() {
                    break;
                }
            }
            pg_sys::systable_endscan(scan);
            found
        }
    }
}

impl Drop for NileTable {
    fn drop(&mut self) {
        // SAFETY: both were acquired in open_relid() and are released once.
        unsafe {
            if self.registered {
                pg_sys::UnregisterSnapshot(self.snapshot);
            }
            pg_sys::table_close(self.heap, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        }
    }
}

/// What `nile_namespace()` last found (None: not looked up since the last change to any schema).
static NILE_NAMESPACE: BackendLocal<std::cell::Cell<Option<Option<pg_sys::Oid>>>> =
    BackendLocal::new(std::cell::Cell::new(None));

/// Registers the invalidation of `nile_namespace()`'s answer (called from `pg::init()`).
pub(super) fn init() {
    // SAFETY: registering a callback during _PG_init; the callback only clears a cell and never raises an ERROR.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as _,
            Some(namespace_changed),
            pg_sys::Datum::from(0),
        )
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn namespace_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    NILE_NAMESPACE.with(|n| n.set(None));
}

/// The oid of the schema `nile` (usage metering asks at every statement: one catalog lookup per change to any schema
/// of the database, a `CREATE EXTENSION` or `DROP EXTENSION` included, instead of one per call).
pub fn nile_namespace() -> Option<pg_sys::Oid> {
    if let Some(known) = NILE_NAMESPACE.with(std::cell::Cell::get) {
        return known;
    }
    // SAFETY: a syscache lookup with a valid NUL-terminated name; missing_ok.
    let nsp = unsafe { pg_sys::get_namespace_oid(c"nile".as_ptr(), true) };
    let found = (nsp != pg_sys::InvalidOid).then_some(nsp);
    NILE_NAMESPACE.with(|n| n.set(Some(found)));
    found
}

/// A one-column btree scan key.
///
/// # Safety
/// When `argument` is a pointer, what it points at must outlive the scan that uses the key.
pub unsafe fn scan_key(
    attnum: i16,
    strategy: u32,
    procedure: u32,
    argument: pg_sys::Datum,
) -> pg_sys::ScanKeyData {
    // SAFETY: ScanKeyInit fills every field of a zeroed key.
    unsafe {
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            attnum,
            strategy as pg_sys::StrategyNumber,
            pg_sys::RegProcedure::from(procedure),
            argument,
        );
        key
    }
}
