//! How connections to Redis are made: redis-rs's client for `[redis]`'s mode (one
//! server, the cluster's, or the master the sentinels name), with its TLS settings, and
//! the deadpool manager that pools what it makes.
//!
//! deadpool-redis's managers build these same redis-rs clients but take no TLS
//! certificates (a CA of one's own, a client certificate for mTLS). This manager builds
//! the client whenever it makes a connection (rarely: each thread keeps one), from the
//! secrets' values of the moment, so a rotated client certificate is presented from the
//! next connection on, without a restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use deadpool_redis::redis::cluster::ClusterClientBuilder;
use deadpool_redis::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use deadpool_redis::redis::{
    Client, ClientTlsConfig, ErrorKind, IntoConnectionInfo, RedisError, RedisResult,
    TlsCertificates, TlsMode,
};

use super::RedisConn;
use crate::secret::Secret;
use crate::secrets::registry::SecretCell;
use crate::settings::RedisMode;

/// What a connection to `[redis]` is made from. Holds the passwords (in `urls` too):
/// never logged.
pub struct Connector {
    pub(super) mode: RedisMode,
    /// The server's or the cluster's seed nodes' URLs, with the password; or the
    /// sentinels' URLs, without.
    pub(super) urls: Vec<String>,
    /// Sentinel mode: the monitored master's name, the data nodes' password and the
    /// sentinels' own.
    pub(super) master_name: String,
    pub(super) node_password: Option<Secret>,
    pub(super) sentinel_password: Option<Secret>,
    /// `ca_file`'s PEM bytes, checked at start.
    pub(super) root_cert: Option<Vec<u8>>,
    /// `client_cert` and `client_key`, read afresh for each new connection.
    pub(super) client_tls: Option<(Arc<SecretCell>, Arc<SecretCell>)>,
}

impl Connector {
    /// The certificates redis-rs is given, when `[redis]` names any (otherwise it
    /// verifies against the system's roots and presents none).
    fn certificates(&self) -> Option<TlsCertificates> {
        if self.root_cert.is_none() && self.client_tls.is_none() {
            return None;
        }
        Some(TlsCertificates {
            root_cert: self.root_cert.clone(),
            client_tls: self.client_tls.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.current().expose().as_bytes().to_vec(),
                client_key: key.current().expose().as_bytes().to_vec(),
            }),
        })
    }

    /// A client for one server (standalone, or a cluster node for pub/sub).
    pub fn client(&self, url: &str) -> RedisResult<Client> {
        match self.certificates() {
            Some(certs) => Client::build_with_tls(url, certs),
            None => Client::open(url),
        }
    }

    /// A client that asks the sentinels for the master (of the moment).
    pub fn sentinel(&self) -> RedisResult<SentinelClient> {
        let sentinels = self
            .urls
            .iter()
            .map(|url| Ok(url.as_str().into_connection_info()?.addr().clone()))
            .collect::<RedisResult<Vec<_>>>()?;
        let tls = self.urls.first().is_some_and(|u| u.starts_with("rediss:"));
        let mut builder =
            SentinelClientBuilder::new(sentinels, &self.master_name, SentinelServerType::Master)?;
        if let Some(password) = &self.node_password {
            builder = builder.set_client_to_redis_password(password.expose());
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password.expose());
        }
        if tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certs) = self.certificates() {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        builder.build()
    }

    /// A new multiplexed connection of the mode's kind.
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        Ok(match self.mode {
            RedisMode::Standalone => RedisConn::Single(
                self.client(&self.urls[0])?
                    .get_multiplexed_async_connection()
                    .await?,
            ),
            RedisMode::Cluster => {
                let mut builder = ClusterClientBuilder::new(self.urls.clone());
                if let Some(certs) = self.certificates() {
                    builder = builder.certs(certs);
                }
                RedisConn::Cluster(builder.build()?.get_async_connection().await?)
            }
            RedisMode::Sentinel => {
                RedisConn::Single(self.sentinel()?.get_async_connection().await?)
            }
        })
    }
}

/// The pool's manager: makes connections with a [`Connector`] and checks a returned one
/// with a `PING`.
pub struct Manager {
    pub(super) connector: Arc<Connector>,
    pings: AtomicUsize,
}

impl Manager {
    pub fn new(connector: Arc<Connector>) -> Self {
        Self {
            connector,
            pings: AtomicUsize::new(0),
        }
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = RedisConn;
    type Error = RedisError;

    async fn create(&self) -> Result<RedisConn, RedisError> {
        self.connector.connect().await
    }

    async fn recycle(&self, conn: &mut RedisConn, _: &Metrics) -> RecycleResult<RedisError> {
        let ping = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
        let answer: String = deadpool_redis::redis::cmd("PING")
            .arg(&ping)
            .query_async(conn)
            .await?;
        if answer == ping {
            Ok(())
        } else {
            Err(RecycleError::Backend(RedisError::from((
                ErrorKind::Client,
                "PING answered something else",
            ))))
        }
    }
}

/// The pool of connections `[redis]` names.
pub type Pool = deadpool::managed::Pool<Manager>;
