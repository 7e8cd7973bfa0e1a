//! `[discovery]`: how the host names of routes with `discover = true` are resolved.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The resolver of upstream host names, for routes that discover their instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySettings {
    /// DNS servers asked, `"10.0.0.10:53"`; the system's (`/etc/resolv.conf`, and
    /// `/etc/hosts`) when empty.
    pub nameservers: Vec<SocketAddr>,
    /// A name is resolved again when its records expire (their TTL), but not sooner
    /// than this...
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// ...and not later than this.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
        }
    }
}
