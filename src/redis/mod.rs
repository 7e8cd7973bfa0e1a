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

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{Cmd, Pipeline, RedisFuture, Value};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use futures_util::future::BoxFuture;

use crate::readiness::{DependencyState, Readiness};
use crate::secret::Secret;
use crate::settings::{RedisMode, RedisSettings};

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

/// A connection to the shared Redis: one server's, or the cluster's (which sends each
/// command to its slot's master and follows MOVED, ASK and failovers). Both multiplex:
/// clones share one socket (per node).
#[derive(Clone)]
pub enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The pool of `[redis]`'s mode.
enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
    /// Each new connection goes to the master the sentinels name at the time.
    Sentinel(deadpool_redis::sentinel::Pool),
}

/// Where pub/sub connections go.
enum Subscribers {
    /// The one Redis, or each node of the cluster in turn (a cluster delivers every
    /// message to every node).
    Fixed(Vec<deadpool_redis::redis::Client>),
    /// The master the sentinels name at the time (its replicas deliver what it
    /// publishes too, so a connection that outlives a failover keeps hearing).
    Sentinel(Box<tokio::sync::Mutex<deadpool_redis::redis::sentinel::SentinelClient>>),
}

/// A pooled connection to the shared Redis, with deadlines and a failure back-off.
pub struct SharedRedis {
    pool: Pool,
    /// Tells this instance's connections apart in the threads' `KEPT` lists.
    id: usize,
    /// Bumped on every failure: connections of an older generation are not reused.
    generation: AtomicU64,
    /// For pub/sub, which needs a connection of its own.
    subscribers: Subscribers,
    next_subscriber: AtomicUsize,
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
        let sentinel_password = secrets
            .stored(redis.sentinel_password.as_ref())
            .map(|cell| cell.current());
        let shared = Arc::new(Self::new(
            redis,
            password,
            sentinel_password,
            readiness.clone(),
        )?);
        shared.spawn_probe();
        Ok(Some(shared))
    }

    /// While Redis is failing, asks it every `retry_interval` whether it serves again,
    /// so readiness turns `ok` when it is back (or a cluster has failed over) even with
    /// no traffic.
    fn spawn_probe(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let every = self.retry_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(redis) = me.upgrade() else { return };
                if !redis.is_healthy() {
                    let _ = redis.probe().await;
                }
            }
        });
    }

    /// `PING`; on a cluster, `CLUSTER INFO` and its `cluster_state:ok`. A cluster
    /// client's `PING` goes only to the masters it holds a connection to, so it answers
    /// `PONG` with a master dead and its slots unserved; the cluster's own state says
    /// `fail` until a replica has taken over (once the other nodes have noticed, after
    /// `cluster-node-timeout`; until then the failing calls themselves say `degraded`).
    async fn probe(&self) -> Result<(), RedisError> {
        if !matches!(self.pool, Pool::Cluster(_)) {
            return self
                .query::<()>("ping", deadpool_redis::redis::cmd("PING"))
                .await;
        }
        self.run("ping", |conn| {
            Box::pin(async move {
                let info: String = deadpool_redis::redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(conn)
                    .await?;
                match info.lines().find(|l| l.starts_with("cluster_state:")) {
                    Some(state) if state.trim_end() == "cluster_state:ok" => Ok(()),
                    state => Err(deadpool_redis::redis::RedisError::from((
                        deadpool_redis::redis::ErrorKind::Client,
                        "the cluster does not serve every slot",
                        state.unwrap_or("no cluster_state").trim_end().to_string(),
                    ))),
                }
            })
        })
        .await
    }

    /// The pool for `settings`; `password` is the data nodes', `sentinel_password` the
    /// sentinels' own (sentinel mode).
    pub fn new(
        settings: &RedisSettings,
        password: Option<Secret>,
        sentinel_password: Option<Secret>,
        readiness: Arc<Readiness>,
    ) -> Result<Self, String> {
        let with_password = |url: &url::Url, password: Option<&Secret>| -> Result<String, String> {
            let mut url = url.clone();
            if let Some(password) = password {
                url.set_password(Some(password.expose()))
                    .map_err(|_| "redis: the URL cannot carry a password".to_string())?;
            }
            Ok(url.to_string())
        };
        let (urls, url_password) = match settings.mode {
            RedisMode::Standalone => (settings.url.iter().collect::<Vec<_>>(), password.as_ref()),
            RedisMode::Cluster => (settings.nodes.iter().collect(), password.as_ref()),
            RedisMode::Sentinel => (
                settings.sentinels.iter().collect(),
                sentinel_password.as_ref(),
            ),
        };
        let urls = urls
            .into_iter()
            .map(|u| with_password(&u.0, url_password))
            .collect::<Result<Vec<_>, _>>()?;
        let pool_config = PoolConfig {
            max_size: settings.pool_size,
            timeouts: Timeouts {
                wait: Some(settings.timeout),
                create: Some(settings.timeout),
                recycle: Some(settings.timeout),
            },
            ..Default::default()
        };
        let pool = match settings.mode {
            RedisMode::Standalone => {
                let mut config = deadpool_redis::Config::from_url(urls[0].as_str());
                config.pool = Some(pool_config);
                Pool::Single(
                    config
                        .create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| format!("redis pool: {e}"))?,
                )
            }
            RedisMode::Cluster => {
                let mut config = deadpool_redis::cluster::Config::from_urls(urls.clone());
                config.pool = Some(pool_config);
                Pool::Cluster(
                    config
                        .create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| format!("redis cluster pool: {e}"))?,
                )
            }
            RedisMode::Sentinel => {
                let mut config = deadpool_redis::sentinel::Config::from_urls(
                    urls.clone(),
                    settings.master_name.clone().unwrap_or_default(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                )
                .with_node_connection_info(Some(sentinel_nodes(settings, password.as_ref())));
                config.pool = Some(pool_config);
                Pool::Sentinel(
                    config
                        .create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| format!("redis sentinel pool: {e}"))?,
                )
            }
        };
        let subscribers = match settings.mode {
            RedisMode::Sentinel => Subscribers::Sentinel(Box::new(tokio::sync::Mutex::new(
                deadpool_redis::redis::sentinel::SentinelClient::build(
                    urls.iter().map(String::as_str).collect(),
                    settings.master_name.clone().unwrap_or_default(),
                    Some(sentinel_nodes(settings, password.as_ref()).into()),
                    deadpool_redis::redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| format!("redis sentinel client: {e}"))?,
            ))),
            _ => Subscribers::Fixed(
                urls.iter()
                    .map(|url| deadpool_redis::redis::Client::open(url.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("redis client: {e}"))?,
            ),
        };
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        readiness.report("redis", DependencyState::Ok, false, None);
        Ok(Self {
            pool,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            subscribers,
            next_subscriber: AtomicUsize::new(0),
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
            &'c mut RedisConn,
        ) -> BoxFuture<'c, deadpool_redis::redis::RedisResult<T>>,
    {
        self.run_within(name, self.timeout, op).await
    }

    /// One command, as [`SharedRedis::run`] runs it: for the many calls that are a
    /// single `GET`, `SET`, `DEL` or `ZADD`.
    pub async fn query<T>(
        &self,
        name: &'static str,
        cmd: deadpool_redis::redis::Cmd,
    ) -> Result<T, RedisError>
    where
        T: deadpool_redis::redis::FromRedisValue + Send + 'static,
    {
        self.run(name, move |conn| {
            Box::pin(async move { cmd.query_async(conn).await })
        })
        .await
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
            &'c mut RedisConn,
        ) -> BoxFuture<'c, deadpool_redis::redis::RedisResult<T>>,
    {
        let now_ms = self.started.elapsed().as_millis() as u64;
        if now_ms < self.resting_until_ms.load(Ordering::Relaxed) {
            return Err(RedisError::Resting);
        }
        let started = Instant::now();
        let span = tracing::debug_span!("redis", op = name);
        let call = with_deadline(deadline, async {
            let mut conn = self.connection().await?;
            op(&mut conn)
                .await
                .map_err(|e| RedisError::Failed(e.to_string()))
        });
        let result = tracing::Instrument::instrument(call, span).await;
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
    async fn connection(&self) -> Result<RedisConn, RedisError> {
        let generation = self.generation.load(Ordering::Relaxed);
        let kept = KEPT.with(|kept| {
            kept.borrow()
                .iter()
                .find(|k| k.owner == self.id && k.generation == generation)
                .map(|k| k.conn.clone())
        });
        match kept {
            Some(conn) => Ok(conn),
            // Boxed: the pools' `get` is a deep future (about 7 KiB); inline it was part of
            // every Redis call's future, kept or not, and of every request future that
            // awaits one (scripts/bench/instructions counts the copies).
            None => Box::pin(self.connect(generation)).await,
        }
    }

    /// A new connection from the pool, kept for this thread's next calls.
    async fn connect(&self, generation: u64) -> Result<RedisConn, RedisError> {
        let failed = |e: &dyn std::fmt::Display| RedisError::Failed(e.to_string());
        let conn = match &self.pool {
            Pool::Single(pool) => RedisConn::Single(deadpool_redis::Connection::take(
                pool.get().await.map_err(|e| failed(&e))?,
            )),
            Pool::Cluster(pool) => RedisConn::Cluster(deadpool_redis::cluster::Connection::take(
                pool.get().await.map_err(|e| failed(&e))?,
            )),
            // Boxed: a sentinel lookup is a deep future, and this one is part of every
            // Redis call's (a debug build's worker stack overflowed with it inline).
            Pool::Sentinel(pool) => RedisConn::Single(deadpool_redis::sentinel::Connection::take(
                Box::pin(pool.get()).await.map_err(|e| failed(&e))?,
            )),
        };
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

    /// A client for a dedicated (pub/sub) connection: the one Redis, the next node of
    /// the cluster (after a failure, the subscriber tries another: any node delivers all
    /// of the cluster's messages), or the master the sentinels name now.
    pub async fn subscriber(&self) -> Result<deadpool_redis::redis::Client, RedisError> {
        match &self.subscribers {
            Subscribers::Fixed(clients) => {
                let n = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
                Ok(clients[n % clients.len()].clone())
            }
            Subscribers::Sentinel(sentinels) => {
                let asked = async {
                    sentinels
                        .lock()
                        .await
                        .async_get_client()
                        .await
                        .map_err(|e| RedisError::Failed(e.to_string()))
                };
                with_deadline(self.timeout, asked).await
            }
        }
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

/// How a sentinel mode's data nodes are reached: TLS when the sentinels are `rediss://`,
/// with `password`.
fn sentinel_nodes(
    settings: &RedisSettings,
    password: Option<&Secret>,
) -> deadpool_redis::sentinel::SentinelNodeConnectionInfo {
    let tls = settings
        .sentinels
        .first()
        .is_some_and(|u| u.0.scheme() == "rediss");
    deadpool_redis::sentinel::SentinelNodeConnectionInfo {
        tls_mode: tls.then_some(deadpool_redis::sentinel::TlsMode::Secure),
        redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
            password: password.map(|p| p.expose().to_string()),
            ..Default::default()
        }),
    }
}

/// Sends each of `batches` at once, each on its own (on a cluster, to its keys' node):
/// for keys in different slots, which one pipeline cannot hold there. A batch keeps to
/// one slot (one key, or keys with one hash tag). The answers, in order.
pub async fn each<T: deadpool_redis::redis::FromRedisValue>(
    conn: &mut RedisConn,
    batches: &[Pipeline],
) -> deadpool_redis::redis::RedisResult<Vec<T>> {
    futures_util::future::try_join_all(batches.iter().map(|batch| {
        let mut conn = conn.clone();
        async move { batch.query_async::<T>(&mut conn).await }
    }))
    .await
}

/// A connection kept by a thread for one [`SharedRedis`].
struct Kept {
    owner: usize,
    generation: u64,
    conn: RedisConn,
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
