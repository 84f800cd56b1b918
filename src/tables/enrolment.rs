//! tables/enrolment — enrolling tables: `nile.enable_tenancy()` and `nile.disable_tenancy()` (SQL signatures in
//! sql/tables.sql).
//!
//! Enrolling a table makes it look exactly like a hand-built, well-indexed multi-tenant table: a `uuid NOT NULL`
//! tenant column defaulting to the session's tenant with a foreign key to `nile.tenants`, an index leading with that
//! column, `ENABLE` + `FORCE ROW LEVEL SECURITY`, and one policy per command named `nile_tenant_<command>`. A
//! partitioned table gets the same on every partition, so that querying a partition directly is as isolated as going
//! through the parent; inheritance children are covered the same way. All checks happen before the first change, and
//! everything runs in the caller's transaction: an error leaves nothing half-applied. Running it again repairs whatever
//! drifted. `disable_tenancy` is the deliberate way out, and records the table in `nile.excluded_tables` so that the
//! DDL event trigger (src/ddl/events.rs) does not enroll it again.

use crate::context::tenant_cache::{self, TenantStatus};
use crate::pg::errors::{raise, require_not_null, OrInternal, Problem};
use crate::pg::guc::{set_setting, Scope};
use crate::pg::heap_scan;
use crate::pg::privilege::{
    as_extension_owner, as_table_owner_policed, require_role, role_name, with_safe_search_path,
};
use crate::pg::spi_util::{execute, first_value, required_column};
use crate::pg::uuid_text::format_uuid;
use crate::tables::own_ddl::{own_ddl, running_user_code};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal, SpiClient};
use pgrx::Uuid;
use std::ops::ControlFlow;

/// Prefix of every policy the extension generates; `nile.verify()` and the admin context recognise tables by it.
pub const POLICY_PREFIX: &str = "nile_tenant_";

/// The tenant a statement may read / write, as the policies compare it. A scalar subquery, so that the planner makes
/// it an InitPlan: evaluated once per statement (an index condition `tenant_id = $0`, or a filter comparing with a
/// parameter), never once per row as a STABLE function in a filter would be.
const READ_TENANT: &str = "(SELECT nile.policy_read_tenant())";
const WRITE_TENANT: &str = "(SELECT nile.policy_write_tenant())";

/// (policy suffix, command, USING expression, WITH CHECK expression)
const POLICIES: [(&str, &str, Option<&str>, Option<&str>); 4] = [
    ("select", "SELECT", Some(READ_TENANT), None),
    ("insert", "INSERT", None, Some(WRITE_TENANT)),
    ("update", "UPDATE", Some(WRITE_TENANT), Some(WRITE_TENANT)),
    ("delete", "DELETE", Some(WRITE_TENANT), None),
];

/// The names of the generated policies (`POLICY_PREFIX` and each suffix of `POLICIES`): exactly these are the tenant
/// policies. Another policy whose name merely starts with the prefix is a policy like any other (the row-security
/// hooks in src/rls/ never take it for a generated one).
pub const POLICY_NAMES: [&str; 4] = [
    "nile_tenant_select",
    "nile_tenant_insert",
    "nile_tenant_update",
    "nile_tenant_delete",
];

/// What the catalogs say about the table being enrolled.
pub struct TableFacts {
    pub qualified: String,
    owner: pg_sys::Oid,
    relname: String,
    relkind: String,
    pub owned_by_caller: bool,
    schema: String,
    temporary: bool,
    partition_of: Option<String>,
    /// The enrolled table this one inherits from (through any number of levels), if any.
    enrolled_ancestor: Option<String>,
    /// A table this one inherits from (not as a partition) that is not a tenant table, if any.
    unprotected_parent: Option<String>,
}

pub fn table_facts(client: &SpiClient<'_>, relid: pg_sys::Oid) -> TableFacts {
    let mut rows = crate::pg::spi_util::select(client, "SELECT format('%I.%I', n.nspname, c.relname), c.relowner, c.relname::text, c.relkind::text,
                    pg_has_role(c.relowner, 'USAGE'), n.nspname::text, c.relpersistence = 't',
                    (SELECT format('%I.%I', pn.nspname, p.relname) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                      JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE i.inhrelid = c.oid AND c.relispartition),
                    (WITH RECURSIVE up(relid) AS (
                         SELECT inhparent FROM pg_inherits WHERE inhrelid = c.oid
                         UNION SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.relid)
                     SELECT t.relid::text FROM up JOIN nile.tenant_tables t ON t.relid = up.relid::regclass LIMIT 1),
                    (SELECT format('%I.%I', pn.nspname, p.relname) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                      JOIN pg_namespace pn ON pn.oid = p.relnamespace
                      WHERE i.inhrelid = c.oid AND NOT c.relispartition
                        AND NOT EXISTS (SELECT 1 FROM nile.tenant_tables t WHERE t.relid::oid = i.inhparent)
                      ORDER BY 1 LIMIT 1)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = $1",
            Some(1),
            &[relid.into()]);
    let Some(row) = rows.next() else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {} does not exist", relid.to_u32()),
            "Pass an existing table, e.g. 'public.projects'.",
        );
    };
    TableFacts {
        qualified: required_column(&row, 1),
        owner: required_column(&row, 2),
        relname: required_column(&row, 3),
        relkind: required_column(&row, 4),
        owned_by_caller: required_column(&row, 5),
        schema: required_column(&row, 6),
        temporary: required_column(&row, 7),
        partition_of: row
            .get::<String>(8)
            .or_internal("reading the table's catalog entry"),
        enrolled_ancestor: row
            .get::<String>(9)
            .or_internal("reading the table's catalog entry"),
        unprotected_parent: row
            .get::<String>(10)
            .or_internal("reading the table's catalog entry"),
    }
}

/// Refuse everything that is not an ordinary or partitioned table the caller owns, outside system and nile schemas.
pub fn check_can_enroll(facts: &TableFacts, action: &str) {
    let wrong_type = |what: &str, hint: &str| -> ! {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "cannot {action} tenancy on {}: it is {what}",
                facts.qualified
            ),
            hint,
        )
    };
    if facts.schema == "pg_catalog"
        || facts.schema == "information_schema"
        || facts.schema.starts_with("pg_toast")
    {
        wrong_type("a system catalog", "Only user tables can be tenant tables.");
    }
    if facts.schema == "nile" {
        wrong_type(
            "one of nile_tenancy's own tables",
            "nile.tenants is already isolated; enroll your own tables.",
        );
    }
    if facts.temporary {
        wrong_type(
            "a temporary table",
            "Temporary tables are private to one session already; enroll permanent tables.",
        );
    }
    match facts.relkind.as_str() {
        "r" | "p" => {}
        "v" => wrong_type("a view", "Enroll the tables the view reads, and create the view WITH (security_invoker = true)."),
        "m" => wrong_type("a materialized view", "Materialized views cannot have row-level security; query the underlying tenant tables instead."),
        "f" => wrong_type("a foreign table", "Row-level security cannot protect foreign tables; enroll the table on the server that holds it."),
        _ => wrong_type("not a table", "Pass an ordinary or partitioned table."),
    }
    if let Some(parent) = &facts.partition_of {
        wrong_type(
            &format!("a partition of {parent}"),
            &format!("Run nile.{action}_tenancy('{parent}'): it covers every partition."),
        );
    }
    if let Some(ancestor) = &facts.enrolled_ancestor {
        wrong_type(
            &format!("a child of tenant table {ancestor}"),
            &format!("Its parent's enrollment covers it; run nile.{action}_tenancy('{ancestor}')."),
        );
    }
    if let (Some(parent), "enable") = (&facts.unprotected_parent, action) {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "cannot enable tenancy on {}: it inherits from {parent}, which is not a tenant table",
                facts.qualified
            ),
        )
        .detail(format!(
            "Reading {parent} returns the rows of {} with {parent}'s policies, that is every tenant's.",
            facts.qualified
        ))
        .hint(format!(
            "Enroll the parent, which covers its children: SELECT nile.enable_tenancy('{parent}'). Or detach it first: ALTER TABLE {} NO INHERIT {parent}.",
            facts.qualified
        ))
        .raise();
    }
    if !facts.owned_by_caller {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "must be owner of table {} to {action} tenancy on it",
                facts.qualified
            ),
            if action == "disable" {
                "Run it as the table's owner (who must also be a member of nile_admin), or as a superuser."
            } else {
                "Run it as the table's owner (the migration role of examples/role_layout.sql), or as a superuser."
            },
        );
    }
}

/// The checks every entry point runs first: the caller's role, a non-NULL table, and a table that can be enrolled.
/// Enrolling only adds protection, so the table's owner may do it (as the DDL event trigger does for the tables it
/// creates: the migration role of examples/role_layout.sql is not an administrator); removing it needs nile_admin too.
fn checked_table(tbl: Option<pg_sys::Oid>, action: &str) -> (pg_sys::Oid, TableFacts) {
    if action == "disable" {
        require_role("nile_admin", &format!("nile.{action}_tenancy()"));
    }
    let relid = require_not_null(tbl, "tbl");
    // The caller's rights (ownership is checked), but not the caller's search_path: an overload planted in one of its
    // schemas must not run here (tests/integration/tests/attacks/own_objects.rs,
    // hijack_search_path_of_enable_and_disable_tenancy).
    let facts = with_safe_search_path(|| Spi::connect(|client| table_facts(client, relid)));
    check_can_enroll(&facts, action);
    (relid, facts)
}

/// The tenant column as it exists today.
struct ColumnFacts {
    attnum: i16,
    type_name: String,
    is_uuid: bool,
}

fn column_facts(client: &SpiClient<'_>, relid: pg_sys::Oid, column: &str) -> Option<ColumnFacts> {
    let mut rows = crate::pg::spi_util::select(client, "SELECT attnum, format_type(atttypid, atttypmod), atttypid = 'uuid'::regtype
             FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
            Some(1),
            &[relid.into(), column.into()]);
    rows.next().map(|row| ColumnFacts {
        attnum: required_column::<i16>(&row, 1),
        type_name: required_column::<String>(&row, 2),
        is_uuid: required_column::<bool>(&row, 3),
    })
}

fn query_bool(client: &SpiClient<'_>, sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> bool {
    first_value::<bool>(client, sql, args).unwrap_or(false)
}

/// The ordinary tables of `relid`'s tree (itself, its partitions and children at any depth), each with the number of
/// its column `column` (0 where it has none, or when `column` is `None`).
fn leaf_tables(
    client: &SpiClient<'_>,
    relid: pg_sys::Oid,
    column: Option<&str>,
) -> Vec<(pg_sys::Oid, i16)> {
    crate::pg::spi_util::select(
        client,
        "WITH RECURSIVE down(relid) AS (
             SELECT $1::oid UNION SELECT i.inhrelid FROM pg_inherits i JOIN down d ON i.inhparent = d.relid)
         SELECT c.oid, coalesce((SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $2
                                 AND a.attnum > 0 AND NOT a.attisdropped), 0)::int2
         FROM down JOIN pg_class c ON c.oid = down.relid WHERE c.relkind = 'r'",
        None,
        &[relid.into(), column.into()],
    )
    .map(|row| {
        (
            required_column::<pg_sys::Oid>(&row, 1),
            required_column::<i16>(&row, 2),
        )
    })
    .collect()
}

/// Does a row of `relid`'s tree have a tenant value (`column`'s; `None`: any row) for which `found` holds? Read with
/// heap scans (src/pg/heap_scan.rs): these checks must see every tenant's rows, and no owner's code may run while they
/// do.
fn any_row(
    client: &SpiClient<'_>,
    relid: pg_sys::Oid,
    column: Option<&str>,
    found: impl Fn(Option<[u8; 16]>) -> bool,
) -> bool {
    let mut hit = false;
    for (leaf, attnum) in leaf_tables(client, relid, column) {
        heap_scan::scan(leaf, attnum, &[], heap_scan::Sees::Transaction, |row| {
            hit = found(row.tenant);
            if hit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if hit {
            break;
        }
    }
    hit
}

/// The distinct tenants named in `column` of `relid`'s tree, read with heap scans.
fn tenants_of(client: &SpiClient<'_>, relid: pg_sys::Oid, column: &str) -> Vec<Uuid> {
    let mut tenants = std::collections::BTreeSet::new();
    for (leaf, attnum) in leaf_tables(client, relid, Some(column)) {
        heap_scan::scan(leaf, attnum, &[], heap_scan::Sees::Transaction, |row| {
            if let Some(id) = row.tenant {
                tenants.insert(id);
            }
            ControlFlow::Continue(())
        });
    }
    tenants.into_iter().map(Uuid::from_bytes).collect()
}

fn run(client: &mut SpiClient<'_>, sql: &str) {
    execute(client, sql, &[]);
}

/// A table and every table below it (partitions at any depth, inheritance children), split into what row-level security
/// can protect and what it cannot.
pub struct TableTree {
    /// The table and every ordinary or partitioned table below it, the table first.
    pub members: Vec<TreeMember>,
    /// A foreign table below it, if there is one (row-level security cannot protect it).
    pub foreign: Option<String>,
}

pub struct TreeMember {
    pub relid: pg_sys::Oid,
    /// Schema-qualified, quoted name.
    pub name: String,
    /// The bare table name (for the generated index name).
    pub relname: String,
    /// An inheritance child (not a partition) below the top: indexes and foreign keys are not inherited by those.
    pub inheritance_child: bool,
    /// The table's owner, as whom it is changed (src/pg/privilege.rs).
    pub owner: pg_sys::Oid,
}

pub fn table_tree(client: &SpiClient<'_>, relid: pg_sys::Oid) -> TableTree {
    let mut tree = TableTree {
        members: Vec::new(),
        foreign: None,
    };
    let rows = crate::pg::spi_util::select(client, "WITH RECURSIVE down(relid, level) AS (
                 SELECT $1::oid, 0
                 UNION SELECT i.inhrelid, d.level + 1 FROM pg_inherits i JOIN down d ON i.inhparent = d.relid)
             SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind::text, d.level > 0 AND NOT c.relispartition,
                    c.relname::text, c.relowner
             FROM (SELECT relid, min(level) AS level FROM down GROUP BY relid) d
             JOIN pg_class c ON c.oid = d.relid JOIN pg_namespace n ON n.oid = c.relnamespace
             ORDER BY d.level, 2",
            None,
            &[relid.into()]);
    for row in rows {
        let name = required_column::<String>(&row, 2);
        match required_column::<String>(&row, 3).as_str() {
            "f" => tree.foreign = Some(name),
            _ => tree.members.push(TreeMember {
                relid: required_column::<pg_sys::Oid>(&row, 1),
                name,
                relname: required_column::<String>(&row, 5),
                inheritance_child: required_column::<bool>(&row, 4),
                owner: required_column::<pg_sys::Oid>(&row, 6),
            }),
        }
    }
    tree
}

/// Raise 42809 if the tree holds a foreign table: row-level security cannot protect it.
fn refuse_foreign_member(table: &str, tree: &TableTree) {
    if let Some(name) = &tree.foreign {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("cannot enable tenancy on {table}: its partition or child {name} is a foreign table"),
            "Row-level security cannot protect foreign tables; detach that table first.",
        );
    }
}

/// Raise 42501 if a table of the tree has another owner than its top: enrolling changes the tree with `ALTER TABLE`s
/// on the top that reach every table below it, run as the top's owner, which Postgres refuses for tables it does not
/// own. Said up front, with the fix, instead of as a bare "must be owner of table".
fn refuse_other_owners(table: &str, owner: pg_sys::Oid, tree: &TableTree) {
    let Some(other) = tree.members.iter().find(|m| m.owner != owner) else {
        return;
    };
    let owner_name = role_name(owner)
        .map(|n| quote_identifier(&n))
        .unwrap_or_default();
    Problem::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "cannot enable tenancy on {table}: {} below it has another owner",
            other.name
        ),
    )
    .detail("Every table of the tree is changed as the owner of its top table, which must own them all.")
    .hint(format!("Give the tree one owner first: ALTER TABLE {} OWNER TO {owner_name}", other.name))
    .raise();
}

/// Implementation of `nile.enable_tenancy(tbl regclass, tenant_column name DEFAULT 'tenant_id',
/// backfill_tenant uuid DEFAULT NULL) RETURNS void`.
#[pg_extern(volatile, parallel_unsafe, name = "_enable_tenancy")]
fn enable_tenancy(
    tbl: Option<pg_sys::Oid>,
    tenant_column: Option<&str>,
    backfill_tenant: Option<Uuid>,
) {
    let (relid, facts) = checked_table(tbl, "enable");
    // An administrator's decision that the table is shared (disable_tenancy) is reverted by an administrator only.
    if crate::pg::privilege::held_role("nile_admin").is_none() {
        let excluded = with_safe_search_path(|| {
            Spi::connect(|client| {
                query_bool(
                    client,
                    "SELECT EXISTS (SELECT 1 FROM nile.excluded_tables WHERE relid = $1::regclass)",
                    &[relid.into()],
                )
            })
        });
        if excluded {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "table {} was marked as shared by an administrator (nile.excluded_tables)",
                    facts.qualified
                ),
                "Only a member of nile_admin can enroll it again.",
            );
        }
    }
    let Some(column) = tenant_column.filter(|c| !c.is_empty()) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "tenant_column must be a column name",
            "Omit it to use tenant_id.",
        );
    };
    if let Some(backfill) = &backfill_tenant {
        match tenant_cache::status_of(backfill.as_bytes()) {
            Some(TenantStatus::Active | TenantStatus::Inactive) => {}
            Some(TenantStatus::Deleted) => raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "backfill tenant {} has been deleted",
                    format_uuid(backfill.as_bytes())
                ),
                "Backfill existing rows into an active tenant.",
            ),
            None => raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!(
                    "backfill tenant {} does not exist",
                    format_uuid(backfill.as_bytes())
                ),
                "Create it first with nile.create_tenant().",
            ),
        }
    }

    enroll(relid, &facts, column, backfill_tenant.as_ref());
}

/// Enroll an already-checked table (see `check_can_enroll`) and everything below it. Used by `nile.enable_tenancy()`
/// and by the DDL event trigger's automatic enrollment.
///
/// Every query over the table and every change to it runs as its owner in a security-restricted operation
/// (`as_table_owner_policed`; each table of the tree as its own owner): planning a query over the table evaluates its
/// owner's functions, which must never run with more rights than the owner has (issue 17, finding 1). Only the
/// registry, the list of tenants and `CREATE INDEX` (which builds as the owner itself) are touched with the extension's
/// rights.
pub fn enroll(relid: pg_sys::Oid, facts: &TableFacts, column: &str, backfill: Option<&Uuid>) {
    with_safe_search_path(|| {
        own_ddl(|| {
            Spi::connect_mut(|client| {
                let table = &facts.qualified;
                let col = quote_identifier(column);
                let tree = as_table_owner_policed(facts.owner, || {
                    // Block concurrent writes (and partitions being attached) while we look at the data and change it.
                    run(
                        client,
                        &format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"),
                    );
                    table_tree(client, relid)
                });
                refuse_foreign_member(table, &tree);
                refuse_other_owners(table, facts.owner, &tree);
                // Problems that exist already (drift made with the event triggers off, say) are not this enrolment's.
                let before = protection_problems(client, facts.owner, &tree);
                as_table_owner_policed(facts.owner, || {
                    let attnum = ensure_tenant_column(client, facts, relid, column, &col, backfill);
                    ensure_foreign_key(client, facts.owner, relid, table, column, attnum);
                    ensure_index(client, relid, table, &facts.relname, column, &col, attnum);
                });
                for member in &tree.members {
                    protect_member(client, member, column, &col);
                }
                as_extension_owner(|| {
                    register(client, relid, &tree.members, column);
                    execute(
                        client,
                        "DELETE FROM nile.excluded_tables WHERE relid = $1::oid::regclass",
                        &[relid.into()],
                    );
                });
                // The owner's code may have run inside the changes above (Postgres folds CHECK constraints while it
                // sets NOT NULL, for one), where the DDL event trigger does not look: whatever it did, every table of
                // the tree must come out protected.
                require_protected(client, facts.owner, &tree, &before);
            })
        })
    });
}

/// Raise 55000 if a tenant table of `owner` or a table of `tree` is unprotected, or a table below one of them is not a
/// tenant table (see `nile._protection_problems()` in sql/verify.sql), where it was not `before` the enrolment. The
/// owner's code may have run inside enrolment's changes, where the DDL event trigger does not look, and it may change
/// any table its owner owns.
fn require_protected(
    client: &SpiClient<'_>,
    owner: pg_sys::Oid,
    tree: &TableTree,
    before: &[String],
) {
    let problems: Vec<String> = protection_problems(client, owner, tree)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !problems.is_empty() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "a tenant table was left unprotected while a table was enrolled",
        )
        .detail(problems.join("; "))
        .hint("Something that ran during the enrollment (a function of the table's owner) changed the protection; nothing was kept.")
        .raise();
    }
}

/// What `require_protected` checks, as one line per problem (the tree's own, before it is protected, included).
fn protection_problems(
    client: &SpiClient<'_>,
    owner: pg_sys::Oid,
    tree: &TableTree,
) -> Vec<String> {
    let members: Vec<pg_sys::Oid> = tree.members.iter().map(|m| m.relid).collect();
    as_extension_owner(|| {
        crate::pg::spi_util::select(
            client,
            "SELECT p.object || ': ' || p.problem
             FROM nile.tenant_tables e JOIN pg_class c ON c.oid = e.relid::oid,
                  LATERAL nile._protection_problems(e.relid) p
             WHERE c.relowner = $1 OR e.relid::oid = ANY ($2)
             UNION ALL
             SELECT 'table ' || i.inhrelid::regclass::text || ': it is below tenant table ' || i.inhparent::regclass::text
                    || ' but not protected'
             FROM pg_inherits i JOIN nile.tenant_tables e ON e.relid::oid = i.inhparent JOIN pg_class c ON c.oid = i.inhparent
             WHERE (c.relowner = $1 OR i.inhparent = ANY ($2))
               AND NOT EXISTS (SELECT 1 FROM nile.tenant_tables x WHERE x.relid::oid = i.inhrelid)",
            None,
            &[owner.into(), members.into()],
        )
        .map(|row| required_column::<String>(&row, 1))
        .collect()
    })
}

/// Protect one table of a tenant tree, as its owner. Inheritance children do not inherit indexes, foreign keys or
/// defaults, so they get their own; partitions get them from their parent.
pub fn protect_member(client: &mut SpiClient<'_>, member: &TreeMember, column: &str, col: &str) {
    as_table_owner_policed(member.owner, || {
        if member.inheritance_child {
            let attnum = column_facts(client, member.relid, column)
                .map(|c| c.attnum)
                .unwrap_or(0);
            run(
                client,
                &format!(
                    "ALTER TABLE ONLY {} ALTER COLUMN {col} SET DEFAULT nile.current_tenant()",
                    member.name
                ),
            );
            ensure_foreign_key(
                client,
                member.owner,
                member.relid,
                &member.name,
                column,
                attnum,
            );
            ensure_index(
                client,
                member.relid,
                &member.name,
                &member.relname,
                column,
                col,
                attnum,
            );
        }
        protect(client, member.relid, &member.name, col);
    });
}

/// Make sure the tenant column exists as `uuid NOT NULL DEFAULT nile.current_tenant()`; returns its attnum.
fn ensure_tenant_column(
    client: &mut SpiClient<'_>,
    facts: &TableFacts,
    relid: pg_sys::Oid,
    column: &str,
    col: &str,
    backfill: Option<&Uuid>,
) -> i16 {
    let table = facts.qualified.as_str();
    let backfill_literal = backfill.map(|b| quote_literal(format_uuid(b.as_bytes())));
    match column_facts(client, relid, column) {
        Some(existing) if !existing.is_uuid => Problem::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "column {column} of table {table} is of type {}, not uuid",
                existing.type_name
            ),
        )
        .hint(format!(
            "Convert it first: ALTER TABLE {table} ALTER COLUMN {col} TYPE uuid USING {col}::uuid"
        ))
        .raise(),
        Some(existing) => {
            if any_row(client, relid, Some(column), |tenant| tenant.is_none()) {
                match &backfill_literal {
                    // Row changes fire the table's triggers: run them with the owner's rights and its tables'
                    // policies, not ours. A table that is enrolled already hides its rows without a tenant from the
                    // owner too (no tenant policy matches them): those cannot be backfilled in place.
                    Some(lit) => {
                        running_user_code(|| {
                            as_table_owner_policed(facts.owner, || {
                                run(client, &format!("UPDATE {table} SET {col} = {lit} WHERE {col} IS NULL"))
                            })
                        });
                        if any_row(client, relid, Some(column), |tenant| tenant.is_none()) {
                            raise(
                                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                                format!("rows of table {table} with no tenant cannot be backfilled: its row-level security hides them"),
                                format!("Take it out of tenancy first (SELECT nile.disable_tenancy('{table}')), then enroll it again with backfill_tenant."),
                            );
                        }
                    }
                    None => raise(
                        PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
                        format!("column {column} of table {table} has rows with no tenant"),
                        "Pass backfill_tenant => '<tenant uuid>' to assign those rows to one tenant.",
                    ),
                }
            }
            run(client, &format!("ALTER TABLE {table} ALTER COLUMN {col} SET NOT NULL, ALTER COLUMN {col} SET DEFAULT nile.current_tenant()"));
            existing.attnum
        }
        None => {
            let has_rows = any_row(client, relid, None, |_| true);
            match (&backfill_literal, has_rows) {
                (Some(lit), _) => {
                    // A constant default fills existing rows without rewriting the table; then switch the default.
                    run(client, &format!("ALTER TABLE {table} ADD COLUMN {col} uuid NOT NULL DEFAULT {lit}"));
                    run(client, &format!("ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT nile.current_tenant()"));
                }
                (None, false) => run(client, &format!("ALTER TABLE {table} ADD COLUMN {col} uuid NOT NULL DEFAULT nile.current_tenant()")),
                (None, true) => raise(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("table {table} has rows but no column {column}"),
                    format!("Name the tenant that owns the existing rows: SELECT nile.enable_tenancy('{table}', backfill_tenant => '<tenant uuid>')"),
                ),
            }
            column_facts(client, relid, column)
                .map(|c| c.attnum)
                .unwrap_or(0)
        }
    }
}

/// Give the table the foreign key to `nile.tenants`, as its owner (the caller runs this inside
/// `as_table_owner_policed`).
fn ensure_foreign_key(
    client: &mut SpiClient<'_>,
    owner: pg_sys::Oid,
    relid: pg_sys::Oid,
    table: &str,
    column: &str,
    attnum: i16,
) {
    let col = &quote_identifier(column);
    let has_fk = query_bool(
        client,
        "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1 AND contype = 'f'
                          AND confrelid = 'nile.tenants'::regclass AND conkey = ARRAY[$2]::int2[])",
        &[relid.into(), attnum.into()],
    );
    if has_fk {
        return;
    }
    // Name the first missing tenant instead of letting the constraint fail with a row dump: the table's tenants are
    // read with heap scans, and looked up in nile.tenants (whose policies hide them from the owner) with our rights.
    let tenants = tenants_of(client, relid, column);
    let orphan = as_extension_owner(|| {
        first_value::<String>(
            client,
            "SELECT u::text FROM unnest($1::uuid[]) u WHERE NOT EXISTS (SELECT 1 FROM nile.tenants t WHERE t.id = u) LIMIT 1",
            &[tenants.into()],
        )
    });
    if let Some(orphan) = orphan {
        raise(
            PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION,
            format!("table {table} has rows for tenant {orphan}, which is not in nile.tenants"),
            format!(
                "Create that tenant first: SELECT nile.create_tenant('<name>', id => '{orphan}')"
            ),
        );
    }
    // A foreign key needs its creator to hold REFERENCES on nile.tenants, which table owners are not given (it would
    // let them hold up tenant purges with foreign keys of their own). The owner holds it only for this one statement,
    // inside this transaction: nobody else can see the grant, and a failure rolls it back with everything else.
    let granted = !query_bool(
        client,
        "SELECT has_column_privilege($1, 'nile.tenants'::regclass, 'id', 'REFERENCES')",
        &[owner.into()],
    );
    let Some(owner_name) = role_name(owner).map(|n| quote_identifier(&n)) else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("the owner of table {table} does not exist"),
        )
        .raise()
    };
    let before_fks: Vec<pg_sys::Oid> = crate::pg::spi_util::select(
        client,
        "SELECT oid FROM pg_constraint WHERE confrelid = 'nile.tenants'::regclass AND contype = 'f'",
        None,
        &[],
    )
    .map(|row| required_column::<pg_sys::Oid>(&row, 1))
    .collect();
    if granted {
        as_extension_owner(|| {
            run(
                client,
                &format!("GRANT REFERENCES (id) ON nile.tenants TO {owner_name}"),
            )
        });
    }
    run(client, &format!("ALTER TABLE {table} ADD CONSTRAINT nile_tenant_fk FOREIGN KEY ({col}) REFERENCES nile.tenants (id)"));
    if granted {
        as_extension_owner(|| {
            run(
                client,
                &format!("REVOKE REFERENCES (id) ON nile.tenants FROM {owner_name}"),
            )
        });
    }
    if granted {
        // While the owner held REFERENCES, the validation may have planned a query as the owner (an owner that
        // bypasses row-level security validates with one query): no foreign key to nile.tenants but this one's may
        // have come of it.
        let extra = as_extension_owner(|| {
            first_value::<String>(
                client,
                "SELECT format('%I on %s', conname, conrelid::regclass) FROM pg_constraint
                 WHERE confrelid = 'nile.tenants'::regclass AND contype = 'f' AND oid <> ALL ($1)
                   AND NOT (conname = 'nile_tenant_fk' AND (conrelid = $2 OR conparentid <> 0))
                 LIMIT 1",
                &[before_fks.clone().into(), relid.into()],
            )
        });
        if let Some(extra) = extra {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "foreign key {extra} to nile.tenants was created while a table was enrolled"
                ),
                "Table owners may not reference nile.tenants themselves; nothing was kept.",
            );
        }
    }
}

fn ensure_index(
    client: &mut SpiClient<'_>,
    relid: pg_sys::Oid,
    table: &str,
    relname: &str,
    column: &str,
    col: &str,
    attnum: i16,
) {
    let has_index = query_bool(
        client,
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1 AND indkey[0] = $2)",
        &[relid.into(), attnum.into()],
    );
    if has_index {
        return;
    }
    let name = generated_index_name(relname, column);
    // If that name is taken (or cannot be formed), let Postgres choose a free one.
    let taken = name.as_deref().is_none_or(|name| {
        query_bool(
            client,
            "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1 AND relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $2))",
            &[name.into(), relid.into()],
        )
    });
    let name_clause = match (&name, taken) {
        (Some(name), false) => quote_identifier(name),
        _ => String::new(),
    };
    // In the table's own tablespace, not in the caller's default_tablespace, which it may have no right to create in
    // (the extension's rights would otherwise stand in for the caller's): a table in the database's default tablespace
    // gets its index there too (Postgres refuses to name that one for a partitioned table).
    let tablespace = first_value::<String>(
        client,
        "SELECT ' TABLESPACE ' || quote_ident(t.spcname) FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace
         WHERE c.oid = $1",
        &[relid.into()],
    )
    .unwrap_or_default();
    // As the extension, so that an owner who may no longer create objects in the table's schema still gets the index;
    // CREATE INDEX builds it as the table's owner in a security-restricted operation itself, and the index has no
    // expression of anybody's.
    as_extension_owner(|| {
        // Restored when as_extension_owner's nesting level ends.
        set_setting(c"default_tablespace", c"", Scope::Level);
        run(
            client,
            &format!("CREATE INDEX {name_clause} ON {table} ({col}){tablespace}"),
        )
    });
}

/// `nile_<table>_<column>_idx`, with the table part shortened to fit Postgres' 63-byte identifier limit.
fn generated_index_name(relname: &str, column: &str) -> Option<String> {
    let room = 63usize.checked_sub("nile__".len() + column.len() + "_idx".len())?;
    let mut table_part = String::new();
    for ch in relname.chars() {
        if table_part.len() + ch.len_utf8() > room {
            break;
        }
        table_part.push(ch);
    }
    (!table_part.is_empty()).then(|| format!("nile_{table_part}_{column}_idx"))
}

/// ENABLE + FORCE row-level security and (re)create the four nile_tenant_* policies on one table.
fn protect(client: &mut SpiClient<'_>, relid: pg_sys::Oid, table: &str, col: &str) {
    run(
        client,
        &format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"),
    );
    drop_generated_policies(client, relid, table);
    // A library newer than the extension's SQL (between a server restart and ALTER EXTENSION UPDATE) generates the
    // policies that SQL version knows.
    let foreign_row_check = query_bool(
        client,
        "SELECT to_regprocedure('nile.policy_foreign_row(uuid)') IS NOT NULL",
        &[],
    );
    for (suffix, command, using, check) in POLICIES {
        let mut sql = format!("CREATE POLICY {POLICY_PREFIX}{suffix} ON {table} AS PERMISSIVE FOR {command} TO PUBLIC");
        if let Some(f) = using {
            sql.push_str(&format!(" USING ({col} = {f})"));
        }
        match check {
            // The second half runs only for a row of another tenant, to raise NT005 (src/context/tenant.rs,
            // policy_foreign_row).
            Some(f) if foreign_row_check => sql.push_str(&format!(
                " WITH CHECK ({col} = {f} OR nile.policy_foreign_row({col}))"
            )),
            Some(f) => sql.push_str(&format!(" WITH CHECK ({col} = {f})")),
            None => {}
        }
        run(client, &sql);
    }
}

/// Drop every nile_tenant_* policy on the table (the generated ones, and any look-alike that would confuse them).
fn drop_generated_policies(client: &mut SpiClient<'_>, relid: pg_sys::Oid, table: &str) {
    let existing: Vec<String> = crate::pg::spi_util::select(client, "SELECT polname::text FROM pg_policy WHERE polrelid = $1 AND starts_with(polname::text, $2)",
            None,
            &[relid.into(), POLICY_PREFIX.into()])
        .map(|row| required_column::<String>(&row, 1))
        .collect();
    for name in existing {
        run(
            client,
            &format!("DROP POLICY {} ON {table}", quote_identifier(&name)),
        );
    }
}

pub fn register(
    client: &mut SpiClient<'_>,
    root: pg_sys::Oid,
    members: &[TreeMember],
    column: &str,
) {
    for member in members {
        let member = member.relid;
        let parent = if member == root { None } else { Some(root) };
        execute(
            client,
            "INSERT INTO nile.tenant_tables (relid, tenant_column, parent, enabled_by)
             VALUES ($1::oid::regclass, $2, $3::oid::regclass, session_user)
             ON CONFLICT (relid) DO UPDATE SET tenant_column = EXCLUDED.tenant_column, parent = EXCLUDED.parent",
            &[member.into(), column.into(), parent.into()],
        );
    }
}

/// Implementation of `nile.disable_tenancy(tbl regclass) RETURNS void`: removes the nile_tenant_* policies (and row
/// level security, unless other policies remain) from the table and everything below it, drops them from the registry
/// and records the table in `nile.excluded_tables`, so that neither the DDL event trigger nor `nile.verify()` treats
/// it as a tenant table that was forgotten. The tenant column, its foreign key, its index and all rows stay.
#[pg_extern(volatile, parallel_unsafe, name = "_disable_tenancy")]
fn disable_tenancy(tbl: Option<pg_sys::Oid>) {
    let (relid, facts) = checked_table(tbl, "disable");
    as_extension_owner(|| {
        own_ddl(|| {
            Spi::connect_mut(|client| {
                let enrolled = query_bool(
                    client,
                    "SELECT EXISTS (SELECT 1 FROM nile.tenant_tables WHERE relid = $1::oid::regclass)",
                    &[relid.into()],
                );
                if enrolled {
                    for member in table_tree(client, relid).members {
                        unprotect(client, &member);
                    }
                } else {
                    Problem::new(
                        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                        format!(
                            "table {} is not a tenant table; it is now excluded from automatic enrollment",
                            facts.qualified
                        ),
                    )
                    .notice();
                }
                execute(
                    client,
                    "INSERT INTO nile.excluded_tables (relid, excluded_by) VALUES ($1::oid::regclass, session_user)
                     ON CONFLICT (relid) DO NOTHING",
                    &[relid.into()],
                );
            })
        })
    });
}

/// Take one table of a tree out of tenancy, as its owner: its generated policies, row-level security (unless it has
/// policies of its own) and its registry entry.
fn unprotect(client: &mut SpiClient<'_>, member: &TreeMember) {
    let name = &member.name;
    as_table_owner_policed(member.owner, || {
        drop_generated_policies(client, member.relid, name);
        let other_policies = query_bool(
            client,
            "SELECT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = $1)",
            &[member.relid.into()],
        );
        if other_policies {
            Problem::new(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("row-level security stays enabled on {name}: it has policies of its own"),
            )
            .notice();
        } else {
            run(
                client,
                &format!(
                    "ALTER TABLE {name} NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY"
                ),
            );
        }
    });
    as_extension_owner(|| {
        execute(
            client,
            "DELETE FROM nile.tenant_tables WHERE relid = $1::oid::regclass",
            &[member.relid.into()],
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_are_the_prefix_and_each_generated_suffix() {
        let built: Vec<String> = POLICIES
            .iter()
            .map(|(suffix, ..)| format!("{POLICY_PREFIX}{suffix}"))
            .collect();
        assert_eq!(built, POLICY_NAMES);
    }
}
