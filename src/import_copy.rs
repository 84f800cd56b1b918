//! import_copy — the steps of `nile.import_schema()` (sql/lifecycle.sql) that read or write user tables.
//!
//! A legacy table's owner can hang code on it (policies, triggers, index and statistics expressions, CHECK constraints
//! of children), and so can a tenant table's; importing must run neither with the importing administrator's rights
//! (issue 17, finding 5). So each step runs as the owner of the table it touches, in a security-restricted operation
//! (privilege.rs) with row-level security as Postgres applies it to that owner: the source is read as the source's
//! owner; the target is read and written as the target's owner, whose tenant policies are forced, in the tenant's
//! context that `import_schema()` has entered. When the two owners differ, the rows pass through a temporary table of
//! the caller's, which carries nobody's code: the source's owner fills it, the target's owner empties it into the
//! target. Because the owners' rights are used, the caller's own are checked first: SELECT on the source, SELECT and
//! INSERT on the target, all at table level.
//!
//! The SQL of every step has a fixed shape; table and column names come from the catalogs, quoted.

use crate::context::effective_tenant;
use crate::errors::{raise, require_not_null};
use crate::privilege::{
    as_extension_owner, as_table_owner_policed, require_role, with_safe_search_path,
};
use crate::spi_util::{execute, query_value};
use crate::uuid_text::format_uuid;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::Uuid;

/// What the catalogs say about one source/target pair.
struct Pair {
    source: String,
    source_owner: pg_sys::Oid,
    target: String,
    target_owner: pg_sys::Oid,
    target_oid: pg_sys::Oid,
    /// The target's tenant column, quoted.
    tenant_column: String,
    /// The source's insertable columns but the tenant column, quoted, comma-separated; empty when there are none.
    columns: String,
    /// The same columns with the target's types: the staging table's definition.
    stage_columns: String,
}

/// `nile._import_step(step text, source regclass, target regclass, tenant uuid, column_name name DEFAULT NULL)
/// RETURNS bigint`, for `nile.import_schema()` (members of nile_admin, in `tenant`'s context):
/// - `existing`: the target's rows of the tenant;
/// - `typecheck`: plans (does not run) the copy, raising what Postgres says if a column cannot be assigned;
/// - `foreign`: the source's rows whose tenant column holds another tenant;
/// - `count`: the source's rows;
/// - `copy`: copies the source's rows into the target as the tenant's, returning how many;
/// - `highest`: the highest value of the target's `column_name` that the session's context sees (for
///   `nile._advance_sequences()`; `source` and `tenant` are not used, and the target need not be enrolled).
#[pg_extern(volatile, parallel_unsafe, name = "_import_step")]
fn import_step(
    step: Option<&str>,
    source: Option<pg_sys::Oid>,
    target: Option<pg_sys::Oid>,
    tenant: Option<Uuid>,
    column_name: default!(Option<&str>, "NULL"),
) -> Option<i64> {
    require_role("nile_admin", "nile.import_schema()");
    let step = require_not_null(step, "step");
    let target = require_not_null(target, "target");
    if step == "highest" {
        return highest(target, require_not_null(column_name, "column_name"));
    }
    let tenant = require_not_null(tenant, "tenant");
    if effective_tenant() != Some(*tenant.as_bytes()) {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "nile._import_step() runs in the context of tenant {} only",
                format_uuid(tenant.as_bytes())
            ),
            "It is a step of nile.import_schema(), which enters that context first.",
        );
    }
    let pair = pair(source, target);
    let tenant_arg = || [tenant.into()];
    let count = |owner: pg_sys::Oid, sql: String, args: &[pgrx::datum::DatumWithOid<'_>]| -> i64 {
        as_table_owner_policed(owner, || query_value::<i64>(&sql, args)).unwrap_or(0)
    };
    Some(match step {
        "existing" => count(
            pair.target_owner,
            format!(
                "SELECT count(*) FROM {} WHERE {} = $1",
                pair.target, pair.tenant_column
            ),
            &tenant_arg(),
        ),
        "foreign" => count(
            pair.source_owner,
            format!(
                "SELECT count(*) FROM {} WHERE {col} IS DISTINCT FROM $1 AND {col} IS NOT NULL",
                pair.source,
                col = pair.tenant_column
            ),
            &tenant_arg(),
        ),
        "count" => count(
            pair.source_owner,
            format!("SELECT count(*) FROM {}", pair.source),
            &[],
        ),
        "typecheck" => {
            let stage = stage(&pair);
            as_table_owner_policed(pair.source_owner, || {
                Spi::connect(|client| {
                    crate::spi_util::select(
                        client,
                        &format!("EXPLAIN (COSTS OFF) {}", fill_stage(&pair, &stage)),
                        None,
                        &[],
                    )
                    .len() as i64
                })
            })
        }
        "copy" if pair.source_owner == pair.target_owner => {
            // One owner's code on both sides: one statement, as that owner.
            copied(
                pair.target_owner,
                &fill_target(&pair, &pair.source),
                Some(tenant),
            )
        }
        "copy" => {
            let stage = stage(&pair);
            copied(pair.source_owner, &fill_stage(&pair, &stage), None);
            let rows = copied(pair.target_owner, &fill_target(&pair, &stage), Some(tenant));
            with_safe_search_path(|| {
                Spi::connect_mut(|client| execute(client, &format!("TRUNCATE {stage}"), &[]))
            });
            rows
        }
        other => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown import step \"{other}\""),
            "One of existing, typecheck, foreign, count, copy, highest.",
        ),
    })
}

/// The highest value of `relid`'s `column` that the session's context sees, read as the table's owner (NULL when
/// there is none): how far `nile._advance_sequences()` moves the sequence behind it.
fn highest(relid: pg_sys::Oid, column: &str) -> Option<i64> {
    let facts = as_extension_owner(|| {
        Spi::connect(|client| {
            crate::spi_util::select(client, "SELECT format('%I.%I', n.nspname, c.relname), c.relowner,
                            EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = c.oid AND attname = $2 AND attnum > 0
                                    AND NOT attisdropped)
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                    Some(1),
                    &[relid.into(), column.into()])
                .next()
                .map(|row| {
                    (
                        row.get::<String>(1).ok().flatten().unwrap_or_default(),
                        row.get::<pg_sys::Oid>(2).ok().flatten().unwrap_or(pg_sys::InvalidOid),
                        row.get::<bool>(3).ok().flatten().unwrap_or(false),
                    )
                })
        })
    });
    let Some((table, owner, true)) = facts else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "column \"{column}\" of relation with OID {} does not exist",
                relid.to_u32()
            ),
            "Pass a table and one of its columns.",
        );
    };
    require_privilege(relid, &table, "SELECT");
    as_table_owner_policed(owner, || {
        query_value::<i64>(
            &format!(
                "SELECT max({})::bigint FROM {table}",
                quote_identifier(column)
            ),
            &[],
        )
    })
}

/// Raise 42501 unless the caller holds `privilege` on `relid` itself (at table level): the steps use the owners'.
fn require_privilege(relid: pg_sys::Oid, name: &str, privilege: &str) {
    let held = with_safe_search_path(|| {
        query_value::<bool>(
            "SELECT has_table_privilege($1, $2)",
            &[relid.into(), privilege.into()],
        )
    });
    if held != Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied for table {name}: nile.import_schema() needs {privilege} on it"
            ),
            format!("Its owner can run GRANT {privilege} ON {name} TO <your role>."),
        );
    }
}

/// Run `sql` (an INSERT, with the tenant as $1 if `tenant` is given) as `owner`; the rows it wrote.
fn copied(owner: pg_sys::Oid, sql: &str, tenant: Option<Uuid>) -> i64 {
    as_table_owner_policed(owner, || {
        Spi::connect_mut(|client| {
            let args: Vec<pgrx::datum::DatumWithOid<'_>> =
                tenant.into_iter().map(Into::into).collect();
            execute(client, sql, &args) as i64
        })
    })
}

fn with_comma(columns: &str) -> String {
    if columns.is_empty() {
        String::new()
    } else {
        format!("{columns}, ")
    }
}

/// `INSERT INTO <target> (<columns>, <tenant column>) OVERRIDING SYSTEM VALUE SELECT <columns>, $1 FROM <from>`.
fn fill_target(pair: &Pair, from: &str) -> String {
    let columns = with_comma(&pair.columns);
    format!(
        "INSERT INTO {} ({columns}{}) OVERRIDING SYSTEM VALUE SELECT {columns}$1 FROM {from}",
        pair.target, pair.tenant_column
    )
}

/// `INSERT INTO <stage> (<columns>) SELECT <columns> FROM <source>`.
fn fill_stage(pair: &Pair, stage: &str) -> String {
    if pair.columns.is_empty() {
        format!("INSERT INTO {stage} SELECT FROM {}", pair.source)
    } else {
        format!(
            "INSERT INTO {stage} ({cols}) SELECT {cols} FROM {}",
            pair.source,
            cols = pair.columns
        )
    }
}

/// The caller's temporary staging table for `pair`'s target (created on first use, dropped at commit), which the
/// source's owner may fill and the target's owner read.
fn stage(pair: &Pair) -> String {
    let stage = format!("pg_temp.nile_import_stage_{}", pair.target_oid.to_u32());
    let owners: Vec<String> = as_extension_owner(|| {
        [pair.source_owner, pair.target_owner]
            .iter()
            .map(|o| {
                query_value::<String>(
                    "SELECT quote_ident(rolname) FROM pg_roles WHERE oid = $1",
                    &[(*o).into()],
                )
                .unwrap_or_default()
            })
            .collect()
    });
    with_safe_search_path(|| {
        Spi::connect_mut(|client| {
            execute(
                client,
                &format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {stage} ({}) ON COMMIT DROP",
                    pair.stage_columns
                ),
                &[],
            );
            execute(
                client,
                &format!("GRANT INSERT ON {stage} TO {}", owners[0]),
                &[],
            );
            execute(
                client,
                &format!("GRANT SELECT ON {stage} TO {}", owners[1]),
                &[],
            );
        })
    });
    stage
}

/// Read `pair`'s catalog facts and check the caller's privileges on both tables.
fn pair(source: Option<pg_sys::Oid>, target: pg_sys::Oid) -> Pair {
    let source = source.unwrap_or(target);
    let facts = as_extension_owner(|| {
        Spi::connect(|client| {
            let mut rows = crate::spi_util::select(client, "SELECT format('%I.%I', sn.nspname, s.relname), s.relowner, format('%I.%I', tn.nspname, t.relname),
                        t.relowner, quote_ident(e.tenant_column),
                        coalesce(nile._insertable_columns(s.oid::regclass, e.tenant_column), ''),
                        coalesce((SELECT string_agg(format('%I %s', ta.attname, format_type(ta.atttypid, ta.atttypmod)), ', '
                                                    ORDER BY sa.attnum)
                                  FROM pg_attribute sa
                                  JOIN pg_attribute ta ON ta.attrelid = t.oid AND ta.attname = sa.attname AND ta.attnum > 0
                                                      AND NOT ta.attisdropped
                                  WHERE sa.attrelid = s.oid AND sa.attnum > 0 AND NOT sa.attisdropped AND sa.attgenerated = ''
                                    AND sa.attname <> e.tenant_column), ''),
                        (SELECT count(*) FROM pg_attribute sa
                         WHERE sa.attrelid = s.oid AND sa.attnum > 0 AND NOT sa.attisdropped AND sa.attgenerated = ''
                           AND sa.attname <> e.tenant_column
                           AND NOT EXISTS (SELECT 1 FROM pg_attribute ta WHERE ta.attrelid = t.oid AND ta.attname = sa.attname
                                           AND ta.attnum > 0 AND NOT ta.attisdropped))
                 FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace,
                      pg_class t JOIN pg_namespace tn ON tn.oid = t.relnamespace
                      JOIN nile.tenant_tables e ON e.relid = t.oid::regclass
                 WHERE s.oid = $1 AND t.oid = $2 AND s.relkind IN ('r', 'p') AND t.relkind IN ('r', 'p')",
                Some(1),
                &[source.into(), target.into()]);
            rows.next().map(|row| {
                (
                    row.get::<String>(1).ok().flatten().unwrap_or_default(),
                    row.get::<pg_sys::Oid>(2)
                        .ok()
                        .flatten()
                        .unwrap_or(pg_sys::InvalidOid),
                    row.get::<String>(3).ok().flatten().unwrap_or_default(),
                    row.get::<pg_sys::Oid>(4)
                        .ok()
                        .flatten()
                        .unwrap_or(pg_sys::InvalidOid),
                    row.get::<String>(5).ok().flatten().unwrap_or_default(),
                    row.get::<String>(6).ok().flatten().unwrap_or_default(),
                    row.get::<String>(7).ok().flatten().unwrap_or_default(),
                    row.get::<i64>(8).ok().flatten().unwrap_or(0),
                )
            })
        })
    });
    let Some((
        source_name,
        source_owner,
        target_name,
        target_owner,
        tenant_column,
        columns,
        stage_columns,
        missing,
    )) = facts
    else {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            "the source must be a table and the target an enrolled tenant table",
            "nile.import_schema() pairs each legacy table with the tenant table of the same name.",
        );
    };
    if missing > 0 {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("{source_name} has columns that {target_name} lacks"),
            "nile.import_schema() reports which ones before it copies anything.",
        );
    }
    // The owners' rights are used below, so the caller must hold these itself.
    require_privilege(source, &source_name, "SELECT");
    require_privilege(target, &target_name, "SELECT");
    require_privilege(target, &target_name, "INSERT");
    Pair {
        source: source_name,
        source_owner,
        target: target_name,
        target_owner,
        target_oid: target,
        tenant_column,
        columns,
        stage_columns,
    }
}
