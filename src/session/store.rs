//! Where sessions live: this replica's memory (the embedded default) or Redis, sealed
//! (AES-256-GCM under `session.encryption_key`, the Redis key as associated data) so
//! every replica serves every session and Redis holds no token in clear.
//!
//! Keys are keyed hashes of the session id (the cookie's value is never a key). The
//! refresh lease is a `SET NX PX` key beside the session, holding its holder's random
//! token: renewed and released only by that holder (compare-and-act scripts).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use deadpool_redis::redis::Script;

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use crate::cache::sealed::Sealer;
use crate::redis::{RedisError, SharedRedis};

/// One browser session: the tokens Intercom holds for it (never sent to the browser),
/// the ID token claims the SPA may see, and its times (seconds since the epoch).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub sub: String,
    pub sid: Option<String>,
    pub access_token: String,
    pub access_expires_at: u64,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    /// The claims `GET /auth/user` shows.
    pub user: serde_json::Map<String, serde_json::Value>,
    /// The ID token's claims that routes' `required_claims` / `denied_claims` read.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub created_at: u64,
    pub last_seen: u64,
    /// The absolute end (`created_at` + `absolute_timeout`).
    pub ends_at: u64,
}

/// Never prints a token.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("created_at", &self.created_at)
            .field("ends_at", &self.ends_at)
            .finish_non_exhaustive()
    }
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the session store is unavailable: {0}")]
    Unavailable(#[from] RedisError),
}

/// The sessions of this deployment.
pub enum SessionStore {
    Memory {
        sessions: moka::future::Cache<String, Arc<Session>>,
        /// Lease keys and their holders' tokens.
        leases: moka::sync::Cache<String, String>,
        /// The session keys of each `sub` and `sid` index.
        indexes: moka::sync::Cache<String, Arc<std::sync::Mutex<Vec<String>>>>,
    },
    Redis {
        redis: Arc<SharedRedis>,
        sealer: Sealer,
        /// Sessions this replica read lately, kept `session.memory_ttl`: a call need
        /// not wait for Redis. A logout elsewhere reaches it through the revocation
        /// fan-out (the denylist check on every call), not through this cache.
        recent: moka::future::Cache<String, Arc<Session>>,
        /// The sorted set of live sessions (`redis::keys::sessions_active`).
        active: String,
    },
}

impl SessionStore {
    /// A memory store whose entries live at most `longest` (the absolute timeout).
    pub fn memory(longest: Duration) -> Self {
        SessionStore::Memory {
            sessions: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(longest)
                .build(),
            leases: moka::sync::Cache::builder()
                .time_to_live(Duration::from_secs(30))
                .build(),
            indexes: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(longest)
                .build(),
        }
    }

    /// Adds the session `record` to the index `index` (a `sub` or `sid`), for `ttl`.
    pub async fn index(&self, index: &str, record: &str, ttl: Duration) -> Result<(), StoreError> {
        match self {
            SessionStore::Memory { indexes, .. } => {
                let list = indexes.get_with(index.to_string(), Default::default);
                list.lock().expect("index lock").push(record.to_string());
                Ok(())
            }
            SessionStore::Redis { redis, .. } => {
                let (set, member) = (index.to_string(), record.to_string());
                let ttl_ms = ttl.as_millis().max(1) as u64;
                redis
                    .run("session_index", move |conn| {
                        async move {
                            let mut pipe = deadpool_redis::redis::pipe();
                            pipe.cmd("SADD").arg(&set).arg(&member).ignore();
                            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).arg("GT").ignore();
                            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).arg("NX").ignore();
                            pipe.query_async::<()>(conn).await
                        }
                        .boxed()
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// Deletes every session in the index `index`, and the index; how many there were.
    pub async fn end_indexed(&self, index: &str) -> Result<usize, StoreError> {
        match self {
            SessionStore::Memory {
                indexes, sessions, ..
            } => {
                let Some(list) = indexes.remove(index) else {
                    return Ok(0);
                };
                let records = std::mem::take(&mut *list.lock().expect("index lock"));
                for record in &records {
                    sessions.invalidate(record).await;
                }
                Ok(records.len())
            }
            SessionStore::Redis { redis, active, .. } => {
                let set = index.to_string();
                let ended: Vec<String> = redis
                    .run("session_end", move |conn| {
                        async move {
                            let records: Vec<String> = deadpool_redis::redis::cmd("SMEMBERS")
                                .arg(&set)
                                .query_async(conn)
                                .await?;
                            // The sessions first, then their index: a failure between
                            // leaves the index to name them again. One DEL of many keys,
                            // which a cluster client splits by slot.
                            if !records.is_empty() {
                                deadpool_redis::redis::cmd("DEL")
                                    .arg(&records)
                                    .query_async::<()>(conn)
                                    .await?;
                            }
                            deadpool_redis::redis::cmd("DEL")
                                .arg(&set)
                                .query_async::<()>(conn)
                                .await?;
                            Ok(records)
                        }
                        .boxed()
                    })
                    .await?;
                let count = ended.len();
                self.forget_active(redis, active, ended).await?;
                Ok(count)
            }
        }
    }

    /// Takes ended sessions out of the live set.
    async fn forget_active(
        &self,
        redis: &SharedRedis,
        active: &str,
        records: Vec<String>,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut zrem = deadpool_redis::redis::cmd("ZREM");
        zrem.arg(active).arg(&records);
        redis.query::<()>("session_active", zrem).await?;
        Ok(())
    }

    /// The sessions alive now: in memory, those not past their idle or absolute end
    /// (`idle` being the idle timeout); in Redis, the live set less what ended (pruned
    /// here), for the whole deployment.
    pub async fn active(&self, idle: Duration) -> Result<u64, StoreError> {
        match self {
            SessionStore::Memory { sessions, .. } => {
                let now = crate::clock::now_secs();
                let live = sessions
                    .iter()
                    .filter(|(_, s)| now < s.ends_at && now < s.last_seen + idle.as_secs())
                    .count();
                Ok(live as u64)
            }
            SessionStore::Redis { redis, active, .. } => {
                let set = active.clone();
                let now = crate::clock::now_millis();
                let count: u64 = redis
                    .run("session_active", move |conn| {
                        async move {
                            let mut pipe = deadpool_redis::redis::pipe();
                            pipe.cmd("ZREMRANGEBYSCORE")
                                .arg(&set)
                                .arg("-inf")
                                .arg(now)
                                .ignore();
                            pipe.cmd("ZCARD").arg(&set);
                            let (count,): (u64,) = pipe.query_async(conn).await?;
                            Ok(count)
                        }
                        .boxed()
                    })
                    .await?;
                Ok(count)
            }
        }
    }

    /// Sealed in Redis, each replica keeping what it read for `memory_ttl` (none when
    /// zero).
    pub fn redis(
        redis: Arc<SharedRedis>,
        sealer: Sealer,
        memory_ttl: Duration,
        active: String,
    ) -> Self {
        SessionStore::Redis {
            redis,
            active,
            sealer,
            recent: moka::future::Cache::builder()
                .max_capacity(if memory_ttl.is_zero() { 0 } else { 100_000 })
                .time_to_live(memory_ttl.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// The session, from this replica's recent reads when it can.
    pub async fn get(&self, key: &str) -> Result<Option<Session>, StoreError> {
        if let SessionStore::Redis { recent, .. } = self {
            if let Some(session) = recent.get(key).await {
                return Ok(Some((*session).clone()));
            }
        }
        self.get_fresh(key).await
    }

    /// The session as the store holds it now (never a recent read): what a refresh
    /// must decide on, or it could present a refresh token already rotated.
    pub async fn get_fresh(&self, key: &str) -> Result<Option<Session>, StoreError> {
        match self {
            SessionStore::Memory { sessions, .. } => {
                Ok(sessions.get(key).await.map(|s| (*s).clone()))
            }
            SessionStore::Redis {
                redis,
                sealer,
                recent,
                ..
            } => {
                let mut get = deadpool_redis::redis::cmd("GET");
                get.arg(key);
                let value: Option<String> = redis.query("session_get", get).await?;
                // A value that does not open (another key, tampered) is no session.
                let session: Option<Session> = value
                    .and_then(|v| sealer.open(&v, key.as_bytes()))
                    .and_then(|plain| serde_json::from_slice(&plain).ok());
                if let Some(session) = &session {
                    recent
                        .insert(key.to_string(), Arc::new(session.clone()))
                        .await;
                }
                Ok(session)
            }
        }
    }

    /// Stores `session` for `ttl` (its idle or absolute end, whichever comes first).
    pub async fn put(&self, key: &str, session: &Session, ttl: Duration) -> Result<(), StoreError> {
        match self {
            SessionStore::Memory { sessions, .. } => {
                sessions
                    .insert(key.to_string(), Arc::new(session.clone()))
                    .await;
                Ok(())
            }
            SessionStore::Redis {
                redis,
                sealer,
                recent,
                active,
            } => {
                recent
                    .insert(key.to_string(), Arc::new(session.clone()))
                    .await;
                let plain = serde_json::to_vec(session).unwrap_or_default();
                let Some(sealed) = sealer.seal(&plain, key.as_bytes()) else {
                    return Ok(());
                };
                let ttl_ms = ttl.as_millis().max(1) as u64;
                let mut set = deadpool_redis::redis::cmd("SET");
                set.arg(key).arg(&sealed).arg("PX").arg(ttl_ms);
                redis.query::<()>("session_put", set).await?;
                // The live set on its own (another slot): scored by the session's end.
                let mut zadd = deadpool_redis::redis::cmd("ZADD");
                zadd.arg(active)
                    .arg(crate::clock::now_millis() + ttl_ms)
                    .arg(key);
                redis.query::<()>("session_active", zadd).await?;
                Ok(())
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            SessionStore::Memory { sessions, .. } => {
                sessions.invalidate(key).await;
                Ok(())
            }
            SessionStore::Redis {
                redis,
                recent,
                active,
                ..
            } => {
                recent.invalidate(key).await;
                let mut del = deadpool_redis::redis::cmd("DEL");
                del.arg(key);
                redis.query::<()>("session_delete", del).await?;
                self.forget_active(redis, active, vec![key.to_string()])
                    .await
            }
        }
    }

    /// Takes the refresh lease `key` for `ttl`, unless another holder has it.
    pub async fn take_lease(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let lease = Lease {
            key: key.to_string(),
            token: lease_token(),
        };
        match self {
            SessionStore::Memory { leases, .. } => {
                let entry = leases
                    .entry(lease.key.clone())
                    .or_insert(lease.token.clone());
                Ok(entry.is_fresh().then_some(lease))
            }
            SessionStore::Redis { redis, .. } => {
                let mut set = deadpool_redis::redis::cmd("SET");
                set.arg(&lease.key)
                    .arg(&lease.token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64);
                let taken: Option<String> = redis.query("session_lease", set).await?;
                Ok(taken.map(|_| lease))
            }
        }
    }

    /// Extends `lease` to `ttl` from now; false when it is no longer this holder's
    /// (it lapsed and another took it).
    pub async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            // One process: the lease only spans its own calls, which single-flight
            // already orders; the entry lives its cache's 30 s.
            SessionStore::Memory { leases, .. } => {
                Ok(leases.get(&lease.key).as_deref() == Some(lease.token.as_str()))
            }
            SessionStore::Redis { redis, .. } => {
                let ttl_ms = ttl.as_millis().max(1) as u64;
                let mut invocation = RENEW.prepare_invoke();
                invocation.key(&lease.key).arg(&lease.token).arg(ttl_ms);
                let renewed: i64 = redis
                    .run("session_lease", move |conn| {
                        async move { invocation.invoke_async(conn).await }.boxed()
                    })
                    .await?;
                Ok(renewed == 1)
            }
        }
    }

    /// Runs `work` while holding `lease`, renewing it every third of `ttl`, so a
    /// refresh that outlasts the lease's first term keeps it (and a holder that dies
    /// loses it within `ttl`). A renewal that finds the lease gone stops renewing.
    pub async fn while_held<T>(
        &self,
        lease: &Lease,
        ttl: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let renew = async {
            let every = (ttl / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                match self.renew_lease(lease, ttl).await {
                    Ok(true) => lease_renewals("renewed"),
                    Ok(false) => {
                        lease_renewals("lost");
                        tracing::warn!(
                            "a session refresh outlived its lease, which another holder now has"
                        );
                        return std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        lease_renewals("failed");
                        tracing::debug!(error = %e, "the refresh lease could not be renewed now");
                    }
                }
            }
        };
        tokio::select! {
            out = work => out,
            () = renew => unreachable!("renewal never ends"),
        }
    }

    /// Gives `lease` back (after the rotated refresh token is stored), unless it is no
    /// longer this holder's.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        match self {
            SessionStore::Memory { leases, .. } => {
                if leases.get(&lease.key).as_deref() == Some(lease.token.as_str()) {
                    leases.invalidate(&lease.key);
                }
                Ok(())
            }
            SessionStore::Redis { redis, .. } => {
                let mut invocation = RELEASE.prepare_invoke();
                invocation.key(&lease.key).arg(&lease.token);
                redis
                    .run("session_lease", move |conn| {
                        async move { invocation.invoke_async::<i64>(conn).await }.boxed()
                    })
                    .await?;
                Ok(())
            }
        }
    }
}

/// A refresh lease held: its key, and the random token that says whose it is, so a
/// holder renews and releases only its own lease, never one that another replica took
/// after this one's lapsed.
pub struct Lease {
    key: String,
    token: String,
}

/// 128 random bits, hex.
fn lease_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Extends the lease KEYS[1] by ARGV[2] ms when it holds ARGV[1]; 1 when it did.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
           return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
    )
});

/// Deletes the lease KEYS[1] when it holds ARGV[1].
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
           return redis.call('DEL', KEYS[1]) end return 0",
    )
});

fn lease_renewals(outcome: &'static str) {
    metrics::counter!("intercom_session_lease_renewals_total", "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(last_seen: u64, ends_at: u64) -> Session {
        Session {
            sub: "s".into(),
            sid: None,
            access_token: "t".into(),
            access_expires_at: ends_at,
            refresh_token: None,
            id_token: None,
            user: Default::default(),
            claims: Default::default(),
            created_at: last_seen,
            last_seen,
            ends_at,
        }
    }

    #[tokio::test]
    async fn the_memory_store_counts_the_sessions_not_past_an_end() {
        let store = SessionStore::memory(Duration::from_secs(3600));
        let now = crate::clock::now_secs();
        let idle = Duration::from_secs(600);
        let ttl = Duration::from_secs(600);
        store
            .put("live", &session(now, now + 3600), ttl)
            .await
            .unwrap();
        store
            .put("idle", &session(now - 601, now + 3600), ttl)
            .await
            .unwrap();
        store
            .put("over", &session(now, now - 1), ttl)
            .await
            .unwrap();
        store
            .put("ended", &session(now, now + 3600), ttl)
            .await
            .unwrap();
        store.delete("ended").await.unwrap();
        if let SessionStore::Memory { sessions, .. } = &store {
            sessions.run_pending_tasks().await;
        }
        assert_eq!(store.active(idle).await.unwrap(), 1);
    }
}
