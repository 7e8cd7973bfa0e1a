//! `[redis]`: the shared Redis every replica talks to.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::*;
use crate::secret::SecretRef;

/// The shared Redis every replica talks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// One Redis (`url`), a Redis Cluster (`nodes`), or a master and its replicas
    /// watched by Redis Sentinel (`sentinels`, `master_name`).
    #[serde(default)]
    pub mode: RedisMode,
    /// `redis://host:port/db` (no password here: see `password`), in `standalone` mode.
    #[serde(default)]
    pub url: Option<RedisUrl>,
    /// In `cluster` mode: some of the cluster's nodes (`redis://host:port`), from which
    /// the topology is learnt and followed (MOVED, ASK, failovers).
    #[serde(default)]
    pub nodes: Vec<RedisUrl>,
    /// In `sentinel` mode: the sentinels (`redis://host:26379`), which name the master
    /// to connect to, now and after a failover.
    #[serde(default)]
    pub sentinels: Vec<RedisUrl>,
    /// In `sentinel` mode: the name the sentinels monitor the master by.
    #[serde(default)]
    pub master_name: Option<String>,
    /// A secret reference (`file:NAME`, `vault:MOUNT/PATH#KEY`) for the password (of
    /// the data nodes, in `sentinel` mode).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// In `sentinel` mode: a secret reference for the sentinels' own password, when
    /// they have one (`requirepass` in sentinel.conf).
    #[serde(default)]
    pub sentinel_password: Option<SecretRef>,
    /// `rediss://` only: a PEM bundle of the CAs trusted for Redis's certificates,
    /// instead of the system's (a private CA).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// `rediss://` only, mTLS (Redis's `tls-auth-clients yes`): a secret reference holding
    /// the PEM client certificate chain, presented to every node (and sentinel).
    #[serde(default)]
    pub client_cert: Option<SecretRef>,
    /// The secret reference of `client_cert`'s PEM private key.
    #[serde(default)]
    pub client_key: Option<SecretRef>,
    #[serde(default = "default_redis_pool_size")]
    pub pool_size: usize,
    /// Longest wait for a connection or a command; past it Redis counts as failed.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// After a failure, how long Redis is left alone before it is tried again.
    #[serde(default = "default_redis_retry", with = "humantime_serde")]
    pub retry_interval: Duration,
    /// What every key starts with (the families are in `redis::keys`), so several
    /// deployments can share one Redis.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
}

/// How Intercom reaches Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
    Sentinel,
}

fn default_redis_key_prefix() -> String {
    "intercom".into()
}

fn default_redis_pool_size() -> usize {
    16
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_redis_retry() -> Duration {
    Duration::from_secs(1)
}

impl RedisSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let redis = self;
        if redis.pool_size == 0 {
            return Err(SettingsError::new("redis.pool_size", "must be at least 1"));
        }
        positive("redis.timeout", redis.timeout)?;
        positive("redis.retry_interval", redis.retry_interval)?;
        if redis.mode != RedisMode::Sentinel {
            for (key, set) in [
                ("redis.sentinels", !redis.sentinels.is_empty()),
                ("redis.master_name", redis.master_name.is_some()),
                ("redis.sentinel_password", redis.sentinel_password.is_some()),
            ] {
                if set {
                    return Err(SettingsError::new(key, "is for mode = \"sentinel\""));
                }
            }
        }
        redis.validate_tls()?;
        if redis.mode == RedisMode::Sentinel {
            return redis.validate_sentinel();
        }
        match (redis.mode, &redis.url, redis.nodes.is_empty()) {
            (RedisMode::Standalone, None, _) => Err(SettingsError::new(
                "redis.url",
                "is required in standalone mode",
            )),
            (RedisMode::Standalone, Some(_), false) => Err(SettingsError::new(
                "redis.nodes",
                "are for mode = \"cluster\"; a standalone Redis has one url",
            )),
            (RedisMode::Cluster, Some(_), _) => Err(SettingsError::new(
                "redis.url",
                "is for mode = \"standalone\"; name the cluster's nodes in redis.nodes",
            )),
            (RedisMode::Cluster, None, true) => Err(SettingsError::new(
                "redis.nodes",
                "name at least one node of the cluster",
            )),
            (RedisMode::Cluster, None, false) => {
                for (i, node) in redis.nodes.iter().enumerate() {
                    let key = format!("redis.nodes[{i}]");
                    if !matches!(node.0.path(), "" | "/" | "/0") {
                        return Err(SettingsError::new(key, "a cluster has only database 0"));
                    }
                    if node.0.scheme() != redis.nodes[0].0.scheme() {
                        return Err(SettingsError::new(
                            key,
                            "every node needs the same scheme (redis:// or rediss://)",
                        ));
                    }
                }
                Ok(())
            }
            (RedisMode::Standalone, Some(_), true) => Ok(()),
            (RedisMode::Sentinel, _, _) => Ok(()),
        }
    }

    /// The TLS keys need TLS, and a client certificate needs its key.
    fn validate_tls(&self) -> Result<(), SettingsError> {
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(SettingsError::new(
                if self.client_cert.is_some() {
                    "redis.client_key"
                } else {
                    "redis.client_cert"
                },
                "client_cert and client_key go together",
            ));
        }
        let tls = self
            .url
            .iter()
            .chain(&self.nodes)
            .chain(&self.sentinels)
            .any(|u| u.0.scheme() == "rediss");
        for (key, set) in [
            ("redis.ca_file", self.ca_file.is_some()),
            ("redis.client_cert", self.client_cert.is_some()),
        ] {
            if set && !tls {
                return Err(SettingsError::new(
                    key,
                    "is for TLS: the Redis URLs must be rediss://",
                ));
            }
        }
        Ok(())
    }

    fn validate_sentinel(&self) -> Result<(), SettingsError> {
        if self.url.is_some() || !self.nodes.is_empty() {
            return Err(SettingsError::new(
                if self.url.is_some() {
                    "redis.url"
                } else {
                    "redis.nodes"
                },
                "is not used with mode = \"sentinel\": the sentinels name the master",
            ));
        }
        if self.sentinels.is_empty() {
            return Err(SettingsError::new(
                "redis.sentinels",
                "name at least one sentinel",
            ));
        }
        if self.master_name.as_deref().is_none_or(str::is_empty) {
            return Err(SettingsError::new(
                "redis.master_name",
                "is required in sentinel mode (the name in `sentinel monitor`)",
            ));
        }
        for (i, sentinel) in self.sentinels.iter().enumerate() {
            if sentinel.0.scheme() != self.sentinels[0].0.scheme() {
                return Err(SettingsError::new(
                    format!("redis.sentinels[{i}]"),
                    "every sentinel needs the same scheme (redis:// or rediss://)",
                ));
            }
        }
        Ok(())
    }
}

/// `redis://host:port/db` or `rediss://`, without a password; never echoed in an error
/// (a password typed into it by mistake must not reach a log).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl(pub Url);

impl TryFrom<String> for RedisUrl {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, &'static str> {
        let url = Url::parse(&text).map_err(|_| "is not a valid URL")?;
        if !matches!(url.scheme(), "redis" | "rediss") || url.host_str().is_none() {
            return Err("must look like redis://host:port/db");
        }
        if url.password().is_some() {
            return Err("holds a password: move it to the secret store and set redis.password");
        }
        Ok(RedisUrl(url))
    }
}
