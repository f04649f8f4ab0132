//! The hash of the maps keyed by API keys: by digest (the key cache) and by id (key usage).
//!
//! `HashMap`'s default, SipHash with a random key, guards a map against keys chosen to collide.
//! These maps hold only keys the database has verified: a digest is the SHA-256 of a secret
//! the server generated, an id is the database's. No client chooses what goes in (a client's
//! token only looks a digest up), so a multiply per word serves, where SipHash cost about 210
//! instructions a lookup, two lookups on every request with a key (callgrind).

use std::hash::{BuildHasherDefault, Hasher};

/// Builds [`KeyHasher`]s: the `S` of the maps keyed by API keys.
pub type KeyHash = BuildHasherDefault<KeyHasher>;

#[derive(Default)]
pub struct KeyHasher(u64);

/// 2^64 divided by the golden ratio: odd, so multiplying by it maps distinct low bits of a word
/// to distinct low bits (consecutive ids spread over a table's buckets), and it carries every
/// bit upwards into the high ones hashbrown also uses.
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(MULTIPLIER);
    }

    // `write_i64` (an id) comes here by default; `write_usize` (a digest's length) would go
    // through `write` and its loop.
    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, hash::BuildHasher};

    use super::*;
    use crate::domain::ApiKeySecret;

    /// How many different values the low `bits` of the hashes take: the bucket a hashbrown
    /// table of 2^bits buckets puts each key in.
    fn buckets<T: std::hash::Hash>(keys: impl Iterator<Item = T>, bits: u32) -> usize {
        let hash = KeyHash::default();
        keys.map(|key| hash.hash_one(key) & ((1 << bits) - 1))
            .collect::<HashSet<_>>()
            .len()
    }

    #[test]
    fn consecutive_ids_each_get_a_bucket_of_their_own() {
        assert_eq!(buckets(1..=1024_i64, 10), 1024);
        assert_eq!(buckets(5_000..6_024_i64, 10), 1024);
    }

    #[test]
    fn digests_spread_over_the_buckets() {
        let digests = (0..1024).map(|i| ApiKeySecret::digest_presented(&format!("key-{i}")));
        // 1,024 random picks of 1,024 buckets fill about 1 - 1/e of them (647); a hash
        // that dropped most of a digest would fill far fewer.
        let filled = buckets(digests, 10);
        assert!((580..=720).contains(&filled), "{filled} of 1024 buckets");
    }
}
