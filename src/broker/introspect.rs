//! RFC 7662 token introspection at the authorization server, with client
//! authentication, and RFC 9701 signed answers: with `introspection_format = "jwt"` the
//! answer must be a JWT signed by the AS for us (`typ`, `iss`, `aud` = our client id,
//! fresh `iat`); an answer that fails any check is an error, never "active".

use std::time::{Duration, Instant};

use super::validate::{audience_matches, SignatureCheck};
use super::{Principal, TokenClaims};
use crate::clock::now_secs;
use crate::secrets::registry::SecretCell;
use crate::settings::IntrospectionFormat;

const JWT_MEDIA_TYPE: &str = "application/token-introspection+jwt";

/// How long an active answer that names no `exp` is trusted (and cached).
pub const LIFETIME_WITHOUT_EXP: Duration = Duration::from_secs(30);

/// What the AS said of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspection {
    Active(Box<Principal>),
    Inactive,
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
    /// The tier claim and the claims routes check.
    pub claims: std::sync::Arc<super::claims::ClaimSelection>,
}

impl Introspector {
    pub async fn introspect(&self, token: &str) -> Result<Introspection, IntrospectError> {
        let started = Instant::now();
        let result = self.call(token).await;
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
        let accept = match self.format {
            IntrospectionFormat::Json => "application/json",
            IntrospectionFormat::Jwt => JWT_MEDIA_TYPE,
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
            return Ok(Introspection::Inactive);
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
        let claims: TokenClaims = match self.format {
            IntrospectionFormat::Json => {
                serde_json::from_slice(&body).map_err(|_| IntrospectError::Malformed)?
            }
            IntrospectionFormat::Jwt => {
                if !content_type.starts_with(JWT_MEDIA_TYPE) {
                    return Err(IntrospectError::Unverified(
                        "the answer is not a signed JWT".into(),
                    ));
                }
                let text = std::str::from_utf8(&body).map_err(|_| IntrospectError::Malformed)?;
                self.verify_signed_answer(text.trim()).await?
            }
        };
        if claims.active != Some(true) {
            return Ok(Introspection::Inactive);
        }
        // Active, but not an access token (a refresh token, say): not a credential here.
        if !claims.is_access_token() {
            return Ok(Introspection::Inactive);
        }
        if !self.audiences.is_empty()
            && !claims
                .audiences()
                .iter()
                .any(|a| self.audiences.contains(a))
        {
            return Ok(Introspection::Inactive);
        }
        let fallback = now_secs() + self.default_lifetime.as_secs();
        let principal = Principal {
            source_token_id: None,
            ..claims.into_principal(fallback, &self.claims)
        };
        if principal.exp <= now_secs() {
            return Ok(Introspection::Inactive);
        }
        Ok(Introspection::Active(Box::new(principal)))
    }

    async fn verify_signed_answer(&self, jwt: &str) -> Result<TokenClaims, IntrospectError> {
        let fail = |why: &str| IntrospectError::Unverified(why.to_string());
        let (payload, typ) = self
            .signature
            .verify(jwt)
            .await
            .map_err(|e| IntrospectError::Unverified(e.to_string()))?;
        let typ = typ.unwrap_or_default().to_ascii_lowercase();
        if typ != "token-introspection+jwt" && typ != JWT_MEDIA_TYPE {
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

#[cfg(test)]
mod tests {
    #[test]
    fn client_credentials_are_form_encoded() {
        assert_eq!(crate::broker::form_encode("a b:c%"), "a+b%3Ac%25");
    }
}
