//! context/tenant_cache — what this backend knows about each tenant's status, read straight from `nile.tenants`.
//!
//! The policy functions run once per scan (and per row for filters), so they must not run SQL. They ask this cache,
//! which reads a missing tenant through the primary-key index of `nile.tenants` directly (no SPI, no row-level
//! security, works inside parallel workers) and keeps it until `nile.tenants` changes: a statement trigger on that
//! table (see sql/tenants.sql) sends a relcache invalidation, which every backend processes before its next
//! statement, and the callback registered here empties the cache.

use crate::pg::backend_local::BackendLocal;
use crate::pg::errors::{NileCode, Problem};
use crate::pg::local_map::LocalMap;
use crate::pg::own_tables::{scan_key, NileTable};
use crate::pg::uuid_text::format_uuid;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TenantStatus {
    Active,
    Inactive,
    Deleted,
}

impl TenantStatus {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(TenantStatus::Active),
            "inactive" => Some(TenantStatus::Inactive),
            "deleted" => Some(TenantStatus::Deleted),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct TenantInfo {
    pub status: TenantStatus,
    pub name: String,
}

/// Where `nile.tenants` lives in this database, looked up once per invalidation.
#[derive(Clone, Copy)]
struct TenantsRelation {
    relid: pg_sys::Oid,
    pkey: pg_sys::Oid,
    name_attnum: i16,
    status_attnum: i16,
}

thread_local! {
    /// A thread-local, not a pg::backend_local static: a map with a random seed has no const constructor.
    static CACHE: RefCell<LocalMap<[u8; 16], TenantInfo>> = RefCell::new(LocalMap::default());
}
static RELATION: BackendLocal<Cell<Option<TenantsRelation>>> = BackendLocal::new(Cell::new(None));

pub(super) fn init() {
    // SAFETY: registering a callback during _PG_init; the callback never raises an ERROR.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_changed), pg_sys::Datum::from(0))
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let ours = RELATION.with(|r| r.get().map(|r| r.relid));
    if relid == pg_sys::InvalidOid || ours.is_none() || ours == Some(relid) {
        forget_everything();
    }
}

fn forget_everything() {
    CACHE.with(|c| c.borrow_mut().clear());
    RELATION.with(|r| r.set(None));
}

/// The tenant's status, or `None` if no such tenant exists. Cheap after the first call for a tenant.
#[inline]
pub fn status_of(id: &[u8; 16]) -> Option<TenantStatus> {
    process_pending_invalidations();
    if let Some(status) = CACHE.with(|c| c.borrow().get(id).map(|t| t.status)) {
        return Some(status);
    }
    lookup(id).map(|t| t.status)
}

/// Everything the cache knows about the tenant (reading it if needed).
pub(super) fn info_of(id: &[u8; 16]) -> Option<TenantInfo> {
    process_pending_invalidations();
    if let Some(info) = CACHE.with(|c| c.borrow().get(id).cloned()) {
        return Some(info);
    }
    lookup(id)
}

/// `"name" (uuid)` for messages, or just the uuid if the tenant is unknown.
pub(super) fn describe(id: &[u8; 16]) -> String {
    match info_of(id) {
        Some(info) => format!("\"{}\" ({})", info.name, format_uuid(id)),
        None => format_uuid(id),
    }
}

/// Apply invalidations other sessions have committed since this backend last looked, so that a tenant deactivated
/// or deleted a moment ago is seen as such at this session's next statement even inside a long transaction (they are
/// otherwise processed only at transaction start or when a new lock is taken). Cheap when none are pending: the
/// policy functions run once per statement. Not in parallel mode, where catalogs must stay as the leader saw them.
fn process_pending_invalidations() {
    if !crate::pg::unguarded::is_in_parallel_mode() {
        // SAFETY: a plain call into Postgres from a backend in a transaction.
        unsafe { pg_sys::AcceptInvalidationMessages() };
    }
}

fn lookup(id: &[u8; 16]) -> Option<TenantInfo> {
    let found = read_from_table(id);
    // In parallel mode the read used the statement's snapshot, which in REPEATABLE READ can be older than the last
    // invalidation: use it for this call, but never keep it.
    let keep = !crate::pg::unguarded::is_in_parallel_mode();
    if let (true, Some(info)) = (keep, &found) {
        CACHE.with(|c| c.borrow_mut().insert(*id, info.clone()));
    }
    found
}

fn tenants_relation() -> TenantsRelation {
    if let Some(rel) = RELATION.with(Cell::get) {
        return rel;
    }
    // SAFETY: syscache lookups with valid NUL-terminated names; missing_ok lookups return InvalidOid.
    let rel = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"nile".as_ptr(), true);
        let relid = if nsp == pg_sys::InvalidOid {
            nsp
        } else {
            pg_sys::get_relname_relid(c"tenants".as_ptr(), nsp)
        };
        if relid == pg_sys::InvalidOid {
            crate::pg::errors::raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "nile.tenants does not exist in this database",
                "Run CREATE EXTENSION nile_tenancy in this database.",
            );
        }
        TenantsRelation {
            relid,
            pkey: pg_sys::get_relname_relid(c"tenants_pkey".as_ptr(), nsp),
            name_attnum: pg_sys::get_attnum(relid, c"name".as_ptr()),
            status_attnum: pg_sys::get_attnum(relid, c"status".as_ptr()),
        }
    };
    if rel.pkey == pg_sys::InvalidOid || rel.name_attnum <= 0 || rel.status_attnum <= 0 {
        crate::pg::errors::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "nile.tenants has been altered: its primary key, name or status column is missing",
            "Reinstall the extension (DROP EXTENSION nile_tenancy CASCADE; CREATE EXTENSION nile_tenancy).",
        );
    }
    RELATION.with(|r| r.set(Some(rel)));
    rel
}

/// One index probe of `nile.tenants_pkey`, bypassing row-level security (this is the extension reading its own table).
fn read_from_table(id: &[u8; 16]) -> Option<TenantInfo> {
    let rel_info = tenants_relation();
    // The key must stay at a fixed address for the whole scan.
    let key_bytes: [u8; 16] = *id;
    // SAFETY: the key points at `key_bytes`, which outlives the scan.
    let mut key = unsafe {
        scan_key(
            1,
            pg_sys::BTEqualStrategyNumber,
            pg_sys::F_UUID_EQ,
            pg_sys::Datum::from(key_bytes.as_ptr()),
        )
    };
    // The newest committed state (and this transaction's own changes), so that a tenant deleted a moment ago is seen
    // as deleted (see own_tables).
    let table = NileTable::open_relid(rel_info.relid);
    table.find(
        Some(rel_info.pkey),
        std::slice::from_mut(&mut key),
        |values, nulls| {
            let text_at = |attnum: i16| -> Option<String> {
                let i = attnum as usize - 1;
                // SAFETY: a non-null text datum of the row, copied into a String here.
                (!nulls[i])
                    .then(|| unsafe { String::from_datum(values[i], false) })
                    .flatten()
            };
            let status = text_at(rel_info.status_attnum)
                .as_deref()
                .and_then(TenantStatus::parse);
            // A status outside the CHECK constraint cannot be stored; if it somehow is, deny access.
            Some(TenantInfo {
                status: status.unwrap_or(TenantStatus::Deleted),
                name: text_at(rel_info.name_attnum).unwrap_or_default(),
            })
        },
    )
}

/// Trigger function on `nile.tenants`: any change to a tenant invalidates every backend's cache at commit (and this
/// backend's at the next command).
#[pg_trigger]
fn tenants_changed<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    // SAFETY: the relation of a firing trigger is open and valid.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(trigger.relation()?.oid()) };
    Ok(None)
}

/// Raise unless tenant `id` exists (NT002) and is not deleted (NT004): what entering, signing for or binding to a
/// tenant needs. The message names only the id the caller passed: nothing about a tenant it may not use.
pub(super) fn require_usable_tenant(id: &[u8; 16]) {
    match status_of(id) {
        None => Problem::nile(
            NileCode::TenantNotFound,
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("tenant {} does not exist", format_uuid(id)),
        )
        .hint("Create it with nile.create_tenant(name, id => ...), or check the id.")
        .raise(),
        Some(TenantStatus::Deleted) => Problem::nile(
            NileCode::TenantDeleted,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("tenant {} has been deleted", format_uuid(id)),
        )
        .hint("A deleted tenant cannot be used; nile.reactivate_tenant() restores a soft-deleted tenant.")
        .raise(),
        Some(TenantStatus::Active | TenantStatus::Inactive) => {}
    }
}
