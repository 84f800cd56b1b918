//! tenants/import — the steps of `nile.import_schema()` (sql/lifecycle.sql) that read or write user tables.
//!
//! A legacy table's owner can hang code on it (policies, triggers, index and statistics expressions, CHECK constraints
//! of children), and so can a tenant table's; importing must run neither with the importing administrator's rights
//! (issue 17, finding 5). So each step runs as the owner of the table it touches, in a security-restricted operation
//! (src/pg/privilege.rs) with row-level security as Postgres applies it to that owner: the source is read as the
//! source's owner; the target is read and written as the target's owner, whose tenant policies are forced, in the
//! tenant's context that `import_schema()` has entered. When the two owners differ, the rows pass through a temporary
//! table of the caller's with text columns, which carries nobody's code: the source's owner fills it with its values'
//! text (so only its own types' and casts' code runs in its context), the target's owner converts that text to the
//! target's types (so its domains, defaults and triggers run in its context). The table gets a fresh unpredictable name
//! for each step and is checked to be unchanged (no trigger, rule, policy or other column type) before the second owner
//! reads it. Because the owners' rights are used, the caller's own are checked first: SELECT on the source, SELECT and
//! INSERT on the target, all at table level, and no row-level security on the source that applies to the caller (the
//! source's owner would read rows the caller may not).
//!
//! The SQL of every step has a fixed shape; table and column names come from the catalogs, quoted.

use crate::context::tenant::effective_tenant;
use crate::pg::errors::{raise, require_not_null};
use crate::pg::guc::{set_setting, Scope};
use crate::pg::privilege::{
    as_extension_owner, as_table_owner_policed, require_role, role_name, with_safe_search_path,
};
use crate::pg::spi_util::{execute, query_value};
use crate::pg::uuid_text::format_uuid;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::Uuid;

/// What the catalogs say about one source/target pair.
struct Pair {
    source_oid: pg_sys::Oid,
    target_oid: pg_sys::Oid,
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
    /// The target column's type without modifier (`format_type(oid, -1)`: `bpchar`, not `character`, which would be
    /// char(1)): what the text is converted to; the assignment applies the modifier.
    target_base: String,
    /// Its oid, to check that `target_base` still names it.
    type_oid: u32,
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
        "typecheck" if pair.source_owner == pair.target_owner => {
            // Planned, not run, as the one owner: Postgres' assignment rules decide whether each column fits.
            planned(
                pair.target_owner,
                &fill_target(&pair, &pair.source, false),
                Some(tenant),
            )
        }
        "typecheck" => {
            // Both halves of the copy between two owners, each planned (not run) as its owner: no side's code is
            // planned in the other's context.
            let stage = Stage::create(&pair);
            planned(pair.source_owner, &fill_stage(&pair, &stage.name), None);
            stage.require_unchanged();
            pair.require_names_unchanged();
            planned(
                pair.target_owner,
                &fill_target(&pair, &stage.name, true),
                Some(tenant),
            )
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
            let stage = Stage::create(&pair);
            as_table_owner_policed(pair.source_owner, || {
                pin_text_settings();
                Spi::connect_mut(|client| execute(client, &fill_stage(&pair, &stage.name), &[]))
            });
            stage.require_unchanged();
            pair.require_names_unchanged();
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
            crate::pg::spi_util::select(client, "SELECT format('%I.%I', n.nspname, c.relname), c.relowner,
                            EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = c.oid AND attname = $2 AND attnum > 0
                                    AND NOT attisdropped AND atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
                                    AND (attidentity <> '' OR pg_get_serial_sequence(c.oid::regclass::text, attname) IS NOT NULL))
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
                "relation with OID {} is not a table with a serial or identity column \"{column}\"",
                relid.to_u32()
            ),
            "nile._advance_sequences() reads the highest value of a table's serial or identity column.",
        );
    };
    require_privilege(relid, &table, "SELECT");
    require_owner_bound_like_the_caller(relid, &table);
    let enrolled_or_open = with_safe_search_path(|| {
        query_value::<bool>(
            "SELECT EXISTS (SELECT 1 FROM nile.tenant_tables WHERE relid = $1::oid::regclass) OR NOT row_security_active($1)",
            &[relid.into()],
        )
    });
    if enrolled_or_open != Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("{table} has row-level security that applies to you"),
            "Its owner, as whom the highest value is read, is not under it: run it as the table's owner.",
        );
    }
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

/// Raise 42501 if table `relid` has row-level security policies besides the generated `nile_tenant_*` ones, unless the
/// caller owns it: the steps run as its owner, and such a policy may bind its owner differently from the caller (it
/// may name roles, or depend on who runs it). The tenant policies bind both alike, in the tenant's context; an owner
/// that bypasses them reads only what the steps ask for (the tenant's rows, and the highest serial value, a
/// table-wide figure like the sequence's own).
fn require_owner_bound_like_the_caller(relid: pg_sys::Oid, name: &str) {
    let other_policies = with_safe_search_path(|| {
        query_value::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_policy p
                            WHERE p.polrelid = $1 AND NOT starts_with(p.polname::text, 'nile_tenant_'))
                    AND NOT pg_has_role((SELECT relowner FROM pg_class WHERE oid = $1), 'USAGE')",
            &[relid.into()],
        )
    });
    if other_policies != Some(false) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("{name} has row-level security policies besides the tenant policies"),
            "nile.import_schema() works on it as its owner, whom those policies may bind differently from you: run it as the table's owner, or drop those policies first.",
        );
    }
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

/// The settings under which a value's text reads back as the same value, whatever the caller's (`extra_float_digits`
/// below 1 drops digits), for the rest of the enclosing owner's operation (src/pg/privilege.rs rolls them back).
fn pin_text_settings() {
    for (name, value) in [
        (c"extra_float_digits", c"3"),
        (c"DateStyle", c"ISO, YMD"),
        (c"IntervalStyle", c"postgres"),
        (c"bytea_output", c"hex"),
    ] {
        set_setting(name, value, Scope::Level);
    }
}

/// Plan `sql` (an INSERT, with the tenant as $1 if `tenant` is given) as `owner` without running it; 0.
fn planned(owner: pg_sys::Oid, sql: &str, tenant: Option<Uuid>) -> i64 {
    as_table_owner_policed(owner, || {
        Spi::connect_mut(|client| {
            let args: Vec<pgrx::datum::DatumWithOid<'_>> =
                tenant.into_iter().map(Into::into).collect();
            // Not read-only: Postgres refuses EXPLAIN of an INSERT in a read-only SPI connection.
            execute(client, &format!("EXPLAIN (COSTS OFF) {sql}"), &args);
            0
        })
    })
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

impl Pair {
    /// Raise 42501 unless the names this pair's SQL uses still name the same tables and types: the source's owner's
    /// code, which runs between the two halves of a copy, may rename schemas it owns.
    fn require_names_unchanged(&self) {
        let types: Vec<String> = self.columns.iter().map(|c| c.target_base.clone()).collect();
        let oids: Vec<i64> = self.columns.iter().map(|c| c.type_oid as i64).collect();
        let same = as_extension_owner(|| {
            query_value::<bool>(
                "SELECT to_regclass($1) = $2::oid AND to_regclass($3) = $4::oid
                        AND NOT EXISTS (SELECT 1 FROM unnest($5::text[], $6::int8[]) t(name, oid)
                                        WHERE to_regtype(t.name) IS DISTINCT FROM t.oid::oid)",
                &[
                    self.source.clone().into(),
                    self.source_oid.into(),
                    self.target.clone().into(),
                    self.target_oid.into(),
                    types.into(),
                    oids.into(),
                ],
            )
        });
        if same != Some(true) {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "a table or type of this import was renamed while the source was read",
                "Import again; nothing of this table was written.",
            );
        }
    }
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

/// `INSERT INTO <stage> (<columns>) SELECT <column>::text, … FROM <source>`.
fn fill_stage(pair: &Pair, stage: &str) -> String {
    if pair.columns.is_empty() {
        return format!("INSERT INTO {stage} SELECT FROM {}", pair.source);
    }
    let names: Vec<&str> = pair.columns.iter().map(|c| c.name.as_str()).collect();
    let values: Vec<String> = pair
        .columns
        .iter()
        .map(|c| format!("{}::pg_catalog.text", c.name))
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

/// A temporary table of text columns, created for one step under a fresh random name by the extension (so that
/// neither owner, nor the caller, can alter, rename, index or inherit from it) and dropped when the step ends (or with
/// the transaction), which the source's owner may fill and the target's owner read.
struct Stage {
    name: String,
    oid: pg_sys::Oid,
}

impl Stage {
    fn create(pair: &Pair) -> Stage {
        let definition: Vec<String> = pair
            .columns
            .iter()
            .map(|c| format!("{} pg_catalog.text", c.name))
            .collect();
        as_extension_owner(|| {
            let owner_name = |o: pg_sys::Oid| {
                role_name(o)
                    .map(|n| quote_identifier(&n))
                    .unwrap_or_default()
            };
            let (source_owner, target_owner) =
                (owner_name(pair.source_owner), owner_name(pair.target_owner));
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
                    &format!("GRANT INSERT ON {name} TO {source_owner}"),
                    &[],
                );
                execute(
                    client,
                    &format!("GRANT SELECT ON {name} TO {target_owner}"),
                    &[],
                );
            });
            let oid =
                query_value::<pg_sys::Oid>("SELECT $1::regclass::oid", &[name.clone().into()])
                    .unwrap_or(pg_sys::InvalidOid);
            Stage { name, oid }
        })
    }

    /// Raise 42501 unless the table is still what `create` made, under its name: an ordinary table of the extension's
    /// with text columns and nothing on it (no trigger, rule, index, policy, child, constraint or statistics).
    fn require_unchanged(&self) {
        let intact = as_extension_owner(|| {
            query_value::<bool>(
                "SELECT c.relkind = 'r' AND NOT c.relhasrules AND NOT c.relhastriggers AND NOT c.relrowsecurity
                        AND NOT c.relhasindex AND NOT c.relhassubclass AND c.relchecks = 0
                        AND c.relowner = 10 AND to_regclass($2) = c.oid
                        AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                                        AND NOT a.attisdropped AND (a.atttypid <> 'text'::regtype OR a.atthasdef))
                        AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)
                        AND NOT EXISTS (SELECT 1 FROM pg_statistic_ext x WHERE x.stxrelid = c.oid)
                        AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
                 FROM pg_class c WHERE c.oid = $1",
                &[self.oid.into(), self.name.clone().into()],
            )
        });
        if intact != Some(true) {
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
            return; // the transaction's (or savepoint's) abort drops it
        }
        as_extension_owner(|| {
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
            let mut rows = crate::pg::spi_util::select(client, "SELECT format('%I.%I', sn.nspname, s.relname), s.relowner, format('%I.%I', tn.nspname, t.relname),
                        t.relowner, quote_ident(e.tenant_column),
                        c.names, c.types, c.missing
                 FROM pg_class s JOIN pg_namespace sn ON sn.oid = s.relnamespace,
                      pg_class t JOIN pg_namespace tn ON tn.oid = t.relnamespace
                      JOIN nile.tenant_tables e ON e.relid = t.oid::regclass,
                      -- The source's insertable columns but the tenant column: those the target has (with its types),
                      -- and how many it lacks.
                      LATERAL (
                          SELECT coalesce(array_agg(format('%I', sa.attname) ORDER BY sa.attnum)
                                              FILTER (WHERE ta.attnum IS NOT NULL), '{}') AS names,
                                 coalesce(array_agg(format_type(ta.atttypid, -1) || ' ' || ta.atttypid::text ORDER BY sa.attnum)
                                              FILTER (WHERE ta.attnum IS NOT NULL), '{}') AS types,
                                 count(*) FILTER (WHERE ta.attnum IS NULL) AS missing
                          FROM pg_attribute sa
                          LEFT JOIN pg_attribute ta ON ta.attrelid = t.oid AND ta.attname = sa.attname AND ta.attnum > 0
                                                   AND NOT ta.attisdropped
                          WHERE sa.attrelid = s.oid AND sa.attnum > 0 AND NOT sa.attisdropped AND sa.attgenerated = ''
                            AND sa.attname <> e.tenant_column
                      ) c
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
    require_owner_bound_like_the_caller(target, &target_name);
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
        .map(|(name, typed)| {
            // "<type name> <type oid>": the name is printed by format_type(), the oid (digits) is last.
            let (target_base, oid) = typed.rsplit_once(' ').unwrap_or((typed.as_str(), "0"));
            Column {
                name,
                target_base: target_base.to_string(),
                type_oid: oid.parse().unwrap_or(0),
            }
        })
        .collect();
    Pair {
        source_oid: source,
        target_oid: target,
        source: source_name,
        source_owner,
        target: target_name,
        target_owner,
        tenant_column,
        columns,
    }
}
