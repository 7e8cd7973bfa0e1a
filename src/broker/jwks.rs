//! The authorization server's signing keys (JWKS): fetched at start, refreshed in the
//! background as its `Cache-Control` says, and refetched for an unknown `kid` at most
//! once per cooldown, single-flight, so a flood of forged `kid`s cannot hammer the AS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use arc_swap::ArcSwap;
use josekit::jwk::{Jwk, JwkSet};
use josekit::jws::JwsVerifier;

/// A verifier built from one key, shared by every validation that uses it.
pub type SharedVerifier = Arc<dyn JwsVerifier + Send + Sync>;

/// Bounds on how long a fetched JWKS is trusted without a refresh.
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS fetch from {uri} failed: {reason}")]
    Fetch { uri: String, reason: String },
    #[error("JWKS at {uri} is not a valid key set")]
    Invalid { uri: String },
}

/// The AS's keys as last fetched.
pub struct RemoteJwks {
    http: reqwest::Client,
    uri: String,
    cooldown: Duration,
    keys: ArcSwap<JwkSet>,
    /// Held while fetching (single-flight); holds when the last fetch started.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refresh_after: ArcSwap<Duration>,
    /// Verifiers by (kid, alg), built once per key set: parsing a key costs more than
    /// checking a signature with it.
    verifiers: std::sync::Mutex<HashMap<(Option<String>, String), SharedVerifier>>,
}

impl RemoteJwks {
    pub fn new(http: reqwest::Client, uri: String, cooldown: Duration) -> Arc<Self> {
        Arc::new(Self {
            http,
            uri,
            cooldown,
            keys: ArcSwap::from_pointee(JwkSet::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            refresh_after: ArcSwap::from_pointee(DEFAULT_REFRESH),
            verifiers: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A key set known up front (benchmarks, tests); `fetch` still replaces it.
    pub fn with_keys(
        http: reqwest::Client,
        uri: String,
        cooldown: Duration,
        keys: JwkSet,
    ) -> Arc<Self> {
        let jwks = Self::new(http, uri, cooldown);
        jwks.keys.store(Arc::new(keys));
        jwks
    }

    /// Fetches the key set now and swaps it in.
    pub async fn fetch(&self, reason: &'static str) -> Result<(), JwksError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        let span = tracing::debug_span!("jwks_fetch", reason);
        tracing::Instrument::instrument(self.fetch_locked(reason), span).await
    }

    async fn fetch_locked(&self, reason: &'static str) -> Result<(), JwksError> {
        metrics::counter!("intercom_jwks_fetches_total", "reason" => reason).increment(1);
        let fail = |reason: String| JwksError::Fetch {
            uri: self.uri.clone(),
            reason,
        };
        let request = self
            .http
            .get(&self.uri)
            .header("accept", "application/jwk-set+json, application/json");
        let response = crate::telemetry::traces::propagate(request)
            .send()
            .await
            .map_err(|e| fail(super::authserver::failure(&e)))?;
        if !response.status().is_success() {
            return Err(fail(format!("status {}", response.status())));
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age)
            .unwrap_or(DEFAULT_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH);
        let body = crate::bounded::read_limited(response)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let set = JwkSet::from_bytes(&body).map_err(|_| JwksError::Invalid {
            uri: self.uri.clone(),
        })?;
        self.keys.store(Arc::new(set));
        self.verifiers.lock().expect("verifier cache lock").clear();
        self.refresh_after.store(Arc::new(max_age));
        Ok(())
    }

    /// The key for `kid`. An unknown `kid` triggers one refetch, unless one happened
    /// within the cooldown; concurrent callers wait for the same fetch.
    pub async fn key_for(&self, kid: Option<&str>, alg: &str) -> Option<Jwk> {
        if let Some(key) = self.lookup(kid, alg) {
            return Some(key);
        }
        let mut last = self.last_fetch.lock().await;
        // Someone else may have fetched while we waited.
        if let Some(key) = self.lookup(kid, alg) {
            return Some(key);
        }
        if last.is_some_and(|t| t.elapsed() < self.cooldown) {
            return None;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch_locked("unknown_kid").await {
            tracing::warn!(error = %e, "JWKS refetch failed");
        }
        self.lookup(kid, alg)
    }

    /// The verifier for `kid` and `alg`, built by `build` from the key on first use and
    /// kept until the key set changes.
    pub async fn verifier<E>(
        &self,
        kid: Option<&str>,
        alg: &str,
        build: impl Fn(&str, &Jwk) -> Result<SharedVerifier, E>,
    ) -> Option<Result<SharedVerifier, E>> {
        let slot = (kid.map(str::to_owned), alg.to_string());
        if let Some(v) = self
            .verifiers
            .lock()
            .expect("verifier cache lock")
            .get(&slot)
        {
            return Some(Ok(v.clone()));
        }
        let key = self.key_for(kid, alg).await?;
        let built = build(alg, &key);
        if let Ok(v) = &built {
            self.verifiers
                .lock()
                .expect("verifier cache lock")
                .insert(slot, v.clone());
        }
        Some(built)
    }

    fn lookup(&self, kid: Option<&str>, alg: &str) -> Option<Jwk> {
        let set = self.keys.load();
        let usable = |k: &&Jwk| {
            k.key_use().is_none_or(|u| u == "sig") && k.algorithm().is_none_or(|a| a == alg)
        };
        match kid {
            Some(kid) => set.get(kid).into_iter().find(usable).cloned(),
            // Without a kid, only an unambiguous key will do.
            None => {
                let mut candidates = set.keys().into_iter().filter(usable);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Refreshes in the background as the AS's `Cache-Control: max-age` says.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let jwks = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(wait) = jwks.upgrade().map(|j| **j.refresh_after.load()) else {
                    return;
                };
                tokio::time::sleep(wait).await;
                let Some(j) = jwks.upgrade() else { return };
                if let Err(e) = j.fetch("refresh").await {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the last keys");
                }
            }
        });
    }
}

fn parse_max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        (k.eq_ignore_ascii_case("max-age"))
            .then(|| v.trim().parse::<u64>().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            super::parse_max_age("public, max-age=600"),
            Some(std::time::Duration::from_secs(600))
        );
        assert_eq!(super::parse_max_age("no-store"), None);
    }
}
