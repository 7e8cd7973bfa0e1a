//! RFC 7662 token introspection at the authorization server, with client
//! authentication, in four answer shapes:
//!
//! - `json`: RFC 7662 JSON;
//! - `jwt`: RFC 9701, the answer in a JWT the AS signs for us (`typ`, `iss`, `aud` = our
//!   client id, fresh `iat`);
//! - `jwt_body` (Curity): the token's own JWT as the body, 204 for an inactive token;
//! - `json_with_jwt` (Keycloak): RFC 7662 JSON with the token's JWT in a claim, which
//!   must agree with the answer on `sub`, `client_id`, `scope` and `exp`.
//!
//! Every JWT is verified against the AS's keys (alg allow-list, `iss`, `exp`, `aud` when
//! configured); an answer that fails any check is an error, never "active".

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::validate::{audience_matches, check_times, SignatureCheck};
use super::{Principal, TokenClaims};
use crate::clock::now_secs;
use crate::secrets::registry::SecretCell;
use crate::settings::IntrospectionFormat;

/// RFC 9701's media type of a signed introspection answer.
const SIGNED_ANSWER_MEDIA_TYPE: &str = "application/token-introspection+jwt";
/// What Curity and Keycloak answer (or embed) the token's JWT for.
const TOKEN_JWT_MEDIA_TYPE: &str = "application/jwt";

/// How long an active answer that names no `exp` is trusted (and cached).
pub const LIFETIME_WITHOUT_EXP: Duration = Duration::from_secs(30);

/// What the AS said of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspection {
    Active(Box<ActiveToken>),
    Inactive,
}

/// An active token: whom it speaks for and, when the answer carried one, the AS's own
/// JWT for it (verified; the principal never outlives it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveToken {
    pub principal: Principal,
    pub jwt: Option<String>,
}

/// Why introspection gave no answer. Never quotes the token.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    #[error("the authorization server is unreachable: {0}")]
    Unreachable(String),
    #[error("the authorization server answered with status {0}")]
    Status(u16),
    #[error("the authorization server's answer is malformed")]
    Malformed,
    #[error("the authorization server's signed answer failed verification: {0}")]
    Unverified(String),
}

/// Calls the introspection endpoint.
pub struct Introspector {
    pub http: reqwest::Client,
    pub endpoint: String,
    pub issuer: String,
    pub client_id: String,
    /// Kept fresh by the secret registry: a rotated secret is used from the next call.
    pub client_secret: std::sync::Arc<SecretCell>,
    pub format: IntrospectionFormat,
    /// Checks signed answers (RFC 9701).
    pub signature: SignatureCheck,
    pub leeway: Duration,
    /// Used when an active answer carries no `exp` (short: the AS did not say how long
    /// the token lives).
    pub default_lifetime: Duration,
    /// When not empty, an active answer must name one of these in `aud`.
    pub audiences: Vec<String>,
    /// The claim of a `json_with_jwt` answer that holds the token's JWT.
    pub jwt_claim: String,
    /// The tier claim and the claims routes check.
    pub claims: std::sync::Arc<super::claims::ClaimSelection>,
}

impl Introspector {
    pub async fn introspect(&self, token: &str) -> Result<Introspection, IntrospectError> {
        use tracing::Instrument;
        let started = Instant::now();
        let span = tracing::debug_span!("introspection");
        let result = self.call(token).instrument(span).await;
        metrics::histogram!("intercom_introspection_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(Introspection::Active(_)) => "active",
            Ok(Introspection::Inactive) => "inactive",
            Err(IntrospectError::Unreachable(_)) => "unreachable",
            Err(IntrospectError::Unverified(_)) => "unverified",
            Err(_) => "error",
        };
        metrics::counter!("intercom_introspection_requests_total", "outcome" => outcome)
            .increment(1);
        result
    }

    async fn call(&self, token: &str) -> Result<Introspection, IntrospectError> {
        let Some((content_type, body)) = self.ask(token).await? else {
            return Ok(Introspection::Inactive);
        };
        match self.read(&content_type, &body).await? {
            Some((claims, token_jwt)) => Ok(self.judge(claims, token_jwt)),
            None => Ok(Introspection::Inactive),
        }
    }

    /// The AS's answer for `token`: its content type (lower case) and body, or `None`
    /// for the statuses that mean "not active".
    async fn ask(&self, token: &str) -> Result<Option<(String, Vec<u8>)>, IntrospectError> {
        let accept = match self.format {
            IntrospectionFormat::Json => "application/json",
            IntrospectionFormat::Jwt => SIGNED_ANSWER_MEDIA_TYPE,
            IntrospectionFormat::JwtBody | IntrospectionFormat::JsonWithJwt => TOKEN_JWT_MEDIA_TYPE,
        };
        let form = [("token", token), ("token_type_hint", "access_token")];
        let response = super::post_as_client(
            &self.http,
            &self.endpoint,
            &self.client_id,
            &self.client_secret,
            &form,
        )
        .header("accept", accept)
        .send()
        .await
        .map_err(|e| IntrospectError::Unreachable(super::authserver::failure(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::BAD_REQUEST {
            // Our request is well-formed, so the token is what the AS refused (some
            // refuse structured tokens this way instead of answering active: false).
            return Ok(None);
        }
        if status == reqwest::StatusCode::NO_CONTENT && self.format == IntrospectionFormat::JwtBody
        {
            // Curity's answer for a token that is not active: no JWT.
            return Ok(None);
        }
        if !status.is_success() {
            return Err(IntrospectError::Status(status.as_u16()));
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body = crate::bounded::read_limited(response)
            .await
            .map_err(|e| IntrospectError::Unreachable(e.to_string()))?;
        Ok(Some((content_type, body)))
    }

    /// The claims of the answer in the configured format, verified, and the AS's own JWT
    /// with its `exp` when the format carries one; `None` when it says "not active".
    async fn read(
        &self,
        content_type: &str,
        body: &[u8],
    ) -> Result<Option<(TokenClaims, Option<(String, u64)>)>, IntrospectError> {
        let json = |body: &[u8]| -> Result<TokenClaims, IntrospectError> {
            serde_json::from_slice(body).map_err(|_| IntrospectError::Malformed)
        };
        let text = |body: &[u8]| -> Result<String, IntrospectError> {
            std::str::from_utf8(body)
                .map(|t| t.trim().to_string())
                .map_err(|_| IntrospectError::Malformed)
        };
        Ok(Some(match self.format {
            IntrospectionFormat::Json => (json(body)?, None),
            IntrospectionFormat::Jwt => {
                if !content_type.starts_with(SIGNED_ANSWER_MEDIA_TYPE) {
                    return Err(IntrospectError::Unverified(
                        "the answer is not a signed JWT".into(),
                    ));
                }
                (self.verify_signed_answer(&text(body)?).await?, None)
            }
            IntrospectionFormat::JwtBody => {
                if !content_type.starts_with(TOKEN_JWT_MEDIA_TYPE) {
                    // An AS may still say `{"active": false}` in JSON; never more.
                    return match json(body)?.active {
                        Some(true) => Err(IntrospectError::Unverified(
                            "the answer carries no JWT".into(),
                        )),
                        _ => Ok(None),
                    };
                }
                let jwt = text(body)?;
                let (claims, exp) = self.verify_token_jwt(&jwt).await?;
                let claims = TokenClaims {
                    active: Some(true),
                    ..claims
                };
                (claims, Some((jwt, exp)))
            }
            IntrospectionFormat::JsonWithJwt => {
                let mut claims = json(body)?;
                if claims.active != Some(true) {
                    return Ok(None);
                }
                let Some(serde_json::Value::String(jwt)) = claims.other.remove(&self.jwt_claim)
                else {
                    return Err(IntrospectError::Unverified(format!(
                        "the answer carries no {} claim",
                        self.jwt_claim
                    )));
                };
                let (inner, exp) = self.verify_token_jwt(&jwt).await?;
                agree(&claims, &inner)?;
                (claims, Some((jwt, exp)))
            }
        }))
    }

    /// What verified claims admit: an active access token for an accepted audience,
    /// not past its `exp` (nor past the AS's own JWT's).
    fn judge(&self, claims: TokenClaims, token_jwt: Option<(String, u64)>) -> Introspection {
        if claims.active != Some(true) {
            return Introspection::Inactive;
        }
        // Active, but not an access token (a refresh token, say): not a credential here.
        if !claims.is_access_token() {
            return Introspection::Inactive;
        }
        if !self.audiences.is_empty()
            && !claims
                .audiences()
                .iter()
                .any(|a| self.audiences.contains(a))
        {
            return Introspection::Inactive;
        }
        let fallback = now_secs() + self.default_lifetime.as_secs();
        let mut principal = Principal {
            source_token_id: None,
            ..claims.into_principal(fallback, &self.claims)
        };
        let jwt = token_jwt.map(|(jwt, exp)| {
            // The entry is never cached past the JWT it holds.
            principal.exp = principal.exp.min(exp);
            jwt
        });
        if principal.exp <= now_secs() {
            return Introspection::Inactive;
        }
        Introspection::Active(Box::new(ActiveToken { principal, jwt }))
    }

    /// Verifies the token's own JWT as the AS returned it: signature by the AS's keys
    /// (alg allow-list), `iss`, `aud` when configured, `exp` and `nbf`.
    async fn verify_token_jwt(&self, jwt: &str) -> Result<(TokenClaims, u64), IntrospectError> {
        let fail = |why: &str| IntrospectError::Unverified(format!("the token's JWT: {why}"));
        let (payload, _) = self
            .signature
            .verify(jwt)
            .await
            .map_err(|e| fail(&e.to_string()))?;
        if payload.issuer() != Some(self.issuer.as_str()) {
            return Err(fail("wrong iss"));
        }
        if !self.audiences.is_empty() && !audience_matches(&payload, &self.audiences) {
            return Err(fail("wrong aud"));
        }
        let exp = check_times(&payload, self.leeway).map_err(|e| fail(&e.to_string()))?;
        let claims = serde_json::from_value(serde_json::Value::Object(payload.into()))
            .map_err(|_| IntrospectError::Malformed)?;
        Ok((claims, exp))
    }

    async fn verify_signed_answer(&self, jwt: &str) -> Result<TokenClaims, IntrospectError> {
        let fail = |why: &str| IntrospectError::Unverified(why.to_string());
        let (payload, typ) = self
            .signature
            .verify(jwt)
            .await
            .map_err(|e| IntrospectError::Unverified(e.to_string()))?;
        let typ = typ.unwrap_or_default().to_ascii_lowercase();
        if typ != "token-introspection+jwt" && typ != SIGNED_ANSWER_MEDIA_TYPE {
            return Err(fail("wrong typ"));
        }
        if payload.issuer() != Some(self.issuer.as_str()) {
            return Err(fail("wrong iss"));
        }
        if !audience_matches(&payload, std::slice::from_ref(&self.client_id)) {
            return Err(fail("aud is not our client id"));
        }
        let iat = payload
            .claim("iat")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| fail("no iat"))?;
        let now = now_secs();
        let leeway = self.leeway.as_secs();
        if iat > now + leeway || iat + 60 + leeway < now {
            return Err(fail("iat is not fresh"));
        }
        let inner = payload
            .claim("token_introspection")
            .cloned()
            .ok_or_else(|| fail("no token_introspection claim"))?;
        serde_json::from_value(inner).map_err(|_| IntrospectError::Malformed)
    }
}

/// The JSON answer and the JWT inside it must describe the same token.
fn agree(answer: &TokenClaims, jwt: &TokenClaims) -> Result<(), IntrospectError> {
    let client = |c: &TokenClaims| c.client_id.clone().or(c.azp.clone());
    let scopes = |c: &TokenClaims| -> BTreeSet<String> {
        match (&c.scope, &c.scp) {
            (Some(s), _) => s.split_whitespace().map(str::to_owned).collect(),
            (None, Some(list)) => list.iter().cloned().collect(),
            (None, None) => BTreeSet::new(),
        }
    };
    let differs = if answer.sub != jwt.sub {
        "sub"
    } else if client(answer) != client(jwt) {
        "client_id"
    } else if scopes(answer) != scopes(jwt) {
        "scope"
    } else if answer.exp.is_some() && answer.exp != jwt.exp {
        "exp"
    } else {
        return Ok(());
    };
    Err(IntrospectError::Unverified(format!(
        "the token's JWT disagrees with the answer on {differs}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> TokenClaims {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_jwt_must_describe_the_answers_token() {
        let answer = claims(serde_json::json!({
            "active": true, "sub": "alice", "client_id": "app",
            "scope": "b a", "exp": 100
        }));
        let same =
            serde_json::json!({ "sub": "alice", "azp": "app", "scp": ["a", "b"], "exp": 100 });
        assert!(agree(&answer, &claims(same.clone())).is_ok());
        for (claim, other) in [
            ("sub", serde_json::json!("mallory")),
            ("azp", serde_json::json!("other-app")),
            ("scp", serde_json::json!(["a", "b", "admin"])),
            ("exp", serde_json::json!(200)),
        ] {
            let mut jwt = same.clone();
            jwt[claim] = other;
            let err = agree(&answer, &claims(jwt)).unwrap_err().to_string();
            let named = if claim == "azp" {
                "client_id"
            } else if claim == "scp" {
                "scope"
            } else {
                claim
            };
            assert!(err.ends_with(&format!("on {named}")), "{err}");
        }
        // An answer without exp takes the JWT's (the principal never outlives it).
        let without_exp =
            claims(serde_json::json!({ "sub": "alice", "client_id": "app", "scope": "a b" }));
        assert!(agree(&without_exp, &claims(same)).is_ok());
    }

    #[test]
    fn client_credentials_are_form_encoded() {
        assert_eq!(crate::broker::form_encode("a b:c%"), "a+b%3Ac%25");
    }
}
