//! rls/tenant_estimates — what the planner assumes the tenant policy keeps of a table: the session's tenant's share,
//! when that tenant is a big one.
//!
//! The generated policies compare the tenant column with an InitPlan (`(SELECT nile.policy_read_tenant())`), whose
//! value the planner cannot see, so it estimates every tenant as an average one: (1 − null fraction) / the number of
//! distinct tenants. For a tenant that holds much of the table (one of the most common values in the tenant column's
//! statistics, with at least `BIG_TENANT_SHARE` of the rows and `BIG_TENANT_FACTOR` times the average share: a share
//! where a sequential scan starts to pay, held by at most a handful of tenants), the average picks an index scan
//! where reading 90 % of the table wants the sequential scan that the same query with the tenant's id as a literal
//! gets. So a `get_relation_stats_hook` hands the planner the tenant column's statistics with the number of distinct
//! values lowered so that the average is the big tenant's frequency (Postgres rounds it to a whole number, so the share
//! is approximate). Only the tenant column (the `uuid` column the four generated policies compare) of tables with those
//! policies, only inside a tenant context (not the admin context), only for a big tenant; the column's other estimates
//! (grouping, joins on it) see the same smaller number of distinct values, which is what they are inside one tenant's
//! context. The statistics' values are read as tenant ids only when they are of type `uuid`.
//!
//! The tenant is planned for as if it were one more parameter of the statement: a plan made for the statement's values
//! (a statement without parameters, or a custom plan made for the parameters' values) is made for the big tenant; the
//! generic plan of a statement with parameters (one plan for any values, which the plan cache keeps once it costs no
//! more than the custom plans) is made for an average tenant, as Postgres plans `WHERE tenant_id = $1`. Made for the
//! big tenant, a generic plan's estimates for the unknown values could cost it above the custom plans (once they count
//! more than one row, an unknown key is often estimated at more rows than a known one), and the plan cache then
//! planned the statement again at every execution.
//!
//! A plan made for a big tenant is as correct for any other tenant as any plan (the policy's InitPlan still decides
//! which rows are visible), but it may be slow for a small one. So it carries a plan-cache invalidation item of its own
//! (a syscache item no catalog change sends), and when this backend's tenant context switches to another tenant, the
//! plans built for the big one are marked for re-planning: one local `CallSyscacheCallbacks()`, made only while such
//! plans exist, from the context guard's switch listener. Plans built for ordinary tenants carry no item: Postgres
//! plans a statement without parameters once, so a big tenant reuses a plan cached for an ordinary one; statements
//! planned at each execution (the simple protocol, unnamed statements parsed each time, custom plans of statements
//! with parameters) always get their tenant's plan. docs/performance.md explains it for users.

use crate::context::guard;
use crate::context::tenant::effective_tenant;
use crate::pg::backend_local::BackendLocal;
use crate::pg::local_map::LocalMap;
use crate::rls::policies::tenant_column;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

/// The share of a table a tenant must hold to be planned for as itself (at most 20 tenants of a table can), and how
/// many times the average tenant's share.
const BIG_TENANT_SHARE: f64 = 0.05;
const BIG_TENANT_FACTOR: f64 = 2.0;

static mut PREV_RELATION_STATS_HOOK: pg_sys::get_relation_stats_hook_type = None;

thread_local! {
    /// Per table (by oid), its tenant column's attribute number, or None for a table without generated policies; read
    /// from the relcache entry's policies and forgotten when the table's relcache entry is invalidated.
    static TENANT_COLUMNS: RefCell<LocalMap<pg_sys::Oid, Option<i16>>> = RefCell::new(LocalMap::default());
}
/// The big tenant that cached plans of this backend were built for, if any.
static PLANNED_FOR: BackendLocal<Cell<Option<[u8; 16]>>> = BackendLocal::new(Cell::new(None));

pub(super) fn init() {
    // SAFETY: _PG_init runs once per backend before any query; the previous hook is saved and chained to. The
    // callbacks never raise.
    unsafe {
        PREV_RELATION_STATS_HOOK = pg_sys::get_relation_stats_hook;
        pg_sys::get_relation_stats_hook = Some(tenant_stats_hook);
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_changed), pg_sys::Datum::from(0));
    }
    guard::on_tenant_switch(tenant_switched);
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    TENANT_COLUMNS.with(|c| {
        let mut columns = c.borrow_mut();
        if relid == pg_sys::InvalidOid {
            columns.clear();
        } else {
            columns.remove(&relid);
        }
    });
}

/// The invalidation item's hash: that of function oid 0, which no function has (a collision with a real function's
/// hash only re-plans that function's plans once more, which is harmless).
fn marker_hash() -> u32 {
    // SAFETY: computing a syscache hash value reads the cache's key definition; it allocates nothing and never raises
    // for a valid cache id.
    unsafe {
        pg_sys::GetSysCacheHashValue(
            pg_sys::SysCacheIdentifier::PROCOID as _,
            pg_sys::Datum::from(pg_sys::InvalidOid),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    }
}

/// The context guard's switch listener: the plans built for a big tenant are re-planned before another tenant runs
/// them. Leaving the context (None) keeps them: without a context no plan runs (the policies fail closed), and the
/// next transaction of the same tenant reuses them.
fn tenant_switched(new: Option<[u8; 16]>) {
    let Some(planned_for) = PLANNED_FOR.with(Cell::get) else {
        return;
    };
    if new.is_some() && new != Some(planned_for) {
        PLANNED_FOR.with(|p| p.set(None));
        // SAFETY: runs the local syscache callbacks for PROCOID with a hash no catalog row has: the plan cache marks
        // the plans carrying our item invalid (it only flips flags); other callbacks find nothing to drop.
        unsafe {
            pg_sys::CallSyscacheCallbacks(pg_sys::SysCacheIdentifier::PROCOID as _, marker_hash())
        };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tenant_stats_hook(
    root: *mut pg_sys::PlannerInfo,
    rte: *mut pg_sys::RangeTblEntry,
    attnum: pg_sys::AttrNumber,
    vardata: *mut pg_sys::VariableStatData,
) -> bool {
    // SAFETY: the planner passes valid pointers (examine_variable); the override allocates in the planner's context.
    if unsafe { override_for_big_tenant(root, rte, attnum, vardata) } {
        return true;
    }
    // SAFETY: PREV_RELATION_STATS_HOOK is only written by init(); the previous hook gets the planner's arguments.
    match unsafe { PREV_RELATION_STATS_HOOK } {
        // SAFETY: another library's hook with this signature; an ERROR it raises becomes a Rust panic at the boundary.
        Some(prev) => unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev(root, rte, attnum, vardata))
        },
        None => false,
    }
}

/// Hand the planner the tenant column's statistics adjusted for the session's tenant, if the column is an enrolled
/// table's tenant column and the tenant a big one; false (nothing done) otherwise.
///
/// # Safety
/// The arguments are those the planner passes to `get_relation_stats_hook`.
unsafe fn override_for_big_tenant(
    root: *mut pg_sys::PlannerInfo,
    rte: *mut pg_sys::RangeTblEntry,
    attnum: pg_sys::AttrNumber,
    vardata: *mut pg_sys::VariableStatData,
) -> bool {
    if guard::admin_in_force() {
        return false;
    }
    // SAFETY (caller): rte is a valid range table entry.
    let (relid, inh) = unsafe {
        if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
            return false;
        }
        ((*rte).relid, (*rte).inh)
    };
    if tenant_column_of(relid) != Some(attnum) {
        return false;
    }
    let Some(tenant) = effective_tenant() else {
        return false;
    };
    // SAFETY: a syscache lookup with valid keys; released below or handed over.
    let stats = unsafe {
        pg_sys::SearchSysCache3(
            pg_sys::SysCacheIdentifier::STATRELATTINH as _,
            pg_sys::Datum::from(relid),
            pg_sys::Datum::from(attnum),
            pg_sys::Datum::from(inh),
        )
    };
    if stats.is_null() {
        return false;
    }
    // SAFETY: `stats` is a valid pg_statistic tuple until released; vardata->rel is the variable's base relation.
    unsafe {
        let rel_tuples = if (*vardata).rel.is_null() {
            0.0
        } else {
            (*(*vardata).rel).tuples
        };
        let adjusted = big_tenant_distinct(stats, &tenant, rel_tuples).map(|distinct| {
            let copy = pg_sys::heap_copytuple(stats);
            let form = ((*copy).t_data as *mut u8).add((*(*copy).t_data).t_hoff as usize)
                as *mut pg_sys::FormData_pg_statistic;
            (*form).stadistinct = distinct;
            copy
        });
        pg_sys::ReleaseSysCache(stats);
        let Some(copy) = adjusted else {
            return false;
        };
        // Only now, for a big tenant's column: whether the plan is a parameterised statement's generic plan (a walk of
        // the statement, which every other planning is spared).
        if generic_plan_with_parameters(root) {
            pg_sys::heap_freetuple(copy);
            return false;
        }
        (*vardata).statsTuple = copy;
        (*vardata).freefunc = Some(free_stats_copy);
        mark_plan(root, tenant);
    }
    true
}

/// Whether this planning makes the generic plan of a statement with parameters: one plan for any values of them,
/// which the plan cache keeps and compares with the custom plans made for the values. Such a plan is made for an
/// average tenant, as Postgres plans `WHERE tenant_id = $1`, the tenant being one more value the plan is not made for.
/// Made for the big tenant instead, its estimates for the other parameters' unknown values (rows of the big tenant,
/// no longer clamped to one) often cost it above the custom plans, and the plan cache would then plan the statement
/// again at every execution for as long as the session works for that tenant (a point read by key took twice as long).
/// Known limits: a parameter that appears only inside a subquery already turned into a SubPlan is not seen by the walk
/// (the outer estimate is then the big tenant's, which costs the generic and custom plans alike); a SQL function's
/// statements on PostgreSQL 14–17 are planned with parameters and no values, so as generic plans.
///
/// # Safety
/// `root` is the planner's valid PlannerInfo.
unsafe fn generic_plan_with_parameters(root: *mut pg_sys::PlannerInfo) -> bool {
    // SAFETY (caller): root, its parents and their global state are the planner's valid structures; a custom plan
    // (or any planning given the parameters' values) has boundParams set.
    unsafe {
        let glob = (*root).glob;
        if glob.is_null() || !(*glob).boundParams.is_null() {
            return false;
        }
        let mut top = root;
        while !(*top).parent_root.is_null() {
            top = (*top).parent_root;
        }
        let query = (*top).parse;
        // Through the guarded FFI call, so that an ERROR of the walk (the stack depth check) becomes a Rust panic here.
        !query.is_null()
            && pg_sys::query_tree_walker(
                query,
                Some(external_parameter_in),
                std::ptr::null_mut(),
                0,
            )
    }
}

/// A tree walker: whether the node, or any node below it (subqueries included), is a parameter of the statement.
#[pg_guard]
unsafe extern "C-unwind" fn external_parameter_in(
    node: *mut pg_sys::Node,
    context: *mut std::ffi::c_void,
) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: node is a valid node of a query tree; the walkers visit its children with this function.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_Param => {
                (*(node as *mut pg_sys::Param)).paramkind == pg_sys::ParamKind::PARAM_EXTERN
            }
            pg_sys::NodeTag::T_Query => {
                pg_sys::query_tree_walker(node.cast(), Some(external_parameter_in), context, 0)
            }
            _ => pg_sys::expression_tree_walker(node, Some(external_parameter_in), context),
        }
    }
}

/// Releases the adjusted copy of the statistics (the planner calls it when it is done with the variable).
#[pg_guard]
unsafe extern "C-unwind" fn free_stats_copy(tuple: pg_sys::HeapTuple) {
    // SAFETY: `tuple` is the heap_copytuple made by override_for_big_tenant.
    unsafe { pg_sys::heap_freetuple(tuple) }
}

/// The number of distinct values that makes the planner's average estimate the tenant's frequency, if the tenant is
/// among the column's most common values with at least `BIG_TENANT_SHARE` of the rows and `BIG_TENANT_FACTOR` times
/// the average share.
///
/// # Safety
/// `stats` is a valid pg_statistic tuple of a uuid column.
unsafe fn big_tenant_distinct(
    stats: pg_sys::HeapTuple,
    tenant: &[u8; 16],
    rel_tuples: f64,
) -> Option<f32> {
    // SAFETY (caller): the tuple's fixed part is a FormData_pg_statistic; get_attstatsslot reads its arrays into the
    // slot, which free_attstatsslot releases.
    unsafe {
        let form = ((*stats).t_data as *const u8).add((*(*stats).t_data).t_hoff as usize)
            as *const pg_sys::FormData_pg_statistic;
        let null_fraction = (*form).stanullfrac as f64;
        let distinct = match (*form).stadistinct as f64 {
            d if d > 0.0 => d,
            d if d < 0.0 => -d * rel_tuples,
            _ => return None, // unknown
        };
        if distinct < 2.0 {
            return None;
        }
        let average = (1.0 - null_fraction) / distinct;
        let mut slot = pg_sys::AttStatsSlot::default();
        let flags = (pg_sys::ATTSTATSSLOT_VALUES | pg_sys::ATTSTATSSLOT_NUMBERS) as i32;
        if !pg_sys::get_attstatsslot(
            &mut slot,
            stats,
            pg_sys::STATISTIC_KIND_MCV as i32,
            pg_sys::InvalidOid,
            flags,
        ) {
            return None;
        }
        if slot.valuetype != pg_sys::UUIDOID {
            // Not a uuid column's statistics after all: never read its values as 16 bytes.
            pg_sys::free_attstatsslot(&mut slot);
            return None;
        }
        let count = slot.nvalues.min(slot.nnumbers).max(0) as usize;
        let frequency = (0..count)
            .find(|&i| {
                let value = (*slot.values.add(i)).cast_mut_ptr::<u8>() as *const [u8; 16];
                !value.is_null() && *value == *tenant
            })
            .map(|i| *slot.numbers.add(i) as f64);
        pg_sys::free_attstatsslot(&mut slot);
        let frequency = frequency?;
        (frequency >= BIG_TENANT_SHARE && frequency >= BIG_TENANT_FACTOR * average)
            .then(|| ((1.0 - null_fraction) / frequency) as f32)
    }
}

/// Give the plan being built the invalidation item that `tenant_switched` fires, and remember the tenant.
///
/// # Safety
/// `root` is the planner's valid PlannerInfo; the item is allocated in the planner's memory context.
unsafe fn mark_plan(root: *mut pg_sys::PlannerInfo, tenant: [u8; 16]) {
    // SAFETY (caller): root->glob is the planning's global state, whose invalItems list becomes the plan's.
    unsafe {
        let item = pg_sys::palloc0(std::mem::size_of::<pg_sys::PlanInvalItem>())
            as *mut pg_sys::PlanInvalItem;
        (*item).type_ = pg_sys::NodeTag::T_PlanInvalItem;
        (*item).cacheId = pg_sys::SysCacheIdentifier::PROCOID as _;
        (*item).hashValue = marker_hash();
        let glob = (*root).glob;
        (*glob).invalItems = pg_sys::lappend((*glob).invalItems, item.cast());
    }
    PLANNED_FOR.with(|p| p.set(Some(tenant)));
}

/// The tenant column of table `relid` if it has generated policies, from this backend's cache.
fn tenant_column_of(relid: pg_sys::Oid) -> Option<i16> {
    if let Some(known) = TENANT_COLUMNS.with(|c| c.borrow().get(&relid).copied()) {
        return known;
    }
    // SAFETY: the planner holds a lock on every relation it plans for, so its relcache entry can be opened; it is
    // closed again at once.
    let column = unsafe {
        let relation = pg_sys::RelationIdGetRelation(relid);
        if relation.is_null() {
            return None;
        }
        let column = tenant_column(relation);
        pg_sys::RelationClose(relation);
        column
    };
    TENANT_COLUMNS.with(|c| c.borrow_mut().insert(relid, column));
    column
}
