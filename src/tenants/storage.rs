//! tenants/storage — one tenant table's rows and bytes per tenant, for `nile.tenant_storage()` (sql/usage.sql).
//!
//! Counting every tenant's rows needs every row, which the tenant policies hide from everybody but the admin context;
//! and a query over the table would be planned with its owner's functions (index and statistics expressions, CHECK
//! constraints) and, as a SECURITY DEFINER caller's, with the superuser's rights (issue 17, finding 2). So the table is
//! read with a plain heap scan (src/pg/heap_scan.rs): no planner, no policies, no expression of anybody's is evaluated.

use crate::pg::errors::{raise, require_not_null};
use crate::pg::heap_scan;
use crate::pg::privilege::{as_extension_owner, require_role};
use crate::pg::spi_util::query_value;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// `nile._tenant_table_storage(tbl regclass, only_tenant uuid) RETURNS TABLE(tenant_id uuid, row_count bigint,
/// bytes bigint)`: per tenant (or only `only_tenant`), the rows of enrolled table `tbl` itself (not its children) and
/// their bytes: each row's data without its tuple header, plus the uncompressed size of the values moved out to TOAST.
/// Called by `nile.tenant_storage()`; EXECUTE is revoked from PUBLIC.
#[pg_extern(volatile, parallel_unsafe, name = "_tenant_table_storage")]
fn tenant_table_storage(
    tbl: Option<pg_sys::Oid>,
    only_tenant: Option<Uuid>,
) -> TableIterator<
    'static,
    (
        name!(tenant_id, Uuid),
        name!(row_count, i64),
        name!(bytes, i64),
    ),
> {
    require_role("nile_admin", "nile.tenant_storage()");
    let relid = require_not_null(tbl, "tbl");
    let attnum = as_extension_owner(|| {
        query_value::<i16>(
            "SELECT a.attnum FROM nile.tenant_tables e
             JOIN pg_attribute a ON a.attrelid = e.relid AND a.attname = e.tenant_column AND NOT a.attisdropped
             JOIN pg_class c ON c.oid = e.relid
             WHERE e.relid = $1::oid::regclass AND c.relkind = 'r' AND a.atttypid = 'uuid'::regtype",
            &[relid.into()],
        )
    });
    let Some(attnum) = attnum else {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("relation with OID {} is not an enrolled ordinary tenant table with a uuid tenant column", relid.to_u32()),
            "nile.tenant_storage() lists every tenant table; nile.verify() reports the ones that drifted.",
        );
    };
    // The columns whose values may have moved out to TOAST.
    let varlena_columns: Vec<i32> = as_extension_owner(|| {
        query_value::<Vec<i32>>(
            "SELECT coalesce(array_agg(attnum::int4 ORDER BY attnum), '{}') FROM pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attlen = -1",
            &[relid.into()],
        )
    })
    .unwrap_or_default();
    let only = only_tenant.map(|u| *u.as_bytes());
    let per_tenant = scan(relid, attnum, &varlena_columns, only);
    TableIterator::new(
        per_tenant
            .into_iter()
            .map(|(id, (rows, bytes))| (Uuid::from_bytes(id), rows, bytes)),
    )
}

/// (rows, bytes) per tenant id, from a heap scan of `relid` (src/pg/heap_scan.rs).
fn scan(
    relid: pg_sys::Oid,
    attnum: i16,
    varlena_columns: &[i32],
    only: Option<[u8; 16]>,
) -> BTreeMap<[u8; 16], (i64, i64)> {
    let mut per_tenant: BTreeMap<[u8; 16], (i64, i64)> = BTreeMap::new();
    heap_scan::scan(
        relid,
        attnum,
        varlena_columns,
        heap_scan::Sees::Statement,
        |row| {
            if let Some(id) = row.tenant.filter(|id| only.is_none_or(|o| o == *id)) {
                let entry = per_tenant.entry(id).or_insert((0, 0));
                entry.0 += 1;
                entry.1 += row.bytes;
            }
            ControlFlow::Continue(())
        },
    );
    per_tenant
}
