//! context/tenant — putting a session into a tenant's context, and the functions the generated policies call.
//!
//! `nile.set_tenant()` validates the tenant and applies it through the guarded `nile.tenant_id` setting (see
//! src/context/guard.rs). The policies compare the tenant column with `(SELECT nile.policy_read_tenant())` or `(SELECT
//! nile.policy_write_tenant())`: STABLE, PARALLEL SAFE functions returning `uuid`, called through an InitPlan, so they
//! run once per statement and the comparison is an index condition (see src/tables/enrolment.rs).
//! They are also where fail-closed behaviour lives: no context means an error (or, with `nile.missing_tenant =
//! 'deny'`, NULL, which matches no row and fails every WITH CHECK); a deleted tenant means an error; an inactive
//! tenant may read but not write.

use super::guard;
use crate::context::role_binding::{bound_tenant, refuse_if_bound};
use crate::context::tenant_cache::{self, require_usable_tenant, TenantStatus};
use crate::pg::backend_local::BackendLocal;
use crate::pg::errors::{raise, NileCode, Problem};
use crate::pg::privilege::in_transaction_block;
use crate::settings::{self, MissingTenant};
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::Cell;

/// `nile.set_tenant(tenant_id uuid, is_local boolean DEFAULT true) RETURNS uuid`
#[pg_extern(volatile, parallel_unsafe)]
fn set_tenant(tenant_id: Option<Uuid>, is_local: default!(Option<bool>, true)) -> Uuid {
    let Some(tenant_id) = tenant_id else {
        Problem::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "tenant_id must not be NULL",
        )
        .hint("To leave the tenant context, call nile.clear_tenant().")
        .raise();
    };
    let Some(is_local) = is_local else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "is_local must not be NULL",
            "Pass true (the default) or false.",
        );
    };
    enter_tenant(*tenant_id.as_bytes(), None, is_local, false);
    tenant_id
}

/// `nile.set_tenant_read_only(tenant_id uuid) RETURNS uuid`: enter the tenant's context for the rest of the current
/// transaction and make that transaction read-only, for a unit of work that sends its context and one read together
/// with no BEGIN (a pipeline or a multi-statement query ends such a transaction at its end, committing nothing). Every
/// check of `nile.set_tenant()` applies but the transaction block's; READ COMMITTED only (see `enter_read_only`).
#[pg_extern(volatile, parallel_unsafe)]
fn set_tenant_read_only(tenant_id: Option<Uuid>) -> Uuid {
    let tenant_id = crate::pg::errors::require_not_null(tenant_id, "tenant_id");
    enter_read_only(*tenant_id.as_bytes(), None, false);
    tenant_id
}

/// `nile._enter_tenant_for_routine(tenant_id uuid) RETURNS void`, for the extension's own PL/pgSQL routines
/// (`nile.for_each_tenant()`, `nile.import_schema()`): enter the tenant until the end of the transaction (or of the
/// subtransaction, if it rolls back), without `nile.set_tenant()`'s transaction-block check (a `CALL` outside `BEGIN`
/// runs its transactions outside a block, but the procedure ends them itself). Every other check applies. The routines
/// leave the context with `nile.clear_tenant()` when they are done. For members of `nile_admin` only.
#[pg_extern(volatile, parallel_unsafe)]
fn _enter_tenant_for_routine(tenant_id: Option<Uuid>) {
    crate::pg::privilege::require_role("nile_admin", "nile._enter_tenant_for_routine()");
    let tenant_id = crate::pg::errors::require_not_null(tenant_id, "tenant_id");
    enter_tenant_checked(*tenant_id.as_bytes(), None, true, Entry::Routine);
}

/// `nile._require_no_transaction_block(routine text) RETURNS void`: raise 25001 inside `BEGIN ... COMMIT`, where a
/// procedure that commits as it goes (`nile.for_each_tenant()`) cannot run.
#[pg_extern(volatile, parallel_unsafe)]
fn _require_no_transaction_block(routine: Option<&str>) {
    if in_transaction_block() {
        let routine = routine.unwrap_or("this procedure");
        Problem::new(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!("{routine} cannot run inside a transaction block"),
        )
        .detail("It commits after every batch, which is only possible when CALL is a statement of its own.")
        .hint("Run the CALL on its own, outside BEGIN ... COMMIT (with autocommit on in your client).")
        .raise();
    }
}

/// Put the session into tenant `id`'s context (with the user id of a token, if any), after every check:
/// `is_local` needs a transaction block, a session under `nile.require_token` needs a token, and the tenant must exist
/// and not be deleted.
pub(super) fn enter_tenant(id: [u8; 16], user: Option<&str>, is_local: bool, by_token: bool) {
    let entry = if by_token {
        Entry::SetTenantToken
    } else {
        Entry::SetTenant
    };
    enter_tenant_checked(id, user, is_local, entry);
}

/// The function a context is entered through: named in errors, and deciding which checks apply.
#[derive(Clone, Copy)]
enum Entry {
    SetTenant,
    SetTenantToken,
    SetTenantReadOnly,
    SetTenantTokenReadOnly,
    /// `nile._enter_tenant_for_routine()`: no transaction-block check.
    Routine,
}

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::SetTenant | Entry::Routine => "nile.set_tenant()",
            Entry::SetTenantToken => "nile.set_tenant_token()",
            Entry::SetTenantReadOnly => "nile.set_tenant_read_only()",
            Entry::SetTenantTokenReadOnly => "nile.set_tenant_token_read_only()",
        }
    }

    fn by_token(self) -> bool {
        matches!(self, Entry::SetTenantToken | Entry::SetTenantTokenReadOnly)
    }

    /// Whether a transaction-local context needs an explicit transaction block (the read-only ones may be entered in
    /// an implicit transaction, which they end with; the routines end their transactions themselves).
    fn needs_block(self) -> bool {
        matches!(self, Entry::SetTenant | Entry::SetTenantToken)
    }
}

/// Enter tenant `id`'s context for the transaction, which becomes read-only (`SET LOCAL transaction_read_only = on`,
/// after every check of `enter_tenant` but the transaction block's). The transaction may be an implicit one (a pipeline
/// without BEGIN, ended by its Sync): it writes nothing, so ending it early loses nothing, and the context ends with
/// it: src/context/read_only.rs refuses the commit of one that wrote or hid a refusal all the same. Only at READ
/// COMMITTED (or READ UNCOMMITTED, the same in PostgreSQL), where every statement takes a snapshot of its own: at
/// REPEATABLE READ or SERIALIZABLE a unit of work's statements must share one transaction, so this raises 25000 and
/// the caller uses BEGIN.
pub(super) fn enter_read_only(id: [u8; 16], user: Option<&str>, by_token: bool) {
    let entry = if by_token {
        Entry::SetTenantTokenReadOnly
    } else {
        Entry::SetTenantReadOnly
    };
    // SAFETY: reads the backend's current isolation level, a plain global set at transaction start.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            format!("{} needs the READ COMMITTED isolation level", entry.name()),
        )
        .detail("It lets a read run in a transaction of its own; at REPEATABLE READ or SERIALIZABLE the statements of a unit of work must share one snapshot.")
        .hint("Enter the context with nile.set_tenant() inside BEGIN ... COMMIT.")
        .raise();
    }
    enter_tenant_checked(id, user, true, entry);
    crate::pg::guc::set_own_setting(
        c"transaction_read_only",
        c"on",
        crate::pg::guc::Scope::Transaction,
    );
    super::read_only::begin();
}

fn enter_tenant_checked(id: [u8; 16], user: Option<&str>, is_local: bool, entry: Entry) {
    let by_token = entry.by_token();
    refuse_if_bound(entry.name());
    // SAFETY: superuser() reads the current user's catalog entry.
    if !is_local && !settings::allow_session_scope() && !unsafe { pg_sys::superuser() } {
        Problem::nile(
            NileCode::SessionScopeRefused,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "this session may not enter a tenant's context for the whole session",
        )
        .detail("nile.allow_session_scope is off for this session (set for its role by a superuser): a context kept beyond the transaction would reach the next client of a pooled connection.")
        .hint("Enter the context inside each transaction: BEGIN; SELECT nile.set_tenant(...); ...; COMMIT.")
        .raise();
    }
    if is_local && entry.needs_block() && !in_transaction_block() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            format!(
                "{} with is_local => true must be called inside a transaction block",
                entry.name()
            ),
        )
        .detail("Outside BEGIN ... COMMIT the tenant context would end with this statement and protect nothing.")
        .hint("Run BEGIN first and enter the context inside the transaction: it ends with the transaction, which is what a connection pool needs.")
        .raise();
    }
    // SAFETY: superuser() reads the current user's catalog entry.
    if !by_token && settings::require_token() && !unsafe { pg_sys::superuser() } {
        Problem::nile(
            NileCode::TokenRequired,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "this session may enter a tenant's context only with a signed token",
        )
        .detail("nile.require_token is on for this session (set for its role by a superuser).")
        .hint("Call SELECT nile.set_tenant_token('<token>') with a token from your auth service.")
        .raise();
    }
    refuse_if_bypassing_rls();
    require_usable_tenant(&id);
    guard::set_tenant_context(Some(id), user, is_local);
}

/// The last role `refuse_if_bypassing_rls` looked up, and whether it refuses it (BYPASSRLS without superuser):
/// one catalog lookup per role instead of two per call. Forgotten whenever any role's pg_authid row changes.
static REFUSED_FOR_BYPASSING_RLS: BackendLocal<Cell<Option<(pg_sys::Oid, bool)>>> =
    BackendLocal::new(Cell::new(None));

/// Registers the invalidation of the BYPASSRLS answer (called from `context::init()`).
pub(super) fn init() {
    // SAFETY: registering a callback during _PG_init; the callback only clears a cell and never raises an ERROR.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::AUTHOID as _,
            Some(role_changed),
            pg_sys::Datum::from(0),
        )
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn role_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    REFUSED_FOR_BYPASSING_RLS.with(|c| c.set(None));
}

/// A role with BYPASSRLS (but not a superuser, who is exempt on purpose) gets 42501 instead of a tenant context that
/// would isolate nothing: row-level security never applies to it, so it would go on seeing every tenant's rows.
fn refuse_if_bypassing_rls() {
    let role = crate::pg::unguarded::current_user_id();
    let refused = match REFUSED_FOR_BYPASSING_RLS.with(Cell::get) {
        Some((cached, refused)) if cached == role => refused,
        _ => {
            // SAFETY: the current user exists; superuser_arg and has_bypassrls_privilege read its catalog entry.
            let refused =
                unsafe { pg_sys::has_bypassrls_privilege(role) && !pg_sys::superuser_arg(role) };
            REFUSED_FOR_BYPASSING_RLS.with(|c| c.set(Some((role, refused))));
            refused
        }
    };
    if refused {
        let name = crate::pg::privilege::role_name(role).unwrap_or_default();
        Problem::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("role \"{name}\" has BYPASSRLS: a tenant context would not isolate it"),
        )
        .detail("Row-level security never applies to a role with BYPASSRLS, so it would still see every tenant's rows.")
        .hint(format!("Do tenant work with a role without BYPASSRLS (ALTER ROLE \"{name}\" NOBYPASSRLS)."))
        .raise();
    }
}

/// `nile.clear_tenant() RETURNS void`: leave the tenant context (for the session, or until ROLLBACK undoes it).
#[pg_extern(volatile, parallel_unsafe)]
fn clear_tenant() {
    refuse_if_bound("nile.clear_tenant()");
    guard::set_tenant_context(None, None, false);
}

/// `nile.current_tenant() RETURNS uuid`: the session's tenant, or NULL when it has none.
#[pg_extern(stable, parallel_safe)]
fn current_tenant() -> Option<Uuid> {
    effective_tenant().map(Uuid::from_bytes)
}

/// The tenant this session works for: the one being purged while `nile.delete_tenant(purge => true)` deletes its rows,
/// else the one its role is bound to (nile.bind_role()), else its tenant context.
pub fn effective_tenant() -> Option<[u8; 16]> {
    purging_tenant()
        .or_else(bound_tenant)
        .or_else(guard::current_tenant)
}

/// The tenant whose rows `while_purging` is deleting.
static PURGING_TENANT: BackendLocal<std::cell::Cell<Option<[u8; 16]>>> =
    BackendLocal::new(std::cell::Cell::new(None));

fn purging_tenant() -> Option<[u8; 16]> {
    PURGING_TENANT.with(|p| p.get())
}

/// Run `f` (the deletes of a purge) in tenant `id`'s context whatever its status (a purged tenant is often deleted
/// already), so that the tenant policies, which stay forced, let the deletes and the table owners' triggers see that
/// tenant's rows and no other's. Ends when `f` returns or raises; nothing but the policies' functions and
/// `nile.current_tenant()` sees it.
pub fn while_purging<R>(id: [u8; 16], f: impl FnOnce() -> R) -> R {
    struct Reset(Option<[u8; 16]>);
    impl Drop for Reset {
        fn drop(&mut self) {
            PURGING_TENANT.with(|p| p.set(self.0));
        }
    }
    let _reset = Reset(PURGING_TENANT.with(|p| p.replace(Some(id))));
    f()
}

/// The tenant whose rows a statement may read: used by the generated `nile_tenant_select` policies.
#[pg_extern(stable, parallel_safe)]
fn policy_read_tenant() -> Option<Uuid> {
    let id = effective_tenant().or_else(missing_context)?;
    if purging_tenant() == Some(id) {
        return Some(Uuid::from_bytes(id));
    }
    match tenant_cache::status_of(&id) {
        Some(TenantStatus::Active | TenantStatus::Inactive) => Some(Uuid::from_bytes(id)),
        _ => tenant_gone(&id),
    }
}

/// The tenant whose rows a statement may write: used by the generated insert, update and delete policies.
#[pg_extern(stable, parallel_safe)]
fn policy_write_tenant() -> Option<Uuid> {
    let id = effective_tenant().or_else(missing_context)?;
    if purging_tenant() == Some(id) {
        return Some(Uuid::from_bytes(id));
    }
    match tenant_cache::status_of(&id) {
        Some(TenantStatus::Active) => Some(Uuid::from_bytes(id)),
        Some(TenantStatus::Inactive) => Problem::nile(
            NileCode::TenantInactive,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "tenant {} is inactive: its rows can be read but not written",
                tenant_cache::describe(&id)
            ),
        )
        .hint("An administrator can reactivate it with nile.reactivate_tenant().")
        .raise(),
        _ => tenant_gone(&id),
    }
}

/// `nile.policy_foreign_row(row_tenant uuid) RETURNS boolean`: the second half of the generated policies' `WITH CHECK
/// (tenant_id = (SELECT nile.policy_write_tenant()) OR nile.policy_foreign_row(tenant_id))`, so evaluated only for a
/// row whose tenant is not the context's (never for the rows that pass, which cost nothing more). It raises NT005, so
/// that the application gets a code of its own instead of Postgres' 42501 "new row violates row-level security
/// policy"; where there is no tenant to compare with (`nile.missing_tenant = deny`) it answers false and leaves the
/// refusal to Postgres. The message names the transaction's own tenant only.
#[pg_extern(stable, parallel_safe)]
fn policy_foreign_row(row_tenant: Option<Uuid>) -> bool {
    let Some(id) = effective_tenant() else {
        return false;
    };
    if row_tenant.as_ref().map(|t| *t.as_bytes()) == Some(id) {
        // The context changed after the statement computed its write tenant (a function calling set_tenant() inside
        // the statement): not this half's to allow; Postgres refuses the row (42501).
        return false;
    }
    Problem::nile(
        NileCode::OtherTenantRow,
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "new row does not belong to tenant {}, the tenant of this transaction",
            tenant_cache::describe(&id)
        ),
    )
    .detail(if row_tenant.is_none() {
        "Its tenant column is NULL."
    } else {
        "Its tenant column names another tenant."
    })
    .hint("Leave the tenant column to its default, nile.current_tenant(), or write this transaction's tenant id.")
    .raise()
}

fn missing_context() -> Option<[u8; 16]> {
    match settings::missing_tenant() {
        MissingTenant::Deny => None,
        MissingTenant::Error => Problem::nile(
            NileCode::NoTenantContext,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "no tenant context is set",
        )
            .detail("Tables enrolled with nile.enable_tenancy() are only accessible in a tenant's context.")
            .hint("Call SELECT nile.set_tenant('<tenant uuid>') inside the transaction first (members of nile_admin may use nile.admin_context('<reason>') for cross-tenant work).")
            .raise(),
    }
}

fn tenant_gone(id: &[u8; 16]) -> ! {
    Problem::nile(
        NileCode::TenantDeleted,
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "tenant {} has been deleted: its rows are no longer accessible",
            tenant_cache::describe(id)
        ),
    )
    .hint("Call nile.clear_tenant() or switch to another tenant with nile.set_tenant().")
    .raise()
}
