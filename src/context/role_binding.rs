//! context/role_binding — tenant-bound roles: `nile.bind_role(role, tenant_id)` fixes every session of a role to one
//! tenant, `nile.unbind_role(role)` releases it.
//!
//! The bindings live in `nile.role_bindings`. A session is bound when its session user (the role it logged in as) is
//! bound, or else when its current outer role (after `SET ROLE`) is: the session user's binding wins, so a bound login
//! cannot leave its tenant by `SET ROLE`, and a `SECURITY DEFINER` function it calls still works for its tenant. The
//! policy functions ask `bound_tenant()` on every statement, so the bindings are cached per backend, read straight
//! from the table (no SPI, works in parallel workers) and dropped when a statement trigger on the table sends a
//! relcache invalidation, as for `nile.tenants` (src/context/tenant_cache.rs).

use crate::context::tenant_cache::require_usable_tenant;
use crate::pg::backend_local::BackendLocal;
use crate::pg::errors::{raise, require_not_null, Problem};
use crate::pg::local_map::LocalMap;
use crate::pg::own_tables::NileTable;
use crate::pg::privilege::{as_extension_owner, require_role};
use crate::pg::spi_util::execute;
use crate::pg::uuid_text::format_uuid;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::{Cell, RefCell};
use std::ffi::CString;

/// role oid -> tenant, as last read from nile.role_bindings (None: not read since the last change).
static BINDINGS: BackendLocal<RefCell<Option<LocalMap<pg_sys::Oid, [u8; 16]>>>> =
    BackendLocal::new(RefCell::new(None));
/// The oid of nile.role_bindings when it was last read, to recognise its invalidations.
static TABLE: BackendLocal<Cell<pg_sys::Oid>> = BackendLocal::new(Cell::new(pg_sys::InvalidOid));

pub(super) fn init() {
    // SAFETY: registering a callback during _PG_init; the callback never raises an ERROR.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_changed), pg_sys::Datum::from(0))
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let table = TABLE.with(Cell::get);
    if relid == pg_sys::InvalidOid || table == pg_sys::InvalidOid || relid == table {
        BINDINGS.with(|b| *b.borrow_mut() = None);
    }
}

/// The tenant this session is bound to, if its login role (or, failing that, its current outer role) is bound.
pub(super) fn bound_tenant() -> Option<[u8; 16]> {
    with_bindings(|bindings| {
        if bindings.is_empty() {
            return None; // the common case: no role is bound
        }
        let (session_user, outer_user) = (
            crate::pg::unguarded::session_user_id(),
            crate::pg::unguarded::outer_user_id(),
        );
        bindings
            .get(&session_user)
            .or_else(|| bindings.get(&outer_user))
            .copied()
    })
}

/// Raise 42501 if this session is bound to a tenant: `what` would let it leave.
pub(super) fn refuse_if_bound(what: &str) {
    if let Some(tenant) = bound_tenant() {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "this session is bound to tenant {}: {what} is not allowed",
                format_uuid(&tenant)
            ),
        )
        .detail("Its role was bound to that tenant with nile.bind_role(); every session of the role stays in it.")
        .hint("An administrator can release the role with nile.unbind_role() from another session.")
        .raise();
    }
}

fn with_bindings<R>(f: impl FnOnce(&LocalMap<pg_sys::Oid, [u8; 16]>) -> R) -> R {
    // Invalidations are only accepted outside parallel mode (see tenant_cache).
    let parallel = crate::pg::unguarded::is_in_parallel_mode();
    if !parallel {
        // SAFETY: plain call into Postgres from a backend in a transaction.
        unsafe { pg_sys::AcceptInvalidationMessages() };
    }
    if BINDINGS.with(|b| b.borrow().is_none()) {
        let loaded = read_bindings();
        if parallel {
            // Read with the statement's snapshot: use it for this call, never keep it.
            return f(&loaded);
        }
        BINDINGS.with(|b| *b.borrow_mut() = Some(loaded));
    }
    BINDINGS.with(|b| match b.borrow().as_ref() {
        Some(bindings) => f(bindings),
        None => f(&LocalMap::default()),
    })
}

/// Every row of nile.role_bindings (a small table: one row per bound role), read with a heap scan.
fn read_bindings() -> LocalMap<pg_sys::Oid, [u8; 16]> {
    let mut bindings = LocalMap::default();
    let Some(table) = NileTable::open(c"role_bindings") else {
        return bindings;
    };
    let (Some(role_attnum), Some(tenant_attnum)) =
        (table.attnum(c"role"), table.attnum(c"tenant_id"))
    else {
        return bindings;
    };
    // SAFETY: the table is open, so its oid is valid.
    TABLE.with(|t| t.set(unsafe { (*table.heap()).rd_id }));
    let (r, t) = (role_attnum as usize - 1, tenant_attnum as usize - 1);
    table.find(None, &mut [], |values, nulls| {
        if !nulls[r] && !nulls[t] {
            let role = pg_sys::Oid::from(values[r].value() as u32);
            // SAFETY: a non-null uuid datum points at its 16 bytes inside the row, copied out here.
            let tenant = unsafe { *values[t].cast_mut_ptr::<[u8; 16]>() };
            bindings.insert(role, tenant);
        }
        None::<()>
    });
    bindings
}

/// The oid of a role named by the caller, or 42704.
fn role_oid(role: &str) -> pg_sys::Oid {
    let name = CString::new(role).unwrap_or_default();
    // SAFETY: a syscache lookup with a valid NUL-terminated name; missing_ok.
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("role \"{role}\" does not exist"),
            "Create the role first, or check its name.",
        );
    }
    oid
}

/// `nile._bind_role(role text, tenant_id uuid)`, behind `nile.bind_role(role name, tenant_id uuid) RETURNS void`
/// (sql/context.sql).
#[pg_extern(volatile, parallel_unsafe, name = "_bind_role")]
fn bind_role(role: Option<&str>, tenant_id: Option<Uuid>) {
    require_role("nile_admin", "nile.bind_role()");
    refuse_if_bound("managing role bindings");
    let role = require_not_null(role, "role");
    let tenant = *require_not_null(tenant_id, "tenant_id").as_bytes();
    let oid = role_oid(role);
    // SAFETY: syscache lookups of an existing role.
    let (is_superuser, bypasses_rls) = unsafe { (pg_sys::superuser_arg(oid), has_bypassrls(oid)) };
    if is_superuser || bypasses_rls {
        Problem::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "role \"{role}\" cannot be bound to a tenant: it is a superuser or has BYPASSRLS"
            ),
        )
        .detail(
            "Row-level security does not apply to such roles, so a binding would protect nothing.",
        )
        .hint(format!(
            "ALTER ROLE \"{role}\" NOSUPERUSER NOBYPASSRLS first."
        ))
        .raise();
    }
    if ["nile_app", "nile_admin"].contains(&role) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("role \"{role}\" belongs to nile_tenancy and cannot be bound to a tenant"),
            "Bind the login role of the per-tenant user instead.",
        );
    }
    require_usable_tenant(&tenant);
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            execute(client,
            "INSERT INTO nile.role_bindings (role, tenant_id) VALUES ($1::oid::regrole, $2)
             ON CONFLICT (role) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, bound_at = pg_catalog.now(),
                                              bound_by = EXCLUDED.bound_by
             WHERE role_bindings.tenant_id IS DISTINCT FROM EXCLUDED.tenant_id",
            &[oid.into(), Uuid::from_bytes(tenant).into()],
        )
        })
    });
}

/// `nile._unbind_role(role text)`, behind `nile.unbind_role(role name) RETURNS void` (sql/context.sql).
#[pg_extern(volatile, parallel_unsafe, name = "_unbind_role")]
fn unbind_role(role: Option<&str>) {
    require_role("nile_admin", "nile.unbind_role()");
    refuse_if_bound("managing role bindings");
    let role = require_not_null(role, "role");
    let oid = role_oid(role);
    let removed = as_extension_owner(|| {
        Spi::connect_mut(|client| {
            execute(
                client,
                "DELETE FROM nile.role_bindings WHERE role = $1::oid::regrole",
                &[oid.into()],
            )
        })
    });
    if removed == 0 {
        Problem::new(
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("role \"{role}\" is not bound to a tenant"),
        )
        .notice();
    }
}

/// Whether a role has BYPASSRLS.
unsafe fn has_bypassrls(role: pg_sys::Oid) -> bool {
    // SAFETY (caller): the role exists. has_bypassrls_privilege reads its catalog entry.
    unsafe { pg_sys::has_bypassrls_privilege(role) }
}
