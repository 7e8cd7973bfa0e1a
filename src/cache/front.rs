//! Each worker thread's own copy of the token cache's recent hits, read before moka.
//!
//! A moka read is a concurrent read: it hashes, probes a shard, checks expiry against
//! its timer wheel and records the access for its eviction policy in a buffer every
//! worker writes to. On the phantom route that was the largest single cost of a hit
//! (3.4 % of a worker's samples, about 1.4 µs of its 41 µs per request, perf under
//! wrk; this front saves 1,472 of 87,148 instructions per request, callgrind). A
//! thread's own map answers a repeat with no shared write at all; moka stays the cache
//! of record (its bound, its single-flight loads, its expiry), and the front only ever
//! holds what moka returned.
//!
//! What a front entry may not outlive: its own deadline (the token's expiry, or the
//! cache's `max_ttl` from when moka took it, whichever is first: [`Held::until`]), and
//! any invalidation of the whole cache, which bumps the cache's generation; a thread
//! that sees a new generation drops its front before it reads it. A front is bounded
//! ([`FRONT_CAPACITY`]): when full, it starts over empty.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thread_local::ThreadLocal;

use super::{CacheKey, CacheKeyHashing};

/// Entries each thread keeps at most (a worker's working set of hot tokens).
pub const FRONT_CAPACITY: usize = 8192;

/// A cached value with the millisecond (since the epoch) from which it is not served.
pub struct Held<V> {
    pub value: Arc<V>,
    /// The token's expiry or the cache's `max_ttl` from insertion, whichever is first.
    pub until: u64,
}

impl<V> Clone for Held<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            until: self.until,
        }
    }
}

/// One thread's map, with the generation it was filled under.
struct ThreadFront<V> {
    generation: u64,
    entries: HashMap<CacheKey, Held<V>, CacheKeyHashing>,
}

impl<V> ThreadFront<V> {
    /// Empties the map, to be filled under `generation`.
    fn start_over(&mut self, generation: u64) {
        self.entries.clear();
        self.generation = generation;
    }
}

/// The per-thread fronts of one cache.
pub struct Front<V: Send + Sync> {
    threads: ThreadLocal<RefCell<ThreadFront<V>>>,
    /// Bumped after every invalidation of the cache behind.
    generation: AtomicU64,
}

impl<V: Send + Sync> Default for Front<V> {
    fn default() -> Self {
        Self {
            threads: ThreadLocal::new(),
            generation: AtomicU64::new(0),
        }
    }
}

impl<V: Send + Sync> Front<V> {
    /// The generation to pass to [`Front::keep`]: read before the cache behind is read,
    /// so an invalidation that lands between the two makes the kept copy stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// This thread's copy of `key`, unless past its deadline (`now` in ms since the epoch).
    pub fn get(&self, key: &CacheKey, generation: u64, now: u64) -> Option<Arc<V>> {
        let mut front = self.thread().borrow_mut();
        if front.generation != generation {
            front.start_over(generation);
            return None;
        }
        match front.entries.get(key) {
            Some(held) if held.until > now => Some(held.value.clone()),
            Some(_) => {
                front.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps what the cache behind returned for `key`, read under `generation`.
    pub fn keep(&self, key: CacheKey, held: Held<V>, generation: u64) {
        if generation != self.generation() {
            // The cache was invalidated since it was read: this copy may be stale.
            return;
        }
        let mut front = self.thread().borrow_mut();
        if front.generation != generation || front.entries.len() >= FRONT_CAPACITY {
            front.start_over(generation);
        }
        front.entries.insert(key, held);
    }

    /// Every thread's copies are stale from now on (call after invalidating the cache).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn thread(&self) -> &RefCell<ThreadFront<V>> {
        self.threads.get_or(|| {
            RefCell::new(ThreadFront {
                generation: self.generation(),
                entries: HashMap::with_hasher(CacheKeyHashing),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(value: u32, until: u64) -> Held<u32> {
        Held {
            value: Arc::new(value),
            until,
        }
    }

    #[test]
    fn a_kept_entry_is_served_until_its_deadline() {
        let front: Front<u32> = Front::default();
        let generation = front.generation();
        front.keep([1; 32], held(7, 100), generation);
        assert_eq!(front.get(&[1; 32], generation, 99).as_deref(), Some(&7));
        assert_eq!(front.get(&[2; 32], generation, 99), None, "another key");
        assert_eq!(
            front.get(&[1; 32], generation, 100),
            None,
            "at its deadline"
        );
        assert_eq!(
            front.get(&[1; 32], generation, 50),
            None,
            "and dropped then"
        );
    }

    #[test]
    fn an_invalidation_drops_every_threads_copies() {
        let front: Arc<Front<u32>> = Arc::new(Front::default());
        let generation = front.generation();
        front.keep([1; 32], held(7, u64::MAX), generation);
        let other = front.clone();
        std::thread::spawn(move || {
            let g = other.generation();
            other.keep([1; 32], held(8, u64::MAX), g);
        })
        .join()
        .unwrap();
        front.invalidate_all();
        let now = front.generation();
        assert_ne!(now, generation);
        assert_eq!(front.get(&[1; 32], now, 0), None);
        let other = front.clone();
        let seen = std::thread::spawn(move || other.get(&[1; 32], now, 0))
            .join()
            .unwrap();
        assert_eq!(seen, None, "the other thread's copy went too");
    }

    #[test]
    fn a_copy_read_before_an_invalidation_is_not_kept() {
        let front: Front<u32> = Front::default();
        let before = front.generation();
        // The cache behind was read under `before`; the invalidation landed after it.
        front.invalidate_all();
        front.keep([1; 32], held(7, u64::MAX), before);
        assert_eq!(front.get(&[1; 32], front.generation(), 0), None);
        assert_eq!(front.get(&[1; 32], before, 0), None);
    }

    #[test]
    fn a_full_front_starts_over() {
        let front: Front<u32> = Front::default();
        let generation = front.generation();
        for i in 0..FRONT_CAPACITY {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            front.keep(key, held(1, u64::MAX), generation);
        }
        front.keep([0xff; 32], held(2, u64::MAX), generation);
        assert_eq!(front.get(&[0xff; 32], generation, 0).as_deref(), Some(&2));
        assert_eq!(front.get(&[0; 32], generation, 0), None, "the rest went");
    }
}
