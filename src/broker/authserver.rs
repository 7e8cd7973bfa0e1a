//! The authorization server's metadata, discovered once at start (OpenID Connect
//! discovery through `openidconnect`), and the HTTP client used for every call to it:
//! no redirects, always timeouts.

use std::sync::Arc;
use std::time::Duration;

use crate::readiness::{DependencyState, Readiness};

use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGrantType,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{AdditionalProviderMetadata, IssuerUrl, ProviderMetadata};
use serde::{Deserialize, Serialize};

/// The endpoints Intercom uses that core OpenID metadata does not name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct OAuthEndpoints {
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// RP-initiated logout, for browser sessions.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// RFC 9207: the AS puts `iss` in every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}
impl AdditionalProviderMetadata for OAuthEndpoints {}

/// The AS's metadata as discovered (its keys included), for the login client.
pub type Metadata = ProviderMetadata<
    OAuthEndpoints,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What Intercom needs to know of the AS.
#[derive(Debug, Clone)]
pub struct AuthServerMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    pub token_endpoint: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    /// Everything discovery read, for browser logins (`session::oidc`).
    pub discovered: Metadata,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("issuer {0:?} is not a valid URL")]
    BadIssuer(String),
    #[error("discovery at {issuer} failed: {reason}")]
    Failed { issuer: String, reason: String },
}

/// The HTTP client for calls to the AS: pooled, never following redirects.
pub fn http_client(connect: Duration, request: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect)
        .timeout(request)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("a reqwest client with rustls builds")
}

/// Why a call to the AS failed, as an operator needs it: "timed out", "connection
/// refused", "name resolution failed", "TLS: ..." and the like, from the error's cause
/// chain. Never the URL (reqwest's own message starts with it).
pub fn failure(error: &reqwest::Error) -> String {
    use std::error::Error;
    if error.is_timeout() {
        return "timed out".into();
    }
    let mut innermost = None;
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("TLS: {tls}");
        }
        let text = e.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return "name resolution failed".into();
        }
        innermost = Some(text);
        cause = e.source();
    }
    let kind = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match innermost {
        Some(detail) => format!("{kind}: {detail}"),
        None => kind.into(),
    }
}

/// Reads `<issuer>/.well-known/openid-configuration` and checks that it names the issuer.
pub async fn discover(
    http: &reqwest::Client,
    issuer: &str,
) -> Result<AuthServerMetadata, DiscoveryError> {
    let url =
        IssuerUrl::new(issuer.to_string()).map_err(|_| DiscoveryError::BadIssuer(issuer.into()))?;
    let meta = Metadata::discover_async(url, http)
        .await
        .map_err(|e| DiscoveryError::Failed {
            issuer: issuer.into(),
            reason: error_chain(&e),
        })?;
    Ok(AuthServerMetadata {
        issuer: meta.issuer().to_string(),
        jwks_uri: meta.jwks_uri().to_string(),
        token_endpoint: meta.token_endpoint().map(|u| u.to_string()),
        introspection_endpoint: meta.additional_metadata().introspection_endpoint.clone(),
        revocation_endpoint: meta.additional_metadata().revocation_endpoint.clone(),
        discovered: meta,
    })
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reports the AS in readiness every 15 s (not required: cached tokens keep working).
pub fn spawn_health_check(http: reqwest::Client, issuer: String, readiness: Arc<Readiness>) {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let readiness = Arc::downgrade(&readiness);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            let Some(readiness) = readiness.upgrade() else {
                return;
            };
            let state = match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => (DependencyState::Ok, None),
                Ok(r) => (
                    DependencyState::Down,
                    Some(format!("status {}", r.status())),
                ),
                Err(_) => (DependencyState::Down, Some("unreachable".to_string())),
            };
            readiness.report("authorization_server", state.0, false, state.1);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_failed_call_says_why_without_its_url() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = http_client(Duration::from_secs(5), Duration::from_secs(5));
        let url = format!("http://127.0.0.1:{port}/introspect?secret-in-url");
        let error = http.get(&url).send().await.unwrap_err();
        let why = failure(&error);
        assert_eq!(why, "connection refused");
        assert!(!why.contains("secret-in-url"));
    }
}
