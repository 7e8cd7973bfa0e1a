//! Credential injection: a route's upstream gets a credential from the secret store
//! (a bearer token, an API key header, basic auth) in place of whatever the client sent
//! in that header, never merged with it.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use base64::Engine;

use crate::broker::client_credentials::ClientCredentials;
use crate::broker::failure::Outage;
use crate::http::errors::ApiError;
use crate::secret::Secret;
use crate::secrets::registry::{SecretCell, SecretRegistry};
use crate::settings::{InjectSettings, Settings, SettingsError};

#[derive(Debug, Clone)]
enum Kind {
    Bearer,
    Header(HeaderName),
    Basic(String),
}

/// How long after asking the store (or the AS) for a credential a refusal by the
/// upstream does not make Intercom ask again: an upstream that refuses every value
/// costs the store one call per credential per interval, not one per request.
pub const CREDENTIAL_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// Where the credential comes from.
enum Source {
    /// A secret from the store, kept fresh by the registry.
    Stored(Arc<SecretCell>),
    /// A token Intercom gets from the AS.
    Fetched(Arc<ClientCredentials>),
}

/// A route's injected credential.
pub struct Injection {
    kind: Kind,
    source: Source,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("kind", &self.kind)
            .field("source", &self.source_name())
            .finish()
    }
}

impl Injection {
    /// A stored secret; `None` if the reference was not resolved (start-up prevents that).
    pub fn stored(settings: &InjectSettings, secrets: &SecretRegistry) -> Option<Self> {
        let cell = secrets.stored(Some(settings.secret()))?;
        let kind = match settings {
            InjectSettings::Bearer { .. } | InjectSettings::ClientCredentials { .. } => {
                Kind::Bearer
            }
            InjectSettings::Header { header, .. } => Kind::Header(header.0.clone()),
            InjectSettings::Basic { username, .. } => Kind::Basic(username.clone()),
        };
        Some(Self {
            kind,
            source: Source::Stored(cell),
        })
    }

    /// A bearer token from the client credentials grant.
    pub fn fetched(source: Arc<ClientCredentials>) -> Self {
        Self {
            kind: Kind::Bearer,
            source: Source::Fetched(source),
        }
    }

    fn source_name(&self) -> String {
        match &self.source {
            Source::Stored(cell) => cell.name.clone(),
            Source::Fetched(cc) => format!("client_credentials:{}", cc.client_id),
        }
    }

    /// What is injected, never its value: the kind, the header and where it comes from
    /// (the secret's reference name, or the client credentials grant's client).
    pub fn describe(&self) -> (&'static str, String, String) {
        let kind = match (&self.kind, &self.source) {
            (Kind::Bearer, Source::Fetched(_)) => "client_credentials",
            (Kind::Bearer, Source::Stored(_)) => "bearer",
            (Kind::Header(_), _) => "header",
            (Kind::Basic(_), _) => "basic",
        };
        (kind, self.header().to_string(), self.source_name())
    }

    /// The credential to send now.
    pub async fn value(&self) -> Result<Secret, ApiError> {
        match &self.source {
            Source::Stored(cell) => Ok(cell.current()),
            Source::Fetched(cc) => cc.token().await.map_err(|e| {
                ApiError::AuthServerUnavailable(Outage::because(
                    "no credential for the upstream could be obtained",
                    format_args!("{}: {e}", self.source_name()),
                ))
            }),
        }
    }

    fn header(&self) -> HeaderName {
        match &self.kind {
            Kind::Header(name) => name.clone(),
            _ => header::AUTHORIZATION,
        }
    }

    /// Sets the credential, replacing the client's copy of the header.
    pub fn apply(&self, headers: &mut HeaderMap, secret: &Secret) {
        let text = match &self.kind {
            Kind::Bearer => format!("Bearer {}", secret.expose()),
            Kind::Header(_) => secret.expose().to_string(),
            Kind::Basic(user) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", secret.expose()))
            ),
        };
        let name = self.header();
        headers.remove(&name);
        if let Ok(mut value) = HeaderValue::from_str(&text) {
            value.set_sensitive(true);
            headers.insert(name, value);
        } else {
            tracing::error!(source = %self.source_name(), "the credential is not a valid header value; not sent");
        }
    }

    /// After the upstream refused `sent` with 401: the value to try once more, if any.
    /// The store (or the AS) is asked at most once per [`CREDENTIAL_RETRY_BACKOFF`] per
    /// credential, and concurrent refusals share that one call.
    /// The store is asked again first (the secret may have rotated since the last
    /// poll); otherwise the value before the last rotation is tried.
    pub async fn retry_value(&self, sent: &Secret, secrets: &SecretRegistry) -> Option<Secret> {
        match &self.source {
            Source::Stored(cell) => {
                secrets
                    .refresh_after_refusal(cell, CREDENTIAL_RETRY_BACKOFF)
                    .await;
                let current = cell.current();
                if current != *sent {
                    return Some(current);
                }
                cell.previous().filter(|p| p != sent)
            }
            Source::Fetched(cc) => cc
                .refresh_after_refusal(sent, CREDENTIAL_RETRY_BACKOFF)
                .await
                .ok()
                .filter(|t| t != sent),
        }
    }
}

/// Each route's injected credential, in route order; `token_endpoint` is the AS's
/// client and token endpoint, for `client_credentials` injection.
pub fn for_routes(
    settings: &Settings,
    secrets: &SecretRegistry,
    token_endpoint: Option<&(reqwest::Client, String)>,
) -> Result<Vec<Option<Injection>>, SettingsError> {
    settings
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            let Some(inject) = &route.inject else {
                return Ok(None);
            };
            if let InjectSettings::ClientCredentials {
                client_id,
                secret,
                scope,
                resource,
            } = inject
            {
                let key = format!("routes[{i}].inject");
                let Some((http, endpoint)) = token_endpoint else {
                    return Err(SettingsError::new(
                        key,
                        "the authorization server has no token_endpoint",
                    ));
                };
                let cell = secrets.stored(Some(secret)).ok_or_else(|| {
                    SettingsError::new(format!("{key}.secret"), "was not resolved at start")
                })?;
                let source = ClientCredentials::new(
                    http.clone(),
                    endpoint.clone(),
                    client_id.clone(),
                    cell,
                    scope.clone(),
                    resource.clone(),
                );
                return Ok(Some(Injection::fetched(source)));
            }
            Injection::stored(inject, secrets).map(Some).ok_or_else(|| {
                SettingsError::new(
                    format!("routes[{i}].inject.secret"),
                    "was not resolved at start (a secret reference new since then takes a restart)",
                )
            })
        })
        .collect()
}
