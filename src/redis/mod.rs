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

mod connect;
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

/// A pooled connection to the shared Redis, with deadlines and a failure back-off.
pub struct SharedRedis {
    pool: connect::Pool,
    connector: Arc<connect::Connector>,
    /// Tells this instance's connections apart in the threads' `KEPT` lists.
    id: usize,
    /// Bumped on every failure: connections of an older generation are not reused.
    generation: AtomicU64,
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
        let client_tls = match (&redis.client_cert, &redis.client_key) {
            (Some(cert), Some(key)) => {
                let unresolved = |key: &str| format!("{key}: the secret was not resolved at start");
                let cert = secrets
                    .stored(Some(cert))
                    .ok_or_else(|| unresolved("redis.client_cert"))?;
                let key = secrets
                    .stored(Some(key))
                    .ok_or_else(|| unresolved("redis.client_key"))?;
                crate::tls::certified_key(
                    cert.current().expose().as_bytes(),
                    key.current().expose().as_bytes(),
                )
                .map_err(|e| match e {
                    crate::tls::PemError::Certificate(why) => format!("redis.client_cert: {why}"),
                    crate::tls::PemError::Key(why) => format!("redis.client_key: {why}"),
                })?;
                Some((cert, key))
            }
            _ => None,
        };
        let tls = TlsFiles {
            root_cert: match &redis.ca_file {
                Some(path) => Some(
                    crate::tls::ca_bundle_file(path)
                        .map_err(|why| format!("redis.ca_file: {}: {why}", path.display()))?
                        .1,
                ),
                None => None,
            },
            client_tls,
        };
        let shared = Arc::new(Self::new(
            redis,
            Passwords {
                node: password,
                sentinel: sentinel_password,
            },
            tls,
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
        if self.connector.mode != RedisMode::Cluster {
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

    /// The pool for `settings`, with its passwords and TLS certificates.
    fn new(
        settings: &RedisSettings,
        passwords: Passwords,
        tls: TlsFiles,
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
            RedisMode::Standalone => (
                settings.url.iter().collect::<Vec<_>>(),
                passwords.node.as_ref(),
            ),
            RedisMode::Cluster => (settings.nodes.iter().collect(), passwords.node.as_ref()),
            // The sentinels' client takes its passwords on their own.
            RedisMode::Sentinel => (settings.sentinels.iter().collect(), None),
        };
        let urls = urls
            .into_iter()
            .map(|u| with_password(&u.0, url_password))
            .collect::<Result<Vec<_>, _>>()?;
        let connector = Arc::new(connect::Connector {
            mode: settings.mode,
            urls,
            master_name: settings.master_name.clone().unwrap_or_default(),
            node_password: passwords.node,
            sentinel_password: passwords.sentinel,
            root_cert: tls.root_cert,
            client_tls: tls.client_tls,
        });
        // The URLs are checked now, so a mistake stops the start, not the first call.
        let checked = match settings.mode {
            RedisMode::Sentinel => connector.sentinel().map(drop),
            _ => connector
                .urls
                .iter()
                .try_for_each(|url| connector.client(url).map(drop)),
        };
        checked.map_err(|e| format!("redis client: {e}"))?;
        let pool = connect::Pool::builder(connect::Manager::new(connector.clone()))
            .config(PoolConfig {
                max_size: settings.pool_size,
                timeouts: Timeouts {
                    wait: Some(settings.timeout),
                    create: Some(settings.timeout),
                    recycle: Some(settings.timeout),
                },
                ..Default::default()
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| format!("redis pool: {e}"))?;
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        readiness.report("redis", DependencyState::Ok, false, None);
        Ok(Self {
            pool,
            connector,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
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
        let conn = deadpool::managed::Object::take(
            self.pool
                .get()
                .await
                .map_err(|e| RedisError::Failed(e.to_string()))?,
        );
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
        let failed = |e: deadpool_redis::redis::RedisError| RedisError::Failed(e.to_string());
        match self.connector.mode {
            RedisMode::Standalone | RedisMode::Cluster => {
                let urls = &self.connector.urls;
                let n = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
                self.connector.client(&urls[n % urls.len()]).map_err(failed)
            }
            RedisMode::Sentinel => {
                let asked = async {
                    // Boxed: a sentinel lookup is a deep future.
                    let mut sentinels = self.connector.sentinel().map_err(failed)?;
                    Box::pin(sentinels.async_get_client()).await.map_err(failed)
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

/// `[redis]`'s passwords: the data nodes', and (sentinel mode) the sentinels' own.
struct Passwords {
    node: Option<Secret>,
    sentinel: Option<Secret>,
}

/// `[redis]`'s TLS material: `ca_file`'s bytes, and the client certificate's secrets.
struct TlsFiles {
    root_cert: Option<Vec<u8>>,
    client_tls: Option<(
        Arc<crate::secrets::registry::SecretCell>,
        Arc<crate::secrets::registry::SecretCell>,
    )>,
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
