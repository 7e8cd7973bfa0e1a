//! The broker assembled from `[auth_server]` and `[tokens]`: the AS discovered, its keys
//! fetched, the edge (cache, introspection, local JWTs), Intercom's minter and the RFC
//! 8693 exchanger, plus the AS's health in readiness.

use std::sync::Arc;

use super::authserver;
use super::claims::ClaimSelection;
use super::edge::EdgeAuthenticator;
use super::exchange::TokenExchanger;
use super::introspect::Introspector;
use super::jwks::RemoteJwks;
use super::mint::Minter;
use super::validate::{InternalValidator, JwtValidator, SignatureCheck};
use crate::cache::CacheLimits;
use crate::keyed_hash::SharedHasher;
use crate::readiness::{DependencyState, Readiness};
use crate::secrets::registry::SecretRegistry;
use crate::settings::{Settings, UpstreamToken};

/// Why the broker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("authorization server: {0}")]
    Discovery(#[from] authserver::DiscoveryError),
    #[error("authorization server: no introspection_endpoint in its metadata")]
    NoIntrospection,
    #[error("signing keys: {0}")]
    Keys(#[from] super::mint::MintError),
    /// A reference the secret registry did not resolve at start.
    #[error("{0}: the secret was not resolved at start")]
    Unresolved(&'static str),
}

/// The broker parts built from `[auth_server]` and `[tokens]`.
pub struct BrokerParts {
    pub edge: Arc<EdgeAuthenticator>,
    pub minter: Arc<Minter>,
    /// The client for the AS, shared with client-credentials injection.
    pub http: reqwest::Client,
    pub token_endpoint: Option<String>,
    /// RFC 8693 at the AS, with Intercom's client.
    pub exchanger: Option<TokenExchanger>,
    pub revocation_endpoint: Option<String>,
    /// The AS's keys and issuer, for other JWTs it signs (logout tokens).
    pub jwks: Arc<RemoteJwks>,
    pub issuer: String,
    /// The AS's metadata as discovered at start, for the browser-login client.
    pub discovered: authserver::Metadata,
}

impl BrokerParts {
    /// Discovers the AS and builds the edge, the minter and the exchanger; `None` without
    /// `[auth_server]`.
    pub async fn build(
        settings: &Settings,
        readiness: &Arc<Readiness>,
        secrets: &SecretRegistry,
        hasher: &SharedHasher,
    ) -> Result<Option<Self>, BuildError> {
        let Some(auth) = &settings.auth_server else {
            return Ok(None);
        };
        let secret = secrets
            .stored(Some(&auth.client_secret))
            .ok_or(BuildError::Unresolved("auth_server.client_secret"))?;
        let http = authserver::http_client(auth.connect_timeout, auth.request_timeout);
        let meta = authserver::discover(&http, &auth.issuer).await?;
        readiness.report("authorization_server", DependencyState::Ok, false, None);
        let jwks_uri = auth.jwks_uri.clone().unwrap_or(meta.jwks_uri.clone());
        let jwks = start_jwks(&http, jwks_uri, auth.jwt.jwks_cooldown).await;
        let claims = Arc::new(ClaimSelection::new(
            &settings.rate_limit.tier_claim,
            &settings.routes,
        ));
        let signature = |algorithms: Vec<crate::settings::JwsAlgorithm>| SignatureCheck {
            algorithms,
            jwks: jwks.clone(),
        };
        let introspector = introspector(
            settings,
            auth,
            &meta,
            http.clone(),
            secret.clone(),
            signature(auth.jwt.algorithms.clone()),
            claims.clone(),
        )?;
        let validator = JwtValidator::for_settings(
            &auth.jwt,
            &meta.issuer,
            signature(auth.jwt.algorithms.clone()),
            claims.clone(),
        );
        let t = &settings.tokens;
        let minter = minter(t, secrets)?;
        let limits = CacheLimits::from_settings(t);
        let internal = t.accept_internal.then(|| InternalValidator {
            minter: minter.clone(),
            leeway: auth.jwt.leeway,
            claims: claims.clone(),
        });
        let keep_as_jwt = settings
            .routes
            .iter()
            .any(|r| r.upstream_token == UpstreamToken::AuthorizationServer);
        let edge = EdgeAuthenticator::new(
            introspector,
            validator,
            internal,
            minter.clone(),
            &limits,
            hasher.clone(),
            keep_as_jwt,
        );
        let exchanger = meta.token_endpoint.clone().map(|endpoint| TokenExchanger {
            http: http.clone(),
            token_endpoint: endpoint,
            client_id: auth.client_id.clone(),
            client_secret: secret.clone(),
        });
        authserver::spawn_health_check(http.clone(), auth.issuer.clone(), readiness.clone());
        Ok(Some(BrokerParts {
            edge: Arc::new(edge),
            minter,
            http,
            token_endpoint: meta.token_endpoint.clone(),
            exchanger,
            revocation_endpoint: meta.revocation_endpoint.clone(),
            jwks,
            issuer: meta.issuer.clone(),
            discovered: meta.discovered,
        }))
    }
}

/// The AS's keys, fetched now (not fatally: again on demand) and refreshed in the
/// background.
async fn start_jwks(
    http: &reqwest::Client,
    uri: String,
    cooldown: std::time::Duration,
) -> Arc<RemoteJwks> {
    let jwks = RemoteJwks::new(http.clone(), uri, cooldown);
    if let Err(e) = jwks.fetch("start").await {
        tracing::warn!(error = %e, "JWKS fetch at start failed; will retry on demand");
    }
    jwks.spawn_refresh();
    jwks
}

/// Intercom's signing keys: from the secret store (`tokens.signing_key`, and the next one
/// while it rotates), else generated here and rotated every `tokens.key_rotation`.
fn minter(
    t: &crate::settings::TokenSettings,
    secrets: &SecretRegistry,
) -> Result<Arc<Minter>, BuildError> {
    let stored_cell =
        |reference: &Option<crate::secret::SecretRef>| secrets.stored(reference.as_ref());
    Ok(match stored_cell(&t.signing_key) {
        Some(current) => Arc::new(Minter::from_store(
            current,
            stored_cell(&t.next_signing_key),
            t.algorithm.as_str(),
            &t.issuer,
            t.lifetime,
            t.jwks_max_age,
        )?),
        None => {
            let minter = Arc::new(Minter::new(
                t.algorithm.as_str(),
                &t.issuer,
                t.lifetime,
                t.jwks_max_age,
            )?);
            minter.spawn_rotation(t.key_rotation);
            minter
        }
    })
}

/// Introspection at the AS, with Intercom's client and the configured answer format.
fn introspector(
    settings: &Settings,
    auth: &crate::settings::AuthServerSettings,
    meta: &authserver::AuthServerMetadata,
    http: reqwest::Client,
    secret: Arc<crate::secrets::registry::SecretCell>,
    signature: SignatureCheck,
    claims: Arc<ClaimSelection>,
) -> Result<Introspector, BuildError> {
    Ok(Introspector {
        http,
        endpoint: meta
            .introspection_endpoint
            .clone()
            .ok_or(BuildError::NoIntrospection)?,
        issuer: meta.issuer.clone(),
        client_id: auth.client_id.clone(),
        client_secret: secret,
        format: auth.introspection_format,
        jwt_claim: auth.introspection_jwt_claim.clone(),
        signature,
        leeway: auth.jwt.leeway,
        // An active answer without `exp`: trusted briefly, not for the cache's longest.
        default_lifetime: settings
            .tokens
            .cache_max_ttl
            .min(crate::broker::introspect::LIFETIME_WITHOUT_EXP),
        audiences: auth.audiences.clone(),
        claims,
    })
}
