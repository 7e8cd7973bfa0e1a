//! Tokens for downstream audiences (service to service): the target's policy decides
//! the scopes, then the token comes from the two-tier cache, or from an RFC 8693
//! exchange at the AS (or a JWT minted here, for an AS without exchange), renewed
//! ahead of expiry in the background, once across replicas.

use std::sync::Arc;
use std::time::Duration;

use super::client_credentials::ClientCredentials;
use super::exchange::{ExchangeError, ExchangeRequest, TokenExchanger, ACCESS_TOKEN_TYPE};
use super::failure::{CallerRefused, Outage};
use super::mint::Minter;
use super::policy::{GrantRefused, TargetPolicy};
use super::Principal;
use crate::cache::tiered::{ExchangeEntry, LoadError, Loaded, TieredCache};
use crate::clock::now_secs;
use crate::keyed_hash::{Hash, SharedHasher};
use crate::settings::ExchangeMode;

impl DownstreamError {
    /// What a target's policy refusing a grant reads as.
    pub fn refused_by(target: &TargetPolicy, refused: GrantRefused) -> Self {
        match refused {
            GrantRefused::CallerNotAllowed => {
                DownstreamError::NotAllowed(CallerRefused::ByPolicy(target.audience.clone()))
            }
            GrantRefused::NothingLeft(scopes) => DownstreamError::Denied(scopes),
        }
    }
}

/// Why no downstream token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownstreamError {
    /// No scope is left to grant: 403 `insufficient_scope`, naming the scopes (RFC 6750
    /// §3: the `scope` attribute lists scopes, never prose).
    #[error("none of the scopes {} can be granted", .0.join(" "))]
    Denied(Vec<String>),
    /// The target's policy (or the AS, `invalid_target`) does not let this caller call
    /// it: 403 with its own detail.
    #[error("{0}")]
    NotAllowed(CallerRefused),
    /// The AS refused the subject token: 401.
    #[error("the authorization server refused the token")]
    InvalidSubject,
    /// 503.
    #[error("{0}")]
    Unavailable(#[from] Outage),
}

impl DownstreamError {
    /// How the AS's refusal of an exchange for `scopes` reads.
    fn from_exchange(e: ExchangeError, scopes: &[String]) -> Self {
        match e {
            ExchangeError::ScopeRefused => DownstreamError::Denied(scopes.to_vec()),
            ExchangeError::TargetRefused => {
                DownstreamError::NotAllowed(CallerRefused::ByAuthServer)
            }
            ExchangeError::InvalidSubject => DownstreamError::InvalidSubject,
            ExchangeError::Unavailable(outage) => DownstreamError::Unavailable(outage),
        }
    }
}

/// Lifetime used when the AS does not say.
const DEFAULT_LIFETIME: u64 = 300;

/// Obtains and caches downstream tokens.
pub struct DownstreamTokens {
    pub exchanger: Option<TokenExchanger>,
    /// Intercom's own token, for targets that send an `actor_token`.
    pub actor: Option<Arc<ClientCredentials>>,
    pub minter: Arc<Minter>,
    pub cache: Arc<TieredCache>,
    pub hasher: SharedHasher,
    /// Past this fraction of an entry's lifetime a hit renews it.
    pub refresh_ahead: f64,
    pub lock_ttl: Duration,
}

/// One request for a downstream token.
#[derive(Clone)]
pub struct Subject {
    pub token: String,
    pub principal: Principal,
    /// Who asks: the subject's own client on the proxy path; at `/token`, the client
    /// that authenticated, acting for the subject. Judged by the target's policy, part
    /// of the cache key, and `act.sub` of a minted token.
    pub caller: Principal,
}

impl DownstreamTokens {
    /// Downstream tokens (routes with `exchange`): the two-tier cache and the exchanger.
    pub fn from_settings(
        settings: &crate::settings::Settings,
        secrets: &crate::secrets::registry::SecretRegistry,
        hasher: &SharedHasher,
        redis: Option<&Arc<crate::redis::SharedRedis>>,
        edge: Option<&mut super::parts::BrokerParts>,
    ) -> Option<Arc<Self>> {
        let edge = edge?;
        if !settings.routes.iter().any(|r| r.exchange.is_some()) {
            return None;
        }
        let x = &settings.exchange;
        let shared = match (redis, secrets.stored(x.encryption_key.as_ref())) {
            (Some(redis), Some(key)) => Some((
                redis.clone(),
                crate::cache::sealed::Sealer::new(key),
                crate::redis::keys::base(settings),
            )),
            _ => None,
        };
        let cache = Arc::new(crate::cache::tiered::TieredCache::new(
            x.capacity,
            x.memory_tier,
            x.skew,
            x.negative_ttl,
            shared,
        ));
        let actor = edge.exchanger.as_ref().map(|x| {
            super::client_credentials::ClientCredentials::new(
                edge.http.clone(),
                x.token_endpoint.clone(),
                x.client_id.clone(),
                x.client_secret.clone(),
                None,
                None,
            )
        });
        Some(Arc::new(Self {
            exchanger: edge.exchanger.take(),
            actor,
            minter: edge.minter.clone(),
            cache,
            hasher: hasher.clone(),
            refresh_ahead: x.refresh_ahead,
            lock_ttl: x.lock_ttl,
        }))
    }

    /// The token for `target`, for the caller's `subject` (∩ `asked` scopes, if any).
    pub async fn token_for(
        self: &Arc<Self>,
        subject: &Subject,
        target: &TargetPolicy,
        asked: Option<&[String]>,
    ) -> Result<Arc<ExchangeEntry>, DownstreamError> {
        let scopes = target
            .grant(&subject.caller, &subject.principal, asked)
            .map_err(|refused| DownstreamError::refused_by(target, refused))?;
        let caller = subject.caller.client_id.as_deref().unwrap_or("");
        let key = self.cache_key(&subject.token, caller, &target.audience, &scopes);
        let m = &*target.metrics;
        if let Some(entry) = self.cache.get_local(&key, m).await {
            self.maybe_renew(&entry, key, subject, target, &scopes);
            return Ok(entry);
        }
        if let Some(refusal) = self.cache.get_negative(&key, m).await {
            return Err(refusal);
        }
        // Boxed: the miss path (Redis, the AS) is a deep future; inline it would make the
        // future of every L1 hit as large.
        let load = Box::pin(async {
            match self.obtain(subject, target, &scopes).await {
                Ok(entry) => Loaded::Value(entry),
                Err(
                    e @ (DownstreamError::Denied(_)
                    | DownstreamError::NotAllowed(_)
                    | DownstreamError::InvalidSubject),
                ) => Loaded::Rejected(e),
                Err(e) => Loaded::Failed(e),
            }
        });
        match Box::pin(self.cache.load(key, m, load)).await {
            Ok(entry) => {
                self.maybe_renew(&entry, key, subject, target, &scopes);
                Ok(entry)
            }
            Err(LoadError::Rejected(e) | LoadError::Failed(e)) => Err(e),
        }
    }

    fn cache_key(&self, token: &str, caller: &str, audience: &str, scopes: &[String]) -> Hash {
        let scopes = scopes.join(" ");
        self.hasher.hash(&[
            b"exchange",
            token.as_bytes(),
            caller.as_bytes(),
            audience.as_bytes(),
            scopes.as_bytes(),
        ])
    }

    /// A fresh token from the AS (or minted here).
    async fn obtain(
        &self,
        subject: &Subject,
        target: &TargetPolicy,
        scopes: &[String],
    ) -> Result<ExchangeEntry, DownstreamError> {
        let ids = subject
            .principal
            .revocation_ids(&self.hasher, &subject.token);
        match target.mode {
            ExchangeMode::Exchange => {
                let exchanger = self
                    .exchanger
                    .as_ref()
                    .ok_or_else(|| Outage::new("the authorization server has no token endpoint"))?;
                let actor = match (&self.actor, target.actor) {
                    (Some(source), true) => Some(
                        source
                            .token()
                            .await
                            .map_err(|e| Outage::because("no actor token", e))?,
                    ),
                    _ => None,
                };
                let issued = exchanger
                    .exchange(&ExchangeRequest {
                        subject_token: &subject.token,
                        audience: &target.audience,
                        resource: target.resource,
                        scopes,
                        requested_token_type: target.requested_token_type.as_deref(),
                        actor_token: actor.as_ref().map(|s| s.expose()),
                    })
                    .await
                    .map_err(|e| DownstreamError::from_exchange(e, scopes))?;
                let exp = now_secs().saturating_add(issued.expires_in.unwrap_or(DEFAULT_LIFETIME));
                Ok(ExchangeEntry::new(
                    issued.access_token,
                    issued.issued_token_type,
                    issued.scope.unwrap_or_else(|| scopes.join(" ")),
                    exp,
                    ids,
                ))
            }
            ExchangeMode::Mint => {
                let actor = subject.caller.client_id.as_deref();
                let minted = self
                    .minter
                    .mint_delegated(&subject.principal, &target.audience, scopes, actor)
                    .map_err(|e| Outage::because("the token could not be minted", e))?;
                Ok(ExchangeEntry::new(
                    minted.jwt.to_string(),
                    ACCESS_TOKEN_TYPE.to_string(),
                    scopes.join(" "),
                    minted.exp,
                    ids,
                ))
            }
        }
    }

    /// Past the refresh point, renews the entry in the background: one task per entry
    /// here, and one replica (the holder of a short Redis lock) across replicas; the
    /// others pick the renewed entry up from L2. No request waits for it.
    fn maybe_renew(
        self: &Arc<Self>,
        entry: &Arc<ExchangeEntry>,
        key: Hash,
        subject: &Subject,
        target: &TargetPolicy,
        scopes: &[String],
    ) {
        let life = entry.exp.saturating_sub(entry.created);
        let age = now_secs().saturating_sub(entry.created);
        if (age as f64) < life as f64 * self.refresh_ahead || !entry.claim_refresh() {
            return;
        }
        target.metrics.l1.refresh_ahead.increment(1);
        let (me, entry, subject, target, scopes) = (
            self.clone(),
            entry.clone(),
            subject.clone(),
            target.clone(),
            scopes.to_vec(),
        );
        tokio::spawn(async move {
            if me.cache.try_lock(&key, me.lock_ttl).await {
                match me.obtain(&subject, &target, &scopes).await {
                    Ok(fresh) => me.cache.put(key, fresh).await,
                    Err(error) => {
                        tracing::warn!(%error, audience = %target.audience, "renewing a downstream token failed");
                        entry.release_refresh();
                    }
                }
                return;
            }
            // Another replica renews it: take its result from L2 when it lands.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(newer) = me.cache.get_shared(&key, &target.metrics).await {
                    if newer.created > entry.created || newer.token != entry.token {
                        me.cache.put_local(key, Arc::new(newer)).await;
                        return;
                    }
                }
            }
            entry.release_refresh();
        });
    }
}
