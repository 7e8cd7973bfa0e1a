//! Typed configuration: `config/default.toml` → `config/<INTERCOM_ENV>.toml` (or an
//! explicit `--config FILE`) → `INTERCOM__SECTION__KEY` environment variables.
//!
//! Everything is validated before a port is bound, and every validation error names the
//! offending key, so `intercom check-config` can answer in one line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

/// The whole configuration of one Intercom process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
}

/// Listeners and lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Public listener, e.g. `0.0.0.0:8080`; port 0 picks a free port.
    pub listen: String,
    /// Admin listener for `/metrics` and `/health/*`; keep it off the public network.
    pub admin_listen: String,
    /// Worker threads; defaults to the number of cores.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Time between SIGTERM (readiness turns 503) and closing the listeners, so load
    /// balancers notice before connections are refused.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// How long in-flight requests may take to finish after the listeners close.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Peers whose `X-Forwarded-*` headers are believed. Everyone else's are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// How long an upstream instance that refused a connection is skipped.
    #[serde(with = "humantime_serde")]
    pub upstream_cooldown: Duration,
    /// Idle keep-alive connections kept per upstream host and worker.
    pub upstream_pool_size: usize,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` for machines, `pretty` for people.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `intercom=debug,info`.
    pub log_level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// One entry of the route table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Unique name, used in logs and metric labels.
    pub name: String,
    /// Path prefix, matched on whole segments of the canonical path.
    pub prefix: String,
    /// Only requests for this `Host` (port ignored) match, when set.
    #[serde(default)]
    pub host: Option<String>,
    /// Allowed methods; all when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Upstream base URLs, used round robin.
    pub upstreams: Vec<String>,
    /// Remove the prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the prefix with this path before forwarding.
    #[serde(default)]
    pub rewrite: Option<String>,
    #[serde(default)]
    pub request_headers: HeaderRules,
    #[serde(default)]
    pub response_headers: HeaderRules,
    #[serde(default)]
    pub timeouts: RouteTimeouts,
}

/// Header edits applied in the order remove → set → add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Per-route upstream timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    /// TCP connect to the upstream.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From the request sent to the response head.
    #[serde(with = "humantime_serde")]
    pub response: Duration,
    /// The whole exchange, bodies included.
    #[serde(with = "humantime_serde")]
    pub total: Duration,
}

impl Default for RouteTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

/// A configuration that cannot be used, with the key that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
}

impl SettingsError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Where environment overrides come from; a trait so tests need not touch the process
/// environment.
pub trait EnvSource {
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl EnvSource for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

impl Settings {
    /// Loads `config_dir/default.toml`, then `config_dir/<env>.toml` (env from
    /// `INTERCOM_ENV`, if the file exists), then `extra` (an explicit file), then
    /// `INTERCOM__*` variables, and validates the result.
    pub fn load(
        config_dir: &Path,
        extra: Option<&Path>,
        env: &dyn EnvSource,
    ) -> Result<Settings, SettingsError> {
        let vars = env.vars();
        let mut builder = config::Config::builder().add_source(
            config::File::from(config_dir.join("default.toml"))
                .format(config::FileFormat::Toml)
                .required(true),
        );
        if let Some((_, profile)) = vars.iter().find(|(k, _)| k == "INTERCOM_ENV") {
            builder = builder.add_source(
                config::File::from(config_dir.join(format!("{profile}.toml")))
                    .format(config::FileFormat::Toml)
                    .required(false),
            );
        }
        if let Some(path) = extra {
            if !path.exists() {
                return Err(SettingsError::new(
                    "--config",
                    format!("{} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(
                config::File::from(PathBuf::from(path))
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let overrides: std::collections::HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("INTERCOM__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("INTERCOM")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let raw = builder.build().map_err(config_error)?;
        let settings: Settings = raw.try_deserialize().map_err(config_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: URLs, uniqueness, positive timeouts.
    pub fn validate(&self) -> Result<(), SettingsError> {
        parse_addr("server.listen", &self.server.listen)?;
        parse_addr("server.admin_listen", &self.server.admin_listen)?;
        if self.server.workers == Some(0) {
            return Err(SettingsError::new("server.workers", "must be at least 1"));
        }
        positive("server.drain_timeout", self.server.drain_timeout)?;
        if self.server.upstream_pool_size == 0 {
            return Err(SettingsError::new(
                "server.upstream_pool_size",
                "must be at least 1",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level).map_err(|e| {
            SettingsError::new(
                "telemetry.log_level",
                format!("{:?} is not a valid filter: {e}", self.telemetry.log_level),
            )
        })?;

        let mut names = std::collections::HashSet::new();
        let mut prefixes = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            if route.name.is_empty()
                || !route
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(SettingsError::new(
                    key("name"),
                    format!("{:?} must be non-empty [A-Za-z0-9_-]", route.name),
                ));
            }
            if !names.insert(route.name.as_str()) {
                return Err(SettingsError::new(
                    key("name"),
                    format!("{:?} is used by another route", route.name),
                ));
            }
            if !route.prefix.starts_with('/')
                || (route.prefix.len() > 1 && route.prefix.ends_with('/'))
                || route.prefix.contains("//")
                || route.prefix.split('/').any(|s| s == "." || s == "..")
            {
                return Err(SettingsError::new(
                    key("prefix"),
                    format!(
                        "{:?} must start with '/', not end with '/', and hold no empty or dot segments",
                        route.prefix
                    ),
                ));
            }
            let host_key = route.host.clone().unwrap_or_default().to_ascii_lowercase();
            if !prefixes.insert((host_key, route.prefix.clone())) {
                return Err(SettingsError::new(
                    key("prefix"),
                    format!(
                        "{:?} is used by another route on the same host",
                        route.prefix
                    ),
                ));
            }
            for (m, method) in route.methods.iter().enumerate() {
                if http::Method::from_bytes(method.as_bytes()).is_err() {
                    return Err(SettingsError::new(
                        format!("routes[{i}].methods[{m}]"),
                        format!("{method:?} is not an HTTP method"),
                    ));
                }
            }
            if route.upstreams.is_empty() {
                return Err(SettingsError::new(
                    key("upstreams"),
                    "at least one upstream URL is required",
                ));
            }
            for (u, upstream) in route.upstreams.iter().enumerate() {
                let k = format!("routes[{i}].upstreams[{u}]");
                let url = Url::parse(upstream).map_err(|_| {
                    SettingsError::new(&k, format!("{upstream:?} is not a valid URL"))
                })?;
                if url.scheme() != "http" || url.host_str().is_none() {
                    return Err(SettingsError::new(
                        &k,
                        format!("{upstream:?} is not a valid URL: need http://host[:port][/path]"),
                    ));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(SettingsError::new(
                        &k,
                        format!("{upstream:?} must not carry a query or fragment"),
                    ));
                }
            }
            if route.strip_prefix && route.rewrite.is_some() {
                return Err(SettingsError::new(
                    key("rewrite"),
                    "set either strip_prefix or rewrite, not both",
                ));
            }
            if let Some(rewrite) = &route.rewrite {
                if !rewrite.starts_with('/') {
                    return Err(SettingsError::new(
                        key("rewrite"),
                        format!("{rewrite:?} must start with '/'"),
                    ));
                }
            }
            for (dir, rules) in [
                ("request_headers", &route.request_headers),
                ("response_headers", &route.response_headers),
            ] {
                for (kind, map) in [("add", &rules.add), ("set", &rules.set)] {
                    for (name, value) in map {
                        let k = format!("routes[{i}].{dir}.{kind}.{name}");
                        header_name(&k, name)?;
                        http::HeaderValue::from_str(value)
                            .map_err(|_| SettingsError::new(&k, "is not a valid header value"))?;
                    }
                }
                for (r, name) in rules.remove.iter().enumerate() {
                    header_name(&format!("routes[{i}].{dir}.remove[{r}]"), name)?;
                }
            }
            positive(&key("timeouts.connect"), route.timeouts.connect)?;
            positive(&key("timeouts.response"), route.timeouts.response)?;
            positive(&key("timeouts.total"), route.timeouts.total)?;
        }
        Ok(())
    }
}

fn header_name(key: &str, name: &str) -> Result<(), SettingsError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| SettingsError::new(key, format!("{name:?} is not a valid header name")))
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, SettingsError> {
    value.parse().map_err(|_| {
        SettingsError::new(
            key,
            format!("{value:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

fn positive(key: &str, value: Duration) -> Result<(), SettingsError> {
    if value.is_zero() {
        Err(SettingsError::new(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

/// Turns the `config` crate's error into one that names the key.
fn config_error(err: config::ConfigError) -> SettingsError {
    match err {
        config::ConfigError::NotFound(key) => SettingsError::new(key, "is required"),
        config::ConfigError::FileParse { ref uri, ref cause } => SettingsError::new(
            uri.clone().unwrap_or_else(|| "<file>".into()),
            format!("cannot parse: {cause}"),
        ),
        other => {
            // Messages look like `missing field `x`` or `invalid value: ..., expected a
            // duration`, optionally followed by ` for key `routes[0]timeouts.connect``.
            let message = other.to_string();
            match message.rsplit_once(" for key `") {
                Some((reason, key)) => {
                    let key = key
                        .trim_end_matches('`')
                        .replace("]", "].")
                        .replace("]..", "].");
                    let key = key.trim_end_matches('.').replace(".[", "[");
                    SettingsError::new(key, reason.to_string())
                }
                None => SettingsError::new("<config>", message),
            }
        }
    }
}
