//! import_copy — the steps of `nile.import_schema()` (sql/lifecycle.sql) that read or write user tables.
//!
//! A legacy table's owner can hang code on it (policies, triggers, index and statistics expressions, CHECK constraints
//! of children), and so can a tenant table's; importing must run neither with the importing administrator's rights
//! (issue 17, finding 5). So each step runs as the owner of the table it touches, in a security-restricted operation
//! (privilege.rs) with row-level security as Postgres applies it to that owner: the source is read as the source's
//! owner; the target is read and written as the target's owner, whose tenant policies are forced, in the tenant's
//! context that `import_schema()` has entered. When the two owners differ, the rows pass through a temporary table of
//! the caller's with text columns, which carries nobody's code: the source's owner fills it with its values' text (so
//! only its own types' and casts' code runs in its context), the target's owner converts that text to the target's
//! types (so its domains, defaults and triggers run in its context). The table gets a fresh unpredictable name for each
//! step and is checked to be unchanged (no trigger, rule, policy or other column type) before the second owner reads
//! it. Because the owners' rights are used, the caller's own are checked first: SELECT on the source, SELECT and INSERT
//! on the target, all at table level, and no row-level security on the source that applies to the caller (the source's
//! owner would read rows the caller may not).
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
    /// The target's tenant column, quoted.
    tenant_column: String,
    /// The source's insertable columns but the tenant column, in the source's order.
    columns: Vec<Column>,
}

/// One copied column.
struct Column {
    /// Quoted name (the same in source and target).
    name: String,
    /// The target column's type, with its modifier: the typecheck's staging column.
    target_type: String,
    /// The target column's type without modifier: what the text is converted to (the assignment applies the modifier).
    target_base: String,
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
            // Planned, not run: Postgres' own assignment rules decide whether each column fits its target's type.
            let stage = Stage::create(&pair, StageKind::TargetTypes);
            as_table_owner_policed(pair.source_owner, || {
                Spi::connect(|client| {
                    crate::spi_util::select(
                        client,
                        &format!(
                            "EXPLAIN (COSTS OFF) {}",
                            fill_stage(&pair, &stage.name, false)
                        ),
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
                &fill_target(&pair, &pair.source, false),
                Some(tenant),
            )
        }
        "copy" => {
            let stage = Stage::create(&pair, StageKind::Text);
            copied(
                pair.source_owner,
                &fill_stage(&pair, &stage.name, true),
                None,
            );
            stage.require_unchanged();
            copied(
                pair.target_owner,
                &fill_target(&pair, &stage.name, true),
                Some(tenant),
            )
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
                                    AND NOT attisdropped AND atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype))
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = $1 AND c.relkind IN ('r', 'p')",
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
                "relation with OID {} is not a table with an integer column \"{column}\"",
                relid.to_u32()
            ),
            "nile._advance_sequences() reads the highest value of a table's serial or identity column.",
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

/// `INSERT INTO <target> (<columns>, <tenant column>) OVERRIDING SYSTEM VALUE SELECT <columns>, $1 FROM <from>`; from
/// a text staging table, each column converted to its target type.
fn fill_target(pair: &Pair, from: &str, from_text: bool) -> String {
    let names: Vec<&str> = pair.columns.iter().map(|c| c.name.as_str()).collect();
    let values: Vec<String> = pair
        .columns
        .iter()
        .map(|c| {
            if from_text {
                format!("{}::{}", c.name, c.target_base)
            } else {
                c.name.clone()
            }
        })
        .collect();
    format!(
        "INSERT INTO {} ({}{}) OVERRIDING SYSTEM VALUE SELECT {}$1 FROM {from}",
        pair.target,
        with_comma(&names.join(", ")),
        pair.tenant_column,
        with_comma(&values.join(", ")),
    )
}

/// `INSERT INTO <stage> (<columns>) SELECT <columns> FROM <source>`, each column's text when `as_text`.
fn fill_stage(pair: &Pair, stage: &str, as_text: bool) -> String {
    if pair.columns.is_empty() {
        return format!("INSERT INTO {stage} SELECT FROM {}", pair.source);
    }
    let names: Vec<&str> = pair.columns.iter().map(|c| c.name.as_str()).collect();
    let values: Vec<String> = pair
        .columns
        .iter()
        .map(|c| {
            if as_text {
                format!("{}::pg_catalog.text", c.name)
            } else {
                c.name.clone()
            }
        })
        .collect();
    format!(
        "INSERT INTO {stage} ({}) SELECT {} FROM {}",
        names.join(", "),
        values.join(", "),
        pair.source
    )
}

fn with_comma(columns: &str) -> String {
    if columns.is_empty() {
        String::new()
    } else {
        format!("{columns}, ")
    }
}

#[derive(Clone, Copy, PartialEq)]
enum StageKind {
    /// The target's column types: for the typecheck, which only plans.
    TargetTypes,
    /// Text columns: for the copy between two owners.
    Text,
}

/// A temporary table of the caller's, created for one step under a fresh name and dropped when the step ends (or with
/// the transaction), which the source's owner may fill and the target's owner read.
struct Stage {
    name: String,
    oid: pg_sys::Oid,
    kind: StageKind,
}

impl Stage {
    fn create(pair: &Pair, kind: StageKind) -> Stage {
        let definition: Vec<String> = pair
            .columns
            .iter()
            .map(|c| match kind {
                StageKind::TargetTypes => format!("{} {}", c.name, c.target_type),
                StageKind::Text => format!("{} pg_catalog.text", c.name),
            })
            .collect();
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
            let suffix =
                query_value::<String>("SELECT replace(gen_random_uuid()::text, '-', '')", &[])
                    .unwrap_or_default();
            let name = format!("pg_temp.nile_import_{suffix}");
            Spi::connect_mut(|client| {
                execute(
                    client,
                    &format!(
                        "CREATE TEMP TABLE {name} ({}) ON COMMIT DROP",
                        definition.join(", ")
                    ),
                    &[],
                );
                execute(
                    client,
                    &format!("GRANT INSERT ON {name} TO {}", owners[0]),
                    &[],
                );
                execute(
                    client,
                    &format!("GRANT SELECT ON {name} TO {}", owners[1]),
                    &[],
                );
            });
            let oid =
                query_value::<pg_sys::Oid>("SELECT $1::regclass::oid", &[name.clone().into()])
                    .unwrap_or(pg_sys::InvalidOid);
            Stage { name, oid, kind }
        })
    }

    /// Raise 42501 unless the table is still what `create` made: an ordinary table of text columns with no trigger,
    /// rule or row-level security (the source's owner, if it is the caller, could have changed it while it ran).
    fn require_unchanged(&self) {
        let intact = with_safe_search_path(|| {
            query_value::<bool>(
                "SELECT c.relkind = 'r' AND NOT c.relhasrules AND NOT c.relhastriggers AND NOT c.relrowsecurity
                        AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                        AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                                        AND NOT a.attisdropped AND (a.atttypid <> 'text'::regtype OR a.atthasdef))
                        AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)
                 FROM pg_class c WHERE c.oid = $1",
                &[self.oid.into()],
            )
        });
        if self.kind != StageKind::Text || intact != Some(true) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "nile.import_schema()'s staging table was changed while the source was read",
                "Import again; nothing of this table was written.",
            );
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // the transaction's abort drops it (ON COMMIT DROP)
        }
        with_safe_search_path(|| {
            Spi::connect_mut(|client| {
                execute(client, &format!("DROP TABLE IF EXISTS {}", self.name), &[])
            })
        });
    }
}

/// Read `pair`'s catalog facts and check the caller's privileges on both tables.
fn pair(source: Option<pg_sys::Oid>, target: pg_sys::Oid) -> Pair {
    let source = source.unwrap_or(target);
    let facts = as_extension_owner(|| {
        Spi::connect(|client| {
            let mut rows = crate::spi_util::select(client, "SELECT format('%I.%I', sn.nspname, s.relname), s.relowner, format('%I.%I', tn.nspname, t.relname),
                        t.relowner, quote_ident(e.tenant_column),
                        coalesce((SELECT array_agg(format('%I', sa.attname) ORDER BY sa.attnum)
                                  FROM pg_attribute sa
                                  JOIN pg_attribute ta ON ta.attrelid = t.oid AND ta.attname = sa.attname AND ta.attnum > 0
                                                      AND NOT ta.attisdropped
                                  WHERE sa.attrelid = s.oid AND sa.attnum > 0 AND NOT sa.attisdropped AND sa.attgenerated = ''
                                    AND sa.attname <> e.tenant_column), '{}'),
                        coalesce((SELECT array_agg(format_type(ta.atttypid, ta.atttypmod) || E'\\n' || format_type(ta.atttypid, NULL)
                                                   ORDER BY sa.attnum)
                                  FROM pg_attribute sa
                                  JOIN pg_attribute ta ON ta.attrelid = t.oid AND ta.attname = sa.attname AND ta.attnum > 0
                                                      AND NOT ta.attisdropped
                                  WHERE sa.attrelid = s.oid AND sa.attnum > 0 AND NOT sa.attisdropped AND sa.attgenerated = ''
                                    AND sa.attname <> e.tenant_column), '{}'),
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
                    row.get::<Vec<String>>(6).ok().flatten().unwrap_or_default(),
                    row.get::<Vec<String>>(7).ok().flatten().unwrap_or_default(),
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
        names,
        types,
        missing,
    )) = facts
    else {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            "the source must be a table and the target an enrolled tenant table",
            "nile.import_schema() pairs each legacy table with the tenant table of the same name.",
        );
    };
    if missing > 0 || names.len() != types.len() {
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
    let policed = with_safe_search_path(|| {
        query_value::<bool>("SELECT row_security_active($1)", &[source.into()])
    });
    if policed != Some(false) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("{source_name} has row-level security that applies to you"),
            "nile.import_schema() reads it as its owner, which would show you rows its policies hide from you: import as its owner (or a role with BYPASSRLS), or disable its row-level security first.",
        );
    }
    let columns = names
        .into_iter()
        .zip(types)
        .map(|(name, types)| {
            let (target_type, target_base) = types
                .split_once('\n')
                .unwrap_or((types.as_str(), types.as_str()));
            Column {
                name,
                target_type: target_type.to_string(),
                target_base: target_base.to_string(),
            }
        })
        .collect();
    Pair {
        source: source_name,
        source_owner,
        target: target_name,
        target_owner,
        tenant_column,
        columns,
    }
}
