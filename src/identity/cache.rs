//! The verified-token cache: token digest → [`Principal`], bounded, first in first out.
//!
//! Why not moka, which the other caches use: a Check reads this cache once and a new token
//! writes it once, and measured on the hot path moka's general machinery was most of the
//! cache's cost: on a miss its lookup walked a table of pointers to heap buckets (≈ 0.85 µs of
//! a new token's 24 µs), and with the cache full of short-lived tokens it copied its live
//! entries each time 25,000 removals had left tombstones (≈ 0.7 µs per new token), plus its
//! access-order and timer-wheel housekeeping on reads. What this cache needs is less:
//!
//! - The key is already a SHA-256 digest, so its first eight bytes are the table's hash and the
//!   next eight pick the shard; no hashing of our own. Only a verified token is inserted, so
//!   nobody can fill a table with keys of their choosing.
//! - A bound, not a frequency policy: tokens live for an hour and are used in bursts, so the
//!   oldest entry is the one to drop. Each shard keeps its insertion order and drops from its
//!   front past its share of the capacity. The tables are sized up front for 2^17 tokens over
//!   all shards, at most half full: up to that capacity (the default is 100,000) a table never
//!   grows and a removal rarely leaves a tombstone. Past it, a table grows by doubling as it
//!   fills.
//! - Expiry exactly at the token's `exp`: a read never returns an expired principal (it
//!   removes it), and entries already expired at the front are dropped on each insert. One
//!   expired further in waits for its turn at the front, within the same bound.
//!
//! Sharded by mutex: a lock is held for one table operation, never across an `.await`, and
//! the runtimes that share the validator rarely meet on the same shard.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::Principal;

/// At most this many shards; fewer when the capacity is smaller, so that every shard holds one.
const SHARDS: usize = 16;
/// Entries allocated up front, at most, over all shards (a larger capacity is reached later by
/// growing, once per doubling).
const PRESIZE: usize = 1 << 17;

/// A token's cache key: the SHA-256 over the whole token (`TokenDigest::key`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u8; 32]);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(word(&self.0, 0));
    }
}

/// The little-endian word at byte `at` of a digest (`at` + 8 ≤ 32).
fn word(digest: &[u8; 32], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&digest[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Takes the one word [`Key`] writes as the hash itself: the key is a uniform digest already.
#[derive(Default)]
struct DigestWord(u64);

impl Hasher for DigestWord {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, w: u64) {
        self.0 = w;
    }

    /// Not reached by [`Key`]; folds any other input rather than ignore it.
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
}

/// Whether a principal's token is still valid at `now`: the one expiry rule of this cache, so
/// a read, an insert and the trim agree to the second.
fn live(principal: &Principal, now: u64) -> bool {
    now < principal.expires_at
}

struct Slot {
    principal: Arc<Principal>,
    /// Which insertion made this entry: its place in the shard's order carries the same number.
    seq: u64,
}

struct Shard {
    map: HashMap<Key, Slot, BuildHasherDefault<DigestWord>>,
    /// Keys in insertion order with the insertion's number. An entry replaced or removed since
    /// leaves its old number here, which no longer matches the map and is skipped.
    order: VecDeque<(Key, u64)>,
    next_seq: u64,
}

impl Shard {
    /// Drops from the front: past `capacity`, and while the front entry is stale or expired.
    fn trim(&mut self, capacity: usize, now: u64) {
        while let Some(&(key, seq)) = self.order.front() {
            let current = self.map.get(&key).filter(|s| s.seq == seq);
            let over = self.order.len() > capacity;
            match current {
                Some(slot) if !over && live(&slot.principal, now) => break,
                Some(_) => {
                    self.map.remove(&key);
                }
                None => {}
            }
            self.order.pop_front();
        }
    }
}

pub(super) struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    /// Each shard's share of the capacity; the shards together hold at most the capacity.
    per_shard: usize,
}

impl TokenCache {
    /// A cache of at most `capacity` principals (at least one).
    pub(super) fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let shards = capacity.min(SHARDS);
        let per_shard = capacity / shards;
        let presize = per_shard.min(PRESIZE / shards);
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::with_capacity_and_hasher(presize, Default::default()),
                    order: VecDeque::with_capacity(presize),
                    next_seq: 0,
                })
            })
            .collect();
        Self { shards, per_shard }
    }

    fn shard(&self, key: &[u8; 32]) -> MutexGuard<'_, Shard> {
        let i = (word(key, 8) % self.shards.len() as u64) as usize;
        // A panic cannot happen while a shard is locked (table operations only), and were one
        // to, the shard's table and order are each still consistent: keep serving.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The principal cached under `key` if its token has not expired at `now`; an expired one
    /// is removed.
    pub(super) fn get(&self, key: &[u8; 32], now: u64) -> Option<Arc<Principal>> {
        let mut shard = self.shard(key);
        let key = Key(*key);
        match shard.map.get(&key) {
            Some(slot) if live(&slot.principal, now) => Some(slot.principal.clone()),
            Some(_) => {
                shard.map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Caches `principal` under `key` (replacing any entry there), then drops from the shard's
    /// front what is past its share of the capacity or expired at `now`. A principal already
    /// expired at `now` (a token accepted within the leeway past its `exp`) is not cached: no
    /// read could return it, and it would only take a place.
    pub(super) fn insert(&self, key: [u8; 32], principal: Arc<Principal>, now: u64) {
        if !live(&principal, now) {
            return;
        }
        let per_shard = self.per_shard;
        let mut shard = self.shard(&key);
        let seq = shard.next_seq;
        shard.next_seq += 1;
        let key = Key(key);
        shard.map.insert(key, Slot { principal, seq });
        shard.order.push_back((key, seq));
        shard.trim(per_shard, now);
    }

    /// How many principals are cached (expired ones not yet dropped included).
    pub(super) fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{GroupsClaim, PrincipalKind, TokenVersion};
    use crate::ids::{DirectoryId, ObjectId};

    fn principal(expires_at: u64) -> Arc<Principal> {
        Arc::new(Principal {
            tid: DirectoryId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").expect("tid"),
            oid: ObjectId::parse("00000000-0000-0000-0000-000000000001").expect("oid"),
            kind: PrincipalKind::User,
            label: None,
            groups: GroupsClaim::Absent,
            version: TokenVersion::V2,
            expires_at,
        })
    }

    /// A digest-like key: `n` spread over both the hash word and the shard word.
    fn key(n: u64) -> [u8; 32] {
        let mut k = [0u8; 32];
        let mixed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        k[..8].copy_from_slice(&mixed.to_le_bytes());
        k[8..16].copy_from_slice(&mixed.rotate_left(29).to_le_bytes());
        k[16..24].copy_from_slice(&n.to_le_bytes());
        k
    }

    #[test]
    fn holds_at_most_its_capacity_and_drops_the_oldest() {
        let cache = TokenCache::new(64);
        for n in 0..10_000 {
            cache.insert(key(n), principal(u64::MAX), 0);
            assert!(cache.len() <= 64, "{} cached after {n}", cache.len());
        }
        // The newest are there; the first ones were dropped.
        assert!(cache.get(&key(9_999), 0).is_some());
        assert!(cache.get(&key(0), 0).is_none());
        for s in cache.shards.iter() {
            let s = s.lock().expect("shard");
            assert!(s.order.len() <= cache.per_shard, "order {}", s.order.len());
        }
    }

    #[test]
    fn a_capacity_smaller_than_the_shards_still_bounds_the_total() {
        for cap in [1, 2, 3, 8, 15, 17] {
            let cache = TokenCache::new(cap);
            for n in 0..500 {
                cache.insert(key(n), principal(u64::MAX), 0);
            }
            assert!(cache.len() <= cap, "capacity {cap}: {} cached", cache.len());
            assert!(cache.len() >= 1);
        }
    }

    #[test]
    fn never_returns_a_principal_at_or_past_its_exp() {
        let cache = TokenCache::new(100);
        cache.insert(key(1), principal(1_000), 0);
        assert!(cache.get(&key(1), 999).is_some());
        assert!(cache.get(&key(1), 1_000).is_none());
        // The expired entry was removed, not only hidden.
        assert_eq!(cache.len(), 0);
        // One accepted within the leeway past its exp is not cached, so it takes no live
        // token's place (in a cache of one, it would have pushed the live one out).
        let one = TokenCache::new(1);
        one.insert(key(3), principal(u64::MAX), 1_000);
        one.insert(key(2), principal(1_000), 1_000);
        assert!(one.get(&key(3), 1_000).is_some());
        assert!(one.get(&key(2), 1_000).is_none());
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn expired_entries_at_the_front_are_dropped_on_insert() {
        let cache = TokenCache::new(1_000);
        for n in 0..200 {
            cache.insert(key(n), principal(100), 0);
        }
        assert_eq!(cache.len(), 200);
        // Later, every one of them has expired: new inserts clear them out shard by shard.
        for n in 1_000..1_200 {
            cache.insert(key(n), principal(10_000), 500);
        }
        assert_eq!(cache.len(), 200, "only the live ones remain");
        assert!(cache.get(&key(5), 500).is_none());
        assert!(cache.get(&key(1_005), 500).is_some());
    }

    #[test]
    fn a_replaced_entry_is_not_dropped_by_its_old_place_in_the_order() {
        // A cache of one shard, then one of two shards of one: the key inserted again later must
        // outlive its first insertion.
        let cache = TokenCache::new(1);
        cache.insert(key(1), principal(u64::MAX), 0);
        cache.insert(key(1), principal(u64::MAX), 0);
        assert!(cache.get(&key(1), 0).is_some());
        let cache = TokenCache::new(2);
        cache.insert(key(7), principal(u64::MAX), 0);
        cache.insert(key(7), principal(u64::MAX), 0);
        let s = &cache.shards[(word(&key(7), 8) % 2) as usize];
        // The stale first insertion was skipped at the front; the entry stays.
        assert!(cache.get(&key(7), 0).is_some());
        assert!(s.lock().expect("shard").order.len() <= 1);
    }

    #[test]
    fn keys_spread_over_every_shard() {
        let cache = TokenCache::new(1 << 20);
        for n in 0..1_600 {
            cache.insert(key(n), principal(u64::MAX), 0);
        }
        for s in cache.shards.iter() {
            let len = s.lock().expect("shard").map.len();
            assert!((50..=150).contains(&len), "a shard holds {len} of 1,600");
        }
    }
}
