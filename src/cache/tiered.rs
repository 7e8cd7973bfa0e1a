//! The two-tier cache of tokens for downstream audiences: L1 in each replica's memory
//! (moka), L2 shared in Redis. Keys are keyed hashes of (subject token, audience,
//! scopes); Redis values are sealed ([`super::sealed`]). A miss is loaded once per
//! replica (single-flight) and shared through L2; a denied exchange is remembered
//! briefly. Redis slow or down: L1 and direct loads keep serving.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::sealed::Sealer;
use crate::clock::now_secs;
use crate::keyed_hash::Hash;
use crate::redis::keys;
use crate::redis::SharedRedis;
use crate::revocation_ids::{Ids, Kind};

/// A token for one (subject, audience, scopes).
#[derive(Serialize, Deserialize)]
pub struct ExchangeEntry {
    pub token: String,
    pub issued_token_type: String,
    pub scope: String,
    pub exp: u64,
    /// When it was issued here (seconds since the epoch).
    pub created: u64,
    pub ids: Ids,
    /// A background renewal is under way.
    #[serde(skip)]
    refreshing: AtomicBool,
}

impl ExchangeEntry {
    pub fn new(
        token: String,
        issued_token_type: String,
        scope: String,
        exp: u64,
        ids: Ids,
    ) -> Self {
        Self {
            token,
            issued_token_type,
            scope,
            exp,
            created: now_secs(),
            ids,
            refreshing: AtomicBool::new(false),
        }
    }

    /// True once per entry: the caller should renew it in the background.
    pub fn claim_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Lets a later hit try again after a failed renewal.
    pub fn release_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

/// A refusal remembered in the negative cache, as it was, so a repeated request gets the
/// same answer as the first (a 401 stays 401). The cache holds it type-erased, so that it
/// need not know its users' error types; it reads back only as the type it was stored as.
pub trait Refusal: Clone + Send + Sync + 'static {}

impl<E: Clone + Send + Sync + 'static> Refusal for E {}

type StoredRefusal = Arc<dyn std::any::Any + Send + Sync>;

/// How a load ended.
pub enum LoadError<E> {
    /// Refused (cached negatively with this reason).
    Rejected(E),
    /// Failed; nothing cached.
    Failed(E),
}

/// What a loader returns.
pub enum Loaded<E> {
    Value(ExchangeEntry),
    Rejected(E),
    Failed(E),
}

/// The Redis tier.
struct SharedTier {
    redis: Arc<SharedRedis>,
    sealer: Sealer,
    prefix: String,
}

/// The two tiers.
pub struct TieredCache {
    l1: Option<moka::future::Cache<Hash, Arc<ExchangeEntry>>>,
    negative: moka::future::Cache<Hash, StoredRefusal>,
    l2: Option<SharedTier>,
    /// Entries go this many seconds before their token's `exp`.
    skew: u64,
    /// Entries created at or before this second are not served: a revocation of
    /// everything (Redis keeps them until they expire; no replica reads them).
    forgotten_before: AtomicU64,
}

struct UntilExpiry {
    skew: u64,
}

impl moka::Expiry<Hash, Arc<ExchangeEntry>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &Hash,
        value: &Arc<ExchangeEntry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.exp.saturating_sub(now_secs() + self.skew),
        ))
    }
}

impl TieredCache {
    /// `l2` is the Redis tier and the sealer of its values, when Redis is configured.
    pub fn new(
        capacity: u64,
        memory_tier: bool,
        skew: Duration,
        negative_ttl: Duration,
        l2: Option<(Arc<SharedRedis>, Sealer, String)>,
    ) -> Self {
        Self {
            l1: memory_tier.then(|| {
                moka::future::Cache::builder()
                    .max_capacity(capacity)
                    .expire_after(UntilExpiry {
                        skew: skew.as_secs(),
                    })
                    .support_invalidation_closures()
                    .build()
            }),
            negative: moka::future::Cache::builder()
                .max_capacity(capacity.max(1000) / 10)
                .time_to_live(negative_ttl)
                .build(),
            l2: l2.map(|(redis, sealer, prefix)| SharedTier {
                redis,
                sealer,
                prefix,
            }),
            skew: skew.as_secs(),
            forgotten_before: AtomicU64::new(0),
        }
    }

    fn fresh(&self, entry: &ExchangeEntry) -> bool {
        entry.exp > now_secs() + self.skew
            && entry.created > self.forgotten_before.load(Ordering::Relaxed)
    }

    /// Serves no entry created at or before `at` again, from either tier: what a
    /// revocation of everything does to the shared tier without visiting its keys (a
    /// `SCAN` would have to visit every node of a cluster).
    pub fn forget_before(&self, at: u64) {
        self.forgotten_before.fetch_max(at, Ordering::Relaxed);
        self.clear_local();
    }

    /// An L1 hit, if any.
    pub async fn get_local(&self, key: &Hash, m: &ExchangeMetrics) -> Option<Arc<ExchangeEntry>> {
        let entry = self.l1.as_ref()?.get(key).await?;
        if !self.fresh(&entry) {
            return None;
        }
        m.l1.hit(&entry);
        Some(entry)
    }

    /// How a recent exchange for this key was refused.
    pub async fn get_negative<E: Refusal>(&self, key: &Hash, m: &ExchangeMetrics) -> Option<E> {
        let stored = self.negative.get(key).await?;
        let refusal = stored.downcast_ref::<E>()?.clone();
        m.l1.negative_hit.increment(1);
        Some(refusal)
    }

    /// Loads a missing entry: from L2, else with `loader` (stored in L2 then). Concurrent
    /// callers in this replica for one key share one load.
    pub async fn load<E, F>(
        &self,
        key: Hash,
        m: &ExchangeMetrics,
        loader: F,
    ) -> Result<Arc<ExchangeEntry>, LoadError<E>>
    where
        E: Refusal,
        F: Future<Output = Loaded<E>>,
    {
        let ran = Arc::new(AtomicBool::new(false));
        let ran_inner = ran.clone();
        let work = async move {
            ran_inner.store(true, Ordering::Relaxed);
            if let Some(entry) = self.get_shared(&key, m).await {
                return Ok(Arc::new(entry));
            }
            match loader.await {
                Loaded::Value(entry) => {
                    self.put_shared(&key, &entry).await;
                    Ok(Arc::new(entry))
                }
                Loaded::Rejected(e) => Err((true, e)),
                Loaded::Failed(e) => Err((false, e)),
            }
        };
        let result = match &self.l1 {
            Some(l1) => l1.try_get_with(key, work).await.map_err(|e| (*e).clone()),
            None => work.await,
        };
        if ran.load(Ordering::Relaxed) {
            m.l1.miss.increment(1);
        } else {
            m.l1.coalesced.increment(1);
        }
        match result {
            Ok(entry) => Ok(entry),
            Err((true, e)) => {
                self.negative.insert(key, Arc::new(e.clone())).await;
                Err(LoadError::Rejected(e))
            }
            Err((false, e)) => Err(LoadError::Failed(e)),
        }
    }

    /// Replaces an entry in both tiers (a renewal).
    pub async fn put(&self, key: Hash, entry: ExchangeEntry) {
        self.put_shared(&key, &entry).await;
        self.put_local(key, Arc::new(entry)).await;
    }

    /// Replaces an entry in L1 only (a renewal another replica stored in L2).
    pub async fn put_local(&self, key: Hash, entry: Arc<ExchangeEntry>) {
        if let Some(l1) = &self.l1 {
            l1.insert(key, entry).await;
        }
    }

    fn entry_key(prefix: &str, key: &Hash) -> String {
        keys::exchange_entry(prefix, key)
    }

    fn index_key(prefix: &str, kind: Kind, id: &str) -> String {
        keys::exchange_index(prefix, kind, id)
    }

    /// An L2 entry, unsealed; `None` on a miss, a stale or unreadable value, or a
    /// Redis failure (the caller then loads directly).
    pub async fn get_shared(&self, key: &Hash, m: &ExchangeMetrics) -> Option<ExchangeEntry> {
        let tier = self.l2.as_ref()?;
        let redis_key = Self::entry_key(&tier.prefix, key);
        let mut get = deadpool_redis::redis::cmd("GET");
        get.arg(&redis_key);
        let value: Option<String> = match tier.redis.query("exchange_get", get).await {
            Ok(value) => value,
            Err(_) => {
                m.l2.error.increment(1);
                return None;
            }
        };
        let entry = value
            .and_then(|v| tier.sealer.open(&v, redis_key.as_bytes()))
            .and_then(|plain| serde_json::from_slice::<ExchangeEntry>(&plain).ok())
            .filter(|e| self.fresh(e));
        match &entry {
            Some(e) => m.l2.hit(e),
            None => m.l2.miss.increment(1),
        }
        entry
    }

    /// Stores an entry in L2, sealed, with the indexes revocations use.
    async fn put_shared(&self, key: &Hash, entry: &ExchangeEntry) {
        let Some(tier) = &self.l2 else { return };
        let ttl_ms = entry.exp.saturating_sub(now_secs() + self.skew) * 1000;
        if ttl_ms == 0 {
            return;
        }
        let redis_key = Self::entry_key(&tier.prefix, key);
        let Some(sealed) = serde_json::to_vec(entry)
            .ok()
            .and_then(|plain| tier.sealer.seal(&plain, redis_key.as_bytes()))
        else {
            return;
        };
        let indexes: Vec<String> = Kind::ALL
            .iter()
            .filter_map(|kind| {
                entry
                    .ids
                    .get(*kind)
                    .map(|id| Self::index_key(&tier.prefix, *kind, id))
            })
            .collect();
        let _ = tier
            .redis
            .run("exchange_put", move |conn| {
                async move {
                    // Each index is a key of its own (its own slot on a cluster), written
                    // before the entry: a failure leaves an index naming a missing entry,
                    // never an entry a revocation cannot find.
                    let batches: Vec<_> = indexes
                        .iter()
                        .map(|index| {
                            let mut pipe = deadpool_redis::redis::pipe();
                            pipe.cmd("SADD").arg(index).arg(&redis_key).ignore();
                            pipe.cmd("PEXPIRE")
                                .arg(index)
                                .arg(ttl_ms)
                                .arg("GT")
                                .ignore();
                            pipe.cmd("PEXPIRE")
                                .arg(index)
                                .arg(ttl_ms)
                                .arg("NX")
                                .ignore();
                            pipe
                        })
                        .collect();
                    crate::redis::each::<()>(conn, &batches).await?;
                    deadpool_redis::redis::cmd("SET")
                        .arg(&redis_key)
                        .arg(&sealed)
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async::<()>(conn)
                        .await
                }
                .boxed()
            })
            .await;
    }

    /// Takes the cross-replica lock for renewing `key`; true when this replica got it
    /// (always without Redis; false while Redis fails, so renewal waits for a miss).
    pub async fn try_lock(&self, key: &Hash, ttl: Duration) -> bool {
        let Some(tier) = &self.l2 else { return true };
        let lock = keys::exchange_lock(&tier.prefix, key);
        let ttl_ms = ttl.as_millis() as u64;
        tier.redis
            .run("exchange_lock", move |conn| {
                async move {
                    let set: Option<String> = deadpool_redis::redis::cmd("SET")
                        .arg(&lock)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(conn)
                        .await?;
                    Ok(set.is_some())
                }
                .boxed()
            })
            .await
            .unwrap_or(false)
    }

    /// Forgets the refusals remembered (a revocation may change them).
    pub fn clear_negative(&self) {
        self.negative.invalidate_all();
    }

    pub fn clear_local(&self) {
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
        self.negative.invalidate_all();
        metrics::counter!("intercom_exchange_cache_evictions_total", "tier" => "l1").increment(1);
    }

    /// Deletes the L2 entries whose `kind` id is `id`; how many.
    pub async fn evict_shared(&self, kind: Kind, id: &str) -> usize {
        let Some(tier) = &self.l2 else { return 0 };
        let index = Self::index_key(&tier.prefix, kind, id);
        let evicted = tier
            .redis
            .run("exchange_evict", move |conn| {
                async move {
                    let members: Vec<String> = deadpool_redis::redis::cmd("SMEMBERS")
                        .arg(&index)
                        .query_async(conn)
                        .await?;
                    // One DEL of many keys: on a cluster the client splits it by slot
                    // and adds the counts.
                    let deleted: usize = match members.is_empty() {
                        true => 0,
                        false => {
                            deadpool_redis::redis::cmd("DEL")
                                .arg(&members)
                                .query_async(conn)
                                .await?
                        }
                    };
                    deadpool_redis::redis::cmd("DEL")
                        .arg(&index)
                        .query_async::<()>(conn)
                        .await?;
                    Ok(deleted)
                }
                .boxed()
            })
            .await
            .unwrap_or(0);
        metrics::counter!("intercom_exchange_cache_evictions_total", "tier" => "l2")
            .increment(evicted as u64);
        evicted
    }
}

/// One tier's lookup counters for one audience.
pub struct TierCounters {
    pub hit: metrics::Counter,
    pub miss: metrics::Counter,
    pub negative_hit: metrics::Counter,
    pub coalesced: metrics::Counter,
    pub refresh_ahead: metrics::Counter,
    pub error: metrics::Counter,
    /// Entry age at a hit.
    pub age: metrics::Histogram,
}

impl TierCounters {
    fn new(tier: &'static str, audience: &str) -> Self {
        let counter = |result: &'static str| metrics::counter!("intercom_exchange_cache_requests_total", "tier" => tier, "audience" => audience.to_string(), "result" => result);
        Self {
            hit: counter("hit"),
            miss: counter("miss"),
            negative_hit: counter("negative_hit"),
            coalesced: counter("coalesced"),
            refresh_ahead: counter("refresh_ahead"),
            error: counter("error"),
            age: metrics::histogram!("intercom_exchange_cache_entry_age_seconds", "tier" => tier),
        }
    }

    fn hit(&self, entry: &ExchangeEntry) {
        self.hit.increment(1);
        self.age
            .record(now_secs().saturating_sub(entry.created) as f64);
    }
}

/// The cache metrics of one audience, registered once so a hit only touches atomics.
pub struct ExchangeMetrics {
    pub l1: TierCounters,
    pub l2: TierCounters,
}

impl ExchangeMetrics {
    pub fn new(audience: &str) -> Self {
        Self {
            l1: TierCounters::new("l1", audience),
            l2: TierCounters::new("l2", audience),
        }
    }
}

impl std::fmt::Debug for ExchangeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeMetrics")
    }
}
