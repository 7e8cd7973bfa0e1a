//! The shared state, built from the settings as a list of constructor calls: each part
//! builds itself from its own settings and the parts it depends on.

use std::sync::Arc;

use actix_web::web;

use super::reload::{Reloader, RouteFactory};
use super::StartError;
use crate::broker::downstream::DownstreamTokens;
use crate::broker::mint::Minter;
use crate::broker::parts::BrokerParts;
use crate::endpoints::explain::ExplainState;
use crate::endpoints::revocation::RevocationState;
use crate::endpoints::token::TokenClients;
use crate::filter::FilterRegistry;
use crate::keyed_hash::SharedHasher;
use crate::limits::RateLimiter;
use crate::proxy::identity::IdentityHeaders;
use crate::proxy::ProxyState;
use crate::readiness::Readiness;
use crate::redis::SharedRedis;
use crate::revoke::logout::LogoutVerifier;
use crate::revoke::{Evicts, Revoker};
use crate::session::oidc::{ClientAuth, OidcClient};
use crate::session::store::SessionStore;
use crate::session::{SessionParts, Sessions};
use crate::settings::{ClientAuthMethod, SessionStoreKind, Settings};

/// What the public and admin apps serve.
pub(super) struct Wired {
    /// Swaps in a new route table when the configuration changes.
    pub reloader: Reloader,
    pub readiness: Arc<Readiness>,
    pub proxy: web::Data<ProxyState>,
    pub minter: Option<Arc<Minter>>,
    /// `POST /token`, when a route exchanges tokens.
    pub token_clients: Option<web::Data<TokenClients>>,
    /// The revocation endpoints, when there is an authorization server.
    pub revocation: Option<web::Data<RevocationState>>,
    pub logout: Option<web::Data<LogoutVerifier>>,
    /// Browser sessions, with `[session]`.
    pub sessions: Option<Arc<Sessions>>,
    /// `POST /admin/explain`.
    pub explain: web::Data<ExplainState>,
}

/// The shared key (or a random one without `[replicas]`) and the rotating one.
fn hashers(
    settings: &Settings,
    secrets: &crate::secrets::registry::SecretRegistry,
) -> (SharedHasher, Option<SharedHasher>) {
    let current = match secrets.stored(settings.replicas.shared_key.as_ref()) {
        Some(cell) => SharedHasher::new(&cell.current()),
        None => SharedHasher::random(),
    };
    let rotation = secrets
        .stored(settings.replicas.rotation_shared_key.as_ref())
        .map(|cell| SharedHasher::new(&cell.current()));
    (current, rotation)
}

/// Builds every part, in dependency order: secrets first (everything else reads them),
/// then Redis, the shared keys, the broker, and what uses them.
pub(super) async fn wire(
    settings: &Settings,
    filters: FilterRegistry,
) -> Result<Wired, StartError> {
    let readiness = Arc::new(Readiness::default());
    let secrets = crate::secrets::open(settings, &readiness).await?;
    let redis =
        SharedRedis::from_settings(settings, &readiness, &secrets).map_err(StartError::Redis)?;
    let (hasher, rotation) = hashers(settings, &secrets);
    let mut broker = BrokerParts::build(settings, &readiness, &secrets, &hasher).await?;
    let limiter = RateLimiter::new(settings, redis.clone(), hasher.clone());
    let factory = RouteFactory {
        secrets: secrets.clone(),
        token_endpoint: broker
            .as_ref()
            .and_then(|b| Some((b.http.clone(), b.token_endpoint.clone()?))),
        limiter: limiter.clone(),
        filters,
    };
    let table = factory.table(settings, 1)?;
    let downstream = DownstreamTokens::from_settings(
        settings,
        &secrets,
        &hasher,
        redis.as_ref(),
        broker.as_mut(),
    );
    let revoker = broker.as_ref().map(|b| {
        let evicts = Evicts {
            exchange: downstream.as_ref().map(|d| d.cache.clone()),
            edge: Some(b.edge.clone()),
        };
        let keys = (hasher.clone(), rotation.clone());
        Revoker::start(settings, keys, evicts, redis.clone(), readiness.clone())
    });
    let keys = (&hasher, rotation.as_ref());
    let logout = LogoutVerifier::for_settings(settings, broker.as_ref(), redis.clone(), keys)
        .map(web::Data::new);
    let sessions = sessions(
        settings,
        broker.as_ref(),
        &secrets,
        &hasher,
        redis.clone(),
        revoker.clone(),
    )?;
    let revocation = revoker.clone().map(|revoker| RevocationState {
        revoker,
        admin_credential: secrets.stored(settings.revocation.admin_credential.as_ref()),
        http: broker.as_ref().map(|b| b.http.clone()).unwrap_or_default(),
        revocation_endpoint: broker.as_ref().and_then(|b| b.revocation_endpoint.clone()),
        limiter: limiter.clone(),
        trusted_proxies: settings.server.trusted_proxies.clone(),
        edge: broker.as_ref().map(|b| b.edge.clone()),
        sessions: sessions.clone(),
    });
    let token_clients = downstream
        .is_some()
        .then(|| web::Data::new(TokenClients::from_settings(settings, &secrets)));
    let minter = broker.as_ref().map(|b| b.minter.clone());
    let proxy = web::Data::new(ProxyState {
        routes: arc_swap::ArcSwap::from_pointee(table),
        trusted_proxies: settings.server.trusted_proxies.clone(),
        edge: broker.map(|b| b.edge),
        identity: IdentityHeaders::from_settings(&settings.tokens),
        secrets,
        limiter,
        downstream,
        revoker,
        sessions: sessions.clone(),
        clients: crate::telemetry::clients::ClientInsight::start(&settings.telemetry.clients),
    });
    let explain = web::Data::new(ExplainState {
        proxy: proxy.clone(),
        admin_credential: proxy
            .secrets
            .stored(settings.revocation.admin_credential.as_ref()),
    });
    let reloader = Reloader::new(factory, settings, proxy.clone(), readiness.clone());
    Ok(Wired {
        explain,
        reloader,
        readiness,
        proxy,
        minter,
        token_clients,
        revocation: revocation.map(web::Data::new),
        logout,
        sessions,
    })
}

/// Browser sessions, with `[session]`: the login client (on the AS as the broker
/// discovered it), the store (memory, or sealed in Redis), the key that seals them.
fn sessions(
    settings: &Settings,
    parts: Option<&BrokerParts>,
    secrets: &crate::secrets::registry::SecretRegistry,
    hasher: &SharedHasher,
    redis: Option<Arc<SharedRedis>>,
    revoker: Option<Arc<Revoker>>,
) -> Result<Option<Arc<Sessions>>, StartError> {
    // Settings refuse a [session] without [auth_server]; the broker exists with it.
    let (Some(session), Some(auth), Some(parts)) =
        (&settings.session, &settings.auth_server, parts)
    else {
        return Ok(None);
    };
    let unresolved = |key: &'static str| {
        StartError::Session(format!("{key}: the secret was not resolved at start"))
    };
    let client_auth = match (session.client_auth, &session.client_key) {
        (ClientAuthMethod::PrivateKeyJwt, Some(key_ref)) => {
            let key = secrets
                .stored(Some(key_ref))
                .ok_or_else(|| unresolved("session.client_key"))?;
            ClientAuth::signing_key(&key)
                .map_err(|e| StartError::Session(format!("session.client_key: {e}")))?;
            ClientAuth::PrivateKeyJwt(key)
        }
        _ => {
            let secret_ref = session
                .client_secret
                .as_ref()
                .unwrap_or(&auth.client_secret);
            ClientAuth::Secret(
                secrets
                    .stored(Some(secret_ref))
                    .ok_or_else(|| unresolved("session.client_secret"))?,
            )
        }
    };
    let key = secrets
        .stored(Some(&session.encryption_key))
        .ok_or_else(|| unresolved("session.encryption_key"))?;
    let client_id = session.client_id.as_deref().unwrap_or(&auth.client_id);
    let oidc = OidcClient::new(
        parts.discovered.clone(),
        parts.http.clone(),
        client_id,
        client_auth,
        &session.redirect_uri,
        &session.scopes,
    );
    let store = match (session.store, redis) {
        (SessionStoreKind::Redis, Some(redis)) => SessionStore::redis(
            redis,
            crate::cache::sealed::Sealer::new(key.clone()),
            session.memory_ttl,
            crate::redis::keys::sessions_active(&crate::redis::keys::base(settings)),
        ),
        _ => SessionStore::memory(session.absolute_timeout),
    };
    let sessions = Arc::new(Sessions::new(
        session,
        SessionParts {
            oidc,
            store,
            encryption_key: key,
            hasher: hasher.clone(),
            key_base: crate::redis::keys::base(settings),
            revoker,
            request_timeout: auth.request_timeout,
            rule_claims: crate::broker::claims::ClaimSelection::new(
                &settings.rate_limit.tier_claim,
                &settings.routes,
            )
            .kept,
        },
    ));
    sessions.count_active(session.count_every);
    Ok(Some(sessions))
}
