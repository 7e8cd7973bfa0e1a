//! The token broker, free of actix: what a token says (introspection, local JWT
//! validation), what Intercom mints from it, and which scopes a route demands.
//!
//! [`edge::EdgeAuthenticator`] ties these into the phantom-token flow used by the proxy.

pub mod authserver;
pub mod client_credentials;
pub mod downstream;
pub mod edge;
pub mod exchange;
pub mod introspect;
pub mod jwks;
pub mod mint;
pub mod policy;
pub mod validate;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Who is calling, as the authorization server or a verified JWT says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// Expiry of the original token (seconds since the epoch).
    pub exp: u64,
    pub auth_time: Option<u64>,
    pub acr: Option<String>,
    /// The caller's rate-limit tier, from the configured claim (e.g. `plan`).
    pub tier: Option<String>,
    /// When the token was issued: revocations cover tokens issued before them.
    pub iat: Option<u64>,
    /// The login session, for back-channel logout.
    pub sid: Option<String>,
}

/// The claims Intercom reads from an introspection answer or a JWT access token.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct TokenClaims {
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub scp: Option<Vec<String>>,
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default)]
    pub auth_time: Option<u64>,
    #[serde(default)]
    pub acr: Option<String>,
    #[serde(default)]
    pub iat: Option<u64>,
    #[serde(default)]
    pub sid: Option<String>,
    /// Every other claim, for the configured tier claim.
    #[serde(flatten)]
    pub other: std::collections::HashMap<String, serde_json::Value>,
}

impl TokenClaims {
    /// The principal these claims describe, expiring at `exp` (or `fallback_exp` when
    /// the claims carry none).
    pub(crate) fn into_principal(mut self, fallback_exp: u64, tier_claim: &str) -> Principal {
        let tier = match self.other.remove(tier_claim) {
            Some(serde_json::Value::String(tier)) => Some(tier),
            _ => None,
        };
        let scopes = match (self.scope, self.scp) {
            (Some(s), _) => s.split_whitespace().map(str::to_owned).collect(),
            (None, Some(list)) => list,
            (None, None) => Vec::new(),
        };
        Principal {
            sub: self.sub,
            client_id: self.client_id.or(self.azp),
            scopes,
            exp: self.exp.unwrap_or(fallback_exp),
            auth_time: self.auth_time,
            acr: self.acr,
            tier,
            iat: self.iat,
            sid: self.sid,
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `application/x-www-form-urlencoded` encoding of one value, as HTTP Basic client
/// authentication wants it (RFC 6749 §2.3.1).
pub(crate) fn form_encode(value: &str) -> String {
    serde_urlencoded::to_string([("", value)])
        .map(|s| s[1..].to_string())
        .unwrap_or_default()
}

/// POSTs a form to the AS as a confidential client (HTTP Basic, RFC 6749 §2.3.1), with
/// the secret's current value.
pub(crate) async fn post_as_client(
    http: &reqwest::Client,
    endpoint: &str,
    client_id: &str,
    secret: &crate::secrets::registry::SecretCell,
    form: &[(&str, &str)],
) -> reqwest::Result<reqwest::Response> {
    let secret = secret.current();
    http.post(endpoint)
        .basic_auth(form_encode(client_id), Some(form_encode(secret.expose())))
        .form(form)
        .send()
        .await
}
