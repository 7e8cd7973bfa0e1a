//! RFC 8693 token exchange at the authorization server: the caller's token in, a token
//! for one downstream audience with the granted scopes out. Intercom authenticates
//! with its own client credentials from the secret store.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use super::failure::Outage;
use crate::secrets::registry::SecretCell;

/// The grant type of RFC 8693.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of an OAuth access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why no token came back. Never quotes a token or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The AS refused the scopes asked for (`invalid_scope`): 403.
    #[error("the authorization server refused the scopes")]
    ScopeRefused,
    /// The AS does not issue tokens for the target to this caller (`invalid_target`): 403.
    #[error("the authorization server refused the target")]
    TargetRefused,
    /// The AS refused the subject token (`invalid_grant`): 401.
    #[error("the authorization server refused the subject token")]
    InvalidSubject,
    /// The AS could not be reached, failed, or refused Intercom itself: 503.
    #[error("{0}")]
    Unavailable(Outage),
}

/// What the AS issued.
#[derive(Debug, Clone, Deserialize)]
pub struct Issued {
    pub access_token: String,
    #[serde(default = "default_issued_type")]
    pub issued_token_type: String,
    #[serde(default, deserialize_with = "super::clamped_lifetime")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
}

fn default_issued_type() -> String {
    ACCESS_TOKEN_TYPE.to_string()
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
}

/// One exchange request.
pub struct ExchangeRequest<'a> {
    pub subject_token: &'a str,
    pub audience: &'a str,
    /// Send the audience as `resource` too (RFC 8707).
    pub resource: bool,
    pub scopes: &'a [String],
    pub requested_token_type: Option<&'a str>,
    /// Intercom's own access token, as the actor (RFC 8693 §2.1).
    pub actor_token: Option<&'a str>,
}

/// Calls the AS's token endpoint with the token-exchange grant.
pub struct TokenExchanger {
    pub http: reqwest::Client,
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: Arc<SecretCell>,
}

impl TokenExchanger {
    pub async fn exchange(&self, request: &ExchangeRequest<'_>) -> Result<Issued, ExchangeError> {
        let started = Instant::now();
        let span = tracing::debug_span!("exchange", audience = %request.audience);
        let result = tracing::Instrument::instrument(self.call(request), span).await;
        metrics::histogram!("intercom_exchange_duration_seconds", "audience" => request.audience.to_string())
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "issued",
            Err(ExchangeError::ScopeRefused | ExchangeError::TargetRefused) => "denied",
            Err(ExchangeError::InvalidSubject) => "invalid_subject",
            Err(ExchangeError::Unavailable(_)) => "unavailable",
        };
        metrics::counter!("intercom_exchange_requests_total", "audience" => request.audience.to_string(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn call(&self, request: &ExchangeRequest<'_>) -> Result<Issued, ExchangeError> {
        let scope = request.scopes.join(" ");
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", request.subject_token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("audience", request.audience),
        ];
        if request.resource {
            form.push(("resource", request.audience));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(kind) = request.requested_token_type {
            form.push(("requested_token_type", kind));
        }
        if let Some(actor) = request.actor_token {
            form.push(("actor_token", actor));
            form.push(("actor_token_type", ACCESS_TOKEN_TYPE));
        }
        let response = super::post_as_client(
            &self.http,
            &self.token_endpoint,
            &self.client_id,
            &self.client_secret,
            &form,
        )
        .send()
        .await
        .map_err(|e| {
            ExchangeError::Unavailable(Outage::because(
                "the authorization server is unreachable",
                super::authserver::failure(&e),
            ))
        })?;
        let status = response.status();
        let body = crate::bounded::read_limited(response).await.map_err(|e| {
            ExchangeError::Unavailable(Outage::because(
                "the authorization server's answer could not be read",
                e,
            ))
        })?;
        if status.is_success() {
            return serde_json::from_slice::<Issued>(&body).map_err(|_| {
                ExchangeError::Unavailable(Outage::new(
                    "the authorization server's answer is malformed",
                ))
            });
        }
        let code = serde_json::from_slice::<OAuthError>(&body)
            .map(|e| e.error)
            .unwrap_or_default();
        Err(match (status.as_u16(), code.as_str()) {
            (400, "invalid_scope") => ExchangeError::ScopeRefused,
            (400, "invalid_target") => ExchangeError::TargetRefused,
            (400, "invalid_grant") => ExchangeError::InvalidSubject,
            (_, "invalid_client" | "unauthorized_client") => {
                tracing::error!(status = status.as_u16(), error = %code, "the AS refused Intercom's client for token exchange");
                ExchangeError::Unavailable(Outage::because(
                    "the token exchange is misconfigured",
                    format_args!("the AS answered {status} {code}"),
                ))
            }
            _ => {
                tracing::warn!(status = status.as_u16(), error = %code, "token exchange failed");
                ExchangeError::Unavailable(Outage::because(
                    "the authorization server could not exchange the token",
                    format_args!("the AS answered {status} {code}"),
                ))
            }
        })
    }
}
