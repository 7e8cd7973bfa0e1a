//! The shared Redis: one pool for every module that keeps state across replicas.
//!
//! Connections are multiplexed (concurrent commands share one socket, pipelined), so
//! each worker thread keeps one and clones it per call: its I/O task then runs on the
//! worker that uses it, with no hop between threads. The pool makes and checks
//! connections, and is asked again only after a failure (its check on every checkout
//! would cost a second round trip).
//!
//! Every call has a deadline, and after a failure Redis is left alone for
//! `retry_interval`, so a dead Redis costs a request nothing but its fallback; readiness
//! reports it `degraded` (Intercom keeps serving without it).

pub mod keys;

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use futures_util::future::BoxFuture;

use crate::readiness::{DependencyState, Readiness};
use crate::secret::Secret;
use crate::settings::RedisSettings;

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis failed a moment ago and is left alone until its retry interval passes")]
    Resting,
    #[error("redis did not answer in time")]
    Timeout,
    #[error("redis: {0}")]
    Failed(String),
}

/// A pooled connection to the shared Redis, with deadlines and a failure back-off.
pub struct SharedRedis {
    pool: Pool,
    /// Tells this instance's connections apart in the threads' `KEPT` lists.
    id: usize,
    /// Bumped on every failure: connections of an older generation are not reused.
    generation: AtomicU64,
    /// For pub/sub, which needs a connection of its own.
    client: deadpool_redis::redis::Client,
    timeout: Duration,
    retry_interval: Duration,
    started: Instant,
    /// Milliseconds since `started` before which no call is tried.
    resting_until_ms: AtomicU64,
    healthy: AtomicBool,
    readiness: Arc<Readiness>,
}

impl SharedRedis {
    /// Builds the pool (connections are made on first use).
    /// The shared pool, when `[redis]` is configured (connections open on first use).
    pub fn from_settings(
        settings: &crate::settings::Settings,
        readiness: &Arc<Readiness>,
        secrets: &crate::secrets::registry::SecretRegistry,
    ) -> Result<Option<Arc<Self>>, String> {
        let Some(redis) = &settings.redis else {
            return Ok(None);
        };
        let password = secrets
            .stored(redis.password.as_ref())
            .map(|cell| cell.current());
        Self::new(redis, password, readiness.clone()).map(|r| Some(Arc::new(r)))
    }

    pub fn new(
        settings: &RedisSettings,
        password: Option<Secret>,
        readiness: Arc<Readiness>,
    ) -> Result<Self, String> {
        let mut url = settings.url.0.clone();
        if let Some(password) = &password {
            url.set_password(Some(password.expose()))
                .map_err(|_| "redis.url cannot carry a password".to_string())?;
        }
        let mut config = deadpool_redis::Config::from_url(url.as_str());
        config.pool = Some(PoolConfig {
            max_size: settings.pool_size,
            timeouts: Timeouts {
                wait: Some(settings.timeout),
                create: Some(settings.timeout),
                recycle: Some(settings.timeout),
            },
            ..Default::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| format!("redis pool: {e}"))?;
        let client = deadpool_redis::redis::Client::open(url.as_str())
            .map_err(|e| format!("redis client: {e}"))?;
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        readiness.report("redis", DependencyState::Ok, false, None);
        Ok(Self {
            pool,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            client,
            timeout: settings.timeout,
            retry_interval: settings.retry_interval,
            started: Instant::now(),
            resting_until_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            readiness,
        })
    }

    /// Runs `op` on a pooled connection within the deadline; `name` labels the metrics.
    pub async fn run<T, F>(&self, name: &'static str, op: F) -> Result<T, RedisError>
    where
        F: for<'c> FnOnce(
            &'c mut MultiplexedConnection,
        ) -> BoxFuture<'c, deadpool_redis::redis::RedisResult<T>>,
    {
        self.run_within(name, self.timeout, op).await
    }

    /// As [`SharedRedis::run`], with a deadline of its own: for the few calls that move
    /// more than a request's worth of data (loading the denylist).
    pub async fn run_within<T, F>(
        &self,
        name: &'static str,
        deadline: Duration,
        op: F,
    ) -> Result<T, RedisError>
    where
        F: for<'c> FnOnce(
            &'c mut MultiplexedConnection,
        ) -> BoxFuture<'c, deadpool_redis::redis::RedisResult<T>>,
    {
        let now_ms = self.started.elapsed().as_millis() as u64;
        if now_ms < self.resting_until_ms.load(Ordering::Relaxed) {
            return Err(RedisError::Resting);
        }
        let started = Instant::now();
        let result = with_deadline(deadline, async {
            let mut conn = self.connection().await?;
            op(&mut conn)
                .await
                .map_err(|e| RedisError::Failed(e.to_string()))
        })
        .await;
        if result.is_err() {
            // A failure usually means the server went away: every kept connection is
            // suspect, and the next calls make fresh ones.
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        metrics::histogram!("intercom_redis_duration_seconds", "op" => name)
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis answers again");
                    self.readiness
                        .report("redis", DependencyState::Ok, false, None);
                }
            }
            Err(error) => {
                metrics::counter!("intercom_redis_errors_total", "op" => name).increment(1);
                let until = self.started.elapsed() + self.retry_interval;
                self.resting_until_ms
                    .store(until.as_millis() as u64, Ordering::Relaxed);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %error, "redis failed; serving without it");
                }
                self.readiness.report(
                    "redis",
                    DependencyState::Degraded,
                    false,
                    Some(error.to_string()),
                );
            }
        }
        result
    }

    /// This thread's connection, made through the pool when missing or outdated.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let generation = self.generation.load(Ordering::Relaxed);
        let kept = KEPT.with(|kept| {
            kept.borrow()
                .iter()
                .find(|k| k.owner == self.id && k.generation == generation)
                .map(|k| k.conn.clone())
        });
        if let Some(conn) = kept {
            return Ok(conn);
        }
        let fresh = self
            .pool
            .get()
            .await
            .map_err(|e| RedisError::Failed(e.to_string()))?;
        let conn = deadpool_redis::Connection::take(fresh);
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            kept.retain(|k| k.owner != self.id);
            kept.push(Kept {
                owner: self.id,
                generation,
                conn: conn.clone(),
            });
        });
        Ok(conn)
    }

    /// A client for a dedicated (pub/sub) connection.
    pub fn client(&self) -> &deadpool_redis::redis::Client {
        &self.client
    }

    /// Drops every kept connection, so the next calls make fresh ones: for when Redis is
    /// known to have restarted (a dedicated connection to it broke and came back).
    pub fn renew_connections(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// How long Redis is left alone after a failure.
    pub fn retry_interval(&self) -> Duration {
        self.retry_interval
    }

    /// The deadline of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// True unless the last call failed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Every key matching `pattern` (SCAN, never KEYS: Redis keeps serving meanwhile).
pub async fn scan_keys(
    conn: &mut MultiplexedConnection,
    pattern: &str,
) -> deadpool_redis::redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = deadpool_redis::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return Ok(keys);
        }
    }
}

/// A connection kept by a thread for one [`SharedRedis`].
struct Kept {
    owner: usize,
    generation: u64,
    conn: MultiplexedConnection,
}

thread_local! {
    static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

async fn with_deadline<T>(
    deadline: Duration,
    fut: impl Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    tokio::time::timeout(deadline, fut)
        .await
        .unwrap_or(Err(RedisError::Timeout))
}
