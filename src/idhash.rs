//! A fast keyed hash for 16-byte message ids and for numbers the router
//! assigns (connection ids, delivery tags), for the maps every message is
//! looked up in and inserted into (the relay's duplicate window, the
//! processed-id inbox, the router's connections and deliveries in flight).
//! SipHash was a visible share of the relay's and the router's time; an id
//! is 16 bytes, a number 8, so one or two keyed multiply-folds do. The keys
//! are random per map: ids are chosen by senders, and fixed keys would let
//! one craft collisions. Use it for ids and such numbers only, never for
//! text (names, identities: those keep SipHash).

use std::hash::{BuildHasher, Hasher};

/// Builds [`IdHasher`]s keyed with the random keys of one set.
#[derive(Clone, Debug)]
pub(crate) struct IdHash {
    keys: [u64; 3],
}

impl IdHash {
    /// A hasher with fresh random keys.
    pub(crate) fn new() -> Self {
        IdHash { keys: rand::random() }
    }
}

impl Default for IdHash {
    /// Fresh random keys, as [`IdHash::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.keys[0], keys: [self.keys[1], self.keys[2]], n: 0 }
    }
}

/// The state of one [`IdHash`] hashing.
#[derive(Debug)]
pub(crate) struct IdHasher {
    state: u64,
    keys: [u64; 2],
    n: usize,
}

impl IdHasher {
    fn mix(&mut self, word: u64) {
        let key = self.keys[self.n & 1] | 1;
        let product = u128::from(self.state ^ word) * u128::from(key);
        self.state = (product as u64) ^ ((product >> 64) as u64);
        self.n += 1;
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The one size it is for: two words, no loop.
        if let Ok(id) = <&[u8; 16]>::try_from(bytes) {
            let (words, _) = id.as_chunks::<8>();
            for word in words {
                self.mix(u64::from_le_bytes(*word));
            }
            return;
        }
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    /// An array's length prefix (`[u8; 16]` hashes its length first): one
    /// multiply, not the byte loop.
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    /// A connection id or delivery tag: one multiply.
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_hash_depends_on_every_byte_and_on_the_key() {
        let build = IdHash::new();
        let base = build.hash_one([7u8; 16]);
        for i in 0..16 {
            let mut other = [7u8; 16];
            other[i] ^= 1;
            assert_ne!(build.hash_one(other), base, "byte {i}");
        }
        assert_eq!(build.hash_one([7u8; 16]), base);
        assert_ne!(IdHash::new().hash_one([7u8; 16]), base);
    }

    #[test]
    fn other_lengths_still_hash_every_byte() {
        let build = IdHash::new();
        for len in [0usize, 3, 8, 15, 17, 24] {
            let base = build.hash_one(vec![9u8; len]);
            for i in 0..len {
                let mut other = vec![9u8; len];
                other[i] ^= 0x80;
                assert_ne!(build.hash_one(&other), base, "length {len}, byte {i}");
            }
        }
        assert_ne!(build.hash_one(vec![0u8; 3]), build.hash_one(vec![0u8; 4]), "length counts");
    }
}
