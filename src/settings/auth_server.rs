//! `[auth_server]`: the authorization server Intercom introspects and exchanges at, and
//! how JWT access tokens are validated locally.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::*;
use crate::secret::SecretRef;

/// The authorization server (RFC 8414 / OpenID discovery at the issuer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthServerSettings {
    /// Issuer URL; metadata is discovered below it.
    pub issuer: String,
    /// Intercom's own client at the AS.
    pub client_id: String,
    /// A secret reference (e.g. `file:intercom_client_secret`), never the value.
    pub client_secret: SecretRef,
    /// `json` (RFC 7662), `jwt` (RFC 9701, signed and verified), or an answer that
    /// carries the AS's own JWT for the token: `jwt_body` (Curity) or `json_with_jwt`
    /// (Keycloak).
    #[serde(default)]
    pub introspection_format: IntrospectionFormat,
    /// The claim of a `json_with_jwt` answer that holds the JWT.
    #[serde(default = "default_introspection_jwt_claim")]
    pub introspection_jwt_claim: String,
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

fn default_introspection_jwt_claim() -> String {
    "jwt".into()
}

/// The shape of the introspection answer Intercom asks the AS for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionFormat {
    /// RFC 7662 JSON.
    #[default]
    Json,
    /// RFC 9701: the JSON answer inside a JWT the AS signs for Intercom.
    Jwt,
    /// `Accept: application/jwt`, answered with the token's JWT as the body (Curity's
    /// phantom-token mode; 204 when the token is not active).
    JwtBody,
    /// `Accept: application/jwt`, answered with RFC 7662 JSON holding the token's JWT
    /// in a claim (Keycloak 25+, `introspection_jwt_claim`).
    JsonWithJwt,
}

impl IntrospectionFormat {
    /// True for the answers that carry the AS's own JWT for the token.
    pub fn carries_token_jwt(self) -> bool {
        matches!(self, Self::JwtBody | Self::JsonWithJwt)
    }
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
    pub algorithms: Vec<JwsAlgorithm>,
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

fn default_algorithms() -> Vec<JwsAlgorithm> {
    use JwsAlgorithm::*;
    vec![Rs256, Ps256, Es256, EdDSA]
}
fn default_leeway() -> Duration {
    Duration::from_secs(10)
}
fn default_jwks_cooldown() -> Duration {
    Duration::from_secs(30)
}

impl AuthServerSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let auth = self;
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
        positive("auth_server.connect_timeout", auth.connect_timeout)?;
        positive("auth_server.request_timeout", auth.request_timeout)?;
        positive("auth_server.jwt.jwks_cooldown", auth.jwt.jwks_cooldown)?;
        if auth.introspection_jwt_claim.is_empty() {
            return Err(SettingsError::new(
                "auth_server.introspection_jwt_claim",
                "must name a claim",
            ));
        }
        Ok(())
    }
}
