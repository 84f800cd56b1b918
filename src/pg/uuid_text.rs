//! pg/uuid_text — canonical UUID text form and time-ordered UUIDv7 generation (RFC 9562).
//!
//! The tenant context is carried as canonical text (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase) inside the
//! `nile.tenant_id` setting; these helpers convert between that form and the 16 raw bytes the policy functions return.

use pgrx::prelude::*;
use std::cell::Cell;

const HEX: &[u8; 16] = b"0123456789abcdef";
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let text = uuid_c_text(bytes);
    // The 36 ASCII characters before the NUL.
    String::from_utf8_lossy(&text[..36]).into_owned()
}

/// The canonical text of `bytes` followed by a NUL, without allocating: what the tenant setting is set to.
pub fn uuid_c_text(bytes: &[u8; 16]) -> [u8; 37] {
    let mut out = [0u8; 37];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[(b >> 4) as usize];
        out[at + 1] = HEX[(b & 0xF) as usize];
        at += 2;
    }
    out
}

/// Parses exactly the form `format_uuid` produces; anything else is `None`.
pub fn parse_canonical_uuid(text: &[u8]) -> Option<[u8; 16]> {
    if text.len() != 36 || HYPHENS.iter().any(|&i| text[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, &at) in out.iter_mut().zip(BYTE_OFFSETS.iter()) {
        *byte = (hex_value(text[at])? << 4) | hex_value(text[at + 1])?;
    }
    Some(out)
}

/// Where each byte's two hex digits start in the canonical text (the hyphens sit at 8, 13, 18 and 23).
const BYTE_OFFSETS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

thread_local! {
    /// (unix milliseconds, 12-bit sequence) of the last UUIDv7 this backend generated: ids stay strictly increasing
    /// within a backend even when the clock does not move or steps back. (A thread-local, not a pg::backend_local
    /// static: the unit tests generate ids on threads of their own.)
    static LAST_V7: Cell<(u64, u16)> = const { Cell::new((0, 0)) };
}

/// A new UUIDv7: 48-bit Unix time in milliseconds, a 12-bit per-backend sequence, 62 random bits.
pub fn new_uuid_v7() -> [u8; 16] {
    let mut random = [0u8; 10];
    // SAFETY: the buffer is valid for writes of its whole length.
    if !unsafe { pg_sys::pg_strong_random(random.as_mut_ptr().cast(), random.len()) } {
        crate::pg::errors::Problem::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "could not generate random bytes for a UUID",
        )
        .raise();
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (ms, seq) = LAST_V7.with(|last| {
        let (last_ms, last_seq) = last.get();
        let next = if now_ms > last_ms {
            // Start the sequence low in its range so that many ids fit into the same millisecond.
            (now_ms, u16::from_be_bytes([random[0], random[1]]) & 0x01FF)
        } else if last_seq < 0x0FFF {
            (last_ms, last_seq + 1)
        } else {
            (last_ms + 1, 0)
        };
        last.set(next);
        next
    });
    let mut out = [0u8; 16];
    out[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    out[6] = 0x70 | ((seq >> 8) as u8 & 0x0F);
    out[7] = seq as u8;
    out[8] = 0x80 | (random[2] & 0x3F);
    out[9..].copy_from_slice(&random[3..]);
    out
}

/// `nile.uuidv7()`: a new time-ordered UUID (version 7), the default for `nile.tenants.id`.
#[pg_extern(volatile, parallel_safe)]
fn uuidv7() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(new_uuid_v7())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_parse_round_trip() {
        let bytes: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
        let text = format_uuid(&bytes);
        assert_eq!(text, "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(parse_canonical_uuid(text.as_bytes()), Some(bytes));
    }

    #[test]
    fn parse_rejects_non_canonical_forms() {
        for bad in [
            "",
            "00112233445566778899aabbccddeeff",
            "{00112233-4455-6677-8899-aabbccddeeff}",
            "00112233-4455-6677-8899-AABBCCDDEEFF",
            "00112233-4455-6677-8899-aabbccddeefg",
            "0011223-34455-6677-8899-aabbccddeeff",
            "00112233-4455-6677-8899-aabbccddeeff ",
        ] {
            assert_eq!(
                parse_canonical_uuid(bad.as_bytes()),
                None,
                "{bad:?} must be rejected"
            );
        }
    }
}
