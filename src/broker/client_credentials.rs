//! Tokens Intercom obtains for itself (OAuth 2.0 client credentials) to call an upstream
//! that wants one: cached until shortly before they expire, refreshed ahead in the
//! background one refresh at a time, and refreshed at once when the upstream refuses
//! the token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde::Deserialize;

use crate::secret::Secret;
use crate::secrets::registry::SecretCell;

/// Why no token could be had. Never quotes a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientCredentialsError {
    #[error("the authorization server is unreachable: {0}")]
    Unreachable(String),
    #[error("the authorization server refused the client credentials grant (status {0})")]
    Refused(u16),
    #[error("the authorization server's token answer is malformed")]
    Malformed,
}

struct Held {
    token: Secret,
    fetched: Instant,
    expires: Instant,
}

impl Held {
    /// Past this point a refresh starts in the background: the last quarter of the
    /// lifetime, at most a minute before expiry.
    fn refresh_at(&self) -> Instant {
        let life = self.expires.saturating_duration_since(self.fetched);
        self.expires - (life / 4).min(Duration::from_secs(60))
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default, deserialize_with = "super::clamped_lifetime")]
    expires_in: Option<u64>,
}

/// One client's token source.
pub struct ClientCredentials {
    pub http: reqwest::Client,
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: Arc<SecretCell>,
    pub scope: Option<String>,
    pub resource: Option<String>,
    held: ArcSwapOption<Held>,
    fetching: tokio::sync::Mutex<()>,
    /// When a refusal by an upstream last made Intercom fetch a new token.
    refused_fetch: std::sync::Mutex<Option<Instant>>,
}

impl ClientCredentials {
    pub fn new(
        http: reqwest::Client,
        token_endpoint: String,
        client_id: String,
        client_secret: Arc<SecretCell>,
        scope: Option<String>,
        resource: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            http,
            token_endpoint,
            client_id,
            client_secret,
            scope,
            resource,
            held: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            refused_fetch: std::sync::Mutex::new(None),
        })
    }

    /// The current token: cached while valid; in its refresh window a background
    /// refresh starts and the cached token is still served.
    pub async fn token(self: &Arc<Self>) -> Result<Secret, ClientCredentialsError> {
        let now = Instant::now();
        if let Some(held) = self.held.load_full() {
            if now < held.expires {
                if now >= held.refresh_at() {
                    let me = self.clone();
                    tokio::spawn(async move {
                        // try_lock: one refresh at a time; others keep serving.
                        if let Ok(_guard) = me.fetching.try_lock() {
                            let _ = me.fetch().await;
                        }
                    });
                }
                return Ok(held.token.clone());
            }
        }
        self.refresh(None).await
    }

    /// Fetches a new token unless someone already replaced `stale` (single-flight).
    pub async fn refresh(&self, stale: Option<&Secret>) -> Result<Secret, ClientCredentialsError> {
        let _guard = self.fetching.lock().await;
        if let Some(held) = self.held.load_full() {
            let replaced = stale.is_some_and(|s| *s != held.token);
            if (replaced || stale.is_none()) && Instant::now() < held.refresh_at() {
                return Ok(held.token.clone());
            }
        }
        self.fetch().await
    }

    /// After an upstream refused `sent`: a new token, at most once per `backoff` (within
    /// it, the token held, even if it is `sent`). Concurrent callers share one fetch.
    pub async fn refresh_after_refusal(
        &self,
        sent: &Secret,
        backoff: Duration,
    ) -> Result<Secret, ClientCredentialsError> {
        let _guard = self.fetching.lock().await;
        if let Some(held) = self.held.load_full() {
            // Replaced since (by a concurrent refusal, say): that one is the retry.
            if held.token != *sent && Instant::now() < held.refresh_at() {
                return Ok(held.token.clone());
            }
            let mut last = self.refused_fetch.lock().expect("never poisoned");
            if last.is_some_and(|at| at.elapsed() < backoff) {
                return Ok(held.token.clone());
            }
            *last = Some(Instant::now());
        }
        self.fetch().await
    }

    async fn fetch(&self) -> Result<Secret, ClientCredentialsError> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.as_str()));
        }
        if let Some(resource) = &self.resource {
            form.push(("resource", resource.as_str()));
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
        .map_err(|e| ClientCredentialsError::Unreachable(super::authserver::failure(&e)))?;
        metrics::counter!("intercom_client_credentials_fetches_total", "status" => response.status().as_u16().to_string())
            .increment(1);
        if !response.status().is_success() {
            return Err(ClientCredentialsError::Refused(response.status().as_u16()));
        }
        let body = crate::bounded::read_limited(response)
            .await
            .map_err(|_| ClientCredentialsError::Malformed)?;
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| ClientCredentialsError::Malformed)?;
        let now = Instant::now();
        let token = Secret::new(answer.access_token);
        self.held.store(Some(Arc::new(Held {
            token: token.clone(),
            fetched: now,
            expires: now + Duration::from_secs(answer.expires_in.unwrap_or(300)),
        })));
        Ok(token)
    }
}
