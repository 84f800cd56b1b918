//! ddl/prefilter — the DDL event triggers' first look, without SPI, so that DDL on tables that have nothing to do
//! with tenancy costs a few catalog-cache lookups and index probes:
//! - `ddl_command_end`: which tables the command names, and whether any of them may concern tenancy (enrolled, in an
//!   inheritance tree, or with a tenant column). Every other command, and every statement this module does not
//!   resolve, gets the full check in `ddl/events.rs`.
//! - `sql_drop`: the dropped objects, read straight from `pg_event_trigger_dropped_objects()`: which dropped tables
//!   are in the registry or the exclusion list, and whether a `nile_tenant_*` policy is among them.

use crate::pg::own_tables::{scan_key, NileTable};
use pgrx::prelude::*;
use std::ffi::CStr;

/// Whether the DDL command of this event may concern tenancy. `false` only when the command names its tables in
/// a way resolved here and none of them may concern tenancy (see `table_may_concern_tenancy`).
///
/// # Safety
/// `data` is the `EventTriggerData` Postgres passed to a `ddl_command_end` event trigger.
pub(super) unsafe fn command_may_concern_tenancy(data: *const pg_sys::EventTriggerData) -> bool {
    // SAFETY (caller): data and its parse tree are valid for the duration of the trigger call.
    match unsafe { tables_named_by((*data).parsetree) } {
        Some(relids) => relids.into_iter().any(table_may_concern_tenancy),
        None => true,
    }
}

/// The tables a DDL statement creates or changes, when it says so without ambiguity: `CREATE [FOREIGN] TABLE`,
/// `CREATE TABLE ... AS` / `SELECT ... INTO`, `ALTER [FOREIGN] TABLE` (not its `RENAME` and `SET SCHEMA` forms, where
/// the name in the statement no longer names the table), `ALTER POLICY`, and `CREATE SCHEMA` without elements.
/// `None` for anything else.
///
/// # Safety
/// `parsetree` is NULL or a valid parse node of the command being run.
unsafe fn tables_named_by(parsetree: *mut pg_sys::Node) -> Option<Vec<pg_sys::Oid>> {
    if parsetree.is_null() {
        return None;
    }
    // SAFETY (caller): the node is valid and its tag tells its type; each cast below matches the tag it is under.
    unsafe {
        match (*parsetree).type_ {
            pg_sys::NodeTag::T_CreateStmt => {
                created_table((*parsetree.cast::<pg_sys::CreateStmt>()).relation)
            }
            pg_sys::NodeTag::T_CreateForeignTableStmt => created_table(
                (*parsetree.cast::<pg_sys::CreateForeignTableStmt>())
                    .base
                    .relation,
            ),
            pg_sys::NodeTag::T_CreateTableAsStmt => {
                let into = (*parsetree.cast::<pg_sys::CreateTableAsStmt>()).into;
                if into.is_null() {
                    None
                } else {
                    created_table((*into).rel)
                }
            }
            pg_sys::NodeTag::T_AlterTableStmt => {
                existing_table((*parsetree.cast::<pg_sys::AlterTableStmt>()).relation)
            }
            pg_sys::NodeTag::T_AlterPolicyStmt => {
                existing_table((*parsetree.cast::<pg_sys::AlterPolicyStmt>()).table)
            }
            pg_sys::NodeTag::T_CreateSchemaStmt => {
                let elements = (*parsetree.cast::<pg_sys::CreateSchemaStmt>()).schemaElts;
                elements.is_null().then(Vec::new)
            }
            _ => None,
        }
    }
}

/// The table a `CREATE` statement made: looked up in the namespace the statement created it in (the same rule
/// Postgres applied a moment ago), not by a search-path lookup that a temporary table of the same name would win.
///
/// # Safety
/// `relation` is NULL or a valid `RangeVar` of the statement.
unsafe fn created_table(relation: *mut pg_sys::RangeVar) -> Option<Vec<pg_sys::Oid>> {
    if relation.is_null() {
        return None;
    }
    // SAFETY (caller): relation is valid; the namespace exists (the statement just created a table in it), and
    // get_relname_relid is a catalog-cache lookup that returns InvalidOid when there is no such table (IF NOT EXISTS).
    let relid = unsafe {
        let namespace = pg_sys::RangeVarGetCreationNamespace(relation);
        pg_sys::get_relname_relid((*relation).relname, namespace)
    };
    Some(found(relid))
}

/// The table an `ALTER` statement changed, resolved as the statement resolved it (it holds the lock on it).
///
/// # Safety
/// `relation` is NULL or a valid `RangeVar` of the statement.
unsafe fn existing_table(relation: *mut pg_sys::RangeVar) -> Option<Vec<pg_sys::Oid>> {
    if relation.is_null() {
        return None;
    }
    // SAFETY (caller): relation is valid; with RVR_MISSING_OK a missing schema or table (ALTER TABLE IF EXISTS)
    // gives InvalidOid; NoLock because the statement already locked the table it changed.
    let relid = unsafe {
        pg_sys::RangeVarGetRelidExtended(
            relation,
            pg_sys::NoLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    };
    Some(found(relid))
}

fn found(relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    if relid == pg_sys::InvalidOid {
        Vec::new()
    } else {
        vec![relid]
    }
}

/// Whether a table may concern tenancy: an ordinary, partitioned or foreign table that is a partition, has children
/// or a parent, is enrolled, or has a tenant column (`tenant_id`, or the tenant column name of an enrolled table).
/// Errs on the side of `true`: anything it cannot look up cheaply goes to the full check.
fn table_may_concern_tenancy(relid: pg_sys::Oid) -> bool {
    // SAFETY: a relcache lookup of a table the running statement has locked; the entry is only read before it is
    // released, and a missing entry is handled.
    let in_a_tree = unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return false;
        }
        let form = (*rel).rd_rel;
        let relkind = (*form).relkind as u8;
        let is_table = matches!(
            relkind,
            pg_sys::RELKIND_RELATION
                | pg_sys::RELKIND_PARTITIONED_TABLE
                | pg_sys::RELKIND_FOREIGN_TABLE
        );
        let in_a_tree = (*form).relispartition || (*form).relhassubclass;
        pg_sys::RelationClose(rel);
        if !is_table {
            return false;
        }
        in_a_tree
    };
    in_a_tree
        || has_column(relid, c"tenant_id".as_ptr())
        || has_parent(relid)
        || registry_concerns(relid).unwrap_or(true)
}

/// Whether the table has a (not dropped) column of that name: one catalog-cache lookup.
fn has_column(relid: pg_sys::Oid, name: *const std::ffi::c_char) -> bool {
    // SAFETY: callers pass a NUL-terminated name.
    unsafe { pg_sys::get_attnum(relid, name) > 0 }
}

/// Whether the table inherits from another (one probe of `pg_inherits_relid_seqno_index`).
fn has_parent(relid: pg_sys::Oid) -> bool {
    // SAFETY: syscache lookups with valid NUL-terminated names; the catalog scan reads pg_inherits with the catalog
    // snapshot, the tuple is not used after systable_endscan, and every opened object is closed on the normal path
    // (on an ERROR the resource owner releases them).
    unsafe {
        let catalog = pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE);
        let inherits = pg_sys::get_relname_relid(c"pg_inherits".as_ptr(), catalog);
        let by_child =
            pg_sys::get_relname_relid(c"pg_inherits_relid_seqno_index".as_ptr(), catalog);
        if inherits == pg_sys::InvalidOid || by_child == pg_sys::InvalidOid {
            return true;
        }
        let heap = pg_sys::table_open(inherits, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        // pg_inherits.inhrelid is its first column.
        pg_sys::ScanKeyInit(
            &mut key,
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::RegProcedure::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(relid),
        );
        let scan =
            pg_sys::systable_beginscan(heap, by_child, true, std::ptr::null_mut(), 1, &mut key);
        let found = !pg_sys::systable_getnext(scan).is_null();
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(heap, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        found
    }
}

/// Whether `index` of `table` finds a row whose oid column `attnum` is `oid` (one probe).
fn has_oid(table: &NileTable, index: pg_sys::Oid, attnum: i16, oid: pg_sys::Oid) -> bool {
    // SAFETY: a scan key on an oid-like column (oid, regclass) with a by-value argument.
    let mut key = unsafe {
        scan_key(
            attnum,
            pg_sys::BTEqualStrategyNumber,
            pg_sys::F_OIDEQ,
            pg_sys::Datum::from(oid),
        )
    };
    table
        .find(Some(index), std::slice::from_mut(&mut key), |_, _| Some(()))
        .is_some()
}

/// The `name` column `attnum` of the first row `index` finds with `keys`: `None` if no row, `Some(None)` if NULL.
fn first_name(
    table: &NileTable,
    index: pg_sys::Oid,
    keys: &mut [pg_sys::ScanKeyData],
    attnum: i16,
) -> Option<Option<pg_sys::NameData>> {
    table.find(Some(index), keys, |values, nulls| {
        let i = attnum as usize - 1;
        // SAFETY: a non-null `name` datum points at a NameData inside the row, copied out here.
        Some(
            (i < values.len() && !nulls[i])
                .then(|| unsafe { *values[i].cast_mut_ptr::<pg_sys::NameData>() }),
        )
    })
}

/// `nile.tenant_tables`: is a table enrolled, or has it a column named like an enrolled table's tenant column?
/// `None` when the registry is not as expected.
fn registry_concerns(relid: pg_sys::Oid) -> Option<bool> {
    let registry = NileTable::open(c"tenant_tables")?;
    let by_relid = registry.index(c"tenant_tables_pkey")?;
    let by_column = registry.index(c"tenant_tables_tenant_column_idx")?;
    let relid_attnum = registry.attnum(c"relid")?;
    let column_attnum = registry.attnum(c"tenant_column")?;
    if has_oid(&registry, by_relid, relid_attnum, relid) {
        return Some(true);
    }
    // The table has no tenant_id column (checked before). Walk the other distinct tenant column names in index order
    // (there are few, usually none), one probe each, and look each up among the table's columns. The two ranges
    // (names before tenant_id, names after it) keep the scans off the many tenant_id entries.
    let tenant_id = name_data(c"tenant_id");
    for (mut after, before) in [(None, Some(tenant_id)), (Some(tenant_id), None)] {
        loop {
            let mut keys = Vec::with_capacity(2);
            // SAFETY: the keys point at `after` and `before`, which are not changed while the scan runs.
            unsafe {
                if let Some(name) = &after {
                    keys.push(name_key(
                        column_attnum,
                        pg_sys::BTGreaterStrategyNumber,
                        pg_sys::F_NAMEGT,
                        name,
                    ));
                }
                if let Some(name) = &before {
                    keys.push(name_key(
                        column_attnum,
                        pg_sys::BTLessStrategyNumber,
                        pg_sys::F_NAMELT,
                        name,
                    ));
                }
            }
            let Some(name) = first_name(&registry, by_column, &mut keys, column_attnum) else {
                break;
            };
            let name = name?;
            // NameData is always NUL-terminated.
            if has_column(relid, name.data.as_ptr()) {
                return Some(true);
            }
            after = Some(name);
        }
    }
    Some(false)
}

/// A `name` value.
fn name_data(text: &CStr) -> pg_sys::NameData {
    let mut name: pg_sys::NameData = pg_sys::NameData {
        data: [0; pg_sys::NAMEDATALEN as usize],
    };
    // SAFETY: namestrcpy writes at most NAMEDATALEN bytes, NUL-terminated, into `name`.
    unsafe { pg_sys::namestrcpy(&mut name, text.as_ptr()) };
    name
}

/// A scan key comparing a `name` column with `name`.
///
/// # Safety
/// `name` must not move or change while a scan uses the key.
unsafe fn name_key(
    attnum: i16,
    strategy: u32,
    procedure: u32,
    name: &pg_sys::NameData,
) -> pg_sys::ScanKeyData {
    // SAFETY (caller): the pointer stays valid for the scan.
    unsafe {
        scan_key(
            attnum,
            strategy,
            procedure,
            pg_sys::Datum::from(std::ptr::from_ref(name)),
        )
    }
}

/// What a `sql_drop` event dropped, as far as the triggers care.
pub(super) struct Dropped {
    /// Dropped tables that were enrolled or excluded (their bookkeeping must go).
    pub registered_tables: Vec<pg_sys::Oid>,
    /// Whether a policy named `nile_tenant_*` was dropped (the full check decides whether its table stays).
    pub tenant_policy: bool,
    /// Whether a constraint named `nile_tenant_fk` was dropped (likewise).
    pub tenant_fk: bool,
    /// Whether an index named like the enrolment's (`nile_<table>_<column>_idx`) was dropped (likewise).
    pub tenant_index: bool,
}

/// The dropped objects of this `sql_drop` event.
pub fn dropped() -> Dropped {
    let mut tables = Vec::new();
    let mut tenant_policy = false;
    let mut tenant_fk = false;
    let mut tenant_index = false;
    for object in dropped_objects() {
        match object.object_type.as_str() {
            "table" | "foreign table"
                if object.classid == pg_sys::RelationRelationId && object.objsubid == 0 =>
            {
                tables.push(object.objid)
            }
            // The identity is "<policy name, quoted if needed> on <table>".
            "policy" => {
                tenant_policy |= object
                    .identity
                    .trim_start_matches('"')
                    .starts_with("nile_tenant_")
            }
            // The identity is "<constraint name> on <table>".
            "table constraint" => tenant_fk |= object.identity.starts_with("nile_tenant_fk on "),
            // The identity is "<schema>.<index>", each quoted if needed.
            "index" => {
                let name = object.identity.rsplit('.').next().unwrap_or_default();
                let name = name.trim_matches('"');
                tenant_index |= name.starts_with("nile_") && name.ends_with("_idx");
            }
            _ => {}
        }
    }
    Dropped {
        registered_tables: registered_among(tables),
        tenant_policy,
        tenant_fk,
        tenant_index,
    }
}

/// The tables among `tables` that are in `nile.tenant_tables` or `nile.excluded_tables` (one probe each); all of them
/// when the tables are not as expected.
fn registered_among(tables: Vec<pg_sys::Oid>) -> Vec<pg_sys::Oid> {
    if tables.is_empty() {
        return tables;
    }
    let probe = |table: &CStr, pkey: &CStr| -> Option<Box<dyn Fn(pg_sys::Oid) -> bool>> {
        let opened = NileTable::open(table)?;
        let index = opened.index(pkey)?;
        let attnum = opened.attnum(c"relid")?;
        Some(Box::new(move |relid| {
            has_oid(&opened, index, attnum, relid)
        }))
    };
    match (
        probe(c"tenant_tables", c"tenant_tables_pkey"),
        probe(c"excluded_tables", c"excluded_tables_pkey"),
    ) {
        (Some(enrolled), Some(excluded)) => tables
            .into_iter()
            .filter(|relid| enrolled(*relid) || excluded(*relid))
            .collect(),
        _ => tables,
    }
}

struct DroppedObject {
    classid: pg_sys::Oid,
    objid: pg_sys::Oid,
    objsubid: i32,
    object_type: String,
    identity: String,
}

/// The rows of `pg_event_trigger_dropped_objects()`, by calling the function directly (it materializes a tuple
/// store): what the SQL function returns, without planning and running a query.
fn dropped_objects() -> Vec<DroppedObject> {
    // Columns of pg_event_trigger_dropped_objects(), numbered from 1.
    const CLASSID: usize = 1;
    const OBJID: usize = 2;
    const OBJSUBID: usize = 3;
    const OBJECT_TYPE: usize = 7;
    const OBJECT_IDENTITY: usize = 10;
    let mut objects = Vec::new();
    // SAFETY: a materialize-mode set-returning function call set up as the executor sets it up (call info with the
    // function's FmgrInfo, so that it can find its result type; a ReturnSetInfo allowing materialize mode with an
    // expression context whose per-query memory holds the result). Postgres raises an ERROR unless this is a sql_drop
    // event trigger (we are one). The tuple store and its descriptor are read only while they exist and are freed
    // with the expression context; every datum is copied into Rust values before that.
    unsafe {
        let mut flinfo: pg_sys::FmgrInfo = std::mem::zeroed();
        pg_sys::fmgr_info(
            pg_sys::Oid::from(pg_sys::F_PG_EVENT_TRIGGER_DROPPED_OBJECTS),
            &mut flinfo,
        );
        let econtext = pg_sys::CreateStandaloneExprContext();
        let mut rsinfo: pg_sys::ReturnSetInfo = std::mem::zeroed();
        rsinfo.type_ = pg_sys::NodeTag::T_ReturnSetInfo;
        rsinfo.econtext = econtext;
        rsinfo.allowedModes = pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32;
        rsinfo.returnMode = pg_sys::SetFunctionReturnMode::SFRM_ValuePerCall;
        let mut fcinfo: pg_sys::FunctionCallInfoBaseData = std::mem::zeroed();
        fcinfo.flinfo = &mut flinfo;
        fcinfo.resultinfo = std::ptr::from_mut(&mut rsinfo).cast();
        fcinfo.nargs = 0;
        pg_sys::pg_event_trigger_dropped_objects(&mut fcinfo);
        let store = rsinfo.setResult;
        let desc = rsinfo.setDesc;
        if !store.is_null() && !desc.is_null() {
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
            while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
                pg_sys::slot_getsomeattrs_int(slot, OBJECT_IDENTITY as i32);
                let value = |column: usize| {
                    let i = column - 1;
                    (!*(*slot).tts_isnull.add(i)).then(|| *(*slot).tts_values.add(i))
                };
                let oid = |column: usize| {
                    value(column)
                        .map_or(pg_sys::InvalidOid, |d| pg_sys::Oid::from(d.value() as u32))
                };
                let text = |column: usize| {
                    value(column)
                        .and_then(|datum| String::from_datum(datum, false))
                        .unwrap_or_default()
                };
                objects.push(DroppedObject {
                    classid: oid(CLASSID),
                    objid: oid(OBJID),
                    objsubid: value(OBJSUBID).map_or(0, |d| d.value() as i32),
                    object_type: text(OBJECT_TYPE),
                    identity: text(OBJECT_IDENTITY),
                });
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::tuplestore_end(store);
        }
        pg_sys::FreeExprContext(econtext, true);
    }
    objects
}
