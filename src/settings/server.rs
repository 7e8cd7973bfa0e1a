//! `[server]`: the listeners, their TLS, and the lifecycle (workers, drain, limits).

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use std::net::SocketAddr;

use super::*;

/// Listeners and lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Public listener, e.g. `0.0.0.0:8080`; port 0 picks a free port.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Admin listener for `/metrics` and `/health/*`; keep it off the public network.
    #[serde(deserialize_with = "socket_addr")]
    pub admin_listen: SocketAddr,
    /// Worker threads; defaults to the number of cores.
    pub workers: Option<usize>,
    /// Time between SIGTERM (readiness turns 503) and closing the listeners, so load
    /// balancers notice before connections are refused.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// How long in-flight requests may take to finish after the listeners close.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Peers whose `X-Forwarded-*` headers are believed. Everyone else's are replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// How long an upstream instance that refused a connection is skipped.
    #[serde(with = "humantime_serde")]
    pub upstream_cooldown: Duration,
    /// Idle keep-alive connections kept per upstream host and worker.
    pub upstream_pool_size: usize,
    /// Largest request body, unless a route says otherwise.
    pub max_body_bytes: u64,
    /// Time a client gets to send its request head (slow senders are cut off with 408).
    #[serde(with = "humantime_serde")]
    pub client_request_timeout: Duration,
    /// TLS on the public listener, when set.
    pub tls: Option<TlsSettings>,
    /// When set, the configuration files are checked this often and a change reloads
    /// them (as SIGHUP does); off by default.
    #[serde(with = "humantime_serde")]
    pub reload_watch: Option<Duration>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            workers: None,
            shutdown_delay: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            upstream_cooldown: Duration::from_secs(5),
            upstream_pool_size: 128,
            max_body_bytes: 10 * 1024 * 1024,
            client_request_timeout: Duration::from_secs(5),
            tls: None,
            reload_watch: None,
        }
    }
}

/// TLS for the public listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Refuse TLS 1.2.
    #[serde(default)]
    pub tls13_only: bool,
    /// How often the files are checked for a new certificate.
    #[serde(default = "default_tls_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
    /// A plain-HTTP listener that only redirects to HTTPS (308), when set.
    #[serde(default, deserialize_with = "optional_socket_addr")]
    pub redirect_listen: Option<SocketAddr>,
    /// The host names the redirect may send clients to (required with
    /// `redirect_listen`): a request for one of them goes there, any other to the first.
    /// The client's `Host` is never reflected.
    #[serde(default)]
    pub redirect_hosts: Vec<String>,
    /// `Strict-Transport-Security: max-age` on every answer; 0 turns it off.
    #[serde(default = "default_hsts")]
    pub hsts_max_age_secs: u64,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(10)
}
fn default_hsts() -> u64 {
    31_536_000
}

impl ServerSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if let Some(tls) = &self.tls {
            if tls.redirect_listen.is_some() && tls.redirect_hosts.is_empty() {
                return Err(SettingsError::new(
                    "server.tls.redirect_hosts",
                    "is required with redirect_listen: the host names to redirect to",
                ));
            }
            for host in &tls.redirect_hosts {
                let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                    Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                    None => !host.contains([':', '/', '@']) && url::Host::parse(host).is_ok(),
                };
                if !ok {
                    return Err(SettingsError::new(
                        "server.tls.redirect_hosts",
                        format!("{host:?} is not a host name (no port, no scheme)"),
                    ));
                }
            }
        }
        if self.workers == Some(0) {
            return Err(SettingsError::new("server.workers", "must be at least 1"));
        }
        positive("server.drain_timeout", self.drain_timeout)?;
        positive("server.client_request_timeout", self.client_request_timeout)?;
        if let Some(every) = self.reload_watch {
            if every < Duration::from_millis(100) {
                return Err(SettingsError::new(
                    "server.reload_watch",
                    "must be at least 100ms (the files are polled)",
                ));
            }
        }
        if self.upstream_pool_size == 0 {
            return Err(SettingsError::new(
                "server.upstream_pool_size",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
