//! ddl/events — the DDL event triggers that keep tenant tables protected as the schema evolves.
//!
//! `nile_ddl_command_end` (event `ddl_command_end`) looks at every table a DDL command created or changed:
//! - a table that is, or is below, a tenant table: new partitions and inheritance children are protected and
//!   registered at once, detached ones stay protected as tenant tables of their own, and the table must still be
//!   sound afterwards (row-level security enabled and forced, the four `nile_tenant_*` policies as generated, the
//!   tenant column present) or the command is refused. A renamed tenant column is followed in the registry.
//! - any other table with a tenant column (`tenant_id`, or the column name of an enrolled table) is enrolled when
//!   `nile.auto_enable` is on, and named in a WARNING when it is off; tables in `nile.excluded_tables` are left alone.
//!
//! `nile_sql_drop` (event `sql_drop`) removes dropped tables from the registry and refuses to drop a `nile_tenant_*`
//! policy of a tenant table that stays. The deliberate way out is `nile.disable_tenancy()`.
//!
//! The extension's own DDL (enrollment, repair, disabling) runs inside `own_ddl`, which the triggers skip. They also
//! skip a superuser's DDL while `row_security` is off, which is how `pg_dump` scripts and `pg_restore` run: a restore
//! recreates the policies and the registry itself (the registry's rows are in the dump).

use super::prefilter::{self, command_may_concern_tenancy};
use crate::pg::errors::{OrInternal, Problem};
use crate::pg::privilege::{as_extension_owner, with_safe_search_path};
use crate::pg::spi_util::{execute, first_value, required_column, saved_plan_column};
use crate::settings;
use crate::tables::enrolment::{self, check_can_enroll, table_facts, table_tree};
use crate::tables::own_ddl::{in_own_ddl, own_ddl};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, SpiClient};
use pgrx::{PgBuiltInOids, PgOid, PgTryBuilder};
use std::panic::AssertUnwindSafe;

/// Whether the triggers leave this event alone: the extension's own DDL, or a restore. `pg_dump` scripts and
/// `pg_restore` set `row_security = off`, and restoring a database with nile_tenancy takes a superuser (`CREATE
/// EXTENSION` does); a superuser can switch the triggers off anyway, so nobody gains a way around them.
fn skip_event() -> bool {
    // SAFETY: reads a GUC variable of this backend and checks the current user's catalog entry.
    in_own_ddl() || unsafe { !pg_sys::row_security && pg_sys::superuser() }
}

/// Raise 39P01 unless Postgres called us as an event trigger.
unsafe fn require_event_trigger_call(fcinfo: pg_sys::FunctionCallInfo, function: &str) {
    // SAFETY (caller): fcinfo is the valid call info Postgres passed in; context is NULL or a valid Node.
    let context = unsafe { (*fcinfo).context };
    let is_event_trigger =
        !context.is_null() && unsafe { (*context).type_ } == pg_sys::NodeTag::T_EventTriggerData;
    if !is_event_trigger {
        Problem::new(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            format!("{function} can only be called as an event trigger"),
        )
        .raise();
    }
}

/// Version-1 call info for a C function declared in SQL (sql/ddl_triggers.sql).
macro_rules! function_info_v1 {
    ($finfo:ident) => {
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

function_info_v1!(pg_finfo_nile_ddl_command_end);
function_info_v1!(pg_finfo_nile_sql_drop);

/// `nile._ddl_command_end() RETURNS event_trigger`.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn nile_ddl_command_end(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: Postgres passes a valid fcinfo.
    unsafe { require_event_trigger_call(fcinfo, "nile._ddl_command_end()") };
    // SAFETY: require_event_trigger_call checked that the context is the EventTriggerData of this event.
    let data = unsafe { (*fcinfo).context.cast::<pg_sys::EventTriggerData>() };
    // SAFETY: the parse tree of the command that just ran; its tag tells its type.
    unsafe {
        let tree = (*data).parsetree;
        if !tree.is_null() && (*tree).type_ == pg_sys::NodeTag::T_CreateCastStmt {
            crate::tables::fk_validation::refuse_function_cast_to_uuid(tree.cast());
            return pg_sys::Datum::from(0);
        }
    }
    // SAFETY: as above.
    if !skip_event() && unsafe { command_may_concern_tenancy(data) } {
        with_safe_search_path(|| {
            Spi::connect_mut(|client| {
                for relid in touched_tables(client) {
                    reconcile(client, relid);
                }
            })
        });
    }
    pg_sys::Datum::from(0)
}

/// `nile._sql_drop() RETURNS event_trigger`.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn nile_sql_drop(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: Postgres passes a valid fcinfo.
    unsafe { require_event_trigger_call(fcinfo, "nile._sql_drop()") };
    let dropped = prefilter::dropped();
    let check_dropped =
        (dropped.tenant_policy || dropped.tenant_fk || dropped.tenant_index) && !skip_event();
    if check_dropped || !dropped.registered_tables.is_empty() {
        with_safe_search_path(|| {
            Spi::connect_mut(|client| {
                if check_dropped {
                    refuse_dropped_tenant_objects(client);
                }
                forget_tables(client, dropped.registered_tables);
            })
        });
    }
    pg_sys::Datum::from(0)
}

/// Whether the `pg_attribute` row `a` is a tenant column: named `tenant_id`, or like the tenant column of an enrolled
/// table (looked up by index).
macro_rules! is_tenant_column {
    () => {
        "(a.attname = 'tenant_id' OR EXISTS (SELECT 1 FROM nile.tenant_tables t WHERE t.tenant_column = a.attname))"
    };
}

/// Tables that the command created or changed, directly or through one of their policies or columns.
const TOUCHED_TABLES: &str = "SELECT DISTINCT CASE WHEN c.classid = 'pg_policy'::regclass
                                                THEN (SELECT polrelid FROM pg_policy WHERE oid = c.objid)
                                                ELSE c.objid END
                              FROM pg_event_trigger_ddl_commands() c
                              WHERE c.classid IN ('pg_class'::regclass, 'pg_policy'::regclass) AND NOT c.in_extension";

/// Whether a table may concern tenancy: an ordinary, partitioned or foreign table that is enrolled, in an inheritance
/// tree, or has a tenant column. Every lookup is by index.
const MAY_CONCERN_TENANCY: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = $1 AND k.relkind IN ('r', 'p', 'f'))
        AND (EXISTS (SELECT 1 FROM nile.tenant_tables t WHERE t.relid = $1::regclass)
             OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = $1)
             OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = $1)
             OR EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND ",
    is_tenant_column!(),
    "))"
);

/// The tables a DDL command created or changed that may concern tenancy: the two queries (each planned once per
/// backend) that a DDL command on an unrelated table costs.
fn touched_tables(client: &mut SpiClient<'_>) -> Vec<pg_sys::Oid> {
    let touched: Vec<pg_sys::Oid> =
        saved_plan_column::<pg_sys::Oid>(client, TOUCHED_TABLES, false, &[], &[])
            .into_iter()
            .flatten()
            .collect();
    touched
        .into_iter()
        .filter(|relid| {
            saved_plan_column::<bool>(
                client,
                MAY_CONCERN_TENANCY,
                false,
                &[PgOid::BuiltIn(PgBuiltInOids::OIDOID)],
                &[(*relid).into()],
            )
            .first()
            .copied()
            .flatten()
            .unwrap_or(false)
        })
        .collect()
}

/// Bring one created or changed table in line with its tenant tree, or enroll it.
fn reconcile(client: &mut SpiClient<'_>, relid: pg_sys::Oid) {
    match enrolled_root(client, relid) {
        Some(root) => {
            adopt_members(client, root);
            follow_renamed_column(client, relid);
            refuse_unprotected(client, relid, root);
        }
        None => {
            enroll_if_tenant_table(client, relid);
            // Tenant tables that became partitions or children of this table, which is not a tenant table (`ALTER
            // TABLE parent ATTACH PARTITION t` is reported for the parent only): reading it would return their rows.
            for (child, root) in registered_children(client, relid) {
                refuse_unprotected(client, child, root);
            }
        }
    }
}

/// Enrolled tables directly below `relid`, each with its root.
fn registered_children(
    client: &SpiClient<'_>,
    relid: pg_sys::Oid,
) -> Vec<(pg_sys::Oid, pg_sys::Oid)> {
    crate::pg::spi_util::select(
        client,
        "SELECT t.relid::oid, coalesce(t.parent, t.relid)::oid
         FROM pg_inherits i JOIN nile.tenant_tables t ON t.relid::oid = i.inhrelid
         WHERE i.inhparent = $1",
        None,
        &[relid.into()],
    )
    .map(|row| {
        (
            required_column::<pg_sys::Oid>(&row, 1),
            required_column::<pg_sys::Oid>(&row, 2),
        )
    })
    .collect()
}

/// The enrolled table at the top of `relid`'s tenant tree: the root of the highest enrolled table among `relid` and
/// the tables it inherits from (a tenant table that becomes a partition or child of another joins that one's tree).
fn enrolled_root(client: &SpiClient<'_>, relid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    first_value::<pg_sys::Oid>(
        client,
        "WITH RECURSIVE up(relid, level) AS (
             SELECT $1::oid, 0
             UNION SELECT i.inhparent, up.level + 1 FROM pg_inherits i JOIN up ON i.inhrelid = up.relid)
         SELECT coalesce(t.parent, t.relid)::oid
         FROM up JOIN nile.tenant_tables t ON t.relid = up.relid::regclass
         ORDER BY up.level DESC LIMIT 1",
        &[relid.into()],
    )
}

/// Protect and register every table below `root` that is not registered under it yet (new partitions, attached
/// tables, inheritance children); a table registered under `root` that is no longer below it (detached, or no longer
/// inheriting) stays protected as a tenant table of its own.
fn adopt_members(client: &mut SpiClient<'_>, root: pg_sys::Oid) {
    let column = first_value::<String>(
        client,
        "SELECT tenant_column::text FROM nile.tenant_tables WHERE relid = $1::oid::regclass",
        &[root.into()],
    )
    .unwrap_or_else(|| "tenant_id".into());
    let col = quote_identifier(&column);
    let registered: Vec<pg_sys::Oid> = crate::pg::spi_util::select(client, "SELECT relid::oid FROM nile.tenant_tables WHERE relid = $1::oid::regclass OR parent = $1::oid::regclass",
            None,
            &[root.into()])
        .map(|row| required_column::<pg_sys::Oid>(&row, 1))
        .collect();
    let tree = table_tree(client, root);
    if let Some(foreign) = &tree.foreign {
        Problem::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "foreign table {foreign} cannot be a partition or child of tenant table {}",
                regclass_text(client, root)
            ),
        )
        .detail("Row-level security cannot protect foreign tables, so its rows would be visible to every tenant.")
        .hint("Keep foreign tables out of tenant tables' partitions and inheritance trees.")
        .raise();
    }
    let newcomers: Vec<_> = tree
        .members
        .into_iter()
        .filter(|m| !registered.contains(&m.relid))
        .collect();
    as_extension_owner(|| {
        own_ddl(|| {
            for member in &newcomers {
                enrolment::protect_member(client, member, &column, &col);
            }
            enrolment::register(client, root, &newcomers, &column);
            // Registered under root but no longer below it (detached): the top of what was detached is a tenant table
            // of its own now, and what is below it moves under it.
            execute(
                client,
                "WITH RECURSIVE down(relid) AS (
                     SELECT $1::oid UNION SELECT i.inhrelid FROM pg_inherits i JOIN down d ON i.inhparent = d.relid),
                 orphans AS (
                     SELECT relid::oid AS relid FROM nile.tenant_tables
                     WHERE parent = $1::oid::regclass AND relid::oid NOT IN (SELECT relid FROM down)),
                 up(start, relid, level) AS (
                     SELECT relid, relid, 0 FROM orphans
                     UNION SELECT up.start, i.inhparent, up.level + 1 FROM pg_inherits i JOIN up ON i.inhrelid = up.relid),
                 tops AS (
                     SELECT DISTINCT ON (start) start, relid AS top FROM up
                     WHERE relid IN (SELECT relid FROM orphans) ORDER BY start, level DESC)
                 UPDATE nile.tenant_tables t
                 SET parent = CASE WHEN tops.top = tops.start THEN NULL ELSE tops.top::regclass END
                 FROM tops WHERE t.relid::oid = tops.start",
                &[root.into()],
            );
        })
    });
}

/// `ALTER TABLE ... RENAME COLUMN` of the tenant column: the policies follow the column by number, the registry
/// follows it here.
fn follow_renamed_column(client: &mut SpiClient<'_>, relid: pg_sys::Oid) {
    let renamed_to = first_value::<String>(
        client,
        "SELECT a.attname::text
         FROM nile.tenant_tables t
         JOIN pg_policy p ON p.polrelid = t.relid AND p.polname = 'nile_tenant_select'
         JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid
                         AND d.refclassid = 'pg_class'::regclass AND d.refobjid = t.relid AND d.refobjsubid > 0
         JOIN pg_attribute a ON a.attrelid = t.relid AND a.attnum = d.refobjsubid AND NOT a.attisdropped
         WHERE t.relid = $1::oid::regclass AND a.attname <> t.tenant_column",
        &[relid.into()],
    );
    if let Some(new_name) = renamed_to {
        as_extension_owner(|| {
            // The rename reaches every table of the tree, so the whole tree's registry entries follow.
            execute(
                client,
                "WITH root AS (SELECT coalesce(parent, relid) AS relid FROM nile.tenant_tables WHERE relid = $1::oid::regclass)
                 UPDATE nile.tenant_tables SET tenant_column = $2
                 WHERE relid = (SELECT relid FROM root) OR parent = (SELECT relid FROM root)",
                &[relid.into(), new_name.into()],
            );
        });
    }
}

/// Refuse the command if it left the enrolled table `relid` unprotected (see `nile._protection_problems()` in
/// sql/verify.sql, which `nile.verify()` uses too).
fn refuse_unprotected(client: &SpiClient<'_>, relid: pg_sys::Oid, root: pg_sys::Oid) {
    let problems: Vec<String> = as_extension_owner(|| {
        crate::pg::spi_util::select(
            client,
            "SELECT problem FROM nile._protection_problems($1::oid::regclass)",
            None,
            &[relid.into()],
        )
        .map(|row| required_column::<String>(&row, 1))
        .collect()
    });
    if problems.is_empty() {
        return;
    }
    let table = regclass_text(client, relid);
    let root_name = regclass_text(client, root);
    Problem::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("this change would leave tenant table {table} unprotected"),
    )
    .detail(problems.join("; "))
    .hint(format!(
        "To remove tenant isolation deliberately, run SELECT nile.disable_tenancy('{root_name}') first."
    ))
    .raise();
}

/// A table's name as `regclass` prints it (qualified when not on the search path).
fn regclass_text(client: &SpiClient<'_>, relid: pg_sys::Oid) -> String {
    first_value::<String>(client, "SELECT $1::oid::regclass::text", &[relid.into()])
        .unwrap_or_default()
}

/// A table with a tenant column that is not enrolled, not below an enrolled table and not excluded: enroll it (or the
/// top of its tree) when nile.auto_enable is on, warn otherwise.
fn enroll_if_tenant_table(client: &SpiClient<'_>, relid: pg_sys::Oid) {
    // The highest table of relid's tree that has a tenant column (a partition's root has it whenever the partition
    // does), unless that tree holds an excluded table or is not a place for tenant tables.
    let target = crate::pg::spi_util::select(client, &format!(
                "WITH RECURSIVE up(relid, level) AS (
                     SELECT $1::oid, 0
                     UNION SELECT i.inhparent, up.level + 1 FROM pg_inherits i JOIN up ON i.inhrelid = up.relid)
                 SELECT up.relid, a.attname::text,
                        bool_or(EXISTS (SELECT 1 FROM nile.excluded_tables x WHERE x.relid = up.relid::regclass)) OVER () AS excluded
                 FROM up
                 JOIN pg_class c ON c.oid = up.relid JOIN pg_namespace n ON n.oid = c.relnamespace
                 LEFT JOIN pg_attribute a ON a.attrelid = up.relid AND a.attnum > 0 AND NOT a.attisdropped
                                         AND {}
                 WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'nile') AND n.nspname NOT LIKE 'pg\\_%'
                 ORDER BY a.attname IS NULL, up.level DESC
                 LIMIT 1",
                is_tenant_column!()
            ),
            None,
            &[relid.into()])
        .next()
        .map(|row| {
            (
                required_column::<pg_sys::Oid>(&row, 1),
                row.get::<String>(2).or_internal("reading the tenant column"),
                required_column::<bool>(&row, 3),
            )
        });
    let Some((target, Some(column), false)) = target else {
        return;
    };
    let facts = table_facts(client, target);
    if !settings::auto_enable() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "table {} has a tenant column {column} but is not a tenant table",
                facts.qualified
            ),
        )
        .detail("nile.auto_enable is off, so it was not enrolled: every session that can read it sees every tenant's rows.")
        .hint(format!(
            "Enroll it with SELECT nile.enable_tenancy('{}'{}), or mark it as shared on purpose with SELECT nile.disable_tenancy('{}').",
            facts.qualified,
            column_argument(&column),
            facts.qualified
        ))
        .warning();
        return;
    }
    if !facts.owned_by_caller {
        // Somebody who cannot change the table (e.g. a non-owner's GRANT) cannot enroll it either; verify() reports it.
        return;
    }
    check_can_enroll(&facts, "enable");
    // Say why a CREATE TABLE or ALTER TABLE failed on something the user did not write.
    let table = facts.qualified.clone();
    PgTryBuilder::new(AssertUnwindSafe(|| {
        enrolment::enroll(target, &facts, &column, None)
    }))
    .catch_others(|caught| match caught {
        CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
            let detail = format!(
                "nile.auto_enable is on, so table {table} is enrolled as a tenant table as it is created or given a tenant column, and that failed.{}",
                report.detail().map(|d| format!(" {d}")).unwrap_or_default()
            );
            let hint = format!(
                "{}To create the table without enrolling it, SET LOCAL nile.auto_enable = off first.",
                report
                    .hint()
                    .map(|h| format!("{}. ", h.trim_end_matches('.')))
                    .unwrap_or_default()
            );
            Problem::new(report.sql_error_code(), report.message().to_string())
                .detail(detail)
                .hint(hint)
                .raise()
        }
        panic => panic.rethrow(),
    })
    .execute()
}

/// `, tenant_column => '<name>'` for a tenant column that is not the default one.
fn column_argument(column: &str) -> String {
    if column == "tenant_id" {
        String::new()
    } else {
        format!(", tenant_column => '{column}'")
    }
}

/// `DROP POLICY`, `ALTER TABLE ... DROP COLUMN ... CASCADE` and the like may not take a `nile_tenant_*` policy away
/// from a tenant table that stays, nor `ALTER TABLE ... DROP CONSTRAINT` its `nile_tenant_fk`, nor `DROP INDEX` the
/// index the enrolment made when the table keeps no other index leading with its tenant column (migration tools
/// comparing the database with their models propose to drop all three).
fn refuse_dropped_tenant_objects(client: &mut SpiClient<'_>) {
    let dropped = saved_plan_column::<String>(client, DROPPED_TENANT_OBJECT, false, &[], &[])
        .into_iter()
        .flatten()
        .next()
        .or_else(|| {
            saved_plan_column::<String>(client, DROPPED_TENANT_INDEX, false, &[], &[])
                .into_iter()
                .flatten()
                .next()
        });
    let Some(found) = dropped else {
        return;
    };
    let mut parts = found.splitn(3, '\n');
    let (kind, object, root) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let problem = if kind == "index" {
        Problem::new(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot drop index {object}: the table has no other index leading with its tenant column"),
        )
        .detail("Every statement of a tenant filters on the tenant column. Migration tools that compare the database with their models propose dropping it; leave the nile_* objects out of that comparison (docs/migrations.md).")
        .hint(format!(
            "Create another index leading with the tenant column first, or run SELECT nile.disable_tenancy('{root}')."
        ))
    } else if kind == "policy" {
        Problem::new(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot drop policy {object}: it isolates the tenants of that table"),
        )
        .hint(format!(
            "To remove tenant isolation deliberately, run SELECT nile.disable_tenancy('{root}') first."
        ))
    } else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot drop constraint {object}: it keeps the table's tenants to those in nile.tenants"),
        )
        .detail("Migration tools that compare the database with their models propose dropping it; leave the nile_tenant_* objects out of that comparison (docs/migrations.md).")
        .hint(format!(
            "To take the table out of tenancy deliberately, run SELECT nile.disable_tenancy('{root}') first."
        ))
    };
    problem.raise();
}

/// An enrolled table that still exists, whose index named as the enrolment names it (`enrolment::generated_index_name`,
/// for ASCII names) was dropped by the command itself (not as part of a dropped table), and that has no index leading
/// with its tenant column any more: "index", "<index> on <table>" and the table's root, a line each.
const DROPPED_TENANT_INDEX: &str =
    "SELECT 'index' || E'\\n' || format('%s on %s', d.object_identity, t.relid) || E'\\n' || coalesce(t.parent, t.relid)::text
     FROM pg_event_trigger_dropped_objects() d
     JOIN pg_namespace n ON n.nspname = d.schema_name
     JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
     JOIN nile.tenant_tables t ON t.relid::oid = c.oid
     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = t.tenant_column AND NOT a.attisdropped
     WHERE d.object_type = 'index' AND d.original
       AND d.object_name = 'nile_' || left(c.relname, 53 - octet_length(t.tenant_column)) || '_' || t.tenant_column || '_idx'
       AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indkey[0] = a.attnum
                                     AND x.indisvalid AND x.indpred IS NULL)
     ORDER BY 1 LIMIT 1";

/// A dropped `nile_tenant_*` policy, or `nile_tenant_fk` constraint, of an enrolled table that still exists (a policy
/// first): its kind, "<object> on <table>" and the table's root, a line each.
const DROPPED_TENANT_OBJECT: &str =
    "SELECT d.object_type || E'\\n' || format('%s on %s', quote_ident(d.address_names[3]), t.relid)
            || E'\\n' || coalesce(t.parent, t.relid)::text
     FROM pg_event_trigger_dropped_objects() d
     JOIN nile.tenant_tables t
       ON t.relid::oid = to_regclass(format('%I.%I', d.address_names[1], d.address_names[2]))::oid
     WHERE (d.object_type = 'policy' AND starts_with(d.address_names[3], 'nile_tenant_'))
        OR (d.object_type = 'table constraint' AND d.address_names[3] = 'nile_tenant_fk')
     ORDER BY d.object_type = 'policy' DESC
     LIMIT 1";

/// Registry and exclusion entries of tables that are gone.
const FORGET_TABLES: &str =
    "WITH forgotten AS (DELETE FROM nile.tenant_tables WHERE relid = ANY ($1::regclass[]))
                             DELETE FROM nile.excluded_tables WHERE relid = ANY ($1::regclass[])";

/// Dropped tables leave the registry and the exclusion list; nothing dangles.
fn forget_tables(client: &mut SpiClient<'_>, dropped: Vec<pg_sys::Oid>) {
    if dropped.is_empty() {
        return;
    }
    as_extension_owner(|| {
        saved_plan_column::<i32>(
            client,
            FORGET_TABLES,
            true,
            &[PgOid::BuiltIn(PgBuiltInOids::OIDARRAYOID)],
            &[dropped.into()],
        );
    });
}
