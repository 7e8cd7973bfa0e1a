//! Revocation everywhere: a subject, client, session or token revoked on one replica
//! (admin API, back-channel logout, RFC 7009 revocation) is evicted from the Redis tier
//! there, announced on a Redis pub/sub channel so every replica evicts its memory tiers
//! (the exchange cache and the edge cache), and put on a denylist for the remaining
//! lifetime, so tokens issued before the revocation are refused even where they are
//! still cached or validated locally. Everything travels hashed (see
//! [`crate::cache::shared_hash`]); no identity reaches Redis.

pub mod logout;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::broker::edge::EdgeAuthenticator;
use crate::broker::{now_secs, Principal};
use crate::cache::shared_hash::{hex, unhex, Hash, SharedHasher};
use crate::cache::tiered::TieredCache;
use crate::redis::SharedRedis;
use crate::settings::Settings;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sub,
    ClientId,
    Sid,
    Token,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Sub, Kind::ClientId, Kind::Sid, Kind::Token];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Sub => "sub",
            Kind::ClientId => "client_id",
            Kind::Sid => "sid",
            Kind::Token => "token",
        }
    }
}

/// The hashed identities of a cached token, by which revocations find it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ids {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub token: String,
}

impl Ids {
    /// The ids of `token`, whose principal is `principal`.
    pub fn of(hasher: &SharedHasher, principal: &Principal, token: &str) -> Self {
        let h = |kind: Kind, value: &str| hex(&id_hash(hasher, kind, value));
        Self {
            sub: principal.sub.as_deref().map(|v| h(Kind::Sub, v)),
            client_id: principal.client_id.as_deref().map(|v| h(Kind::ClientId, v)),
            sid: principal.sid.as_deref().map(|v| h(Kind::Sid, v)),
            token: h(Kind::Token, token),
        }
    }

    pub fn get(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Sub => self.sub.as_deref(),
            Kind::ClientId => self.client_id.as_deref(),
            Kind::Sid => self.sid.as_deref(),
            Kind::Token => Some(&self.token),
        }
    }
}

/// The hash of one identity.
pub fn id_hash(hasher: &SharedHasher, kind: Kind, value: &str) -> Hash {
    hasher.hash(&[b"revocation-id", kind.label().as_bytes(), value.as_bytes()])
}

/// What to revoke.
#[derive(Debug, Clone)]
pub enum Target {
    /// One identity, by its raw value (hashed before it goes anywhere).
    One(Kind, String),
    /// Every cached token (the denylist is not involved).
    Everything,
}

/// The message every replica hears.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    /// `None` for everything.
    kind: Option<Kind>,
    #[serde(default)]
    id: Option<String>,
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
}

/// Revokes, and keeps the denylist.
pub struct Revoker {
    hasher: SharedHasher,
    denylist: moka::sync::Cache<(Kind, String), u64>,
    /// Spares the hot path its lookups until anything was ever revoked.
    ever_denied: AtomicBool,
    ttl: Duration,
    exchange: Option<Arc<TieredCache>>,
    edge: Option<Arc<EdgeAuthenticator>>,
    redis: Option<Arc<SharedRedis>>,
    channel: String,
    deny_prefix: String,
    origin: String,
}

impl Revoker {
    /// `exchange` and `edge` are the memory tiers it evicts from.
    pub fn new(
        settings: &Settings,
        hasher: SharedHasher,
        exchange: Option<Arc<TieredCache>>,
        edge: Option<Arc<EdgeAuthenticator>>,
        redis: Option<Arc<SharedRedis>>,
    ) -> Arc<Self> {
        let ttl = settings.revocation.denylist_ttl;
        Arc::new(Self {
            hasher,
            denylist: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(ttl)
                .build(),
            ever_denied: AtomicBool::new(false),
            ttl,
            exchange,
            edge,
            redis,
            channel: settings.revocation.channel.clone(),
            deny_prefix: format!("{}:deny", settings.exchange.key_prefix),
            origin: uuid::Uuid::new_v4().to_string(),
        })
    }

    pub fn hasher(&self) -> &SharedHasher {
        &self.hasher
    }

    /// True when a revocation at or after the token's `iat` covers one of its ids (a
    /// token without `iat` counts as issued before).
    pub fn is_denied(&self, ids: &Ids, iat: Option<u64>) -> bool {
        if !self.ever_denied.load(Ordering::Relaxed) {
            return false;
        }
        let issued = iat.unwrap_or(0);
        Kind::ALL.iter().any(|kind| {
            ids.get(*kind).is_some_and(|id| {
                self.denylist
                    .get(&(*kind, id.to_string()))
                    .is_some_and(|at| at >= issued)
            })
        })
    }

    fn deny(&self, kind: Kind, id: &str, at: u64) {
        self.ever_denied.store(true, Ordering::Relaxed);
        let key = (kind, id.to_string());
        // Keep the latest revocation time if two arrive.
        let at = self.denylist.get(&key).map_or(at, |known| known.max(at));
        self.denylist.insert(key, at);
    }

    /// Revokes `target` everywhere; `source` labels the metric.
    pub async fn revoke(&self, target: Target, source: &'static str) -> Revoked {
        let at = now_secs();
        let (kind, id) = match &target {
            Target::One(kind, value) => {
                (Some(*kind), Some(hex(&id_hash(&self.hasher, *kind, value))))
            }
            Target::Everything => (None, None),
        };
        metrics::counter!("intercom_revocations_total", "source" => source, "kind" => kind.map_or("everything", Kind::label))
            .increment(1);
        self.apply(kind, id.as_deref(), at).await;
        let shared_entries_evicted = match (&self.exchange, kind, &id) {
            (Some(cache), Some(kind), Some(id)) => cache.evict_shared(kind, id).await,
            (Some(cache), None, _) => cache.clear_shared().await,
            _ => 0,
        };
        let announced = self.announce(kind, id, at).await;
        Revoked {
            kind: kind.map_or("everything", Kind::label),
            shared_entries_evicted,
            announced,
        }
    }

    /// The local part: denylist, exchange memory tier, edge cache.
    async fn apply(&self, kind: Option<Kind>, id: Option<&str>, at: u64) {
        match (kind, id) {
            (Some(kind), Some(id)) => {
                self.deny(kind, id, at);
                if let Some(cache) = &self.exchange {
                    cache.evict_local(kind, id);
                }
                if let Some(edge) = &self.edge {
                    edge.evict(kind, id);
                }
            }
            _ => {
                if let Some(cache) = &self.exchange {
                    cache.clear_local();
                }
                if let Some(edge) = &self.edge {
                    edge.clear();
                }
            }
        }
    }

    /// Stores the denylist entry and publishes the revocation.
    async fn announce(&self, kind: Option<Kind>, id: Option<String>, at: u64) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        let message = Announcement {
            kind,
            id: id.clone(),
            at,
            origin: self.origin.clone(),
        };
        let payload = serde_json::to_string(&message).expect("announcements serialize");
        let channel = self.channel.clone();
        let deny_key = match (kind, &id) {
            (Some(kind), Some(id)) => Some(format!("{}:{}:{id}", self.deny_prefix, kind.label())),
            _ => None,
        };
        let ttl = self.ttl.as_secs().max(1);
        redis
            .run("revoke_announce", move |conn| {
                async move {
                    let mut pipe = deadpool_redis::redis::pipe();
                    if let Some(key) = &deny_key {
                        pipe.cmd("SET").arg(key).arg(at).arg("EX").arg(ttl).ignore();
                    }
                    pipe.cmd("PUBLISH").arg(&channel).arg(&payload).ignore();
                    pipe.query_async::<()>(conn).await
                }
                .boxed()
            })
            .await
            .is_ok()
    }

    /// Listens for other replicas' revocations, reconnecting after failures, and loads
    /// the stored denylist on every (re)connection so nothing missed meanwhile is lost.
    pub fn spawn_listener(self: &Arc<Self>) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = me.upgrade() else { return };
                let client = redis.client().clone();
                let channel = this.channel.clone();
                drop(this);
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(&channel).await.is_ok() {
                            if let Some(this) = me.upgrade() {
                                this.load_denylist().await;
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
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for revocations; retrying");
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
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
        if let Some(id) = &message.id {
            if unhex(id).is_none() {
                return;
            }
        }
        self.apply(message.kind, message.id.as_deref(), message.at)
            .await;
    }

    /// Reads the stored denylist entries into memory.
    async fn load_denylist(&self) {
        let Some(redis) = &self.redis else { return };
        let pattern = format!("{}:*", self.deny_prefix);
        let found: Result<Vec<(String, Option<u64>)>, _> = redis
            .run("denylist_load", move |conn| {
                async move {
                    let keys = crate::redis::scan_keys(conn, &pattern).await?;
                    if keys.is_empty() {
                        return Ok(Vec::new());
                    }
                    let values: Vec<Option<u64>> = deadpool_redis::redis::cmd("MGET")
                        .arg(&keys)
                        .query_async(conn)
                        .await?;
                    Ok(keys.into_iter().zip(values).collect())
                }
                .boxed()
            })
            .await;
        for (key, at) in found.unwrap_or_default() {
            let mut parts = key.rsplit(':');
            let (Some(id), Some(kind), Some(at)) = (parts.next(), parts.next(), at) else {
                continue;
            };
            if let Some(kind) = Kind::ALL.into_iter().find(|k| k.label() == kind) {
                self.deny(kind, id, at);
            }
        }
    }
}
