//! Revocation everywhere: a subject, client, session or token revoked on one replica
//! (admin API, back-channel logout, RFC 7009 revocation) is evicted from the Redis tier
//! there, announced on a Redis pub/sub channel so every replica evicts its memory tiers
//! (the exchange cache and the edge cache), and put on a denylist for the remaining
//! lifetime, so tokens issued before the revocation are refused even where they are
//! still cached or validated locally. Everything travels hashed (see
//! [`crate::keyed_hash`]); no identity reaches Redis.
//!
//! The denylist is one sorted set (members `kind:id`, scores the revocation time), so a
//! replica loads it whole in one call. An announcement Redis does not take is queued
//! and retried until it is shared; callers learn it was not shared yet (`queued`).

pub mod logout;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::broker::edge::EdgeAuthenticator;
use crate::cache::tiered::TieredCache;
use crate::clock::now_secs;
use crate::keyed_hash::{unhex, SharedHasher};
use crate::readiness::{DependencyState, Readiness};
use crate::redis::SharedRedis;
use crate::revocation_ids::{id_hash, Ids, Kind};
use crate::settings::Settings;

/// Hashes a revocation id (hex of a keyed hash, uniformly random) by its first 16
/// bytes: no SipHash needed, and no one can choose ids without the shared key.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(2) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

/// What to revoke.
#[derive(Debug, Clone)]
pub enum Target {
    /// One identity, by its raw value (hashed before it goes anywhere).
    One(Kind, String),
    /// Every cached token (the denylist is not involved).
    Everything,
}

/// The message every replica hears: the id under every shared key the sender holds
/// (two while the key rotates), so replicas on either key recognise it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Announcement {
    /// `None` for everything.
    kind: Option<Kind>,
    #[serde(default)]
    ids: Vec<String>,
    at: u64,
    origin: String,
}

/// What a revocation did here.
#[derive(Debug, Serialize)]
pub struct Revoked {
    pub kind: &'static str,
    /// Entries removed from the Redis tier.
    pub shared_entries_evicted: usize,
    /// Whether other replicas were told (false without Redis, or while it fails).
    pub announced: bool,
    /// Redis failed: the announcement waits in this replica's queue and is retried
    /// until it is shared.
    pub queued: bool,
}

/// Revokes, and keeps the denylist.
pub struct Revoker {
    hasher: SharedHasher,
    /// The other shared key during a rotation: revocations are announced under it too.
    rotation: Option<SharedHasher>,
    /// Revocation time by id. Ids are keyed hashes over their kind, so kinds never
    /// collide. Read on every cache hit: a plain map under a read lock, hashed by the
    /// id's own (uniformly random) leading bytes, costs a fraction of a cache lookup.
    denylist: RwLock<HashMap<Box<str>, u64, BuildHasherDefault<IdHasher>>>,
    /// Spares the hot path its lookups until anything was ever revoked.
    ever_denied: AtomicBool,
    ttl: Duration,
    /// A token issued this long after a revocation is still covered by it (the AS's
    /// clock and ours differ a little).
    leeway: u64,
    exchange: Option<Arc<TieredCache>>,
    edge: Option<Arc<EdgeAuthenticator>>,
    redis: Option<Arc<SharedRedis>>,
    readiness: Arc<Readiness>,
    channel: String,
    /// The sorted set of the denylist: members `kind:id`, scores the revocation time.
    deny_key: String,
    origin: String,
    /// Announcements Redis did not take yet, oldest first.
    pending: Mutex<VecDeque<Announcement>>,
}

/// The memory tiers a revocation of everything clears (one identity's revocation only
/// goes on the denylist, which every admission checks).
pub struct Evicts {
    pub exchange: Option<Arc<TieredCache>>,
    pub edge: Option<Arc<EdgeAuthenticator>>,
}

/// The longest a queue of unshared announcements grows; past it the oldest are dropped
/// with an error log (Redis has been gone for a long while by then).
const MAX_PENDING: usize = 100_000;

/// The denylist member of a revocation of everything: its score is when, and exchanged
/// tokens made before it are not served from the shared tier.
const EVERYTHING: &str = "everything";

impl Revoker {
    /// `rotation` is the second shared key while one rotates.
    pub fn new(
        settings: &Settings,
        hasher: SharedHasher,
        rotation: Option<SharedHasher>,
        evicts: Evicts,
        redis: Option<Arc<SharedRedis>>,
        readiness: Arc<Readiness>,
    ) -> Arc<Self> {
        let ttl = settings.revocation.denylist_ttl;
        Arc::new(Self {
            hasher,
            rotation,
            denylist: RwLock::default(),
            ever_denied: AtomicBool::new(false),
            ttl,
            leeway: settings.revocation.clock_leeway.as_secs(),
            exchange: evicts.exchange,
            edge: evicts.edge,
            redis,
            readiness,
            channel: settings.revocation.channel.clone(),
            deny_key: crate::redis::keys::denylist(&crate::redis::keys::base(settings)),
            origin: uuid::Uuid::new_v4().to_string(),
            pending: Mutex::new(VecDeque::new()),
        })
    }

    /// A revoker that listens to the other replicas' announcements from now on.
    pub fn start(
        settings: &Settings,
        (hasher, rotation): (SharedHasher, Option<SharedHasher>),
        evicts: Evicts,
        redis: Option<Arc<SharedRedis>>,
        readiness: Arc<Readiness>,
    ) -> Arc<Self> {
        let revoker = Self::new(settings, hasher, rotation, evicts, redis, readiness);
        revoker.spawn_listener();
        revoker
    }

    pub fn hasher(&self) -> &SharedHasher {
        &self.hasher
    }

    /// True when a revocation covers one of the token's ids and the token was issued
    /// before it, or within the clock leeway after it (a token without `iat` counts as
    /// issued before).
    pub fn is_denied(&self, ids: &Ids, iat: Option<u64>) -> bool {
        if !self.ever_denied.load(Ordering::Relaxed) {
            return false;
        }
        let issued = iat.unwrap_or(0);
        let since = now_secs().saturating_sub(self.ttl.as_secs());
        let denylist = self.denylist.read().expect("never poisoned");
        Kind::ALL.iter().any(|kind| {
            ids.get(*kind).is_some_and(|id| {
                denylist
                    .get(id)
                    .is_some_and(|&at| at >= since && at.saturating_add(self.leeway) >= issued)
            })
        })
    }

    fn deny(&self, id: &str, at: u64) {
        self.ever_denied.store(true, Ordering::Relaxed);
        let mut denylist = self.denylist.write().expect("never poisoned");
        // Keep the latest revocation time if two arrive.
        let entry = denylist.entry(id.into()).or_insert(at);
        *entry = (*entry).max(at);
        // Entries older than the TTL cover nothing: drop them now and then.
        if denylist.len().is_power_of_two() && denylist.len() >= 1024 {
            let since = now_secs().saturating_sub(self.ttl.as_secs());
            denylist.retain(|_, at| *at >= since);
        }
    }

    /// Revokes `target` everywhere; `source` labels the metric.
    pub async fn revoke(&self, target: Target, source: &'static str) -> Revoked {
        let at = now_secs();
        let (kind, ids) = match &target {
            Target::One(kind, value) => {
                let ids = std::iter::once(&self.hasher)
                    .chain(&self.rotation)
                    .map(|hasher| hex::encode(id_hash(hasher, *kind, value)))
                    .collect();
                (Some(*kind), ids)
            }
            Target::Everything => (None, Vec::new()),
        };
        metrics::counter!("intercom_revocations_total", "source" => source, "kind" => kind.map_or("everything", Kind::label))
            .increment(1);
        self.apply(kind, &ids, at).await;
        let mut shared_entries_evicted = 0;
        if let (Some(cache), Some(kind)) = (&self.exchange, kind) {
            for id in &ids {
                shared_entries_evicted += cache.evict_shared(kind, id).await;
            }
        }
        let message = Announcement {
            kind,
            ids,
            at,
            origin: self.origin.clone(),
        };
        let (announced, queued) = match &self.redis {
            None => (false, false),
            // Older announcements first, so a replica never hears them out of order.
            Some(_) if self.has_pending() => {
                self.queue(message);
                (false, true)
            }
            Some(_) => match self.announce(&message).await {
                true => (true, false),
                false => {
                    self.queue(message);
                    (false, true)
                }
            },
        };
        Revoked {
            kind: kind.map_or("everything", Kind::label),
            shared_entries_evicted,
            announced,
            queued,
        }
    }

    /// The local part. One identity goes on the denylist, which every admission checks,
    /// hit or miss, so the memory tiers need no scan: an invalidation predicate per
    /// revocation would be evaluated by every later cache read (10,000 revocations made
    /// each hit pay for 10,000 predicates). Everything clears the memory tiers.
    async fn apply(&self, kind: Option<Kind>, ids: &[String], at: u64) {
        match kind {
            Some(_) => {
                for id in ids {
                    self.deny(id, at);
                }
                if let Some(cache) = &self.exchange {
                    // Refusals remembered for the revoked may no longer hold.
                    cache.clear_negative();
                }
            }
            None => {
                if let Some(cache) = &self.exchange {
                    cache.forget_before(at);
                }
                if let Some(edge) = &self.edge {
                    edge.clear();
                }
            }
        }
    }

    fn has_pending(&self) -> bool {
        !self.pending.lock().expect("never poisoned").is_empty()
    }

    fn queue(&self, message: Announcement) {
        let mut pending = self.pending.lock().expect("never poisoned");
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
            tracing::error!("revocation queue full: the oldest unshared revocation is dropped");
        }
        pending.push_back(message);
        metrics::gauge!("intercom_revocations_pending").set(pending.len() as f64);
    }

    /// Stores the denylist entries and publishes the revocation; false when Redis did not
    /// take it.
    async fn announce(&self, message: &Announcement) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        let payload = serde_json::to_string(message).expect("announcements serialize");
        let channel = self.channel.clone();
        let members: Vec<String> = match message.kind {
            Some(kind) => message
                .ids
                .iter()
                .map(|id| format!("{}:{id}", kind.label()))
                .collect(),
            // Kept too, so that a replica starting later forgets the same shared entries.
            None => vec![EVERYTHING.to_string()],
        };
        let deny_key = self.deny_key.clone();
        let (at, ttl) = (message.at, self.ttl.as_secs().max(1));
        redis
            .run("revoke_announce", move |conn| {
                async move {
                    let mut pipe = deadpool_redis::redis::pipe();
                    for member in &members {
                        // GT: a later revocation of the same id is never moved back.
                        pipe.cmd("ZADD")
                            .arg(&deny_key)
                            .arg("GT")
                            .arg(at)
                            .arg(member)
                            .ignore();
                    }
                    {
                        pipe.cmd("ZREMRANGEBYSCORE")
                            .arg(&deny_key)
                            .arg("-inf")
                            .arg(format!("({}", now_secs().saturating_sub(ttl)))
                            .ignore();
                        pipe.cmd("EXPIRE").arg(&deny_key).arg(ttl).ignore();
                    }
                    pipe.query_async::<()>(conn).await?;
                    // Apart: on a cluster the channel's name hashes to another slot than
                    // the denylist's, and one pipeline keeps to one slot.
                    deadpool_redis::redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(&payload)
                        .query_async::<()>(conn)
                        .await
                }
                .boxed()
            })
            .await
            .is_ok()
    }

    /// Shares queued announcements, oldest first, until Redis takes them all.
    async fn flush_pending(&self) {
        loop {
            let next = self
                .pending
                .lock()
                .expect("never poisoned")
                .front()
                .cloned();
            let Some(message) = next else { return };
            if !self.announce(&message).await {
                return;
            }
            let mut pending = self.pending.lock().expect("never poisoned");
            pending.pop_front();
            metrics::gauge!("intercom_revocations_pending").set(pending.len() as f64);
        }
    }

    /// Listens for other replicas' revocations, reconnecting after failures; loads the
    /// stored denylist on every (re)connection, retried until it loads, so nothing
    /// missed meanwhile is lost; and shares what is queued.
    pub fn spawn_listener(self: &Arc<Self>) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        self.readiness.report(
            "denylist",
            DependencyState::Degraded,
            false,
            Some("not loaded from Redis yet".into()),
        );
        let me = Arc::downgrade(self);
        let retry = redis.retry_interval();
        tokio::spawn({
            let me = me.clone();
            async move {
                loop {
                    tokio::time::sleep(retry).await;
                    let Some(this) = me.upgrade() else { return };
                    this.flush_pending().await;
                }
            }
        });
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let Some(this) = me.upgrade() else { return };
                let channel = this.channel.clone();
                drop(this);
                let pubsub = match redis.subscriber().await {
                    Ok(client) => client.get_async_pubsub().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match pubsub {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(&channel).await.is_ok() {
                            if !std::mem::take(&mut first) {
                                // Back after a break: kept connections may be dead ones.
                                redis.renew_connections();
                            }
                            while let Some(this) = me.upgrade() {
                                if this.load_denylist().await {
                                    break;
                                }
                                drop(this);
                                tokio::time::sleep(retry).await;
                            }
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                let Some(this) = me.upgrade() else { return };
                                let Ok(payload) = message.get_payload::<String>() else {
                                    continue;
                                };
                                this.hear(&payload).await;
                            }
                        }
                        tracing::warn!("revocation channel closed; reconnecting");
                        if let Some(this) = me.upgrade() {
                            // Announcements may be missed until it is back and reloaded.
                            this.readiness.report(
                                "denylist",
                                DependencyState::Degraded,
                                false,
                                Some("the revocation channel is reconnecting".into()),
                            );
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for revocations; retrying");
                    }
                }
                tokio::time::sleep(retry).await;
            }
        });
    }

    async fn hear(&self, payload: &str) {
        let Ok(message) = serde_json::from_str::<Announcement>(payload) else {
            tracing::warn!("ignoring a malformed revocation announcement");
            return;
        };
        if message.origin == self.origin {
            return;
        }
        if message.ids.iter().any(|id| unhex(id).is_none()) {
            return;
        }
        self.apply(message.kind, &message.ids, message.at).await;
    }

    /// Reads the stored denylist into memory in one call (with a deadline of its own,
    /// since it may be large); true once it loaded. Readiness shows the denylist
    /// `degraded` until then.
    async fn load_denylist(&self) -> bool {
        let Some(redis) = &self.redis else {
            return true;
        };
        let key = self.deny_key.clone();
        let since = now_secs().saturating_sub(self.ttl.as_secs());
        let deadline = (redis.timeout() * 20).max(Duration::from_secs(2));
        let found: Result<Vec<(String, u64)>, _> = redis
            .run_within("denylist_load", deadline, move |conn| {
                async move {
                    deadpool_redis::redis::cmd("ZRANGEBYSCORE")
                        .arg(&key)
                        .arg(since)
                        .arg("+inf")
                        .arg("WITHSCORES")
                        .query_async(conn)
                        .await
                }
                .boxed()
            })
            .await;
        let Ok(found) = found else {
            self.readiness.report(
                "denylist",
                DependencyState::Degraded,
                false,
                Some("loading from Redis failed; retrying".into()),
            );
            return false;
        };
        let loaded = found.len();
        for (member, at) in found {
            if member == EVERYTHING {
                if let Some(cache) = &self.exchange {
                    cache.forget_before(at);
                }
                continue;
            }
            let Some((kind, id)) = member.split_once(':') else {
                continue;
            };
            // Members of kinds this version does not know, or malformed ids, are skipped.
            if Kind::ALL.iter().any(|k| k.label() == kind) && unhex(id).is_some() {
                self.deny(id, at);
            }
        }
        metrics::gauge!("intercom_denylist_loaded_entries").set(loaded as f64);
        self.readiness
            .report("denylist", DependencyState::Ok, false, None);
        true
    }
}
