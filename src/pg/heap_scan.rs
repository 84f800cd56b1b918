//! pg/heap_scan — reading a table's rows without evaluating anything of anybody's: a plain heap scan under the calling
//! statement's snapshot, with no planner, no policies and no expressions.
//!
//! For the reads that must see every tenant's rows: enrolment's NULL-tenant, has-rows and missing-tenant checks
//! (src/tables/enrolment.rs) and `nile.tenant_storage()` (src/tenants/storage.rs). Run as a query, such a read would be
//! planned with the table owner's functions (index and statistics expressions, CHECK constraints) and would need
//! row-level security lifted, as the caller's rights (a superuser's) or as the owner's with `SECURITY_NOFORCE_RLS`,
//! under which the owner's code could read every tenant's rows of its other tables (issue 17). The tenant column is
//! read by attribute number; nothing else of a row is decoded but the varlena columns asked for.
//!
//! Locking: `AccessShareLock` on the table, held to the end of the transaction, as a `SELECT` takes.
//! Visibility: the calling statement's snapshot, or one that sees all the transaction has done (`Sees`).

use crate::pg::errors::raise;
use pgrx::prelude::*;
use std::ops::ControlFlow;

/// One visible row: its tenant column's value (`None` when NULL, or when no column was asked for) and its size in
/// bytes (its data without the tuple header, plus the uncompressed size of its values in `varlena_columns` that were
/// moved out to TOAST).
pub struct Row {
    pub tenant: Option<[u8; 16]>,
    pub bytes: i64,
}

/// Which rows a scan sees.
#[derive(Clone, Copy, PartialEq)]
pub enum Sees {
    /// What the calling statement sees (its snapshot): for a function called in a query.
    Statement,
    /// Everything this transaction has done so far, as the next SPI statement would (the rows a `CREATE TABLE … AS`
    /// being enrolled has just written included): for the DDL paths.
    Transaction,
}

/// Scan ordinary table `relid` itself (not its children), calling `visit` for each row it `sees`, until it returns
/// `Break`. `attnum` is the tenant column's number (0: none). Raises 0A000 for a table of another access method than
/// heap.
pub fn scan(
    relid: pg_sys::Oid,
    attnum: i16,
    varlena_columns: &[i32],
    sees: Sees,
    mut visit: impl FnMut(Row) -> ControlFlow<()>,
) {
    if sees == Sees::Transaction {
        // SAFETY: what SPI does before a statement: make this transaction's earlier changes visible and push a snapshot
        // that sees them (popped below; an error's abort pops it otherwise).
        unsafe {
            pg_sys::CommandCounterIncrement();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            pg_sys::UpdateActiveSnapshotCommandId();
        }
    }
    // SAFETY: the relation is opened with a lock held to the end of the transaction (it exists: the callers found it in
    // the catalogs of this transaction); the scan uses the active snapshot of the calling statement and is ended before
    // the relation is closed, also when `visit` breaks off; each tuple is read while the scan holds its page, and only
    // through the relation's own tuple descriptor; a uuid datum points to 16 bytes inside the tuple.
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        if (*rel).rd_tableam != pg_sys::GetHeapamTableAmRoutine() {
            let name = std::ffi::CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr())
                .to_string_lossy()
                .into_owned();
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("table \"{name}\" does not use the heap access method"),
                "nile_tenancy reads tenant tables with heap scans, so that no table owner's code runs; use the heap access method.",
            );
        }
        let desc = (*rel).rd_att;
        // The column must still be the uuid the caller found in the catalogs (its type cannot change under our lock).
        let column_ok = attnum <= 0
            || pgrx::PgTupleDesc::from_pg_unchecked(desc)
                .get((attnum - 1) as usize)
                .is_some_and(|a| a.atttypid == pg_sys::UUIDOID && !a.attisdropped);
        if !column_ok {
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "column {attnum} of relation with OID {} is not a uuid column",
                    relid.to_u32()
                ),
                "The table changed while nile_tenancy read it; run the command again.",
            );
        }
        let flags = pg_sys::ScanOptions::SO_TYPE_SEQSCAN
            | pg_sys::ScanOptions::SO_ALLOW_STRAT
            | pg_sys::ScanOptions::SO_ALLOW_SYNC
            | pg_sys::ScanOptions::SO_ALLOW_PAGEMODE;
        let scan = pg_sys::heap_beginscan(
            rel,
            pg_sys::GetActiveSnapshot(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            flags,
        );
        loop {
            pg_sys::check_for_interrupts!();
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let mut tenant = None;
            if attnum > 0 {
                let mut isnull = false;
                let datum = pg_sys::heap_getattr(tuple, attnum as i32, desc, &mut isnull);
                if !isnull {
                    let mut id = [0u8; 16];
                    std::ptr::copy_nonoverlapping(datum.cast_mut_ptr::<u8>(), id.as_mut_ptr(), 16);
                    tenant = Some(id);
                }
            }
            let mut bytes = (*tuple).t_len as i64 - (*(*tuple).t_data).t_hoff as i64;
            for &att in varlena_columns {
                let mut null = false;
                let value = pg_sys::heap_getattr(tuple, att, desc, &mut null);
                if !null && pgrx::varatt_is_1b_e(value.cast_mut_ptr()) {
                    bytes += pg_sys::toast_raw_datum_size(value) as i64;
                }
            }
            if visit(Row { tenant, bytes }).is_break() {
                break;
            }
        }
        pg_sys::heap_endscan(scan);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        if sees == Sees::Transaction {
            pg_sys::PopActiveSnapshot();
        }
    }
}
