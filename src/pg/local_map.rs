//! pg/local_map — the hash maps a backend keeps for itself (its tenants' statuses, role bindings, usage rows, tenant
//! columns), with a cheaper hash than the standard library's.
//!
//! Their keys are short and fixed: 16-byte tenant ids, oids, usage keys. SipHash-1-3 (std's default) costs about as
//! much per lookup as the rest of the lookup, and the extension looks one up several times per transaction
//! (`perf`: 0.3-0.5 µs per transaction in SipHash). Here the hash is foldhash's fast one (the crate that hashbrown
//! itself defaults to): a 16-byte key goes through a 64 × 64 → 128-bit multiply of its two words, each xored with a
//! secret seed, folded back to 64 bits (and a second such multiply with the length at the end), so that how two keys'
//! hashes differ depends on the seeds (a hash that mixes one word at a time with a fixed multiplier lets a chosen
//! tenant id collide with another for any seed: flipping a word's top bit survives the multiply unchanged and can be
//! cancelled by the next word).
//!
//! The seeds are random per backend: drawn from the kernel (`getrandom`) by the first map a process makes, and drawn
//! again by a process whose id differs from the one that drew them (a backend forked from a postmaster that had made
//! a map; a map inherited from the postmaster would keep its seeds, but the maps are made lazily, in backends), so
//! that ids chosen to collide cannot be tried out in one backend and used in another. A map holds only what
//! its own backend looked up.

use foldhash::fast::FoldHasher;
use foldhash::SharedSeed;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

/// A HashMap with the hasher below.
pub type LocalMap<K, V> = HashMap<K, V, LocalHash>;
/// A HashSet with the hasher below.
pub type LocalSet<K> = HashSet<K, LocalHash>;

/// Builds foldhash's fast hashers with this process's seeds (see the module comment).
#[derive(Clone)]
pub struct LocalHash {
    per_hasher: u64,
    shared: SharedSeed,
}

thread_local! {
    /// (process id, the two seeds) once drawn. (A thread-local, not a pg::backend_local static: the unit tests run
    /// on threads of their own.)
    static SEEDS: Cell<Option<(u32, u64, u64)>> = const { Cell::new(None) };
}

impl Default for LocalHash {
    fn default() -> Self {
        let pid = std::process::id();
        let (per_hasher, shared) = SEEDS.with(|seeds| match seeds.get() {
            Some((drawn_by, a, b)) if drawn_by == pid => (a, b),
            _ => {
                let (a, b) = (random_u64(), random_u64());
                seeds.set(Some((pid, a, b)));
                (a, b)
            }
        });
        LocalHash {
            per_hasher,
            shared: SharedSeed::from_u64(shared),
        }
    }
}

impl BuildHasher for LocalHash {
    type Hasher = FoldHasher;

    #[inline]
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher::with_seed(self.per_hasher, &self.shared)
    }
}

/// 64 random bits from the kernel; should `getrandom` fail (it does not on Linux 3.17 and later once the pool is
/// initialised), std's RandomState keys mixed with the process id and the time.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer we own.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == bytes.len() as isize {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(builder: &LocalHash, value: impl std::hash::Hash) -> u64 {
        builder.hash_one(value)
    }

    fn words(w0: u64, w1: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&w0.to_le_bytes());
        k[8..].copy_from_slice(&w1.to_le_bytes());
        k
    }

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        let builder = LocalHash::default();
        let a = [7u8; 16];
        let mut b = a;
        b[15] ^= 1;
        assert_eq!(hash(&builder, a), hash(&builder, a));
        assert_ne!(hash(&builder, a), hash(&builder, b));
    }

    #[test]
    fn chosen_ids_do_not_collide_whatever_the_seed() {
        // The family that made a word-at-a-time multiply-rotate hash collide for every seed (fbffc98, found in
        // review): the top k bits of the first word against bits 26-k..25 of the second. 2^16 such ids had 256
        // distinct hashes there; here every one is distinct, for each of these seeds and for this process's own.
        let base = (0x0123_4567_89ab_cdef_u64, 0x0fed_cba9_8765_4321_u64);
        // Arbitrary seeds as getrandom gives them (not 0, for which foldhash, like any multiply-based hash, folds
        // small keys together: the kernel's 64 random bits are never that).
        let fixed = [
            (0x243f_6a88_85a3_08d3_u64, 0x1319_8a2e_0370_7344_u64),
            (0xa409_3822_299f_31d0, 0x082e_fa98_ec4e_6c89),
            (0x4528_21e6_38d0_1377, 0xbe54_66cf_34e9_0c6c),
            (0xc0ac_29b7_c97c_50dd, 0x3f84_d5b5_b547_0917),
        ];
        let builders = fixed
            .iter()
            .map(|&(a, b)| LocalHash {
                per_hasher: a,
                shared: SharedSeed::from_u64(b),
            })
            .chain(std::iter::once(LocalHash::default()));
        for (i, builder) in builders.enumerate() {
            let mut seen = LocalSet::default();
            for top in 0..256u64 {
                for low in 0..256u64 {
                    seen.insert(hash(
                        &builder,
                        words(base.0 ^ (top << 56), base.1 ^ (low << 18)),
                    ));
                }
            }
            assert_eq!(seen.len(), 65_536, "seeds {:?}", fixed.get(i));
            // And the top 7 bits (hashbrown's control bytes) spread over ids that differ in one byte.
            let tops: LocalSet<u64> = (0..64u64)
                .map(|i| hash(&builder, words(i, 0)) >> 57)
                .collect();
            assert!(
                tops.len() > 32,
                "{} distinct top bits of 64, seeds {:?}",
                tops.len(),
                fixed.get(i)
            );
        }
    }

    #[test]
    fn a_map_works_as_a_map() {
        let mut map: LocalMap<[u8; 16], u32> = LocalMap::default();
        for i in 0..10_000u32 {
            map.insert(words(u64::from(i), 0), i);
        }
        assert_eq!(map.len(), 10_000);
        assert_eq!(map.get(&words(4242, 0)), Some(&4242));
    }

    #[test]
    fn seeds_are_drawn_again_by_another_process() {
        // A process id that is not this one's: the next map draws new seeds (as a backend forked from a postmaster
        // that had made a map does).
        SEEDS.with(|s| s.set(Some((std::process::id().wrapping_add(1), 1, 2))));
        let builder = LocalHash::default();
        assert_ne!(builder.per_hasher, 1);
        let (pid, a, _) = SEEDS.with(Cell::get).expect("drawn");
        assert_eq!((pid, a), (std::process::id(), builder.per_hasher));
        // The same process's next map reuses them.
        assert_eq!(LocalHash::default().per_hasher, builder.per_hasher);
    }
}
