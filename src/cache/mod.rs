//! The token cache: bounded moka caches keyed by an HMAC of the token (never the token
//! itself), entries that never outlive the token, a separate bounded cache for inactive
//! tokens so junk cannot evict good entries, and single-flight loading so concurrent
//! misses for one token make one call.
//!
//! This is the edge's cache; exchanged tokens live in the two-tier [`tiered`] cache.

pub mod front;
pub mod sealed;
pub mod tiered;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use moka::Expiry;
use sha2::Sha256;

use front::{Front, Held};

/// HMAC-SHA256 of a token under the cache's key.
pub type CacheKey = [u8; 32];

/// Hashes a [`CacheKey`] for moka by its first eight bytes. The key is already an HMAC
/// under a secret key, uniform and unpredictable to a client, so hashing it once more
/// (SipHash, moka's default, on every lookup of every request) buys nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheKeyHashing;

/// The hasher [`CacheKeyHashing`] builds.
#[derive(Debug, Default)]
pub struct CacheKeyHasher(u64);

impl std::hash::Hasher for CacheKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 32]` writes its length, then its bytes: the first eight of each fold in.
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl std::hash::BuildHasher for CacheKeyHashing {
    type Hasher = CacheKeyHasher;

    fn build_hasher(&self) -> CacheKeyHasher {
        CacheKeyHasher::default()
    }
}

/// A cached value that knows when it must go.
pub trait Expiring: Send + Sync + 'static {
    /// Seconds since the epoch after which the entry must not be served.
    fn expires_at(&self) -> u64;
}

/// moka drops an entry at its deadline (the front, reading no timer wheel, checks it).
struct UntilExpiry;

impl<V: Send + Sync + 'static> Expiry<CacheKey, Held<V>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Held<V>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(
            value.until.saturating_sub(crate::clock::now_millis()),
        ))
    }
}

/// What a lookup found.
pub enum Lookup<V, R> {
    Hit(Arc<V>),
    /// The token was recently refused, for this reason.
    NegativeHit(R),
    Miss,
}

/// How a load ended for one caller.
pub enum Loaded<V, R, E> {
    Value(Arc<V>),
    /// The loader said the token is not good; cached negatively with the reason.
    Rejected(R),
    /// The loader failed (the AS was unreachable, say); nothing cached.
    Failed(E),
}

/// What a loader returns.
pub enum LoadOutcome<V, R, E> {
    Value(V),
    Rejected(R),
    Failed(E),
}

/// A load that gave no value, as moka shares it with the coalesced callers.
#[derive(Clone)]
enum NoValue<R, E> {
    Rejected(R),
    Failed(E),
}

/// Limits of one token cache.
#[derive(Debug, Clone)]
pub struct CacheLimits {
    pub capacity: u64,
    pub max_ttl: Duration,
    pub negative_capacity: u64,
    pub negative_ttl: Duration,
}

impl CacheLimits {
    /// The edge cache's bounds from `[tokens]`.
    pub fn from_settings(t: &crate::settings::TokenSettings) -> Self {
        Self {
            capacity: t.cache_capacity,
            max_ttl: t.cache_max_ttl,
            negative_capacity: t.negative_capacity,
            negative_ttl: t.negative_ttl,
        }
    }
}

/// One token cache (e.g. the edge's), with its metrics under `cache = name`. `R` is why a
/// token was refused: the negative cache keeps it, so a repeat gets the same answer.
pub struct TokenCache<V: Expiring, R: Clone + Send + Sync + 'static> {
    name: &'static str,
    /// `intercom_token_cache_requests_total` by result, registered once: a lookup per
    /// request with labels is a registry search.
    hits: metrics::Counter,
    negative_hits: metrics::Counter,
    misses: metrics::Counter,
    coalesced: metrics::Counter,
    mac: Hmac<Sha256>,
    positive: moka::future::Cache<CacheKey, Held<V>, CacheKeyHashing>,
    /// Each worker's copies of its recent hits, read first.
    front: Front<V>,
    /// How long a verdict is trusted from when it was cached (`cache_max_ttl`), in ms.
    max_ttl: u64,
    negative: moka::future::Cache<CacheKey, R, CacheKeyHashing>,
}

impl<V: Expiring, R: Clone + Send + Sync + 'static> TokenCache<V, R> {
    /// A cache keyed under a fresh random per-process key.
    pub fn new(name: &'static str, limits: &CacheLimits) -> Self {
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut secret);
        let mac = Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes any key length");
        let requests = |result: &'static str| metrics::counter!("intercom_token_cache_requests_total", "cache" => name, "result" => result);
        Self {
            name,
            hits: requests("hit"),
            negative_hits: requests("negative_hit"),
            misses: requests("miss"),
            coalesced: requests("coalesced"),
            mac,
            positive: moka::future::Cache::builder()
                .max_capacity(limits.capacity)
                .expire_after(UntilExpiry)
                .build_with_hasher(CacheKeyHashing),
            front: Front::default(),
            max_ttl: limits.max_ttl.as_millis().try_into().unwrap_or(u64::MAX),
            negative: moka::future::Cache::builder()
                .max_capacity(limits.negative_capacity)
                .time_to_live(limits.negative_ttl)
                .build_with_hasher(CacheKeyHashing),
        }
    }

    /// The cache key of a token.
    pub fn key(&self, token: &str) -> CacheKey {
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Drops every entry, the workers' copies too.
    pub fn invalidate_all(&self) {
        self.positive.invalidate_all();
        // After moka's: a copy read from moka before it carries the older generation.
        self.front.invalidate_all();
    }

    /// Looks the key up: this worker's copies, then moka, then the refusals.
    pub async fn lookup(&self, key: &CacheKey) -> Lookup<V, R> {
        let now = crate::clock::now_millis();
        let generation = self.front.generation();
        if let Some(v) = self.front.get(key, generation, now) {
            self.hits.increment(1);
            return Lookup::Hit(v);
        }
        if let Some(held) = self.positive.get(key).await {
            if held.until > now {
                self.hits.increment(1);
                let value = held.value.clone();
                self.front.keep(*key, held, generation);
                return Lookup::Hit(value);
            }
            self.positive.invalidate(key).await;
        }
        if let Some(rejected) = self.negative.get(key).await {
            self.negative_hits.increment(1);
            return Lookup::NegativeHit(rejected);
        }
        Lookup::Miss
    }

    /// Loads a missing entry; concurrent callers for the same key share one load.
    pub async fn load<E, F>(&self, key: CacheKey, loader: F) -> Loaded<V, R, E>
    where
        E: Clone + Send + Sync + 'static,
        F: Future<Output = LoadOutcome<V, R, E>>,
    {
        let ran = Arc::new(AtomicBool::new(false));
        let ran_inner = ran.clone();
        let result = self
            .positive
            .try_get_with(key, async move {
                ran_inner.store(true, Ordering::Relaxed);
                match loader.await {
                    LoadOutcome::Value(v) => Ok(Held {
                        until: v
                            .expires_at()
                            .saturating_mul(1000)
                            .min(crate::clock::now_millis().saturating_add(self.max_ttl)),
                        value: Arc::new(v),
                    }),
                    LoadOutcome::Rejected(r) => Err(NoValue::Rejected(r)),
                    LoadOutcome::Failed(e) => Err(NoValue::Failed(e)),
                }
            })
            .await;
        match ran.load(Ordering::Relaxed) {
            true => self.misses.increment(1),
            false => self.coalesced.increment(1),
        }
        metrics::gauge!("intercom_token_cache_entries", "cache" => self.name)
            .set(self.positive.entry_count() as f64);
        match result {
            Ok(held) => Loaded::Value(held.value),
            Err(shared) => match (*shared).clone() {
                NoValue::Rejected(rejected) => {
                    self.negative.insert(key, rejected.clone()).await;
                    Loaded::Rejected(rejected)
                }
                NoValue::Failed(e) => Loaded::Failed(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Entry(u64);
    impl Expiring for Entry {
        fn expires_at(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn keys_hash_by_their_own_uniform_bytes() {
        use std::hash::BuildHasher;
        let cache: TokenCache<Entry, ()> = TokenCache::new("test", &limits());
        let hashes: std::collections::HashSet<u64> = (0..10_000)
            .map(|i| CacheKeyHashing.hash_one(cache.key(&format!("token-{i}"))))
            .collect();
        assert_eq!(hashes.len(), 10_000, "two of 10,000 keys hashed alike");
        let key = cache.key("token");
        assert_eq!(CacheKeyHashing.hash_one(key), CacheKeyHashing.hash_one(key));
    }

    fn limits() -> CacheLimits {
        CacheLimits {
            capacity: 100,
            max_ttl: Duration::from_secs(60),
            negative_capacity: 10,
            negative_ttl: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn keys_are_keyed_hashes_and_loads_are_shared() {
        let cache: TokenCache<Entry, ()> = TokenCache::new("test", &limits());
        let other: TokenCache<Entry, ()> = TokenCache::new("test", &limits());
        let key = cache.key("secret-token");
        assert_eq!(key, cache.key("secret-token"));
        assert_ne!(key, other.key("secret-token"), "a per-process key");
        assert!(matches!(cache.lookup(&key).await, Lookup::Miss));
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let calls = calls.clone();
                cache.load::<(), _>(key, async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    LoadOutcome::Value(Entry(crate::clock::now_secs() + 30))
                })
            })
            .collect();
        futures_util::future::join_all(tasks).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(cache.lookup(&key).await, Lookup::Hit(_)));
    }

    #[tokio::test]
    async fn a_hit_from_the_workers_copy_goes_with_an_invalidation_and_at_max_ttl() {
        let cache: TokenCache<Entry, ()> = TokenCache::new("test", &limits());
        let key = cache.key("token");
        let _ = cache
            .load::<(), _>(key, async {
                LoadOutcome::Value(Entry(crate::clock::now_secs() + 30))
            })
            .await;
        for _ in 0..3 {
            // The first from moka, the others from this thread's copy.
            assert!(matches!(cache.lookup(&key).await, Lookup::Hit(_)));
        }
        cache.invalidate_all();
        assert!(matches!(cache.lookup(&key).await, Lookup::Miss));

        // `max_ttl` bounds the verdict from when it was cached, before the token's own expiry.
        let brief = CacheLimits {
            max_ttl: Duration::ZERO,
            ..limits()
        };
        let cache: TokenCache<Entry, ()> = TokenCache::new("test", &brief);
        let key = cache.key("token");
        let _ = cache
            .load::<(), _>(key, async {
                LoadOutcome::Value(Entry(crate::clock::now_secs() + 30))
            })
            .await;
        assert!(matches!(cache.lookup(&key).await, Lookup::Miss));
    }

    #[tokio::test]
    async fn rejected_tokens_are_cached_negatively_and_expired_entries_are_not_served() {
        let cache: TokenCache<Entry, &str> = TokenCache::new("test", &limits());
        let bad = cache.key("bad");
        let r = cache
            .load(bad, async {
                LoadOutcome::<Entry, &str, ()>::Rejected("expired")
            })
            .await;
        assert!(matches!(r, Loaded::Rejected("expired")));
        assert!(
            matches!(cache.lookup(&bad).await, Lookup::NegativeHit("expired")),
            "a repeat reads the same reason"
        );
        let old = cache.key("old");
        let _ = cache
            .load::<(), _>(old, async {
                LoadOutcome::Value(Entry(crate::clock::now_secs() - 1))
            })
            .await;
        assert!(matches!(cache.lookup(&old).await, Lookup::Miss));
    }
}
