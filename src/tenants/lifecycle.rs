//! tenants/lifecycle — the tenant lifecycle: create, update, deactivate/reactivate (SQL wrappers in sql/tenants.sql),
//! soft delete and purge.
//!
//! All of these are for members of `nile_admin`. They check their arguments completely before writing anything, and
//! run their SQL with the extension's rights (see src/pg/privilege.rs), so `nile.tenants`' own row-level security does
//! not get in the way. Every write fires the trigger that invalidates the tenant caches of all backends.

use crate::context::tenant::while_purging;
use crate::pg::errors::{raise, require_not_null, Problem};
use crate::pg::privilege::{as_extension_owner, as_table_owner_policed, require_role};
use crate::pg::spi_util::{execute, query_value, required_column, write_returning};
use crate::pg::uuid_text::{format_uuid, new_uuid_v7};
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{Map, Value};

const ADMIN_ROLE: &str = "nile_admin";
const STATUSES: [&str; 3] = ["active", "inactive", "deleted"];

fn validated_name(name: &str) -> String {
    if name.trim().is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "tenant name must not be empty",
            "Pass a human-readable name, e.g. the customer's company name.",
        );
    }
    name.to_string()
}

fn validated_metadata(metadata: Value) -> Value {
    if !metadata.is_object() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "tenant metadata must be a JSON object",
            "Pass e.g. '{\"plan\": \"pro\"}'::jsonb, or '{}'.",
        );
    }
    metadata
}

/// `nile.create_tenant(name text, id uuid DEFAULT NULL, metadata jsonb DEFAULT '{}') RETURNS uuid`
///
/// Idempotent for an explicit id: creating the same tenant again (same name and metadata) returns its id.
#[pg_extern(volatile, parallel_unsafe)]
fn create_tenant(
    name: Option<&str>,
    id: default!(Option<Uuid>, "NULL"),
    metadata: default!(Option<JsonB>, "'{}'"),
) -> Uuid {
    require_role(ADMIN_ROLE, "nile.create_tenant()");
    let name = validated_name(require_not_null(name, "name"));
    let metadata = validated_metadata(require_not_null(metadata, "metadata").0);
    let id = id.map(|u| *u.as_bytes()).unwrap_or_else(new_uuid_v7);
    let inserted = as_extension_owner(|| {
        write_returning::<Uuid>(
            "INSERT INTO nile.tenants (id, name, metadata) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING id",
            &[Uuid::from_bytes(id).into(), name.clone().into(), JsonB(metadata.clone()).into()],
        )
    });
    if let Some(created) = inserted {
        return created;
    }
    // The id exists already: the same tenant again is a no-op, anything else is a conflict.
    let same = as_extension_owner(|| {
        query_value::<bool>(
            "SELECT name = $2 AND metadata = $3 AND status <> 'deleted' FROM nile.tenants WHERE id = $1",
            &[Uuid::from_bytes(id).into(), name.into(), JsonB(metadata).into()],
        )
    });
    if same != Some(true) {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!("tenant {} already exists", format_uuid(&id)),
        )
        .detail("A tenant with this id exists with another name, other metadata, or is deleted.")
        .hint("Use nile.update_tenant() to change it, or omit id to get a new one.")
        .raise();
    }
    Uuid::from_bytes(id)
}

/// Implementation of `nile.update_tenant(tenant_id uuid, changes jsonb) RETURNS nile.tenants` (sql/tenants.sql):
/// applies `changes` (keys `name`, `status`, `metadata`) and returns the new row as jsonb.
#[pg_extern(volatile, parallel_unsafe, name = "_update_tenant")]
fn update_tenant(tenant_id: Option<Uuid>, changes: Option<JsonB>) -> JsonB {
    require_role(ADMIN_ROLE, "nile.update_tenant()");
    let tenant_id = require_not_null(tenant_id, "tenant_id");
    let changes = require_not_null(changes, "changes").0;
    let Value::Object(changes) = changes else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "changes must be a JSON object",
            "Pass e.g. '{\"status\": \"inactive\"}'::jsonb.",
        );
    };
    let update = TenantUpdate::from_changes(&changes);
    let row = as_extension_owner(|| {
        write_returning::<JsonB>(
            "UPDATE nile.tenants t SET
                 name       = coalesce($2, t.name),
                 status     = coalesce($3, t.status),
                 metadata   = coalesce($4, t.metadata),
                 deleted_at = CASE WHEN coalesce($3, t.status) = 'deleted' THEN coalesce(t.deleted_at, now()) END,
                 updated_at = CASE WHEN $5 THEN now() ELSE t.updated_at END
             WHERE t.id = $1
             RETURNING to_jsonb(t)",
            &[
                tenant_id.into(),
                update.name.into(),
                update.status.into(),
                update.metadata.map(JsonB).into(),
                (!changes.is_empty()).into(),
            ],
        )
    });
    row.unwrap_or_else(|| unknown_tenant(&tenant_id))
}

/// The validated content of an `update_tenant` changes object.
struct TenantUpdate {
    name: Option<String>,
    status: Option<String>,
    metadata: Option<Value>,
}

impl TenantUpdate {
    fn from_changes(changes: &Map<String, Value>) -> Self {
        let mut update = TenantUpdate {
            name: None,
            status: None,
            metadata: None,
        };
        for (key, value) in changes {
            match (key.as_str(), value) {
                ("name", Value::String(name)) => update.name = Some(validated_name(name)),
                ("status", Value::String(status)) if STATUSES.contains(&status.as_str()) => {
                    update.status = Some(status.clone())
                }
                ("status", _) => raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("invalid tenant status: {value}"),
                    "status must be one of \"active\", \"inactive\", \"deleted\".",
                ),
                ("metadata", metadata) => {
                    update.metadata = Some(validated_metadata(metadata.clone()))
                }
                ("name", _) => raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("invalid tenant name: {value}"),
                    "name must be a non-empty JSON string.",
                ),
                _ => raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("unknown key \"{key}\" in tenant changes"),
                    "The keys that can be changed are \"name\", \"status\" and \"metadata\".",
                ),
            }
        }
        update
    }
}

fn unknown_tenant(id: &Uuid) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("tenant {} does not exist", format_uuid(id.as_bytes())),
        "Check the id; SELECT id, name FROM nile.tenants lists the tenants (in nile.admin_context()).",
    )
}

/// `nile.delete_tenant(tenant_id uuid, purge boolean DEFAULT false) RETURNS void`
///
/// Soft delete (the default) keeps the rows and denies all access to them. `purge => true` deletes the tenant's rows
/// from every tenant table, children before parents, then the tenant itself, all in the caller's transaction.
#[pg_extern(volatile, parallel_unsafe)]
fn delete_tenant(tenant_id: Option<Uuid>, purge: default!(Option<bool>, false)) {
    require_role(ADMIN_ROLE, "nile.delete_tenant()");
    let tenant_id = require_not_null(tenant_id, "tenant_id");
    let purge = require_not_null(purge, "purge");
    as_extension_owner(|| {
        let exists = query_value::<bool>(
            "SELECT EXISTS (SELECT 1 FROM nile.tenants WHERE id = $1)",
            &[tenant_id.into()],
        );
        if exists != Some(true) {
            unknown_tenant(&tenant_id);
        }
        if !purge {
            Spi::connect_mut(|client| {
                execute(
                    client,
                    "UPDATE nile.tenants SET status = 'deleted', deleted_at = coalesce(deleted_at, now()), updated_at = now()
                     WHERE id = $1",
                    &[tenant_id.into()],
                )
            });
            return;
        }
        for TenantRowHolder { relid, column, .. } in tables_holding_tenant_rows() {
            // Named and owned as the table is now, not as it was when the list was made: the triggers of a table
            // purged earlier run its owner's code, which may have renamed a schema that owner owns.
            let now = query_value::<String>(
                "SELECT format('%I.%I', n.nspname, c.relname) || ' ' || c.relowner::text
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                &[relid.into()],
            );
            let Some((table, owner)) = now.as_deref().and_then(|n| n.rsplit_once(' ')) else {
                continue; // dropped meanwhile: nothing left to purge there
            };
            let owner = pg_sys::Oid::from(owner.parse::<u32>().unwrap_or(0));
            let sql = format!(
                "DELETE FROM {table} WHERE {} = $1",
                spi::quote_identifier(&column)
            );
            // Row deletions fire the table's triggers: run them with the table owner's rights, not ours, and with the
            // tenant policies still forced and set to this tenant, so that they see no other tenant's rows.
            let removed = while_purging(*tenant_id.as_bytes(), || {
                as_table_owner_policed(owner, || {
                    Spi::connect_mut(|client| execute(client, &sql, &[tenant_id.into()]))
                })
            });
            if removed > 0 {
                Problem::new(
                    PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                    format!("purged {removed} row(s) from {table}"),
                )
                .notice();
            }
        }
        // The tenant's row goes last, deleted as nile_purger: a role with no members and no right but deleting the
        // row of the tenant being purged (its policy on nile.tenants), in a security-restricted operation. A foreign
        // key ON DELETE CASCADE / SET NULL / SET DEFAULT from a table owner's table runs its cascade as that owner, and
        // the AFTER triggers the cascade queues fire when this DELETE ends, as the role that ran it on PostgreSQL
        // 14-17 (18 fires them as the owner): as nile_purger, never with the extension owner's rights (issue 18).
        let purger = purger_role();
        while_purging(*tenant_id.as_bytes(), || {
            as_table_owner_policed(purger, || {
                Spi::connect_mut(|client| {
                    execute(
                        client,
                        "DELETE FROM nile.tenants WHERE id = $1",
                        &[tenant_id.into()],
                    )
                })
            })
        });
    });
}

/// The role the purge deletes a tenant's row as (sql/bootstrap.sql).
fn purger_role() -> pg_sys::Oid {
    // SAFETY: a catalog lookup by a static NUL-terminated name; missing_ok = true answers InvalidOid.
    let role = unsafe { pg_sys::get_role_oid(c"nile_purger".as_ptr(), true) };
    if role == pg_sys::InvalidOid {
        Problem::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "role nile_purger does not exist",
        )
        .hint("Run ALTER EXTENSION nile_tenancy UPDATE, which creates it.")
        .raise();
    }
    role
}

/// `nile._tenant_tables_in_load_order() RETURNS TABLE(load_order int, relid oid, tenant_column text)`: every table that
/// holds tenant rows (as `nile.delete_tenant(purge => true)` sees them), each after the tables its foreign keys point
/// to: the order in which a tenant's rows can be loaded (`nile.export_tenant()`, `nile.import_schema()`).
#[pg_extern(volatile, parallel_safe, name = "_tenant_tables_in_load_order")]
fn tenant_tables_in_load_order() -> TableIterator<
    'static,
    (
        name!(load_order, i32),
        name!(relid, pg_sys::Oid),
        name!(tenant_column, String),
    ),
> {
    let mut tables = tables_holding_tenant_rows();
    tables.reverse();
    TableIterator::new(
        tables
            .into_iter()
            .zip(1..)
            .map(|(t, position)| (position, t.relid, t.column)),
    )
}

/// A table holding tenant rows: its oid, qualified name, tenant column and owner.
struct TenantRowHolder {
    relid: pg_sys::Oid,
    column: String,
}

/// Every table that holds tenant rows, ordered so that a table comes before the
/// tables its foreign keys point to. These are the enrolled tables (partitions are reached through their parent)
/// and any other table with a foreign key to nile.tenants.
fn tables_holding_tenant_rows() -> Vec<TenantRowHolder> {
    crate::pg::privilege::with_safe_search_path(|| {
        Spi::connect(|client| {
            let tables: Vec<TenantRowHolder> = crate::pg::spi_util::select(client, "WITH holders AS (
                     SELECT relid::oid AS relid, tenant_column::text AS col FROM nile.tenant_tables WHERE parent IS NULL
                     UNION
                     SELECT c.conrelid, a.attname::text
                     FROM pg_constraint c
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                     WHERE c.contype = 'f' AND c.confrelid = 'nile.tenants'::regclass AND c.conparentid = 0
                       AND cardinality(c.conkey) = 1
                 )
                 SELECT DISTINCT ON (h.relid) h.relid, h.col
                 FROM holders h JOIN pg_class c ON c.oid = h.relid
                 ORDER BY h.relid",
                None,
                &[])
            .map(|row| TenantRowHolder {
                relid: required_column(&row, 1),
                column: required_column(&row, 2),
            })
            .collect();
            let edges: Vec<(pg_sys::Oid, pg_sys::Oid)> = crate::pg::spi_util::select(
                client,
                "SELECT conrelid, confrelid FROM pg_constraint
                 WHERE contype = 'f' AND conparentid = 0 AND conrelid <> confrelid
                   AND conrelid = ANY($1) AND confrelid = ANY($1)",
                None,
                &[tables.iter().map(|t| t.relid).collect::<Vec<_>>().into()],
            )
            .map(|row| {
                (
                    required_column::<pg_sys::Oid>(&row, 1),
                    required_column::<pg_sys::Oid>(&row, 2),
                )
            })
            .collect();
            referencing_first(tables, &edges)
        })
    })
}

/// Orders tables so that every table comes before the tables it references (`edges` are (referencing, referenced)).
/// Tables in a reference cycle keep their input order at the end.
fn referencing_first(
    mut remaining: Vec<TenantRowHolder>,
    edges: &[(pg_sys::Oid, pg_sys::Oid)],
) -> Vec<TenantRowHolder> {
    let mut ordered = Vec::with_capacity(remaining.len());
    loop {
        // A table can go now if no remaining table still references it.
        let position = remaining.iter().position(|t| {
            !edges
                .iter()
                .any(|(from, to)| *to == t.relid && remaining.iter().any(|r| r.relid == *from))
        });
        match position {
            Some(i) => ordered.push(remaining.remove(i)),
            None => break,
        }
    }
    ordered.extend(remaining);
    ordered
}
