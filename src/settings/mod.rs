//! Typed configuration: the defaults in code → `config/<INTERCOM_ENV>.toml` → an
//! explicit `--config FILE` → `INTERCOM__SECTION__KEY` environment variables.
//!
//! Defaults have one home each. A section whose keys are all optional is
//! `#[serde(default)]` with an `impl Default` (the one answer to "what is the default of
//! X"); a section with required keys has a `default_*` function beside each optional
//! key. No configuration file holds defaults.
//!
//! Everything is validated before a port is bound, and every validation error names the
//! offending key, so `intercom check-config` can answer in one line.

mod algorithms;
mod auth_server;
mod checks;
mod claims;
mod compression;
mod discovery;
mod exchange;
mod filters;
mod headers;
mod origin;
mod rate_limit;
mod redis;
mod replicas;
mod revocation;
mod route_rules;
mod routes;
mod rules;
mod secrets;
mod server;
mod session;
mod telemetry;
mod token_endpoint;
mod tokens;
mod upstream;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use algorithms::*;
pub use auth_server::*;
use checks::*;
pub use claims::*;
pub use compression::*;
pub use discovery::*;
pub use exchange::*;
pub use filters::*;
pub use headers::*;
pub use origin::*;
use rate_limit::validate_windows;
pub use rate_limit::*;
pub use redis::*;
pub use replicas::*;
pub use revocation::*;
pub use routes::*;
pub use secrets::*;
pub use server::*;
pub use session::*;
pub use telemetry::*;
pub use token_endpoint::*;
pub use tokens::*;
pub use upstream::*;

/// The whole configuration of one Intercom process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
    #[serde(default)]
    pub secrets: SecretsSettings,
    /// The authorization server Intercom introspects and exchanges tokens at.
    #[serde(default)]
    pub auth_server: Option<AuthServerSettings>,
    /// The internal tokens Intercom mints, and how it caches what it learned.
    #[serde(default)]
    pub tokens: TokenSettings,
    #[serde(default)]
    pub compression: CompressionSettings,
    /// The shared Redis (rate-limit counters); without it each replica limits alone.
    #[serde(default)]
    pub redis: Option<RedisSettings>,
    #[serde(default)]
    pub rate_limit: RateLimitSettings,
    /// The cache of exchanged tokens (routes with `exchange`).
    #[serde(default)]
    pub exchange: ExchangeCacheSettings,
    #[serde(default)]
    pub revocation: RevocationSettings,
    #[serde(default)]
    pub token_endpoint: TokenEndpointSettings,
    /// What replicas that share Redis must agree on.
    #[serde(default)]
    pub replicas: ReplicasSettings,
    /// Browser sessions (Intercom as the SPA's backend-for-frontend).
    #[serde(default)]
    pub session: Option<SessionSettings>,
    /// The resolver of routes that discover their instances by DNS.
    #[serde(default)]
    pub discovery: DiscoverySettings,
}

/// A configuration that cannot be used, with the key that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
}

impl SettingsError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
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

impl Settings {
    /// Loads `config_dir/<env>.toml` (env from `INTERCOM_ENV`, if the file exists), then
    /// `extra` (an explicit file), then `INTERCOM__*` variables, and validates the result.
    pub fn load(
        config_dir: &Path,
        extra: Option<&Path>,
        env: &dyn EnvSource,
    ) -> Result<Settings, SettingsError> {
        let vars = env.vars();
        let mut builder = config::Config::builder();
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

    /// Checks what serde cannot: each section, each route, then the rules that cross
    /// sections. Every error names its key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.server.validate()?;
        self.rate_limit.validate()?;
        self.exchange.validate()?;
        self.revocation.validate()?;
        self.token_endpoint.validate()?;
        positive("discovery.min_interval", self.discovery.min_interval)?;
        if self.discovery.max_interval < self.discovery.min_interval {
            return Err(SettingsError::new(
                "discovery.max_interval",
                "must not be shorter than discovery.min_interval",
            ));
        }
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        rules::validate(self)?;
        self.telemetry.validate()?;
        route_rules::validate(self)?;
        if let Some(auth) = &self.auth_server {
            auth.validate()?;
        }
        self.secrets.validate()?;
        if let Some(session) = &self.session {
            session.validate(self)?;
        }
        self.tokens.validate()
    }

    /// Every secret reference in the configuration, with the key that holds it.
    pub fn secret_references(&self) -> Vec<(String, crate::secret::SecretRef)> {
        let mut refs = Vec::new();
        let mut add = |key: String, reference: &crate::secret::SecretRef| {
            refs.push((key, reference.clone()));
        };
        if let Some(auth) = &self.auth_server {
            add("auth_server.client_secret".into(), &auth.client_secret);
        }
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(inject) = &route.inject {
                add(format!("routes[{i}].inject.secret"), inject.secret());
            }
            if let Some(tls) = &route.upstream_tls {
                if let Some(cert) = &tls.client_cert {
                    add(format!("routes[{i}].upstream_tls.client_cert"), cert);
                }
                if let Some(key) = &tls.client_key {
                    add(format!("routes[{i}].upstream_tls.client_key"), key);
                }
            }
        }
        let optional = [
            (
                "redis.password",
                self.redis.as_ref().and_then(|r| r.password.as_ref()),
            ),
            (
                "redis.sentinel_password",
                self.redis
                    .as_ref()
                    .and_then(|r| r.sentinel_password.as_ref()),
            ),
            (
                "redis.client_cert",
                self.redis.as_ref().and_then(|r| r.client_cert.as_ref()),
            ),
            (
                "redis.client_key",
                self.redis.as_ref().and_then(|r| r.client_key.as_ref()),
            ),
            ("replicas.shared_key", self.replicas.shared_key.as_ref()),
            (
                "replicas.rotation_shared_key",
                self.replicas.rotation_shared_key.as_ref(),
            ),
            (
                "exchange.encryption_key",
                self.exchange.encryption_key.as_ref(),
            ),
            (
                "revocation.admin_credential",
                self.revocation.admin_credential.as_ref(),
            ),
            ("tokens.signing_key", self.tokens.signing_key.as_ref()),
            (
                "tokens.next_signing_key",
                self.tokens.next_signing_key.as_ref(),
            ),
        ];
        for (key, reference) in optional {
            if let Some(reference) = reference {
                add(key.into(), reference);
            }
        }
        if let Some(session) = &self.session {
            add("session.encryption_key".into(), &session.encryption_key);
            if let Some(secret) = &session.client_secret {
                add("session.client_secret".into(), secret);
            }
            if let Some(key) = &session.client_key {
                add("session.client_key".into(), key);
            }
        }
        for (i, client) in self.token_endpoint.clients.iter().enumerate() {
            add(
                format!("token_endpoint.clients[{i}].secret"),
                &client.secret,
            );
        }
        refs
    }
}
