//! A route's upstreams: their URLs and weights, how they are reached (TLS, HTTP/2), how
//! their health is watched (active probes, passive ejection), how requests are spread
//! over them and retried.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::secret::SecretRef;

/// TLS to a route's `https://` upstreams. Certificates are always verified (chain and
/// host name); there is no switch that turns verification off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSettings {
    /// PEM bundle of the CAs trusted for these upstreams, instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate chain for mTLS, from the secret store (with `client_key`);
    /// a rotated value is used from the next handshake on.
    #[serde(default)]
    pub client_cert: Option<SecretRef>,
    /// PEM private key of `client_cert`, from the secret store.
    #[serde(default)]
    pub client_key: Option<SecretRef>,
}

/// The HTTP version spoken to a route's upstreams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/2 when a TLS upstream picks it by ALPN, else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP (`http://` upstreams only).
    H2c,
}

/// An upstream's base URL: `http[s]://host[:port][/path]`, no query, no fragment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UpstreamUrl(pub Url);

impl TryFrom<String> for UpstreamUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let url = Url::parse(&text).map_err(|_| format!("{text:?} is not a valid URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{text:?} is not a valid URL: need http[s]://host[:port][/path]"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?} must not carry a query or fragment"));
        }
        Ok(UpstreamUrl(url))
    }
}

/// One entry of `upstreams`: `"http://host:port"` or `{ url = "...", weight = 3 }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawUpstream")]
pub struct UpstreamSetting {
    pub url: Url,
    /// Its share of the route's requests, relative to the others' (1 by default).
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawUpstream {
    Url(String),
    Weighted {
        url: String,
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

impl TryFrom<RawUpstream> for UpstreamSetting {
    type Error = String;

    fn try_from(raw: RawUpstream) -> Result<Self, String> {
        let (text, weight) = match raw {
            RawUpstream::Url(text) => (text, 1),
            RawUpstream::Weighted { url, weight } => (url, weight),
        };
        if !(1..=1000).contains(&weight) {
            return Err(format!("{text:?}: weight must be 1 to 1000"));
        }
        let UpstreamUrl(url) = UpstreamUrl::try_from(text)?;
        Ok(Self { url, weight })
    }
}

/// How a route spreads requests over its healthy instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, each instance as often as its weight says.
    #[default]
    RoundRobin,
    /// The less busy of two instances drawn at random (by weight): requests in flight
    /// per unit of weight.
    LeastRequest,
}

/// An active probe of each instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSettings {
    /// The path probed with `GET` (with the route's `Host`).
    pub path: String,
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Probes in a row that bring an unhealthy instance back.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// Probes in a row that take a healthy instance out.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
    /// Statuses that count as healthy; any 2xx when empty.
    #[serde(default)]
    pub expected_status: Vec<u16>,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_threshold() -> u32 {
    2
}

/// Ejection of instances that fail real requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthSettings {
    /// 5xx answers or broken exchanges in a row that eject an instance (0: never); a
    /// refused connection or a failed TLS handshake ejects it at once.
    pub consecutive_failures: u32,
    /// The first ejection's length (default `server.upstream_cooldown`); each ejection
    /// in a row doubles it, up to `max_ejection`.
    #[serde(with = "humantime_serde")]
    pub ejection: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
}

impl Default for PassiveHealthSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: None,
            max_ejection: Duration::from_secs(60),
        }
    }
}

/// Sending a failed request to another instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Most retries of one request.
    pub attempts: u32,
    /// Retries may be at most this share of the route's requests over the last 10 s
    /// (3 are always allowed), so retries never multiply an outage.
    pub budget: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            attempts: 1,
            budget: 0.2,
        }
    }
}
