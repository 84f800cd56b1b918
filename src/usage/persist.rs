//! usage/persist — the usage counters survive a restart: the postmaster saves them to
//! `pg_stat/nile_tenancy_usage.stat` when it shuts down (smart, fast or immediate shutdown) and loads (then deletes)
//! that file when it starts. After a crash (a backend dying, or the postmaster killed) there is no file and the
//! counters start from zero.

use crate::usage::store::{self, CounterValues, SavedRow, UsageKey, HISTOGRAM_BUCKETS};
use pgrx::prelude::*;
use std::io::{Read, Write};

static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// Called from _PG_init after `store::init()`: when the library is preloaded, a shared-memory startup hook that
/// runs after the counters' own (it is installed later, so it calls that one first) and, in the postmaster, brings back
/// what the last clean shutdown saved and arranges to save it again at the next one.
pub fn init() {
    if !crate::settings::preloaded() {
        return;
    }
    // SAFETY: _PG_init runs in the postmaster while shared_preload_libraries is processed; the previous hook is saved
    // and chained.
    unsafe {
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: called where Postgres calls shared-memory startup hooks; the previous hook (usage_store's) creates or
    // attaches to the counters first.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev());
        }
        if !pg_sys::IsUnderPostmaster {
            if store::created_here() {
                load();
            }
            pg_sys::on_shmem_exit(Some(save_at_shutdown), pg_sys::Datum::from(0));
        }
    }
}

const FILE: &str = "pg_stat/nile_tenancy_usage.stat";
const TEMP_FILE: &str = "pg_stat/nile_tenancy_usage.stat.tmp";
/// "NILU" and the format version: a file of another version is ignored.
const MAGIC: u32 = 0x4e49_4c55;
/// 2: each row also carries what of it is already in `nile.usage_history`, and when that was written.
const VERSION: u32 = 2;

/// The u64 fields of one set of counters: 15 counters, then the histogram.
const FIELDS: usize = 15 + HISTOGRAM_BUCKETS;
const KEY_LEN: usize = 24;
const VALUES_LEN: usize = 8 * FIELDS;
/// A saved row: its key, its counters, its flushed counters, the time of its last flush.
const RECORD_LEN: usize = KEY_LEN + 2 * VALUES_LEN + 8;

fn encode_values(v: &CounterValues, out: &mut Vec<u8>) {
    for field in [
        v.statements,
        v.errors,
        v.rows_returned,
        v.rows_inserted,
        v.rows_updated,
        v.rows_deleted,
        v.total_time_ns,
        v.max_time_ns,
        v.cpu_user_ns,
        v.cpu_system_ns,
        v.blks_hit,
        v.blks_read,
        v.blks_dirtied,
        v.first_activity as u64,
        v.last_activity as u64,
    ]
    .into_iter()
    .chain(v.histogram.iter().copied())
    {
        out.extend_from_slice(&field.to_le_bytes());
    }
}

fn encode(row: &SavedRow, out: &mut Vec<u8>) {
    out.extend_from_slice(&row.key.database.to_le_bytes());
    out.extend_from_slice(&row.key.kind.to_le_bytes());
    out.extend_from_slice(&row.key.tenant);
    encode_values(&row.counters, out);
    encode_values(&row.flushed, out);
    out.extend_from_slice(&row.flushed_at.to_le_bytes());
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn decode_values(bytes: &[u8]) -> Option<CounterValues> {
    let mut fields = [0u64; FIELDS];
    for (i, field) in fields.iter_mut().enumerate() {
        *field = u64_at(bytes, 8 * i)?;
    }
    Some(CounterValues {
        statements: fields[0],
        errors: fields[1],
        rows_returned: fields[2],
        rows_inserted: fields[3],
        rows_updated: fields[4],
        rows_deleted: fields[5],
        total_time_ns: fields[6],
        max_time_ns: fields[7],
        cpu_user_ns: fields[8],
        cpu_system_ns: fields[9],
        blks_hit: fields[10],
        blks_read: fields[11],
        blks_dirtied: fields[12],
        first_activity: fields[13] as i64,
        last_activity: fields[14] as i64,
        histogram: std::array::from_fn(|b| fields[15 + b]),
    })
}

fn decode(record: &[u8]) -> Option<SavedRow> {
    if record.len() != RECORD_LEN {
        return None;
    }
    let u32_at = |i: usize| Some(u32::from_le_bytes(record.get(i..i + 4)?.try_into().ok()?));
    // Rebuilt with UsageKey::new, so that a damaged kind or tenant cannot make two rows of one key.
    let kind = match u32_at(4)? {
        0 => store::RowKind::Tenant,
        1 => store::RowKind::NoTenant,
        2 => store::RowKind::Admin,
        _ => store::RowKind::Overflow,
    };
    let key = UsageKey::new(
        u32_at(0)?.into(),
        kind,
        Some(record.get(8..KEY_LEN)?.try_into().ok()?),
    );
    Some(SavedRow {
        key,
        counters: decode_values(record.get(KEY_LEN..KEY_LEN + VALUES_LEN)?)?,
        flushed: decode_values(record.get(KEY_LEN + VALUES_LEN..KEY_LEN + 2 * VALUES_LEN)?)?,
        flushed_at: u64_at(record, KEY_LEN + 2 * VALUES_LEN)? as i64,
    })
}

/// on_shmem_exit callback of the postmaster: save the counters, after a clean shutdown only (a crash restart runs it
/// with a non-zero code).
#[pg_guard]
unsafe extern "C-unwind" fn save_at_shutdown(code: i32, _arg: pg_sys::Datum) {
    if code != 0 {
        return;
    }
    let rows = store::snapshot_for_shutdown();
    let mut bytes = Vec::with_capacity(12 + rows.len() * RECORD_LEN);
    bytes.extend_from_slice(&MAGIC.to_le_bytes());
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for row in &rows {
        encode(row, &mut bytes);
    }
    // Written aside, synced, then renamed over the old file, so that a crash mid-write leaves no torn file.
    let written = std::fs::File::create(TEMP_FILE)
        .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(TEMP_FILE, FILE));
    if let Err(e) = written {
        let _ = std::fs::remove_file(TEMP_FILE);
        pgrx::warning!("nile_tenancy: could not save the usage counters to {FILE}: {e}");
    }
}

/// At postmaster start: load the saved counters, then delete the file (it describes only this start).
fn load() {
    let mut bytes = Vec::new();
    match std::fs::File::open(FILE).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            pgrx::warning!("nile_tenancy: could not read the saved usage counters {FILE}: {e}");
            return;
        }
    }
    let _ = std::fs::remove_file(FILE);
    let header = |i: usize| {
        bytes
            .get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let (Some(MAGIC), Some(VERSION), Some(count)) = (header(0), header(4), header(8)) else {
        pgrx::warning!("nile_tenancy: ignoring {FILE}: not a usage file of this version");
        return;
    };
    let body = &bytes[12..];
    if body.len() != count as usize * RECORD_LEN {
        pgrx::warning!("nile_tenancy: ignoring {FILE}: truncated");
        return;
    }
    let rows: Vec<SavedRow> = body.chunks_exact(RECORD_LEN).filter_map(decode).collect();
    store::restore(&rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(base: u64) -> CounterValues {
        CounterValues {
            statements: base + 1,
            errors: base + 2,
            rows_returned: base + 3,
            rows_inserted: base + 4,
            rows_updated: base + 5,
            rows_deleted: base + 6,
            total_time_ns: base + 7,
            max_time_ns: base + 8,
            cpu_user_ns: base + 9,
            cpu_system_ns: base + 10,
            blks_hit: base + 11,
            blks_read: base + 12,
            blks_dirtied: base + 13,
            first_activity: base as i64 + 14,
            last_activity: base as i64 + 15,
            histogram: std::array::from_fn(|b| base + b as u64 * 3),
        }
    }

    #[test]
    fn a_saved_row_reads_back_the_same() {
        let row = SavedRow {
            key: UsageKey {
                database: 5,
                kind: 0,
                tenant: [7; 16],
            },
            counters: values(100),
            flushed: values(0),
            flushed_at: 1234,
        };
        let mut bytes = Vec::new();
        encode(&row, &mut bytes);
        assert_eq!(bytes.len(), RECORD_LEN);
        let back = decode(&bytes).unwrap();
        assert_eq!(format!("{back:?}"), format!("{row:?}"));
        assert!(decode(&bytes[..RECORD_LEN - 1]).is_none());
    }
}
