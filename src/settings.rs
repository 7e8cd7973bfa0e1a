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

/// The defaults, built in so the binary needs no file to start.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The whole configuration of one Intercom process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
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
}

/// Replicas sharing one Redis hash what they share (revocation ids, logout `jti`s, cache
/// keys, rate-limit callers) under one key, so that a revocation announced by one is
/// recognised by all, and nothing in Redis can be reversed to an identity.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplicasSettings {
    /// Secret reference: the HMAC key every replica hashes shared ids under (required
    /// with `[redis]`; without Redis each process draws its own).
    pub shared_key: Option<String>,
    /// Secret reference: a second key while `shared_key` rotates. Revocations are also
    /// announced and stored under it, so replicas still on it recognise them.
    pub rotation_shared_key: Option<String>,
}

/// `POST /token`: besides a bearer token, services may authenticate as clients here.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpointSettings {
    /// Clients that authenticate with HTTP Basic (RFC 6749 §2.3.1).
    #[serde(default)]
    pub clients: Vec<TokenClientSettings>,
}

/// One client of `POST /token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClientSettings {
    pub client_id: String,
    /// Secret reference to its client secret.
    pub secret: String,
}

/// The two-tier cache of tokens for downstream audiences.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeCacheSettings {
    /// Entries in each replica's memory tier.
    pub capacity: u64,
    /// Keep the memory tier (off only to measure the Redis tier alone).
    pub memory_tier: bool,
    /// An entry goes this long before its token's `exp`.
    #[serde(with = "humantime_serde")]
    pub skew: Duration,
    /// Past this fraction of its lifetime, a hit renews the entry in the background.
    pub refresh_ahead: f64,
    /// How long a refused exchange is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// The cross-replica lock that lets one replica renew an entry.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// Prefix of the Redis keys.
    pub key_prefix: String,
    /// Secret reference: the AES-256-GCM key of Redis values (needed with Redis).
    pub encryption_key: Option<String>,
}

impl Default for ExchangeCacheSettings {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            memory_tier: true,
            skew: Duration::from_secs(5),
            refresh_ahead: 0.75,
            negative_ttl: Duration::from_secs(10),
            lock_ttl: Duration::from_secs(5),
            key_prefix: "intercom:x".into(),
            encryption_key: None,
        }
    }
}

/// Revocation: the admin API, back-channel logout and the denylist.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationSettings {
    /// Secret reference: the bearer credential of `POST /admin/revoke` (off when unset).
    pub admin_credential: Option<String>,
    /// Serve `POST /backchannel-logout` for the AS's logout tokens.
    pub backchannel_logout: bool,
    /// The Redis pub/sub channel that carries revocations to every replica.
    pub channel: String,
    /// How long a revoked subject, client, session or token stays refused: at least
    /// the longest lifetime of a token issued before the revocation.
    #[serde(with = "humantime_serde")]
    pub denylist_ttl: Duration,
    /// A token issued up to this long after a revocation is still covered by it: the
    /// AS's clock and this replica's differ a little.
    #[serde(with = "humantime_serde")]
    pub clock_leeway: Duration,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            admin_credential: None,
            backchannel_logout: true,
            channel: "intercom:revocations".into(),
            denylist_ttl: Duration::from_secs(3600),
            clock_leeway: Duration::from_secs(1),
        }
    }
}

/// A route whose upstream receives a token for its own audience (RFC 8693).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeSettings {
    /// The target's audience, sent as `audience` (and as `resource` with `resource = true`).
    pub audience: String,
    #[serde(default)]
    pub resource: bool,
    /// Scopes the target may receive; `prefix_*` matches a family.
    pub allowed_scopes: Vec<String>,
    /// Client ids that may call the target.
    #[serde(default)]
    pub callers: Vec<String>,
    /// Or: callers holding any of these scopes.
    #[serde(default)]
    pub caller_scopes: Vec<String>,
    /// `exchange` at the AS, or `mint` a downscoped JWT here (an AS without RFC 8693).
    #[serde(default)]
    pub mode: ExchangeMode,
    /// `requested_token_type` to ask the AS for.
    #[serde(default)]
    pub requested_token_type: Option<String>,
    /// Send Intercom's own client-credentials token as `actor_token`, so the AS can
    /// record the delegation (`act`) from a verified actor.
    #[serde(default)]
    pub actor: bool,
}

/// Where a downstream token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeMode {
    #[default]
    Exchange,
    Mint,
}

/// The shared Redis every replica talks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db` (no password here: see `password`).
    pub url: String,
    /// A secret reference (`file:NAME`, `vault:MOUNT/PATH#KEY`) for the password.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_redis_pool_size")]
    pub pool_size: usize,
    /// Longest wait for a connection or a command; past it Redis counts as failed.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// After a failure, how long Redis is left alone before it is tried again.
    #[serde(default = "default_redis_retry", with = "humantime_serde")]
    pub retry_interval: Duration,
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

/// Rate limits: tiers of windows, chosen by a verified claim.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// The token claim naming the caller's tier (e.g. `plan`).
    pub tier_claim: String,
    /// The tier of callers whose token has no (or an unknown) tier claim.
    pub default_tier: String,
    /// The tier of anonymous callers (keyed by address); `default_tier` when absent.
    pub anonymous_tier: Option<String>,
    /// What to do while Redis fails: `local` (limit per replica), `allow` or `deny`.
    pub on_redis_error: OnRedisError,
    /// Replicas sharing the limits: the local fallback allows `limit / replicas`.
    pub replicas: u32,
    /// Prefix of the Redis keys.
    pub key_prefix: String,
    /// Windows per tier.
    pub tiers: std::collections::BTreeMap<String, Vec<WindowSettings>>,
    /// Per client address: how many tokens Intercom has not seen may cost an
    /// introspection (or validation) at the AS; past it, 429. Empty turns it off.
    pub unknown_tokens: Vec<WindowSettings>,
    /// Per client address: calls of `/token`, `/revoke` and `/backchannel-logout`.
    /// Empty turns it off.
    pub endpoints: Vec<WindowSettings>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            tier_claim: "plan".into(),
            default_tier: "free".into(),
            anonymous_tier: None,
            on_redis_error: OnRedisError::Local,
            replicas: 1,
            key_prefix: "intercom:rl".into(),
            tiers: Default::default(),
            unknown_tokens: vec![WindowSettings {
                requests: 600,
                per: Duration::from_secs(60),
                burst: Some(100),
            }],
            endpoints: vec![WindowSettings {
                requests: 600,
                per: Duration::from_secs(60),
                burst: Some(100),
            }],
        }
    }
}

/// The rate limiter's answer while Redis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Each replica limits alone at `limit / replicas`.
    #[default]
    Local,
    /// Let every request through.
    Allow,
    /// Refuse every request (503).
    Deny,
}

/// One window: `requests` per `per`, at most `burst` of them back to back.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    pub requests: u64,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Requests that may come at once (default: all of `requests`).
    #[serde(default)]
    pub burst: Option<u64>,
}

/// A route's rate limit: the global tiers, some replaced for this route.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimit {
    /// Windows per tier for this route, replacing the global ones of the same tier.
    #[serde(default)]
    pub tiers: std::collections::BTreeMap<String, Vec<WindowSettings>>,
    /// `identity` (verified `client_id`, else `sub`) or `address`; by default identity
    /// on bearer routes and address on open ones.
    #[serde(default)]
    pub key: Option<RateLimitKey>,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKey {
    Identity,
    Address,
}

/// Response compression (gzip, brotli, zstd by `Accept-Encoding`). Off by default:
/// compressing answers that mix secrets with attacker-chosen input invites BREACH.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSettings {
    pub enabled: bool,
    /// Bodies smaller than this (when their size is known) are sent as they are.
    pub min_bytes: u64,
    /// Content types compressed, by prefix (`text/` covers `text/html`).
    pub content_types: Vec<String>,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            min_bytes: 1024,
            content_types: [
                "text/",
                "application/json",
                "application/problem+json",
                "application/javascript",
                "application/xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Where secret references resolve.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    /// A TOML file of `name = "value"`, for `file:NAME` references.
    pub file: Option<PathBuf>,
    /// Vault or OpenBao, for `vault:MOUNT/PATH#KEY` references.
    pub vault: Option<VaultSettings>,
    /// How often every referenced secret is checked for a new value.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            file: None,
            vault: None,
            poll_interval: Duration::from_secs(30),
        }
    }
}

/// How to reach and authenticate to Vault (or OpenBao).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// e.g. `https://vault.internal:8200`
    pub address: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// `token` or `approle`.
    pub auth: VaultAuth,
    /// Token auth: a file holding the token, or the name of an environment variable.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,
    /// AppRole auth: where the role id and secret id are read from.
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    #[serde(default)]
    pub role_id_file: Option<PathBuf>,
    #[serde(default)]
    pub role_id_env: Option<String>,
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_id_env: Option<String>,
    /// KV engine version of the mounts referenced: 2 (default) or 1.
    #[serde(default = "default_kv_version")]
    pub kv_version: u8,
    #[serde(default = "default_vault_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM bundle of CAs trusted for Vault's certificate, besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_approle_mount() -> String {
    "approle".into()
}
fn default_kv_version() -> u8 {
    2
}
fn default_vault_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuth {
    Token,
    Approle,
}

/// A credential Intercom adds to a route's upstream requests, replacing whatever the
/// client sent in that header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum InjectSettings {
    /// `Authorization: Bearer <secret>`
    Bearer { secret: String },
    /// `<header>: <secret>`, e.g. an API key.
    Header { header: String, secret: String },
    /// `Authorization: Basic base64(<username>:<secret>)`
    Basic { username: String, secret: String },
    /// `Authorization: Bearer <token>` with a token Intercom gets from the AS with this
    /// client's credentials (`secret` is the client secret).
    #[serde(rename = "client_credentials")]
    ClientCredentials {
        client_id: String,
        secret: String,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        resource: Option<String>,
    },
}

impl InjectSettings {
    pub fn secret(&self) -> &str {
        match self {
            InjectSettings::Bearer { secret }
            | InjectSettings::Header { secret, .. }
            | InjectSettings::Basic { secret, .. }
            | InjectSettings::ClientCredentials { secret, .. } => secret,
        }
    }
}

/// The authorization server (RFC 8414 / OpenID discovery at the issuer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthServerSettings {
    /// Issuer URL; metadata is discovered below it.
    pub issuer: String,
    /// Intercom's own client at the AS.
    pub client_id: String,
    /// A secret reference (e.g. `file:intercom_client_secret`), never the value.
    pub client_secret: String,
    /// `json` (RFC 7662) or `jwt` (RFC 9701, signed and verified).
    #[serde(default)]
    pub introspection_format: IntrospectionFormat,
    #[serde(default = "default_as_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "default_as_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Overrides the discovered `jwks_uri` (keys for JWT access tokens and signed
    /// introspection answers).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Local validation of JWT access tokens from this issuer.
    #[serde(default)]
    pub jwt: JwtSettings,
    /// When not empty, an introspected token must name one of these in `aud`.
    #[serde(default)]
    pub audiences: Vec<String>,
}

fn default_as_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_as_request_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectionFormat {
    #[default]
    Json,
    Jwt,
}

/// How JWT access tokens are validated without calling the AS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// Accepted `aud` values; empty means JWTs are introspected like opaque tokens.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The `alg` allow-list. `none` and HMAC algorithms are never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Required `typ` header, e.g. `at+jwt`, when set.
    #[serde(default)]
    pub typ: Option<String>,
    /// At most one JWKS fetch per this interval for unknown `kid`s.
    #[serde(default = "default_jwks_cooldown", with = "humantime_serde")]
    pub jwks_cooldown: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            audiences: Vec::new(),
            algorithms: default_algorithms(),
            leeway: default_leeway(),
            typ: None,
            jwks_cooldown: default_jwks_cooldown(),
        }
    }
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "PS256", "ES256", "EdDSA"]
        .map(String::from)
        .to_vec()
}
fn default_leeway() -> Duration {
    Duration::from_secs(10)
}
fn default_jwks_cooldown() -> Duration {
    Duration::from_secs(30)
}

/// Internal tokens and the token cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// `iss` of the internal JWTs: Intercom's public URL.
    pub issuer: String,
    /// `ES256` (default), `RS256` or `EdDSA`.
    pub algorithm: String,
    /// A secret reference to the signing key (a private JWK with a `kid`), shared by
    /// every replica; generated at start when unset.
    pub signing_key: Option<String>,
    /// A secret reference to the next signing key, published ahead of use.
    pub next_signing_key: Option<String>,
    /// Longest lifetime of an internal JWT (never past the original token's `exp`).
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// How often the signing key rotates.
    #[serde(with = "humantime_serde")]
    pub key_rotation: Duration,
    /// How long a new key is published before it signs: the JWKS `max-age`.
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
    /// Most cached tokens.
    pub cache_capacity: u64,
    /// Longest time a token's introspection result is cached (never past its `exp`).
    #[serde(with = "humantime_serde")]
    pub cache_max_ttl: Duration,
    /// How long an inactive token's answer is cached.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Most cached inactive tokens (a separate bound, so junk cannot evict good entries).
    pub negative_capacity: u64,
    /// Names of the identity headers sent upstream.
    pub user_id_header: String,
    pub client_id_header: String,
    pub scopes_header: String,
    /// Accept Intercom's own internal JWTs as bearer tokens (a service calling another
    /// through Intercom with the token it received); revocations apply to them too.
    pub accept_internal: bool,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".into(),
            algorithm: "ES256".into(),
            signing_key: None,
            next_signing_key: None,
            lifetime: Duration::from_secs(300),
            key_rotation: Duration::from_secs(24 * 3600),
            jwks_max_age: Duration::from_secs(300),
            cache_capacity: 100_000,
            cache_max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(10),
            negative_capacity: 10_000,
            user_id_header: "x-user-id".into(),
            client_id_header: "x-client-id".into(),
            scopes_header: "x-scopes".into(),
            accept_internal: false,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    #[default]
    None,
    Bearer,
}

/// Whether any or all `required_scopes` must be held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeMatch {
    Any,
    #[default]
    All,
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
    /// Largest request body, unless a route says otherwise.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Time a client gets to send its request head (slow senders are cut off with 408).
    #[serde(default = "default_client_request_timeout", with = "humantime_serde")]
    pub client_request_timeout: Duration,
    /// TLS on the public listener, when set.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
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
    #[serde(default)]
    pub redirect_listen: Option<String>,
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

fn default_max_body() -> u64 {
    10 * 1024 * 1024
}
fn default_client_request_timeout() -> Duration {
    Duration::from_secs(5)
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
    /// Match `prefix` ignoring ASCII case, for upstreams that route that way (Express,
    /// ASP.NET): `/API/Admin` then cannot slip past an `/api/admin` route.
    #[serde(default)]
    pub case_insensitive: bool,
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
    /// `none` (default) or `bearer`: a token is required and replaced by an internal JWT.
    #[serde(default)]
    pub auth: RouteAuth,
    /// Scopes the caller must hold; `prefix_*` matches any scope starting with `prefix_`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    #[serde(default)]
    pub scope_match: ScopeMatch,
    /// `aud` of the internal JWT; defaults to the route's name.
    #[serde(default)]
    pub audience: Option<String>,
    /// Further headers a client may never send to this route's upstream.
    #[serde(default)]
    pub internal_headers: Vec<String>,
    /// Accept `?access_token=` (RFC 6750 §2.3; discouraged) as well as the header.
    #[serde(default)]
    pub allow_query_token: bool,
    /// When not empty, the caller's token must name one of these in `aud` (else 401).
    #[serde(default)]
    pub accepted_audiences: Vec<String>,
    /// Intercom's own internal JWTs are accepted here only when their `aud` (the route
    /// they were minted for) is one of these (needs `tokens.accept_internal`).
    #[serde(default)]
    pub internal_audiences: Vec<String>,
    /// Forward `X-HTTP-Method-Override` and its kin (removed otherwise: frameworks would
    /// run another method than the one Intercom checked).
    #[serde(default)]
    pub allow_method_override: bool,
    /// A credential from the secret store to send upstream.
    #[serde(default)]
    pub inject: Option<InjectSettings>,
    /// Largest request body for this route (default: `server.max_body_bytes`).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// `default`: Intercom's security headers fill in what the upstream did not set;
    /// `enforce`: they replace the upstream's.
    #[serde(default)]
    pub security_headers: SecurityHeaders,
    /// Cross-origin access for browsers; preflights are answered by Intercom.
    #[serde(default)]
    pub cors: Option<CorsSettings>,
    /// Rate limit for this route (`rate_limit = {}` for the global tiers).
    #[serde(default)]
    pub rate_limit: Option<RouteRateLimit>,
    /// Send the upstream a token for its own audience instead of the internal JWT.
    #[serde(default)]
    pub exchange: Option<ExchangeSettings>,
}

/// A route's CORS policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Allowed origins (`https://app.example.com`), or `["*"]` without credentials.
    pub origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub methods: Vec<String>,
    /// Request headers a browser may send (besides the CORS-safelisted ones).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers a browser script may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization`; only with explicit origins.
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: usize,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
fn default_cors_max_age() -> usize {
    600
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityHeaders {
    #[default]
    Default,
    Enforce,
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
    /// Longest pause in the client's request body: a body that trickles in must not
    /// hold an upstream connection for the whole response timeout (408).
    #[serde(default = "default_body_idle", with = "humantime_serde")]
    pub body_idle: Duration,
}

fn default_body_idle() -> Duration {
    Duration::from_secs(10)
}

impl Default for RouteTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(30),
            total: Duration::from_secs(300),
            body_idle: default_body_idle(),
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

impl Settings {
    /// Loads the defaults (`config/default.toml`, built into the binary), then
    /// `config_dir/<env>.toml` (env from `INTERCOM_ENV`, if the file exists), then
    /// `extra` (an explicit file), then `INTERCOM__*` variables, and validates the result.
    pub fn load(
        config_dir: &Path,
        extra: Option<&Path>,
        env: &dyn EnvSource,
    ) -> Result<Settings, SettingsError> {
        let vars = env.vars();
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
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
        if let Some(tls) = &self.server.tls {
            if let Some(addr) = &tls.redirect_listen {
                parse_addr("server.tls.redirect_listen", addr)?;
                if tls.redirect_hosts.is_empty() {
                    return Err(SettingsError::new(
                        "server.tls.redirect_hosts",
                        "is required with redirect_listen: the host names to redirect to",
                    ));
                }
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
        self.validate_rate_limits()?;
        if self.server.workers == Some(0) {
            return Err(SettingsError::new("server.workers", "must be at least 1"));
        }
        positive("server.drain_timeout", self.server.drain_timeout)?;
        positive(
            "server.client_request_timeout",
            self.server.client_request_timeout,
        )?;
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
            if !route.internal_audiences.is_empty() && !self.tokens.accept_internal {
                return Err(SettingsError::new(
                    key("internal_audiences"),
                    "needs tokens.accept_internal = true",
                ));
            }
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
            if route.auth == RouteAuth::Bearer && self.auth_server.is_none() {
                return Err(SettingsError::new(
                    key("auth"),
                    "\"bearer\" needs an [auth_server] section",
                ));
            }
            for (h, name) in route.internal_headers.iter().enumerate() {
                header_name(&format!("routes[{i}].internal_headers[{h}]"), name)?;
            }
            for (n, scope) in route.required_scopes.iter().enumerate() {
                if scope.is_empty() || scope.contains(' ') || scope[..scope.len() - 1].contains('*')
                {
                    return Err(SettingsError::new(
                        format!("routes[{i}].required_scopes[{n}]"),
                        format!("{scope:?} must be one scope, with '*' only at its end"),
                    ));
                }
            }
            if let Some(inject) = &route.inject {
                crate::secret::SecretRef::parse(inject.secret())
                    .map_err(|e| SettingsError::new(key("inject.secret"), e.to_string()))?;
                match inject {
                    InjectSettings::Header { header, .. } => {
                        header_name(&key("inject.header"), header)?
                    }
                    InjectSettings::ClientCredentials { .. } if self.auth_server.is_none() => {
                        return Err(SettingsError::new(
                            key("inject"),
                            "\"client_credentials\" needs an [auth_server] section",
                        ))
                    }
                    InjectSettings::Bearer { .. } | InjectSettings::ClientCredentials { .. }
                        if route.auth == RouteAuth::Bearer =>
                    {
                        return Err(SettingsError::new(
                            key("inject"),
                            "a bearer credential would replace the internal JWT of an auth = \"bearer\" route",
                        ))
                    }
                    _ => {}
                }
            }
            if let Some(cors) = &route.cors {
                if cors.origins.is_empty() {
                    return Err(SettingsError::new(
                        key("cors.origins"),
                        "name at least one origin",
                    ));
                }
                for (o, origin) in cors.origins.iter().enumerate() {
                    let k = format!("routes[{i}].cors.origins[{o}]");
                    if origin == "*" {
                        if cors.credentials {
                            return Err(SettingsError::new(
                                k,
                                "\"*\" cannot be used with credentials = true: name the origins",
                            ));
                        }
                        continue;
                    }
                    let url = Url::parse(origin).map_err(|_| {
                        SettingsError::new(&k, format!("{origin:?} is not an origin"))
                    })?;
                    if url.host_str().is_none() || url.path() != "/" || origin.ends_with('/') {
                        return Err(SettingsError::new(
                            k,
                            format!("{origin:?} is not an origin like https://app.example.com"),
                        ));
                    }
                }
                for (m, method) in cors.methods.iter().enumerate() {
                    if http::Method::from_bytes(method.as_bytes()).is_err() {
                        return Err(SettingsError::new(
                            format!("routes[{i}].cors.methods[{m}]"),
                            format!("{method:?} is not an HTTP method"),
                        ));
                    }
                }
                for (h, name) in cors.headers.iter().chain(&cors.expose_headers).enumerate() {
                    header_name(&format!("routes[{i}].cors.headers[{h}]"), name)?;
                }
            }
            if let Some(exchange) = &route.exchange {
                if route.auth != RouteAuth::Bearer {
                    return Err(SettingsError::new(
                        key("exchange"),
                        "needs auth = \"bearer\": the caller's token is the subject",
                    ));
                }
                if exchange.allowed_scopes.is_empty() {
                    return Err(SettingsError::new(
                        key("exchange.allowed_scopes"),
                        "name the scopes the target may receive",
                    ));
                }
                if exchange.callers.is_empty() && exchange.caller_scopes.is_empty() {
                    return Err(SettingsError::new(
                        key("exchange"),
                        "name the callers (client ids) or caller_scopes allowed to call this target",
                    ));
                }
                if route.inject.is_some() {
                    return Err(SettingsError::new(
                        key("exchange"),
                        "a route either exchanges the caller's token or injects a credential",
                    ));
                }
            }
            if let Some(limit) = &route.rate_limit {
                for (tier, windows) in &limit.tiers {
                    validate_windows(&key(&format!("rate_limit.tiers.{tier}")), windows)?;
                }
                let tier = match (route.auth, limit.key) {
                    (RouteAuth::None, Some(RateLimitKey::Identity)) => {
                        return Err(SettingsError::new(
                            key("rate_limit.key"),
                            "\"identity\" needs auth = \"bearer\": an open route has no verified identity",
                        ))
                    }
                    (RouteAuth::None, _) | (_, Some(RateLimitKey::Address)) => self
                        .rate_limit
                        .anonymous_tier
                        .as_ref()
                        .unwrap_or(&self.rate_limit.default_tier),
                    _ => &self.rate_limit.default_tier,
                };
                if !limit.tiers.contains_key(tier) && !self.rate_limit.tiers.contains_key(tier) {
                    return Err(SettingsError::new(
                        key("rate_limit"),
                        format!("tier {tier:?} has no windows: set rate_limit.tiers.{tier}"),
                    ));
                }
            }
            positive(&key("timeouts.connect"), route.timeouts.connect)?;
            positive(&key("timeouts.response"), route.timeouts.response)?;
            positive(&key("timeouts.total"), route.timeouts.total)?;
        }
        if let Some(auth) = &self.auth_server {
            let url = Url::parse(&auth.issuer).map_err(|_| {
                SettingsError::new(
                    "auth_server.issuer",
                    format!("{:?} is not a valid URL", auth.issuer),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(SettingsError::new(
                    "auth_server.issuer",
                    format!("{:?} must be an http(s) URL", auth.issuer),
                ));
            }
            crate::secret::SecretRef::parse(&auth.client_secret)
                .map_err(|e| SettingsError::new("auth_server.client_secret", e.to_string()))?;
            positive("auth_server.connect_timeout", auth.connect_timeout)?;
            positive("auth_server.request_timeout", auth.request_timeout)?;
            for (a, alg) in auth.jwt.algorithms.iter().enumerate() {
                if !matches!(
                    alg.as_str(),
                    "RS256"
                        | "RS384"
                        | "RS512"
                        | "PS256"
                        | "PS384"
                        | "PS512"
                        | "ES256"
                        | "ES384"
                        | "EdDSA"
                ) {
                    return Err(SettingsError::new(
                        format!("auth_server.jwt.algorithms[{a}]"),
                        format!("{alg:?} is not an accepted asymmetric JWS algorithm"),
                    ));
                }
            }
            positive("auth_server.jwt.jwks_cooldown", auth.jwt.jwks_cooldown)?;
        }
        if let Some(vault) = &self.secrets.vault {
            Url::parse(&vault.address).map_err(|_| {
                SettingsError::new(
                    "secrets.vault.address",
                    format!("{:?} is not a valid URL", vault.address),
                )
            })?;
            if !matches!(vault.kv_version, 1 | 2) {
                return Err(SettingsError::new(
                    "secrets.vault.kv_version",
                    "must be 1 or 2",
                ));
            }
            positive("secrets.vault.timeout", vault.timeout)?;
        }
        positive("secrets.poll_interval", self.secrets.poll_interval)?;
        let t = &self.tokens;
        Url::parse(&t.issuer).map_err(|_| {
            SettingsError::new(
                "tokens.issuer",
                format!("{:?} is not a valid URL", t.issuer),
            )
        })?;
        if !matches!(t.algorithm.as_str(), "ES256" | "RS256" | "EdDSA") {
            return Err(SettingsError::new(
                "tokens.algorithm",
                format!("{:?} is not one of ES256, RS256, EdDSA", t.algorithm),
            ));
        }
        positive("tokens.lifetime", t.lifetime)?;
        positive("tokens.key_rotation", t.key_rotation)?;
        positive("tokens.cache_max_ttl", t.cache_max_ttl)?;
        positive("tokens.negative_ttl", t.negative_ttl)?;
        for (k, name) in [
            ("tokens.user_id_header", &t.user_id_header),
            ("tokens.client_id_header", &t.client_id_header),
            ("tokens.scopes_header", &t.scopes_header),
        ] {
            header_name(k, name)?;
        }
        Ok(())
    }

    /// Every secret reference in the configuration, with the key that holds it.
    pub fn secret_references(
        &self,
    ) -> Result<Vec<(String, crate::secret::SecretRef)>, SettingsError> {
        use crate::secret::SecretRef;
        let mut refs = Vec::new();
        let mut add = |key: String, text: &str| {
            SecretRef::parse(text)
                .map(|r| refs.push((key.clone(), r)))
                .map_err(|e| SettingsError::new(key, e.to_string()))
        };
        if let Some(auth) = &self.auth_server {
            add("auth_server.client_secret".into(), &auth.client_secret)?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(inject) = &route.inject {
                add(format!("routes[{i}].inject.secret"), inject.secret())?;
            }
        }
        if let Some(password) = self.redis.as_ref().and_then(|r| r.password.as_ref()) {
            add("redis.password".into(), password)?;
        }
        if let Some(key) = &self.replicas.shared_key {
            add("replicas.shared_key".into(), key)?;
        }
        if let Some(key) = &self.replicas.rotation_shared_key {
            add("replicas.rotation_shared_key".into(), key)?;
        }
        if let Some(key) = &self.exchange.encryption_key {
            add("exchange.encryption_key".into(), key)?;
        }
        if let Some(credential) = &self.revocation.admin_credential {
            add("revocation.admin_credential".into(), credential)?;
        }
        for (i, client) in self.token_endpoint.clients.iter().enumerate() {
            add(
                format!("token_endpoint.clients[{i}].secret"),
                &client.secret,
            )?;
        }
        if let Some(key) = &self.tokens.signing_key {
            add("tokens.signing_key".into(), key)?;
        }
        if let Some(key) = &self.tokens.next_signing_key {
            add("tokens.next_signing_key".into(), key)?;
        }
        Ok(refs)
    }

    /// The global rate-limit windows and the shared Redis.
    fn validate_rate_limits(&self) -> Result<(), SettingsError> {
        for (tier, windows) in &self.rate_limit.tiers {
            validate_windows(&format!("rate_limit.tiers.{tier}"), windows)?;
        }
        for (key, windows) in [
            ("rate_limit.unknown_tokens", &self.rate_limit.unknown_tokens),
            ("rate_limit.endpoints", &self.rate_limit.endpoints),
        ] {
            if !windows.is_empty() {
                validate_windows(key, windows)?;
            }
        }
        if !(0.0..1.0).contains(&self.exchange.refresh_ahead) || self.exchange.refresh_ahead == 0.0
        {
            return Err(SettingsError::new(
                "exchange.refresh_ahead",
                "must be a fraction between 0 and 1",
            ));
        }
        positive("exchange.negative_ttl", self.exchange.negative_ttl)?;
        positive("exchange.lock_ttl", self.exchange.lock_ttl)?;
        positive("revocation.denylist_ttl", self.revocation.denylist_ttl)?;
        if self.auth_server.is_some() && self.revocation.denylist_ttl < self.tokens.cache_max_ttl {
            // Revoked tokens stay in the edge cache until they expire; the denylist,
            // checked on every hit, must outlive them.
            return Err(SettingsError::new(
                "revocation.denylist_ttl",
                "must be at least tokens.cache_max_ttl",
            ));
        }
        let mut client_ids = std::collections::HashSet::new();
        for (i, client) in self.token_endpoint.clients.iter().enumerate() {
            if client.client_id.is_empty() || !client_ids.insert(client.client_id.as_str()) {
                return Err(SettingsError::new(
                    format!("token_endpoint.clients[{i}].client_id"),
                    format!("{:?} is empty or used twice", client.client_id),
                ));
            }
        }
        if self.rate_limit.replicas == 0 {
            return Err(SettingsError::new(
                "rate_limit.replicas",
                "must be at least 1",
            ));
        }
        if let Some(redis) = &self.redis {
            // The URL is not echoed: it might carry a password.
            let url = Url::parse(&redis.url)
                .map_err(|_| SettingsError::new("redis.url", "is not a valid URL"))?;
            if !matches!(url.scheme(), "redis" | "rediss") || url.host_str().is_none() {
                return Err(SettingsError::new(
                    "redis.url",
                    "must look like redis://host:port/db",
                ));
            }
            if url.password().is_some() {
                return Err(SettingsError::new(
                    "redis.url",
                    "holds a password: move it to the secret store and set redis.password",
                ));
            }
            if redis.pool_size == 0 {
                return Err(SettingsError::new("redis.pool_size", "must be at least 1"));
            }
            positive("redis.timeout", redis.timeout)?;
            positive("redis.retry_interval", redis.retry_interval)?;
        }
        if self.redis.is_some() && self.replicas.shared_key.is_none() {
            return Err(SettingsError::new(
                "replicas.shared_key",
                "is required with [redis]: replicas hash revocation ids, logout ids, cache keys and rate-limit callers under one shared key",
            ));
        }
        if self.replicas.rotation_shared_key.is_some() && self.replicas.shared_key.is_none() {
            return Err(SettingsError::new(
                "replicas.rotation_shared_key",
                "needs replicas.shared_key",
            ));
        }
        let exchanges = self.routes.iter().any(|r| r.exchange.is_some());
        if exchanges && self.redis.is_some() && self.exchange.encryption_key.is_none() {
            return Err(SettingsError::new(
                "exchange.encryption_key",
                "is required with [redis]: replicas encrypt what they store",
            ));
        }
        Ok(())
    }
}

fn validate_windows(key: &str, windows: &[WindowSettings]) -> Result<(), SettingsError> {
    if windows.is_empty() {
        return Err(SettingsError::new(key, "name at least one window"));
    }
    for (w, window) in windows.iter().enumerate() {
        let k = format!("{key}[{w}]");
        if window.requests == 0 {
            return Err(SettingsError::new(
                format!("{k}.requests"),
                "must be at least 1",
            ));
        }
        if window.per < Duration::from_secs(1) {
            return Err(SettingsError::new(
                format!("{k}.per"),
                "must be at least 1s",
            ));
        }
        if window.burst == Some(0) {
            return Err(SettingsError::new(
                format!("{k}.burst"),
                "must be at least 1",
            ));
        }
    }
    Ok(())
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
