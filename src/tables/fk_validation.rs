//! tables/fk_validation — foreign keys: validated over every row of every tenant, never over one tenant's view; and
//! none to `nile.tenants` can run its creator's code with the rights of that table's owner (issue 18).
//!
//! When `ALTER TABLE … ADD FOREIGN KEY` (or `VALIDATE CONSTRAINT`, or an `ATTACH PARTITION` that clones one) checks
//! the existing rows, Postgres first tries one `LEFT JOIN` query run as the current user (`RI_Initial_Check`). It
//! skips that query when row-level security would apply to the user, but it decides so by ownership alone, and forced
//! row-level security (which nile_tenancy puts on every tenant table) applies to owners too. So the query of a table
//! owner ran under the tenant policies: without a tenant context it failed ("no tenant context is set"), and inside
//! one it saw one tenant's rows and marked the constraint valid while another tenant's row dangled.
//!
//! Design: an `ExecutorCheckPerms_hook`. `RI_Initial_Check` is the one caller in Postgres 14–18 that asks for the
//! permission check without raising (`ereport_on_violation = false`), and Postgres treats a "no" as "use the fallback":
//! validating row by row, each row's lookup run as the referenced table's owner with forced row-level security
//! lifted for it (`SECURITY_NOFORCE_RLS`), which sees every row. The hook answers "no" exactly when row-level security
//! would apply to the current user on one of the two tables (`check_enable_rls`, which knows about FORCE), and defers
//! to the previous hook, or says "yes", otherwise: superusers and BYPASSRLS roles keep the one-query validation.
//! Cost: the row-by-row validation is slower on big tables (docs/performance.md); nothing else is affected, since
//! every other permission check asks to raise and is passed on untouched.
//!
//! Foreign keys to `nile.tenants` (members of `nile_table_owner` may write them, examples/role_layout.sql): each row's
//! lookup runs as the owner of `nile.tenants`, a superuser, and compares `id = $1::uuid`. If the referencing column
//! had a type of its own with a cast to uuid, the cast's function (its creator's code) would run there with a
//! superuser's rights, before any check after the command could refuse it (the lookup writes `$1::uuid`, which applies
//! an explicit cast too, once the key exists). So nobody but a superuser may create a cast to uuid that runs a
//! function: a check before each utility statement (src/pg/hook_chain.rs) refuses `CREATE CAST` before it runs, and the
//! DDL event trigger refuses it at the end of the command in a session where the library was not loaded yet (without
//! `shared_preload_libraries`, the hook is not installed before the first call into the extension). `nile.verify()`
//! reports such a cast, and a foreign key to `nile.tenants` from a column that is not uuid.

use crate::pg::errors::Problem;
use pgrx::prelude::*;

static mut PREV_CHECK_PERMS: pg_sys::ExecutorCheckPerms_hook_type = None;

pub(super) fn init() {
    // SAFETY: _PG_init runs once per process before any query; the previous hook is saved and called by ours.
    unsafe {
        PREV_CHECK_PERMS = pg_sys::ExecutorCheckPerms_hook;
        pg_sys::ExecutorCheckPerms_hook = Some(check_perms);
    }
    crate::pg::hook_chain::check_before_running(refuse_cast_statement);
}

/// The utility check (src/pg/hook_chain.rs): `CREATE CAST` goes to `refuse_function_cast_to_uuid`.
///
/// # Safety
/// `stmt` must be the valid parse tree of the utility statement about to run.
unsafe fn refuse_cast_statement(stmt: *mut pg_sys::Node) {
    // SAFETY (caller): a valid node, whose tag tells its type.
    unsafe {
        if (*stmt).type_ == pg_sys::NodeTag::T_CreateCastStmt {
            refuse_function_cast_to_uuid(stmt.cast());
        }
    }
}

/// Raise 42501 for a `CREATE CAST (… AS uuid) WITH FUNCTION …` by a role that is not a superuser. `WITHOUT FUNCTION`
/// / `WITH INOUT` casts run no code of their creator's (type input and output functions are C, a superuser's).
///
/// # Safety
/// `stmt` must be the CreateCastStmt Postgres is about to run, or has just run.
pub unsafe fn refuse_function_cast_to_uuid(stmt: *mut pg_sys::CreateCastStmt) {
    // SAFETY: the statement's fields are valid nodes; LookupTypeNameOid with missing_ok answers InvalidOid for a type
    // that does not exist (CREATE CAST then raises its own error); superuser() reads the current user's role.
    let refused = unsafe {
        !(*stmt).func.is_null()
            && pg_sys::LookupTypeNameOid(std::ptr::null_mut(), (*stmt).targettype, true)
                == pg_sys::UUIDOID
            && !pg_sys::superuser()
    };
    if refused {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only a superuser may create a cast to uuid that runs a function",
        )
        .detail("A foreign key from a column of the source type to nile.tenants would run the cast's function with the rights of the owner of nile.tenants, a superuser.")
        .hint("Store the value as uuid, or convert it with a function you call where you need it.")
        .raise();
    }
}

/// Whether row-level security applies to the current user on one of the relations of `range_table`.
///
/// # Safety
/// `range_table` must be a valid List of RangeTblEntry (or NIL), as Postgres passes it to the hook.
unsafe fn row_security_applies(range_table: *mut pg_sys::List) -> bool {
    // SAFETY: the caller passes Postgres' range table; its cells are RangeTblEntry pointers.
    let entries = unsafe { pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg(range_table) };
    let applies = entries.iter_ptr().any(|rte| {
        // SAFETY: every cell of a range table points at a valid RangeTblEntry; check_enable_rls reads the catalogs
        // (noError: never raises for a missing BYPASSRLS, it answers).
        unsafe {
            (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION
                && pg_sys::check_enable_rls((*rte).relid, pg_sys::InvalidOid, true)
                    == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        }
    });
    applies
}

#[cfg(any(feature = "pg14", feature = "pg15"))]
#[pg_guard]
unsafe extern "C-unwind" fn check_perms(
    range_table: *mut pg_sys::List,
    ereport_on_violation: bool,
) -> bool {
    // SAFETY: Postgres passes its range table; the hook is only called from the executor's permission check.
    if !ereport_on_violation && unsafe { row_security_applies(range_table) } {
        return false;
    }
    // SAFETY: the previous hook gets the arguments Postgres gave ours.
    unsafe {
        match PREV_CHECK_PERMS {
            Some(prev) => prev(range_table, ereport_on_violation),
            None => true,
        }
    }
}

#[cfg(not(any(feature = "pg14", feature = "pg15")))]
#[pg_guard]
unsafe extern "C-unwind" fn check_perms(
    range_table: *mut pg_sys::List,
    rte_perm_infos: *mut pg_sys::List,
    ereport_on_violation: bool,
) -> bool {
    // SAFETY: Postgres passes its range table; the hook is only called from the executor's permission check.
    if !ereport_on_violation && unsafe { row_security_applies(range_table) } {
        return false;
    }
    // SAFETY: the previous hook gets the arguments Postgres gave ours.
    unsafe {
        match PREV_CHECK_PERMS {
            Some(prev) => prev(range_table, rte_perm_infos, ereport_on_violation),
            None => true,
        }
    }
}
