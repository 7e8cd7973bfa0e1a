//! The token broker, free of actix: what a token says (introspection, local JWT
//! validation), what Intercom mints from it, and which scopes a route demands.
//!
//! [`edge::EdgeAuthenticator`] ties these into the phantom-token flow used by the proxy.

pub mod authserver;
pub mod claims;
pub mod client_credentials;
pub mod downstream;
pub mod edge;
pub mod exchange;
pub mod failure;
pub mod introspect;
pub mod jwks;
pub mod mint;
pub mod parts;
pub mod policy;
pub mod validate;

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
    /// The audiences the token names (`aud`), for routes that accept only some.
    pub aud: Vec<String>,
    /// An internal JWT of Intercom's own, presented back: accepted only where a route
    /// names its `aud` in `internal_audiences`.
    pub internal: bool,
    /// The revocation id of the token this one was minted from (the `src_tid` claim of
    /// internal JWTs): revoking that token revokes what Intercom derived from it.
    pub source_token_id: Option<String>,
    /// The verified claims some route's `required_claims` or `denied_claims` read (only
    /// those; empty when no route has claim rules).
    pub claims: claims::KeptClaims,
}

impl Principal {
    /// The ids by which revocations find `token`, this principal's token.
    pub fn revocation_ids(
        &self,
        hasher: &crate::keyed_hash::SharedHasher,
        token: &str,
    ) -> crate::revocation_ids::Ids {
        crate::revocation_ids::Ids::of(
            hasher,
            self.sub.as_deref(),
            self.client_id.as_deref(),
            self.sid.as_deref(),
            token,
        )
    }
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
    /// A string or a list.
    #[serde(default)]
    pub aud: Option<serde_json::Value>,
    /// RFC 7662 `token_type` (introspection).
    #[serde(default)]
    pub token_type: Option<String>,
    /// Keycloak's token kind in introspection (`Bearer`, `Refresh`, `ID`, `Offline`).
    #[serde(default)]
    pub typ: Option<String>,
    /// On Intercom's internal JWTs: the source token's revocation id.
    #[serde(default)]
    pub src_tid: Option<String>,
    /// Every other claim, for the configured tier claim.
    #[serde(flatten)]
    pub other: std::collections::HashMap<String, serde_json::Value>,
}

/// `token_type` values (RFC 7662, compared ignoring case) that describe an access token.
const ACCESS_TOKEN_TYPES: [&str; 4] = [
    "bearer",
    "dpop",
    "access_token",
    "urn:ietf:params:oauth:token-type:access_token",
];

impl TokenClaims {
    /// False when the claims say the token is something else than an access token (a
    /// refresh token, an ID token) that an AS may still introspect as active.
    pub(crate) fn is_access_token(&self) -> bool {
        let token_type_ok = self
            .token_type
            .as_deref()
            .is_none_or(|t| ACCESS_TOKEN_TYPES.iter().any(|a| t.eq_ignore_ascii_case(a)));
        let typ_ok = self
            .typ
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case("bearer") || t.eq_ignore_ascii_case("at+jwt"));
        token_type_ok && typ_ok
    }

    /// The `aud` values, from a string or a list.
    pub(crate) fn audiences(&self) -> Vec<String> {
        match &self.aud {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The value of a claim by name, whether Intercom reads it itself or not.
    fn claim(&self, name: &str) -> Option<serde_json::Value> {
        use serde_json::Value;
        let text = |v: &Option<String>| v.clone().map(Value::String);
        match name {
            "sub" => text(&self.sub),
            "client_id" => text(&self.client_id),
            "azp" => text(&self.azp),
            "scope" => text(&self.scope),
            "scp" => self
                .scp
                .clone()
                .map(|l| l.into_iter().map(Value::String).collect()),
            "acr" => text(&self.acr),
            "sid" => text(&self.sid),
            "aud" => self.aud.clone(),
            "token_type" => text(&self.token_type),
            "typ" => text(&self.typ),
            "exp" => self.exp.map(Value::from),
            "iat" => self.iat.map(Value::from),
            "auth_time" => self.auth_time.map(Value::from),
            _ => self.other.get(name).cloned(),
        }
    }

    /// The principal these claims describe, expiring at `exp` (or `fallback_exp` when
    /// the claims carry none), with the claims `selection` keeps.
    pub(crate) fn into_principal(
        mut self,
        fallback_exp: u64,
        selection: &claims::ClaimSelection,
    ) -> Principal {
        let kept = selection
            .kept
            .iter()
            .filter_map(|name| Some((name.clone(), self.claim(name)?)))
            .collect();
        let tier = match self.other.remove(&selection.tier) {
            Some(serde_json::Value::String(tier)) => Some(tier),
            _ => None,
        };
        let aud = self.audiences();
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
            aud,
            internal: false,
            source_token_id: self.src_tid,
            claims: kept,
        }
    }
}

/// The longest lifetime Intercom believes of a token the AS issued: a larger
/// `expires_in` (of any size) is clamped to it.
pub const MAX_LIFETIME_SECS: u64 = 366 * 86_400;

/// Deserializes `expires_in` of any size or form (integer, float, numeric string) into
/// seconds clamped to [`MAX_LIFETIME_SECS`]; anything else counts as absent.
pub(crate) fn clamped_lifetime<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    let secs = match value {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| if f > 0.0 { f as u64 } else { 0 })),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok().map(|f| {
            if f.is_finite() && f > 0.0 {
                f as u64
            } else {
                0
            }
        }),
        _ => None,
    };
    Ok(secs.map(|s| s.min(MAX_LIFETIME_SECS)))
}

/// `application/x-www-form-urlencoded` encoding of one value, as HTTP Basic client
/// authentication wants it (RFC 6749 §2.3.1).
pub(crate) fn form_encode(value: &str) -> String {
    serde_urlencoded::to_string([("", value)])
        .map(|s| s[1..].to_string())
        .unwrap_or_default()
}

/// The one way Intercom calls the AS as a confidential client: a POST of `form` with
/// HTTP Basic client authentication (RFC 6749 §2.3.1: id and secret form-encoded first),
/// the secret's current value. Callers add what their endpoint wants (`Accept`) and send.
pub(crate) fn post_as_client(
    http: &reqwest::Client,
    endpoint: &str,
    client_id: &str,
    secret: &crate::secrets::registry::SecretCell,
    form: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let secret = secret.current();
    let request = http
        .post(endpoint)
        .basic_auth(form_encode(client_id), Some(form_encode(secret.expose())))
        .form(form);
    crate::telemetry::traces::propagate(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Answer {
        #[serde(default, deserialize_with = "clamped_lifetime")]
        expires_in: Option<u64>,
    }

    #[test]
    fn lifetimes_of_any_size_are_clamped() {
        let read = |json: &str| serde_json::from_str::<Answer>(json).unwrap().expires_in;
        assert_eq!(read(r#"{"expires_in": 300}"#), Some(300));
        assert_eq!(read(r#"{"expires_in": "300"}"#), Some(300));
        assert_eq!(
            read(r#"{"expires_in": 18446744073709551615}"#),
            Some(MAX_LIFETIME_SECS)
        );
        assert_eq!(read(r#"{"expires_in": 1e300}"#), Some(MAX_LIFETIME_SECS));
        assert_eq!(read(r#"{"expires_in": -5}"#), Some(0));
        assert_eq!(read(r#"{"expires_in": null}"#), None);
        assert_eq!(read(r#"{}"#), None);
        assert_eq!(read(r#"{"expires_in": "soon"}"#), None);
    }
}
