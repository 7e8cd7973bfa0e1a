//! The phantom-token flow at the edge: a bearer token in, a verified principal and an
//! internal JWT for the route's audience out, cached so a repeat signs nothing and
//! calls no one.
//!
//! JWTs from the trusted issuer are validated locally; anything else is introspected.
//! Inactive or invalid tokens are cached negatively; an unreachable AS is not cached,
//! and tokens already cached keep working until they expire.

use std::future::Future;
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use super::failure::{Outage, TokenRejected};
use super::introspect::{ActiveToken, IntrospectError, Introspection, Introspector};
use super::mint::{Minted, Minter};
use super::validate::{looks_like_jwt, InternalValidator, JwtValidator};
use super::Principal;
use crate::cache::{CacheKey, CacheLimits, Expiring, LoadOutcome, Loaded, Lookup, TokenCache};
use crate::clock::now_secs;
use crate::keyed_hash::SharedHasher;
use crate::revocation_ids::Ids;

/// Why a token was not admitted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EdgeError {
    /// Invalid, expired, inactive or forged: 401 `invalid_token`.
    #[error("{0}")]
    Invalid(#[from] TokenRejected),
    /// The AS could not answer (or its answer failed verification): 503.
    #[error("{0}")]
    Unavailable(#[from] Outage),
    /// The gate before the AS refused (the caller's budget of unknown tokens is spent):
    /// 429 after this many seconds. Nothing is cached.
    #[error("too many unknown tokens")]
    OverBudget { retry_after: u64 },
}

/// What a route's upstream receives as its bearer token for an admitted caller.
#[derive(Debug, Clone)]
pub enum UpstreamBearer {
    /// Intercom's internal JWT for this audience.
    Minted(Arc<str>),
    /// The authorization server's own JWT for the caller's token, as it returned it.
    AuthorizationServer,
}

/// A cached principal and the internal JWTs minted for it, per audience, with the
/// header values the upstream receives made once (a hit formats and validates nothing).
pub struct CachedToken {
    pub principal: Principal,
    /// How revocations find this token.
    pub ids: Ids,
    /// `sub`, `client_id` and the scopes, as identity header values.
    pub identity: IdentityValues,
    minted: Mutex<Vec<MintedFor>>,
    /// `Bearer <the AS's JWT for this token>`, kept when some route forwards it.
    authorization_server: Option<HeaderValue>,
}

/// An internal JWT for one audience, kept only as its `Authorization` value (the JWT
/// once, not twice: it is most of an entry's size).
struct MintedFor {
    audience: Arc<str>,
    exp: u64,
    bearer: HeaderValue,
}

/// The identity header values of a principal (`None` when absent or not a valid value).
pub struct IdentityValues {
    pub sub: Option<HeaderValue>,
    pub client_id: Option<HeaderValue>,
    pub scopes: Option<HeaderValue>,
}

impl IdentityValues {
    fn of(p: &Principal) -> Self {
        let value = |v: Option<&str>| v.and_then(|v| HeaderValue::from_str(v).ok());
        Self {
            sub: value(p.sub.as_deref()),
            client_id: value(p.client_id.as_deref()),
            scopes: value(Some(&p.scopes.join(" "))),
        }
    }
}

impl CachedToken {
    pub fn new(principal: Principal, ids: Ids) -> Self {
        Self {
            identity: IdentityValues::of(&principal),
            principal,
            ids,
            minted: Mutex::new(Vec::new()),
            authorization_server: None,
        }
    }

    /// Keeps the AS's own JWT for this token (verified), as its `Authorization` value.
    pub fn with_authorization_server_jwt(mut self, jwt: &str) -> Self {
        self.authorization_server = HeaderValue::from_str(&format!("Bearer {jwt}")).ok();
        self
    }

    /// `Bearer <internal JWT>` for `audience`, unless missing or within `margin`
    /// seconds of its expiry (and the original token lives longer than that).
    pub fn cached_bearer(&self, audience: &str, margin: u64) -> Option<HeaderValue> {
        let minted = self.minted.lock().expect("minted list lock");
        let m = minted.iter().find(|m| m.audience.as_ref() == audience)?;
        let exp = m.exp;
        (exp > now_secs() + margin || exp >= self.principal.exp).then(|| m.bearer.clone())
    }

    /// Keeps `minted` as the JWT for `audience`; returns its `Authorization` value.
    pub fn store_jwt(&self, audience: &Arc<str>, minted: Minted) -> Option<HeaderValue> {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", minted.jwt)).ok()?;
        let mut list = self.minted.lock().expect("minted list lock");
        list.retain(|m| &m.audience != audience);
        list.push(MintedFor {
            audience: audience.clone(),
            exp: minted.exp,
            bearer: bearer.clone(),
        });
        Some(bearer)
    }
}

impl Expiring for CachedToken {
    fn expires_at(&self) -> u64 {
        self.principal.exp
    }
}

/// How a token not in the cache is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationPath {
    /// One of Intercom's own internal JWTs, by its signing keys.
    InternalJwt,
    /// A JWT of the trusted issuer, against the AS's JWKS.
    LocalJwt,
    /// RFC 7662 introspection at the AS.
    Introspection,
}

impl ValidationPath {
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationPath::InternalJwt => "internal_jwt",
            ValidationPath::LocalJwt => "local_jwt",
            ValidationPath::Introspection => "introspection",
        }
    }
}

/// What the cache holds for a token, read without loading anything.
pub enum CachedVerdict {
    Admitted,
    Rejected(TokenRejected),
    Absent,
}

/// A token that passed, with its internal JWT for the route (as `Bearer <JWT>`).
pub struct Admitted {
    pub token: Arc<CachedToken>,
    pub bearer: HeaderValue,
}

/// Authenticates bearer tokens at the edge.
pub struct EdgeAuthenticator {
    pub introspector: Introspector,
    pub validator: Option<JwtValidator>,
    /// Intercom's own internal JWTs, when `tokens.accept_internal` is on.
    pub internal: Option<InternalValidator>,
    pub minter: Arc<Minter>,
    cache: TokenCache<CachedToken, TokenRejected>,
    hasher: SharedHasher,
    /// Some route forwards the AS's own JWT: keep it with each entry.
    keep_authorization_server_jwt: bool,
}

impl EdgeAuthenticator {
    pub fn new(
        introspector: Introspector,
        validator: Option<JwtValidator>,
        internal: Option<InternalValidator>,
        minter: Arc<Minter>,
        limits: &CacheLimits,
        hasher: SharedHasher,
        keep_authorization_server_jwt: bool,
    ) -> Self {
        Self {
            introspector,
            validator,
            internal,
            minter,
            cache: TokenCache::new("edge", limits),
            hasher,
            keep_authorization_server_jwt,
        }
    }

    /// Drops every cached token.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Admits `token` with the bearer its upstream receives, from the cache when
    /// possible. `gate` runs only when the token must be checked afresh, once for
    /// concurrent requests with it: the place to charge what a call to the AS costs.
    pub async fn admit<G: Future<Output = Result<(), EdgeError>>>(
        &self,
        token: &str,
        upstream: &UpstreamBearer,
        gate: impl FnOnce() -> G,
    ) -> Result<Admitted, EdgeError> {
        let key = self.cache.key(token);
        let cached = match self.cache.lookup(&key).await {
            Lookup::Hit(entry) => entry,
            Lookup::NegativeHit(rejected) => return Err(EdgeError::Invalid(rejected)),
            // Boxed: the miss path (the gate, the AS, moka's loader) is a deep future;
            // inline it would make the future of every hit as large (tens of KiB, copied
            // at every boxing layer of actix's service stack).
            Lookup::Miss => Box::pin(self.load(key, token, upstream, gate)).await?,
        };
        let bearer = match upstream {
            UpstreamBearer::Minted(audience) => self.bearer_for(&cached, audience)?,
            UpstreamBearer::AuthorizationServer => {
                cached.authorization_server.clone().ok_or_else(|| {
                    Outage::new("the authorization server gave no JWT for this token")
                })?
            }
        };
        Ok(Admitted {
            token: cached,
            bearer,
        })
    }

    /// Checks a token not in the cache (concurrent callers share one check) and caches
    /// the verdict.
    async fn load<G: Future<Output = Result<(), EdgeError>>>(
        &self,
        key: CacheKey,
        token: &str,
        upstream: &UpstreamBearer,
        gate: impl FnOnce() -> G,
    ) -> Result<Arc<CachedToken>, EdgeError> {
        // Boxed: moka moves the loader by value; inline, debug builds overflowed a
        // worker's stack.
        let gate = Box::pin(gate());
        let load = async {
            if let Err(refused) = gate.await {
                return LoadOutcome::Failed(refused);
            }
            match self.authenticate(token).await {
                Ok(ActiveToken { mut principal, jwt }) => {
                    // Mint now, off the hit path: the JWT is cached with the result.
                    let mut ids = principal.revocation_ids(&self.hasher, token);
                    match &principal.source_token_id {
                        // An internal JWT is revoked with the token it came from.
                        Some(source) => ids.token = source.clone(),
                        None => principal.source_token_id = Some(ids.token.clone()),
                    }
                    let mut entry = CachedToken::new(principal, ids);
                    if let (true, Some(jwt)) = (self.keep_authorization_server_jwt, jwt) {
                        entry = entry.with_authorization_server_jwt(&jwt);
                    }
                    if let UpstreamBearer::Minted(audience) = upstream {
                        if let Ok(m) = self.minter.mint(&entry.principal, audience) {
                            let _ = entry.store_jwt(audience, m);
                        }
                    }
                    LoadOutcome::Value(entry)
                }
                Err(EdgeError::Invalid(rejected)) => LoadOutcome::Rejected(rejected),
                Err(e @ (EdgeError::Unavailable(_) | EdgeError::OverBudget { .. })) => {
                    LoadOutcome::Failed(e)
                }
            }
        };
        match self.cache.load(key, Box::pin(load)).await {
            Loaded::Value(entry) => Ok(entry),
            Loaded::Rejected(rejected) => Err(EdgeError::Invalid(rejected)),
            Loaded::Failed(e) => Err(e),
        }
    }

    /// The cached internal JWT for the audience, minted anew when missing or within a
    /// quarter of its lifetime of expiring.
    fn bearer_for(
        &self,
        entry: &CachedToken,
        audience: &Arc<str>,
    ) -> Result<HeaderValue, EdgeError> {
        let margin = (self.minter.lifetime().as_secs() / 4).max(1);
        if let Some(bearer) = entry.cached_bearer(audience, margin) {
            return Ok(bearer);
        }
        let fresh = self
            .minter
            .mint(&entry.principal, audience)
            .map_err(|e| Outage::because("the internal JWT could not be minted", e))?;
        entry.store_jwt(audience, fresh).ok_or_else(|| {
            Outage::because(
                "the internal JWT could not be minted",
                "the JWT is not a header value",
            )
            .into()
        })
    }

    /// What the cache says of `token` now (nothing is loaded or asked).
    pub async fn cached(&self, token: &str) -> CachedVerdict {
        match self.cache.lookup(&self.cache.key(token)).await {
            Lookup::Hit(_) => CachedVerdict::Admitted,
            Lookup::NegativeHit(rejected) => CachedVerdict::Rejected(rejected),
            Lookup::Miss => CachedVerdict::Absent,
        }
    }

    /// How `token` is checked when the cache does not know it.
    pub fn validation_path(&self, token: &str) -> ValidationPath {
        let jwt = looks_like_jwt(token);
        if jwt
            && self
                .internal
                .as_ref()
                .is_some_and(|i| i.claims_our_issuer(token))
        {
            ValidationPath::InternalJwt
        } else if jwt
            && self
                .validator
                .as_ref()
                .is_some_and(|v| v.claims_our_issuer(token))
        {
            ValidationPath::LocalJwt
        } else {
            ValidationPath::Introspection
        }
    }

    /// Who the token speaks for and, when known, the AS's own JWT for it: a JWT access
    /// token validated here is that JWT itself.
    async fn authenticate(&self, token: &str) -> Result<ActiveToken, EdgeError> {
        match (self.validation_path(token), &self.internal, &self.validator) {
            (ValidationPath::InternalJwt, Some(internal), _) => {
                return internal
                    .validate(token)
                    .map(|principal| ActiveToken {
                        principal,
                        jwt: None,
                    })
                    .map_err(|e| TokenRejected::from(e).into());
            }
            (ValidationPath::LocalJwt, _, Some(validator)) => {
                return validator
                    .validate(token)
                    .await
                    .map(|principal| ActiveToken {
                        principal,
                        jwt: Some(token.to_string()),
                    })
                    .map_err(|e| TokenRejected::from(e).into());
            }
            _ => {}
        }
        match self.introspector.introspect(token).await {
            Ok(Introspection::Active(active)) => Ok(*active),
            Ok(Introspection::Inactive) => Err(TokenRejected::Inactive.into()),
            Err(e @ IntrospectError::Unverified(_)) => {
                // Worth an error line of its own: a forged or misconfigured answer.
                tracing::error!(error = %e, "introspection answer failed verification");
                Err(
                    Outage::because("the authorization server's answer could not be verified", e)
                        .into(),
                )
            }
            Err(e) => Err(Outage::because("the authorization server is unavailable", e).into()),
        }
    }
}
