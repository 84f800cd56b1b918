//! pg/local_map — the hash maps a backend keeps for itself (its tenants' statuses, role bindings, usage rows, tenant
//! columns), with a cheaper hash than the standard library's.
//!
//! Their keys are short and fixed: 16-byte tenant ids, oids, usage keys. SipHash-1-3 (std's default) costs about as
//! much per lookup as the rest of the lookup, and the extension looks one up several times per transaction
//! (`perf`: 0.2-0.3 µs per transaction in `sip::Hasher::write`). Here each 8-byte word is folded in with a rotate, an
//! xor and a multiply, and the result is mixed once (MurmurHash3's finaliser, so that the top bits the hash table
//! uses for its control bytes depend on every bit). The starting state is random per process (taken once from std's
//! RandomState), so that tenant ids chosen to collide in one backend do not collide in another; a map here holds only
//! what its own backend looked up, so the worst an adversary can do is slow that backend's lookups down.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// A HashMap with the hasher below.
pub type LocalMap<K, V> = HashMap<K, V, LocalHash>;
/// A HashSet with the hasher below.
pub type LocalSet<K> = HashSet<K, LocalHash>;

/// Builds [`LocalHasher`]s that start from this process's random seed.
#[derive(Clone, Copy)]
pub struct LocalHash {
    seed: u64,
}

impl Default for LocalHash {
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| RandomState::new().hash_one(0x6e69_6c65_u64));
        LocalHash { seed }
    }
}

impl BuildHasher for LocalHash {
    type Hasher = LocalHasher;

    #[inline]
    fn build_hasher(&self) -> LocalHasher {
        LocalHasher(self.seed)
    }
}

/// The hasher: see the module comment.
pub struct LocalHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl LocalHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for LocalHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length in the top byte: "ab" and "ab\0" differ.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(value: impl std::hash::Hash) -> u64 {
        LocalHash::default().hash_one(value)
    }

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        let a = [7u8; 16];
        let mut b = a;
        b[15] ^= 1;
        assert_eq!(hash(a), hash(a));
        assert_ne!(hash(a), hash(b));
        // Ids that differ in one bit spread over the top 7 bits (hashbrown's control bytes) too.
        let tops: LocalSet<u64> = (0..16u8)
            .map(|i| {
                let mut k = [0u8; 16];
                k[0] = i;
                hash(k) >> 57
            })
            .collect();
        assert!(tops.len() > 8, "{} distinct top bits of 16", tops.len());
    }

    #[test]
    fn a_map_works_as_a_map() {
        let mut map: LocalMap<[u8; 16], u32> = LocalMap::default();
        for i in 0..10_000u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            map.insert(k, i);
        }
        assert_eq!(map.len(), 10_000);
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&4242u32.to_le_bytes());
        assert_eq!(map.get(&k), Some(&4242));
    }
}
