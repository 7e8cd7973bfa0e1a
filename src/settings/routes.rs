//! `[[routes]]`: the route table, each route's auth, upstreams, headers, CORS,
//! injected credential, exchange target, rate limit and timeouts. The rules that check a
//! route are in `route_rules`.

use std::time::Duration;

use super::*;
use crate::secret::SecretRef;
use serde::Deserialize;

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

/// A credential Intercom adds to a route's upstream requests, replacing whatever the
/// client sent in that header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum InjectSettings {
    /// `Authorization: Bearer <secret>`
    Bearer { secret: SecretRef },
    /// `<header>: <secret>`, e.g. an API key.
    Header {
        header: HeaderNameSetting,
        secret: SecretRef,
    },
    /// `Authorization: Basic base64(<username>:<secret>)`
    Basic { username: String, secret: SecretRef },
    /// `Authorization: Bearer <token>` with a token Intercom gets from the AS with this
    /// client's credentials (`secret` is the client secret).
    #[serde(rename = "client_credentials")]
    ClientCredentials {
        client_id: String,
        secret: SecretRef,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        resource: Option<String>,
    },
}

impl InjectSettings {
    pub fn secret(&self) -> &SecretRef {
        match self {
            InjectSettings::Bearer { secret }
            | InjectSettings::Header { secret, .. }
            | InjectSettings::Basic { secret, .. }
            | InjectSettings::ClientCredentials { secret, .. } => secret,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    #[default]
    None,
    /// A bearer token, replaced by the internal JWT.
    Bearer,
    /// A browser session's cookie: its access token stands in for a bearer token.
    Session,
}

impl RouteAuth {
    /// True when a verified caller (with a token) is behind every request.
    pub fn has_caller(self) -> bool {
        self != RouteAuth::None
    }
}

/// What a session route answers a request without a live session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingSession {
    /// 401 problem+json: an API call must not be redirected to a login page.
    #[default]
    Deny,
    /// A redirect to `/auth/login` (page navigations: GET and HEAD only).
    Login,
}

/// The bearer token a route's upstream receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamToken {
    /// Intercom's internal JWT, for the route's audience, signed with Intercom's keys.
    #[default]
    Minted,
    /// The authorization server's JWT for the caller's token, as it returned it.
    AuthorizationServer,
}

/// Whether any or all `required_scopes` must be held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeMatch {
    Any,
    #[default]
    All,
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
    pub methods: Vec<HttpMethod>,
    /// Upstream base URLs (with weights): all `http://` or all `https://`.
    pub upstreams: Vec<UpstreamSetting>,
    /// `round_robin` (weighted) or `least_request` (power of two choices).
    #[serde(default)]
    pub balance: Balance,
    /// An active probe of every instance.
    #[serde(default)]
    pub health_check: Option<HealthCheckSettings>,
    /// Ejection of instances that fail requests.
    #[serde(default)]
    pub passive_health: PassiveHealthSettings,
    /// Retries on another instance of requests that failed before any answer.
    #[serde(default)]
    pub retry: RetrySettings,
    /// The instance is unready while this route has no healthy instance.
    #[serde(default)]
    pub required: bool,
    /// Every address the upstreams' host names resolve to is an instance, resolved
    /// again as `[discovery]` says (`http://` upstreams only).
    #[serde(default)]
    pub discover: bool,
    /// How `https://` upstreams are verified, and the client certificate (mTLS).
    #[serde(default)]
    pub upstream_tls: Option<UpstreamTlsSettings>,
    /// `auto` (HTTP/2 when a TLS upstream offers it by ALPN, else HTTP/1.1), `http1`, or
    /// `h2c` (HTTP/2 with prior knowledge to a plain `http://` upstream).
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
    /// Accept WebSocket handshakes (checked like any request) and tunnel the bytes.
    #[serde(default)]
    pub websocket: bool,
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
    /// `none` (default), `bearer` (a token is required and replaced by an internal JWT)
    /// or `session` (a browser session's cookie, whose token is used likewise).
    #[serde(default)]
    pub auth: RouteAuth,
    /// On `session` routes: `deny` (401) or `login` (redirect) without a session.
    #[serde(default)]
    pub on_missing: OnMissingSession,
    /// Scopes the caller must hold; `prefix_*` matches any scope starting with `prefix_`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    #[serde(default)]
    pub scope_match: ScopeMatch,
    /// Claims of the caller's verified token that admit it: each names the values it
    /// may hold (any of); all entries must hold. Checked next to the scopes.
    #[serde(default)]
    pub required_claims: ClaimRules,
    /// Claim values that refuse the caller, whatever else it holds.
    #[serde(default)]
    pub denied_claims: ClaimRules,
    /// `aud` of the internal JWT; defaults to the route's name.
    #[serde(default)]
    pub audience: Option<String>,
    /// What the upstream receives as its bearer token: Intercom's internal JWT
    /// (`minted`) or the authorization server's own JWT (`authorization_server`).
    #[serde(default)]
    pub upstream_token: UpstreamToken,
    /// Further headers a client may never send to this route's upstream.
    #[serde(default)]
    pub internal_headers: Vec<HeaderNameSetting>,
    /// Headers the upstream receives from the caller's verified claims (header →
    /// claim path); the client's copies are removed in every spelling.
    #[serde(default)]
    pub claims_to_headers: ClaimHeaderSettings,
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
    /// Filters of the binary's own, by registered name, run at the phases each declares.
    #[serde(default)]
    pub filters: Vec<FilterSettings>,
}

/// A route's CORS policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Allowed origins (`https://app.example.com`), or `["*"]` without credentials.
    pub origins: Vec<AllowedOrigin>,
    #[serde(default = "default_cors_methods")]
    pub methods: Vec<HttpMethod>,
    /// Request headers a browser may send (besides the CORS-safelisted ones).
    #[serde(default)]
    pub headers: Vec<HeaderNameSetting>,
    /// Response headers a browser script may read.
    #[serde(default)]
    pub expose_headers: Vec<HeaderNameSetting>,
    /// Allow cookies and `Authorization`; only with explicit origins.
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: usize,
}

fn default_cors_methods() -> Vec<HttpMethod> {
    use http::Method;
    vec![
        HttpMethod(Method::GET),
        HttpMethod(Method::HEAD),
        HttpMethod(Method::POST),
    ]
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
    /// A WebSocket tunnel with no byte in either direction for this long is closed.
    #[serde(default = "default_websocket_idle", with = "humantime_serde")]
    pub websocket_idle: Duration,
}

fn default_websocket_idle() -> Duration {
    Duration::from_secs(300)
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
            websocket_idle: default_websocket_idle(),
        }
    }
}

/// A method a route allows, in any case as written (`get` is `GET`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpMethod(pub http::Method);

impl TryFrom<String> for HttpMethod {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        http::Method::from_bytes(name.to_ascii_uppercase().as_bytes())
            .map(HttpMethod)
            .map_err(|_| format!("{name:?} is not an HTTP method"))
    }
}
