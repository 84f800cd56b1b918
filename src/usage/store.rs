//! usage/store — per-tenant usage counters in shared memory, keyed by (database, row kind, tenant).
//!
//! One shared hash table (dynahash, fixed size: `nile.max_tracked_tenants` tenant rows plus a reserve for the rows
//! that are not tenants) behind one LWLock. Recording a statement takes the lock in SHARED mode to find its row and
//! adds to the row's counters with atomic instructions, so backends working for the same tenant never wait for each
//! other; the lock is taken EXCLUSIVE only to insert a new row or to reset. A backend keeps a pointer to each row it
//! found, valid until the shared generation changes (every removal bumps it under the EXCLUSIVE lock), so a
//! transaction's usage usually reaches its row without a lookup. Readers copy the rows under the SHARED lock. Nothing is dropped silently: a tenant beyond capacity is counted in its database's `overflow` row, and if even
//! that row cannot be created, in one cluster-wide `lost` row kept outside the table.
//!
//! Only the postmaster creates the memory (shared_preload_libraries); without preloading `available()` is false.

use crate::pg::errors::Problem;
use crate::pg::local_map::{LocalMap, LocalSet};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Latency histogram buckets: bucket `i` counts statements that took [2^(i/3), 2^((i+1)/3)) microseconds (bucket 0
/// also everything under 1 µs, the last one everything above ~2^32 µs = 71 minutes). Relative error of a percentile
/// read from it: under 13 %.
pub(super) const HISTOGRAM_BUCKETS: usize = 96;
const BUCKETS_PER_DOUBLING: f64 = 3.0;

/// Rows that are not tenants (no tenant, admin, overflow: three per database using the extension).
const RESERVED_ROWS: u64 = 256;

const SHMEM_NAME: &CStr = c"nile_tenancy usage";
const TABLE_NAME: &CStr = c"nile_tenancy usage table";
const LOCK_TRANCHE: &CStr = c"nile_tenancy usage";

/// What a row of the usage table counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum RowKind {
    /// One tenant's statements.
    Tenant = 0,
    /// Statements run without a tenant context.
    NoTenant = 1,
    /// Statements run in the admin context.
    Admin = 2,
    /// Statements of tenants that did not fit in `nile.max_tracked_tenants`.
    Overflow = 3,
}

impl RowKind {
    pub(super) fn label(self) -> &'static str {
        match self {
            RowKind::Tenant => "tenant",
            RowKind::NoTenant => "no tenant",
            RowKind::Admin => "admin",
            RowKind::Overflow => "overflow",
        }
    }

    fn from_u32(value: u32) -> RowKind {
        match value {
            0 => RowKind::Tenant,
            1 => RowKind::NoTenant,
            2 => RowKind::Admin,
            _ => RowKind::Overflow,
        }
    }
}

/// The key of a row. `tenant` is all zeros except for `RowKind::Tenant`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct UsageKey {
    pub database: u32,
    pub(crate) kind: u32,
    pub tenant: [u8; 16],
}

impl UsageKey {
    pub fn new(database: pg_sys::Oid, kind: RowKind, tenant: Option<[u8; 16]>) -> UsageKey {
        UsageKey {
            database: database.to_u32(),
            kind: kind as u32,
            tenant: if kind == RowKind::Tenant {
                tenant.unwrap_or_default()
            } else {
                [0; 16]
            },
        }
    }

    pub fn kind(&self) -> RowKind {
        RowKind::from_u32(self.kind)
    }

    fn overflow_of(&self) -> UsageKey {
        UsageKey::new(self.database.into(), RowKind::Overflow, None)
    }
}

/// What one top-level statement did, measured in the backend (its CPU time is shared out per transaction: see
/// usage/hooks.rs).
#[derive(Default, Clone, Copy, Debug)]
pub(super) struct StatementUsage {
    pub failed: bool,
    pub rows_returned: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
    pub rows_deleted: u64,
    pub time_ns: u64,
    pub blks_hit: u64,
    pub blks_read: u64,
    pub blks_dirtied: u64,
}

/// The counters of one row, updated with atomic adds (no lock but the table's SHARED lock held to find the row).
#[repr(C)]
struct Counters {
    statements: AtomicU64,
    errors: AtomicU64,
    rows_returned: AtomicU64,
    rows_inserted: AtomicU64,
    rows_updated: AtomicU64,
    rows_deleted: AtomicU64,
    total_time_ns: AtomicU64,
    max_time_ns: AtomicU64,
    cpu_user_ns: AtomicU64,
    cpu_system_ns: AtomicU64,
    blks_hit: AtomicU64,
    blks_read: AtomicU64,
    blks_dirtied: AtomicU64,
    first_activity: AtomicI64,
    last_activity: AtomicI64,
    histogram: [AtomicU64; HISTOGRAM_BUCKETS],
}

/// A plain copy of a row's counters: read from a row, saved at shutdown, or the statements of one row that a backend
/// has finished and not yet recorded (recorded together at the end of the transaction).
#[derive(Clone, Debug)]
pub struct CounterValues {
    pub statements: u64,
    pub errors: u64,
    pub rows_returned: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
    pub rows_deleted: u64,
    pub total_time_ns: u64,
    pub max_time_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub blks_hit: u64,
    pub blks_read: u64,
    pub blks_dirtied: u64,
    /// Timestamps (microseconds since 2000-01-01, as TimestampTz); 0 when there was no activity.
    pub first_activity: i64,
    pub last_activity: i64,
    pub histogram: [u64; HISTOGRAM_BUCKETS],
}

/// The histogram bucket of a duration.
pub(super) fn bucket_of(time_ns: u64) -> usize {
    let micros = time_ns as f64 / 1000.0;
    if micros < 1.0 {
        return 0;
    }
    ((micros.log2() * BUCKETS_PER_DOUBLING) as usize).min(HISTOGRAM_BUCKETS - 1)
}

/// The lower bound of a bucket, in microseconds.
fn bucket_floor_us(bucket: usize) -> f64 {
    if bucket == 0 {
        0.0
    } else {
        (bucket as f64 / BUCKETS_PER_DOUBLING).exp2()
    }
}

impl Counters {
    fn zero(&self) {
        self.store(&CounterValues::default());
    }

    /// The counters that are sums (all but the maximum, the activity times and the histogram), each with `v`'s value.
    fn sums_with<'a>(&'a self, v: &CounterValues) -> [(&'a AtomicU64, u64); 12] {
        [
            (&self.statements, v.statements),
            (&self.errors, v.errors),
            (&self.rows_returned, v.rows_returned),
            (&self.rows_inserted, v.rows_inserted),
            (&self.rows_updated, v.rows_updated),
            (&self.rows_deleted, v.rows_deleted),
            (&self.total_time_ns, v.total_time_ns),
            (&self.cpu_user_ns, v.cpu_user_ns),
            (&self.cpu_system_ns, v.cpu_system_ns),
            (&self.blks_hit, v.blks_hit),
            (&self.blks_read, v.blks_read),
            (&self.blks_dirtied, v.blks_dirtied),
        ]
    }

    /// Add `v` (a transaction's statements, or a row restored at start-up), with its first and last activity (0:
    /// none).
    fn add(&self, v: &CounterValues, first_activity: i64, last_activity: i64) {
        for (counter, value) in self.sums_with(v) {
            if value != 0 {
                counter.fetch_add(value, Relaxed);
            }
        }
        for (bucket, &count) in v.histogram.iter().enumerate() {
            if count != 0 {
                self.histogram[bucket].fetch_add(count, Relaxed);
            }
        }
        // The maximum and the activity times are read before they are written: a row that many backends add to
        // (the no-tenant row, a busy tenant) then sees few writes to these words, which would otherwise move its
        // cache line between cores on every statement. The last activity is kept to the millisecond.
        if v.max_time_ns > self.max_time_ns.load(Relaxed) {
            self.max_time_ns.fetch_max(v.max_time_ns, Relaxed);
        }
        let earlier =
            |current: i64| (current == 0 || first_activity < current).then_some(first_activity);
        if first_activity != 0 && earlier(self.first_activity.load(Relaxed)).is_some() {
            let _ = self.first_activity.fetch_update(Relaxed, Relaxed, earlier);
        }
        let last = self.last_activity.load(Relaxed);
        if last_activity != 0 && (last == 0 || last_activity >= last + 1_000) {
            self.last_activity.fetch_max(last_activity, Relaxed);
        }
    }

    /// Overwrite every counter with `v` (the flushed copy of a row).
    fn store(&self, v: &CounterValues) {
        for (counter, value) in self.sums_with(v) {
            counter.store(value, Relaxed);
        }
        self.max_time_ns.store(v.max_time_ns, Relaxed);
        self.first_activity.store(v.first_activity, Relaxed);
        self.last_activity.store(v.last_activity, Relaxed);
        for (bucket, &count) in self.histogram.iter().zip(v.histogram.iter()) {
            bucket.store(count, Relaxed);
        }
    }

    fn read(&self) -> CounterValues {
        CounterValues {
            statements: self.statements.load(Relaxed),
            errors: self.errors.load(Relaxed),
            rows_returned: self.rows_returned.load(Relaxed),
            rows_inserted: self.rows_inserted.load(Relaxed),
            rows_updated: self.rows_updated.load(Relaxed),
            rows_deleted: self.rows_deleted.load(Relaxed),
            total_time_ns: self.total_time_ns.load(Relaxed),
            max_time_ns: self.max_time_ns.load(Relaxed),
            cpu_user_ns: self.cpu_user_ns.load(Relaxed),
            cpu_system_ns: self.cpu_system_ns.load(Relaxed),
            blks_hit: self.blks_hit.load(Relaxed),
            blks_read: self.blks_read.load(Relaxed),
            blks_dirtied: self.blks_dirtied.load(Relaxed),
            first_activity: self.first_activity.load(Relaxed),
            last_activity: self.last_activity.load(Relaxed),
            histogram: std::array::from_fn(|i| self.histogram[i].load(Relaxed)),
        }
    }
}

impl Default for CounterValues {
    fn default() -> Self {
        CounterValues {
            statements: 0,
            errors: 0,
            rows_returned: 0,
            rows_inserted: 0,
            rows_updated: 0,
            rows_deleted: 0,
            total_time_ns: 0,
            max_time_ns: 0,
            cpu_user_ns: 0,
            cpu_system_ns: 0,
            blks_hit: 0,
            blks_read: 0,
            blks_dirtied: 0,
            first_activity: 0,
            last_activity: 0,
            histogram: [0; HISTOGRAM_BUCKETS],
        }
    }
}

impl CounterValues {
    /// Add one finished statement.
    pub(super) fn add_statement(&mut self, s: &StatementUsage) {
        self.statements += 1;
        self.errors += s.failed as u64;
        self.rows_returned += s.rows_returned;
        self.rows_inserted += s.rows_inserted;
        self.rows_updated += s.rows_updated;
        self.rows_deleted += s.rows_deleted;
        self.total_time_ns += s.time_ns;
        self.max_time_ns = self.max_time_ns.max(s.time_ns);
        self.blks_hit += s.blks_hit;
        self.blks_read += s.blks_read;
        self.blks_dirtied += s.blks_dirtied;
        self.histogram[bucket_of(s.time_ns)] += 1;
    }

    /// What was added since `earlier` (a copy of the same row taken before): the usage of one history period. The
    /// maximum and the activity times are not differences; they are kept from `self` (the maximum so far bounds the
    /// period's percentiles).
    pub fn since(&self, earlier: &CounterValues) -> CounterValues {
        let minus = |now: u64, then: u64| now.saturating_sub(then);
        CounterValues {
            statements: minus(self.statements, earlier.statements),
            errors: minus(self.errors, earlier.errors),
            rows_returned: minus(self.rows_returned, earlier.rows_returned),
            rows_inserted: minus(self.rows_inserted, earlier.rows_inserted),
            rows_updated: minus(self.rows_updated, earlier.rows_updated),
            rows_deleted: minus(self.rows_deleted, earlier.rows_deleted),
            total_time_ns: minus(self.total_time_ns, earlier.total_time_ns),
            max_time_ns: self.max_time_ns,
            cpu_user_ns: minus(self.cpu_user_ns, earlier.cpu_user_ns),
            cpu_system_ns: minus(self.cpu_system_ns, earlier.cpu_system_ns),
            blks_hit: minus(self.blks_hit, earlier.blks_hit),
            blks_read: minus(self.blks_read, earlier.blks_read),
            blks_dirtied: minus(self.blks_dirtied, earlier.blks_dirtied),
            first_activity: self.first_activity,
            last_activity: self.last_activity,
            histogram: std::array::from_fn(|b| minus(self.histogram[b], earlier.histogram[b])),
        }
    }

    /// Nothing counted (no statement and no time): a period without usage.
    pub fn is_empty(&self) -> bool {
        self.statements == 0
            && self.total_time_ns == 0
            && self.cpu_user_ns == 0
            && self.cpu_system_ns == 0
    }

    /// The `q` quantile (0 < q < 1) of the statements' execution time in milliseconds, interpolated inside its
    /// histogram bucket and never above the maximum seen; None without statements.
    pub(super) fn percentile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.histogram.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (bucket, &count) in self.histogram.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let (low, high) = (bucket_floor_us(bucket), bucket_floor_us(bucket + 1));
                let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                let millis = (low + (high - low) * within) / 1000.0;
                // Clamped with the very expression the max_time_ms column uses, so that p99 <= max holds exactly.
                return Some(millis.min(self.max_time_ns as f64 / 1_000_000.0));
            }
            below += count;
        }
        Some(self.max_time_ns as f64 / 1_000_000.0)
    }
}

#[repr(C)]
struct Entry {
    key: UsageKey,
    /// Which incarnation of the key this is (a reset removes rows; a later insert of the same key gets a new epoch),
    /// so that a flush marks only the row it read.
    epoch: u64,
    counters: Counters,
    /// The counters as last written to `nile.usage_history` (see usage/history.rs), and when.
    flushed: Counters,
    flushed_at: AtomicI64,
}

/// One row as a flush sees it: what it counts now and what of that is already in `nile.usage_history`.
#[derive(Clone, Debug)]
pub(super) struct FlushView {
    pub key: UsageKey,
    pub epoch: u64,
    pub current: CounterValues,
    pub flushed: CounterValues,
    /// When the flushed part was written (the row's creation when never).
    pub flushed_at: i64,
}

/// A row as saved at shutdown: its counters and what of them the history already has.
#[derive(Clone, Debug)]
pub struct SavedRow {
    pub key: UsageKey,
    pub counters: CounterValues,
    pub flushed: CounterValues,
    pub flushed_at: i64,
}

#[repr(C)]
struct Shared {
    lock: *mut pg_sys::LWLock,
    /// Rows of kind Tenant, and rows of any kind (under `lock`).
    tenant_rows: u64,
    all_rows: u64,
    /// Bumped by every reset, so that backends drop what they cached about which tenants overflowed.
    generation: AtomicU64,
    /// The epoch of the next row inserted (under `lock` EXCLUSIVE).
    next_epoch: u64,
    /// Usage that found no row at all (the table's reserve exhausted): cluster-wide.
    lost: Counters,
}

static mut SHARED: *mut Shared = std::ptr::null_mut();
static mut TABLE: *mut pg_sys::HTAB = std::ptr::null_mut();
#[cfg(not(feature = "pg14"))]
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;
static mut CREATED_HERE: bool = false;

thread_local! {
    /// Tenants this backend found no room for, valid while the shared generation is unchanged: their statements go
    /// straight to the overflow row instead of taking the EXCLUSIVE lock every time.
    static OVERFLOWED: std::cell::RefCell<(u64, LocalSet<[u8; 16]>)> =
        std::cell::RefCell::new((0, LocalSet::default()));
}

fn capacity() -> u64 {
    crate::settings::max_tracked_tenants().max(1) as u64
}

fn table_rows() -> i64 {
    (capacity() + RESERVED_ROWS) as i64
}

fn shmem_size() -> pg_sys::Size {
    // SAFETY: pure size arithmetic.
    unsafe {
        pg_sys::add_size(
            std::mem::size_of::<Shared>(),
            pg_sys::hash_estimate_size(table_rows(), std::mem::size_of::<Entry>()),
        )
    }
}

/// Called from _PG_init: reserve the memory and the lock when the library is being preloaded.
pub fn init() {
    if !crate::settings::preloaded() {
        return;
    }
    // SAFETY: _PG_init runs in the postmaster while shared_preload_libraries is processed; the previous hooks are
    // saved and chained.
    unsafe {
        #[cfg(feature = "pg14")]
        request_memory();
        #[cfg(not(feature = "pg14"))]
        {
            PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(shmem_request);
        }
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

unsafe fn request_memory() {
    // SAFETY (caller): only while shared memory is being sized (shmem_request_hook, or _PG_init before 15).
    unsafe {
        pg_sys::RequestAddinShmemSpace(shmem_size());
        pg_sys::RequestNamedLWLockTranche(LOCK_TRANCHE.as_ptr(), 1);
    }
}

#[cfg(not(feature = "pg14"))]
#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called once by the postmaster; the previous hook has the same signature.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev());
        }
        request_memory();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called by the postmaster (and, under EXEC_BACKEND, by each backend) after shared memory exists. The
    // struct and the table are created once under AddinShmemInitLock; later callers attach to them.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev());
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let shared = pg_sys::ShmemInitStruct(
            SHMEM_NAME.as_ptr(),
            std::mem::size_of::<Shared>(),
            &mut found,
        ) as *mut Shared;
        if !found {
            (*shared).lock = &raw mut (*pg_sys::GetNamedLWLockTranche(LOCK_TRANCHE.as_ptr())).lock;
            (*shared).tenant_rows = 0;
            (*shared).all_rows = 0;
            (*shared).generation = AtomicU64::new(0);
            (*shared).next_epoch = 1;
            (*shared).lost.zero();
        }
        let mut info: pg_sys::HASHCTL = std::mem::zeroed();
        info.keysize = std::mem::size_of::<UsageKey>();
        info.entrysize = std::mem::size_of::<Entry>();
        TABLE = pg_sys::ShmemInitHash(
            TABLE_NAME.as_ptr(),
            table_rows(),
            table_rows(),
            &mut info,
            (pg_sys::HASH_ELEM | pg_sys::HASH_BLOBS | pg_sys::HASH_FIXED_SIZE) as i32,
        );
        SHARED = shared;
        CREATED_HERE = !found;
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Whether this process created the counters' shared memory (the postmaster at start: usage/persist.rs then loads
/// what the last clean shutdown saved), rather than attaching to it.
pub(super) fn created_here() -> bool {
    // SAFETY: written once by shmem_startup in this process, before any reader runs.
    unsafe { CREATED_HERE }
}

/// Whether the shared memory exists (the library was preloaded).
pub(super) fn available() -> bool {
    // SAFETY: SHARED is written once in shmem_startup, before any backend exists.
    unsafe { !(&raw const SHARED).read().is_null() }
}

/// Raise 55000 with a hint unless the shared memory exists.
pub(super) fn require_available(what: &str) {
    if !available() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{what} needs nile_tenancy in shared_preload_libraries"),
        )
        .detail("Usage counters live in shared memory, which only a preloaded library can have.")
        .hint("Add nile_tenancy to shared_preload_libraries in postgresql.conf and restart the server.")
        .raise();
    }
}

struct Locked(*mut pg_sys::LWLock);

impl Locked {
    /// SAFETY: the shared memory exists.
    unsafe fn acquire(mode: pg_sys::LWLockMode::Type) -> Locked {
        // SAFETY (caller): SHARED points at the initialised struct.
        unsafe {
            let lock = (*SHARED).lock;
            pg_sys::LWLockAcquire(lock, mode);
            Locked(lock)
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: acquired in `acquire`; released exactly once. (Nothing between acquire and drop is expected to
        // raise; if something did, the unwinding would drop this guard before Postgres' own LWLockReleaseAll.)
        unsafe { pg_sys::LWLockRelease(self.0) }
    }
}

unsafe fn find(key: &UsageKey) -> *mut Entry {
    // SAFETY (caller): the table lock is held.
    unsafe {
        pg_sys::hash_search(
            TABLE,
            (key as *const UsageKey).cast(),
            pg_sys::HASHACTION::HASH_FIND,
            std::ptr::null_mut(),
        ) as *mut Entry
    }
}

/// Insert `key` unless the table is full; the caller holds the lock EXCLUSIVE.
unsafe fn insert(key: &UsageKey) -> *mut Entry {
    // SAFETY (caller): the table lock is held EXCLUSIVE, so nobody else reads or writes the new entry before its
    // counters are zeroed.
    unsafe {
        let shared = SHARED;
        if (*shared).all_rows >= table_rows() as u64
            || (key.kind() == RowKind::Tenant && no_room_for_tenants())
        {
            return std::ptr::null_mut();
        }
        let mut found = false;
        let entry = pg_sys::hash_search(
            TABLE,
            (key as *const UsageKey).cast(),
            pg_sys::HASHACTION::HASH_ENTER_NULL,
            &mut found,
        ) as *mut Entry;
        if !entry.is_null() && !found {
            (*entry).counters.zero();
            (*entry).flushed.zero();
            (*entry).flushed_at = AtomicI64::new(pg_sys::GetCurrentTimestamp());
            (*entry).epoch = (*shared).next_epoch;
            (*shared).next_epoch += 1;
            (*shared).all_rows += 1;
            if key.kind() == RowKind::Tenant {
                (*shared).tenant_rows += 1;
            }
        }
        entry
    }
}

/// Whether the table has as many tenant rows as `nile.max_tracked_tenants` allows (so a tenant without a row goes to
/// the overflow row).
///
/// # Safety
/// The shared memory exists and the caller holds the table lock (SHARED or EXCLUSIVE): the count changes only under
/// the EXCLUSIVE lock.
unsafe fn no_room_for_tenants() -> bool {
    // SAFETY (caller): as above.
    unsafe { (*SHARED).tenant_rows >= capacity() }
}

/// `key`'s row, inserting it if needed: a tenant that does not fit goes to its database's overflow row (remembered by
/// this backend); null when not even that fits.
///
/// # Safety
/// The shared memory exists and the caller holds the lock EXCLUSIVE (or nothing else can use the memory yet).
unsafe fn entry_for_new(key: &UsageKey) -> *mut Entry {
    // SAFETY (caller): see above; entries stay in place until removed under the EXCLUSIVE lock.
    unsafe {
        let mut entry = find(key);
        if entry.is_null() {
            entry = insert(key);
        }
        if entry.is_null() && key.kind() == RowKind::Tenant {
            remember_overflowed(key);
            let overflow = key.overflow_of();
            entry = find(&overflow);
            if entry.is_null() {
                entry = insert(&overflow);
            }
        }
        entry
    }
}

/// The counters of `key`'s row (see `entry_for_new`), or the cluster-wide lost row when there is no room at all.
///
/// # Safety
/// As for `entry_for_new`.
unsafe fn counters_for_new(key: &UsageKey) -> &'static Counters {
    // SAFETY (caller): as for entry_for_new.
    unsafe {
        let entry = entry_for_new(key);
        if entry.is_null() {
            &(*SHARED).lost
        } else {
            &(*entry).counters
        }
    }
}

thread_local! {
    /// Rows this backend recorded into, by key, valid while the shared generation is unchanged (every removal of a row
    /// bumps it under the EXCLUSIVE lock, and the pointers are only used under the SHARED lock): a transaction's usage
    /// reaches its row without a lookup in the shared table. Dropped whole past `ROW_CACHE_SIZE` keys.
    static ROW_CACHE: std::cell::RefCell<(u64, LocalMap<UsageKey, usize>)> =
        std::cell::RefCell::new((0, LocalMap::default()));
}
const ROW_CACHE_SIZE: usize = 4096;

/// `key`'s row, from this backend's cache or the shared table (null when it has none).
///
/// # Safety
/// The shared memory exists and the caller holds the table lock (SHARED or EXCLUSIVE).
unsafe fn find_cached(key: &UsageKey) -> *mut Entry {
    // SAFETY (caller): under the lock, no row is removed, and the generation read here is the one every removal
    // before it left.
    let generation = unsafe { (*SHARED).generation.load(Relaxed) };
    let cached = ROW_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != generation {
            *c = (generation, Default::default());
        }
        c.1.get(key).copied()
    });
    if let Some(entry) = cached {
        return entry as *mut Entry;
    }
    // SAFETY (caller): as above.
    let entry = unsafe { find(key) };
    if !entry.is_null() {
        ROW_CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.1.len() >= ROW_CACHE_SIZE {
                c.1.clear();
            }
            c.1.insert(*key, entry as usize);
        });
    }
    entry
}

fn known_overflowed(key: &UsageKey) -> bool {
    if key.kind() != RowKind::Tenant {
        return false;
    }
    // SAFETY: SHARED is initialised (checked by the caller).
    let generation = unsafe { (*SHARED).generation.load(Relaxed) };
    OVERFLOWED.with(|o| {
        let mut o = o.borrow_mut();
        if o.0 != generation {
            *o = (generation, Default::default());
        }
        o.1.contains(&key.tenant)
    })
}

fn remember_overflowed(key: &UsageKey) {
    // SAFETY: reads a process-global flag.
    if unsafe { !pg_sys::IsUnderPostmaster } {
        // The postmaster restoring saved rows: its memory is inherited by every backend it starts, also after a
        // crash restart, when the new table has room again.
        return;
    }
    OVERFLOWED.with(|o| {
        o.borrow_mut().1.insert(key.tenant);
    });
}

/// Add each row's statements to it (creating rows as needed; a tenant beyond capacity goes to the overflow row). The
/// rows that exist are found under one SHARED lock acquisition, and so is the overflow row of a tenant that has none
/// while the table has no room for another tenant; only rows to create take the lock EXCLUSIVE.
pub fn record(rows: &[(UsageKey, CounterValues)]) {
    if !available() || rows.is_empty() {
        return;
    }
    // SAFETY: plain call.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    // The rows' activity is now; a row that only receives CPU time shared out later ran no statement now.
    let activity = |usage: &CounterValues| if usage.statements > 0 { now } else { 0 };
    let target = |key: &UsageKey| {
        if known_overflowed(key) {
            key.overflow_of()
        } else {
            *key
        }
    };
    let mut missing = Vec::new();
    // SAFETY: the shared memory exists; rows are only read or added to under the lock, and never freed while a
    // SHARED holder may use them (removal takes the lock EXCLUSIVE).
    unsafe {
        {
            let _shared = Locked::acquire(pg_sys::LWLockMode::LW_SHARED);
            for (key, usage) in rows {
                let target = target(key);
                let mut entry = find_cached(&target);
                if entry.is_null() && target.kind() == RowKind::Tenant && no_room_for_tenants() {
                    // No room for another tenant's row, and none can be made while this SHARED lock is held (rows are
                    // removed only EXCLUSIVE): the usage goes to the database's overflow row, where entry_for_new
                    // would send it, without queueing for the EXCLUSIVE lock. (Once per backend and tenant, but new
                    // backends of tenants beyond capacity, 64 clients on 2 cores, made convoys on the lock.)
                    entry = find_cached(&target.overflow_of());
                    if !entry.is_null() {
                        remember_overflowed(&target);
                    }
                }
                if entry.is_null() {
                    missing.push((target, usage));
                } else {
                    (*entry)
                        .counters
                        .add(usage, activity(usage), activity(usage));
                }
            }
        }
        if missing.is_empty() {
            return;
        }
        let _exclusive = Locked::acquire(pg_sys::LWLockMode::LW_EXCLUSIVE);
        for (key, usage) in missing {
            // CPU time shared out late (see usage/hooks.rs) to a tenant without a row (reset since, or beyond
            // capacity) does not take a row: it ran no statement now, and a reset row would come back as a ghost.
            let key = if usage.statements == 0 && key.kind() == RowKind::Tenant {
                key.overflow_of()
            } else {
                key
            };
            counters_for_new(&key).add(usage, activity(usage), activity(usage));
        }
    }
}

/// Visit every row of the table, to the end (so the scan needs no hash_seq_term).
///
/// # Safety
/// The shared memory exists and the caller holds the table lock.
unsafe fn for_each_entry(mut visit: impl FnMut(&Entry)) {
    // SAFETY (caller): the lock keeps every entry in place for the scan.
    unsafe {
        let mut status: pg_sys::HASH_SEQ_STATUS = std::mem::zeroed();
        pg_sys::hash_seq_init(&mut status, TABLE);
        loop {
            let entry = pg_sys::hash_seq_search(&mut status) as *const Entry;
            if entry.is_null() {
                break;
            }
            visit(&*entry);
        }
    }
}

/// A copy of every row of every database, with the lost row as database 0: for the file saved at shutdown. Only
/// when no backend runs any more (the postmaster at shutdown), so without the lock.
pub(super) fn snapshot_for_shutdown() -> Vec<SavedRow> {
    let mut rows = Vec::new();
    if !available() {
        return rows;
    }
    // SAFETY: the shared memory exists and nothing else uses it any more.
    unsafe {
        for_each_entry(|entry| {
            rows.push(SavedRow {
                key: entry.key,
                counters: entry.counters.read(),
                flushed: entry.flushed.read(),
                flushed_at: entry.flushed_at.load(Relaxed),
            })
        });
        rows.push(SavedRow {
            key: UsageKey::new(pg_sys::InvalidOid, RowKind::Overflow, None),
            counters: (*SHARED).lost.read(),
            flushed: CounterValues::default(),
            flushed_at: 0,
        });
    }
    rows
}

/// Add saved rows back, at startup before any backend exists (so without the lock). A tenant that no longer fits
/// (`nile.max_tracked_tenants` was lowered) goes to its database's overflow row, as at run time, with its flushed part.
pub fn restore(rows: &[SavedRow]) {
    if !available() {
        return;
    }
    // SAFETY: the shared memory exists and nothing else uses it yet.
    unsafe {
        for row in rows {
            let c = &row.counters;
            let entry = if row.key.database == 0 {
                std::ptr::null_mut()
            } else {
                entry_for_new(&row.key)
            };
            if entry.is_null() {
                (*SHARED).lost.add(c, c.first_activity, c.last_activity);
                continue;
            }
            (*entry).counters.add(c, c.first_activity, c.last_activity);
            (*entry).flushed.add(&row.flushed, 0, 0);
            if row.flushed_at != 0 {
                (*entry).flushed_at.store(row.flushed_at, Relaxed);
            }
        }
    }
}

/// `copy` of every row of `database`, taken under the SHARED lock.
fn rows_of<T>(database: pg_sys::Oid, copy: impl Fn(&Entry) -> T) -> Vec<T> {
    let mut rows = Vec::new();
    if !available() {
        return rows;
    }
    let database = database.to_u32();
    // SAFETY: the shared memory exists; the table is scanned under the SHARED lock.
    unsafe {
        let _shared = Locked::acquire(pg_sys::LWLockMode::LW_SHARED);
        for_each_entry(|entry| {
            if entry.key.database == database {
                rows.push(copy(entry));
            }
        });
    }
    rows
}

/// A copy of every row of `database`, plus the cluster-wide lost row when it holds anything.
pub fn snapshot(database: pg_sys::Oid) -> Vec<(UsageKey, CounterValues)> {
    let mut rows = rows_of(database, |entry| (entry.key, entry.counters.read()));
    if available() {
        // SAFETY: the shared memory exists; the lost row is only ever added to with atomic instructions (or zeroed
        // by a reset, which a reader may see half done, as it may see any reset half done).
        let lost = unsafe { (*SHARED).lost.read() };
        if lost.statements > 0 {
            rows.push((
                UsageKey::new(pg_sys::InvalidOid, RowKind::Overflow, None),
                lost,
            ));
        }
    }
    rows
}

/// Every row of `database` with what of it the history already has, for a flush (see usage/history.rs).
pub(super) fn flush_view(database: pg_sys::Oid) -> Vec<FlushView> {
    rows_of(database, |entry| FlushView {
        key: entry.key,
        epoch: entry.epoch,
        current: entry.counters.read(),
        flushed: entry.flushed.read(),
        flushed_at: entry.flushed_at.load(Relaxed),
    })
}

/// Record that `values` of row `key` (the incarnation `epoch`) are now in the history, as of `at`. A row that was
/// reset since it was read is left alone. Cannot fail: called when a flush commits.
pub(super) fn mark_flushed(key: &UsageKey, epoch: u64, values: &CounterValues, at: i64) {
    if !available() {
        return;
    }
    // SAFETY: the shared memory exists; the row is found under the SHARED lock, and its flushed counters are written
    // only by the one transaction that holds the history table's lock for this database (usage/history.rs).
    unsafe {
        let _shared = Locked::acquire(pg_sys::LWLockMode::LW_SHARED);
        let entry = find(key);
        if !entry.is_null() && (*entry).epoch == epoch {
            (*entry).flushed.store(values);
            (*entry).flushed_at.store(at, Relaxed);
        }
    }
}

/// The databases that have a row with usage not yet in their history.
pub(super) fn databases_with_unflushed_usage() -> Vec<u32> {
    let mut databases = Vec::new();
    if !available() {
        return databases;
    }
    // SAFETY: the shared memory exists; the table is scanned under the SHARED lock.
    unsafe {
        let _shared = Locked::acquire(pg_sys::LWLockMode::LW_SHARED);
        for_each_entry(|entry| {
            let (c, f) = (&entry.counters, &entry.flushed);
            let unflushed = [
                (&c.statements, &f.statements),
                (&c.total_time_ns, &f.total_time_ns),
                (&c.cpu_user_ns, &f.cpu_user_ns),
                (&c.cpu_system_ns, &f.cpu_system_ns),
            ]
            .iter()
            .any(|(now, then)| now.load(Relaxed) != then.load(Relaxed));
            if unflushed && !databases.contains(&entry.key.database) {
                databases.push(entry.key.database);
            }
        });
    }
    databases
}

/// Remove the rows of `database` (only the tenant's row when `tenant` is given), and the rows of databases that no
/// longer exist (not in `live_databases`). Returns how many were removed.
pub(super) fn reset(
    database: pg_sys::Oid,
    tenant: Option<[u8; 16]>,
    live_databases: &[u32],
) -> u64 {
    let database = database.to_u32();
    remove_rows(
        |key| {
            let matches = key.database == database
                && match tenant {
                    Some(t) => key.kind() == RowKind::Tenant && key.tenant == t,
                    None => true,
                };
            matches || !live_databases.contains(&key.database)
        },
        tenant.is_none(),
    )
}

/// Remove every row of the databases for which `doomed` is true (dropped, or without the extension any more).
pub(super) fn forget_databases(doomed: impl Fn(u32) -> bool) -> u64 {
    remove_rows(|key| doomed(key.database), false)
}

/// Remove the rows whose key matches (and zero the lost row if asked); returns how many were removed.
fn remove_rows(matches: impl Fn(&UsageKey) -> bool, zero_lost: bool) -> u64 {
    if !available() {
        return 0;
    }
    // SAFETY: the shared memory exists; removal under the EXCLUSIVE lock, so no backend holds a pointer to a removed
    // row. Collect the keys first, then remove (dynahash allows removing the current element during a scan, but
    // collecting keeps this obviously correct).
    unsafe {
        let _exclusive = Locked::acquire(pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut doomed = Vec::new();
        for_each_entry(|entry| {
            if matches(&entry.key) {
                doomed.push(entry.key);
            }
        });
        for key in &doomed {
            pg_sys::hash_search(
                TABLE,
                (key as *const UsageKey).cast(),
                pg_sys::HASHACTION::HASH_REMOVE,
                std::ptr::null_mut(),
            );
            (*SHARED).all_rows -= 1;
            if key.kind() == RowKind::Tenant {
                (*SHARED).tenant_rows -= 1;
            }
        }
        if zero_lost {
            (*SHARED).lost.zero();
        }
        if !doomed.is_empty() || zero_lost {
            (*SHARED).generation.fetch_add(1, Relaxed);
        }
        doomed.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_percentiles() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(999), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(2_000), 3);
        assert_eq!(bucket_of(u64::MAX), HISTOGRAM_BUCKETS - 1);
        let mut values = CounterValues {
            statements: 100,
            max_time_ns: 50_000_000,
            ..Default::default()
        };
        // 90 statements of 1 ms, 10 of 40 ms.
        values.histogram[bucket_of(1_000_000)] = 90;
        values.histogram[bucket_of(40_000_000)] = 10;
        let p50 = values.percentile_ms(0.5).unwrap();
        let p95 = values.percentile_ms(0.95).unwrap();
        assert!((0.87..=1.15).contains(&p50), "p50 {p50}");
        assert!((35.0..=46.0).contains(&p95), "p95 {p95}");
        assert!(values.percentile_ms(0.999).unwrap() <= 50.0);
    }

    #[test]
    fn a_percentile_is_never_above_the_maximum_column() {
        // One statement per row, its time also the maximum: the percentile is clamped to exactly max_time_ms.
        let rounding = (1_000u64..200_000)
            .map(|i| i * 7_919)
            .find(|&ns| (ns as f64 / 1000.0) / 1000.0 > ns as f64 / 1_000_000.0);
        assert!(rounding.is_some(), "a time where the two divisions differ");
        for ns in (1_000u64..200_000).map(|i| i * 7_919) {
            let mut values = CounterValues {
                statements: 1,
                max_time_ns: ns,
                ..Default::default()
            };
            values.histogram[bucket_of(ns)] = 1;
            let max_ms = ns as f64 / 1_000_000.0;
            assert!(values.percentile_ms(0.99).unwrap() <= max_ms, "{ns} ns");
        }
    }
}

/// Nanoseconds as milliseconds, for the SQL columns.
pub(super) fn ms(ns: u64) -> f64 {
    ns as f64 / 1_000_000.0
}

/// A counter as a bigint column (saturating).
pub(super) fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The database this backend is connected to.
pub(super) fn this_database() -> pg_sys::Oid {
    // SAFETY: reads the backend's database id.
    unsafe { pg_sys::MyDatabaseId }
}
