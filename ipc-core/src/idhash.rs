//! A fast hasher for maps keyed by ids and offsets this side assigned itself.
//!
//! The standard `RandomState` (SipHash-1-3) resists keys chosen to collide, and costs about
//! as much per message as a ring push. The maps on the data path (session ends, nodes,
//! in-flight offsets) are keyed by numbers the engine or the node chose, never by a peer:
//! a peer can look a key up but cannot insert one, so collision attacks do not apply, and a
//! multiply-rotate hash (FxHash's, with rustc-hash 2's final rotation so that offsets, whose
//! low bits are zero, still spread over the buckets) is enough. Maps keyed by names a peer
//! sends keep `RandomState`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The multiplier of FxHash (an odd constant close to 2^64 / phi).
const K: u64 = 0xf135_7aea_2e62_a9c5;

/// A multiply-rotate hasher for integer keys (see the module docs for when it is right).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// A `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A `HashSet` with [`IdHasher`].
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn offsets_spread_over_the_low_bits() {
        // 1024 offsets 256 B apart: the bucket index (low bits) must not collapse.
        let build = BuildHasherDefault::<IdHasher>::default();
        let mut buckets = std::collections::HashSet::new();
        for i in 0..1024u64 {
            buckets.insert(build.hash_one(i * 256) & 1023);
        }
        assert!(buckets.len() > 512, "{} distinct buckets", buckets.len());
    }

    #[test]
    fn maps_work() {
        let mut map = IdMap::default();
        for i in 0..10_000u32 {
            map.insert(i, i * 2);
        }
        assert!((0..10_000u32).all(|i| map[&i] == i * 2));
        let set: IdSet<u64> = (0..100).map(|i| i << 20).collect();
        assert!(set.contains(&(5 << 20)));
    }
}
