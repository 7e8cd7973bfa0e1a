//! Builds the shared state and the two actix servers (public and admin). The only place
//! that wires modules together.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{from_fn, Condition};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing_actix_web::TracingLogger;

use crate::broker::authserver;
use crate::broker::client_credentials::ClientCredentials;
use crate::broker::downstream::DownstreamTokens;
use crate::broker::edge::EdgeAuthenticator;
use crate::broker::exchange::TokenExchanger;
use crate::broker::introspect::Introspector;
use crate::broker::jwks::RemoteJwks;
use crate::broker::mint::Minter;
use crate::broker::validate::{InternalValidator, JwtValidator, SignatureCheck};
use crate::cache::sealed::Sealer;
use crate::cache::tiered::TieredCache;
use crate::cache::CacheLimits;
use crate::endpoints::revocation::{self, RevocationState};
use crate::endpoints::token::{self, TokenClients};
use crate::http::access_log::AccessLog;
use crate::http::compression::CompressionPolicy;
use crate::http::errors::{ensure_problem, extractor_error, not_found};
use crate::http::health;
use crate::http::security_headers::Hsts;
use crate::http::wellknown;
use crate::http::{compression, cors, request_id, security_headers};
use crate::keyed_hash::SharedHasher;
use crate::limits::RateLimiter;
use crate::proxy::forward::UpstreamClients;
use crate::proxy::identity::IdentityHeaders;
use crate::proxy::inject::Injection;
use crate::proxy::routes::RouteTable;
use crate::proxy::{self, ProxyState};
use crate::readiness::DependencyState;
use crate::readiness::Readiness;
use crate::redis::SharedRedis;
use crate::revoke::logout::LogoutVerifier;
use crate::revoke::{Evicts, Revoker};
use crate::secret::SecretRef;
use crate::secrets::file::FileStore;
use crate::secrets::registry::SecretCell;
use crate::secrets::registry::SecretRegistry;
use crate::secrets::vault::VaultStore;
use crate::secrets::Stores;
use crate::settings::{InjectSettings, Settings};
use crate::telemetry;
use crate::tls::CertificateReloader;
use actix_web::http::header::HeaderValue;

/// A built, bound, not yet running Intercom.
pub struct Application {
    port: u16,
    admin_port: u16,
    public: Server,
    admin: Server,
    /// The plain-HTTP listener that redirects to HTTPS, when configured.
    redirect: Option<Server>,
    readiness: Arc<Readiness>,
    settings: Settings,
    minter: Option<Arc<Minter>>,
}

/// Why Intercom could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Settings(#[from] crate::settings::SettingsError),
    #[error("authorization server: {0}")]
    Discovery(#[from] crate::broker::authserver::DiscoveryError),
    #[error("authorization server: no introspection_endpoint in its metadata")]
    NoIntrospection,
    #[error("signing keys: {0}")]
    Keys(#[from] crate::broker::mint::MintError),
    #[error("server.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("{key}: {error}")]
    Secret {
        key: String,
        error: crate::secrets::SecretError,
    },
    /// A setting that passed validation but cannot be used here (a file that does not
    /// load, an address that cannot be bound): a configuration error, naming its key.
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
}

impl StartError {
    /// True when the configuration is at fault (exit 64), not the machine.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            StartError::Settings(_) | StartError::Secret { .. } | StartError::Config { .. }
        )
    }
}

/// Binds `addr` for the setting `key`; a failure names the key.
fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|e| StartError::Config {
        key,
        message: format!("cannot listen on {addr}: {e}"),
    })
}

/// The shared Redis pool, when `[redis]` is configured (connections open on first use).
fn build_redis(
    settings: &Settings,
    readiness: &Arc<Readiness>,
    secrets: &SecretRegistry,
) -> Result<Option<Arc<SharedRedis>>, StartError> {
    let Some(redis) = &settings.redis else {
        return Ok(None);
    };
    let password = redis
        .password
        .as_ref()
        .and_then(|r| SecretRef::parse(r).ok())
        .and_then(|r| secrets.cell(&r.to_string()))
        .map(|cell| cell.current());
    SharedRedis::new(redis, password, readiness.clone())
        .map(|r| Some(Arc::new(r)))
        .map_err(StartError::Redis)
}

/// The cell of an optional secret reference (resolved at start).
fn stored(secrets: &SecretRegistry, reference: &Option<String>) -> Option<Arc<SecretCell>> {
    reference
        .as_ref()
        .and_then(|r| SecretRef::parse(r).ok())
        .and_then(|r| secrets.cell(&r.to_string()))
}

/// Downstream tokens (routes with `exchange`): the two-tier cache and the exchanger.
fn build_downstream(
    settings: &Settings,
    secrets: &SecretRegistry,
    hasher: &SharedHasher,
    redis: Option<&Arc<SharedRedis>>,
    edge: Option<&mut EdgeParts>,
) -> Option<Arc<DownstreamTokens>> {
    let edge = edge?;
    if !settings.routes.iter().any(|r| r.exchange.is_some()) {
        return None;
    }
    let x = &settings.exchange;
    let shared = match (redis, stored(secrets, &x.encryption_key)) {
        (Some(redis), Some(key)) => Some((redis.clone(), Sealer::new(key), x.key_prefix.clone())),
        _ => None,
    };
    let cache = Arc::new(TieredCache::new(
        x.capacity,
        x.memory_tier,
        x.skew,
        x.negative_ttl,
        shared,
    ));
    let actor = edge.exchanger.as_ref().map(|x| {
        ClientCredentials::new(
            edge.http.clone(),
            x.token_endpoint.clone(),
            x.client_id.clone(),
            x.client_secret.clone(),
            None,
            None,
        )
    });
    Some(Arc::new(DownstreamTokens {
        exchanger: edge.exchanger.take(),
        actor,
        minter: edge.minter.clone(),
        cache,
        hasher: hasher.clone(),
        refresh_ahead: x.refresh_ahead,
        lock_ttl: x.lock_ttl,
    }))
}

/// Opens the secret stores and resolves every reference in the configuration.
async fn build_secrets(
    settings: &Settings,
    readiness: &Arc<Readiness>,
) -> Result<Arc<SecretRegistry>, StartError> {
    let refs = settings.secret_references()?;
    let mut stores = Stores::default();
    if let Some(path) = &settings.secrets.file {
        stores.file = Some(FileStore::open(path).map_err(|error| StartError::Secret {
            key: "secrets.file".into(),
            error,
        })?);
    }
    if let Some(vault) = &settings.secrets.vault {
        stores.vault =
            Some(
                VaultStore::connect(vault)
                    .await
                    .map_err(|error| StartError::Secret {
                        key: "secrets.vault".into(),
                        error,
                    })?,
            );
    }
    let all: Vec<SecretRef> = refs.iter().map(|(_, r)| r.clone()).collect();
    let registry = match SecretRegistry::resolve(stores, &all).await {
        Ok(r) => Arc::new(r),
        Err(error) => {
            let failing = match &error {
                crate::secrets::SecretError::NotFound { reference, .. }
                | crate::secrets::SecretError::NoStore { reference, .. }
                | crate::secrets::SecretError::Unreadable { reference, .. } => refs
                    .iter()
                    .find(|(_, r)| &r.to_string() == reference)
                    .map(|(k, _)| k.clone()),
                _ => None,
            };
            return Err(StartError::Secret {
                key: failing.unwrap_or_else(|| "secrets".into()),
                error,
            });
        }
    };
    if !refs.is_empty() {
        readiness.report("secret_store", DependencyState::Ok, true, None);
        let readiness = Arc::downgrade(readiness);
        registry.spawn_watch(settings.secrets.poll_interval, move |ok, oldest| {
            if let Some(readiness) = readiness.upgrade() {
                let state = if ok {
                    DependencyState::Ok
                } else {
                    DependencyState::Degraded
                };
                let detail = (!ok).then(|| {
                    format!(
                        "serving last-known values; oldest is {} s old",
                        oldest.as_secs()
                    )
                });
                // Last-known values keep serving: degraded, never a reason to be unready.
                readiness.report("secret_store", state, false, detail);
            }
        });
    }
    Ok(registry)
}

/// The broker parts built from `[auth_server]` and `[tokens]`.
struct EdgeParts {
    edge: Arc<EdgeAuthenticator>,
    minter: Arc<Minter>,
    /// The client for the AS, shared with client-credentials injection.
    http: reqwest::Client,
    token_endpoint: Option<String>,
    /// RFC 8693 at the AS, with Intercom's client.
    exchanger: Option<TokenExchanger>,
    /// Back-channel logout tokens, when enabled.
    logout: Option<LogoutVerifier>,
    revocation_endpoint: Option<String>,
}

async fn build_edge(
    settings: &Settings,
    readiness: &Arc<Readiness>,
    secrets: &SecretRegistry,
    (hasher, rotation): (&SharedHasher, Option<&SharedHasher>),
    redis: Option<&Arc<SharedRedis>>,
) -> Result<Option<EdgeParts>, StartError> {
    let Some(auth) = &settings.auth_server else {
        return Ok(None);
    };
    let secret = secrets
        .cell(
            &SecretRef::parse(&auth.client_secret)
                .map_err(|error| StartError::Secret {
                    key: "auth_server.client_secret".into(),
                    error: error.into(),
                })?
                .to_string(),
        )
        .expect("every reference was resolved at start");
    let http = authserver::http_client(auth.connect_timeout, auth.request_timeout);
    let meta = authserver::discover(&http, &auth.issuer).await?;
    readiness.report("authorization_server", DependencyState::Ok, false, None);
    let jwks_uri = auth.jwks_uri.clone().unwrap_or(meta.jwks_uri.clone());
    let jwks = RemoteJwks::new(http.clone(), jwks_uri, auth.jwt.jwks_cooldown);
    if let Err(e) = jwks.fetch("start").await {
        tracing::warn!(error = %e, "JWKS fetch at start failed; will retry on demand");
    }
    jwks.spawn_refresh();
    let signature = |algorithms: Vec<String>| SignatureCheck {
        algorithms,
        jwks: jwks.clone(),
    };
    let introspector = Introspector {
        http: http.clone(),
        endpoint: meta
            .introspection_endpoint
            .clone()
            .ok_or(StartError::NoIntrospection)?,
        issuer: meta.issuer.clone(),
        client_id: auth.client_id.clone(),
        client_secret: secret.clone(),
        format: auth.introspection_format,
        signature: signature(auth.jwt.algorithms.clone()),
        leeway: auth.jwt.leeway,
        // An active answer without `exp`: trusted briefly, not for the cache's longest.
        default_lifetime: settings
            .tokens
            .cache_max_ttl
            .min(crate::broker::introspect::LIFETIME_WITHOUT_EXP),
        audiences: auth.audiences.clone(),
        tier_claim: settings.rate_limit.tier_claim.clone(),
    };
    let validator = (!auth.jwt.audiences.is_empty()).then(|| JwtValidator {
        issuer: meta.issuer.clone(),
        audiences: auth.jwt.audiences.clone(),
        typ: auth.jwt.typ.clone(),
        leeway: auth.jwt.leeway,
        signature: signature(auth.jwt.algorithms.clone()),
        tier_claim: settings.rate_limit.tier_claim.clone(),
    });
    let t = &settings.tokens;
    let stored_cell = |text: &Option<String>| {
        text.as_ref()
            .and_then(|r| SecretRef::parse(r).ok())
            .and_then(|r| secrets.cell(&r.to_string()))
    };
    let minter = match stored_cell(&t.signing_key) {
        Some(current) => Arc::new(Minter::from_store(
            current,
            stored_cell(&t.next_signing_key),
            &t.algorithm,
            &t.issuer,
            t.lifetime,
            t.jwks_max_age,
        )?),
        None => {
            let minter = Arc::new(Minter::new(
                &t.algorithm,
                &t.issuer,
                t.lifetime,
                t.jwks_max_age,
            )?);
            minter.spawn_rotation(t.key_rotation);
            minter
        }
    };
    let limits = CacheLimits {
        capacity: t.cache_capacity,
        max_ttl: t.cache_max_ttl,
        negative_capacity: t.negative_capacity,
        negative_ttl: t.negative_ttl,
    };
    let internal = t.accept_internal.then(|| InternalValidator {
        minter: minter.clone(),
        leeway: auth.jwt.leeway,
        tier_claim: settings.rate_limit.tier_claim.clone(),
    });
    let edge = EdgeAuthenticator::new(
        introspector,
        validator,
        internal,
        minter.clone(),
        &limits,
        hasher.clone(),
    );
    let exchanger = meta.token_endpoint.clone().map(|endpoint| TokenExchanger {
        http: http.clone(),
        token_endpoint: endpoint,
        client_id: auth.client_id.clone(),
        client_secret: secret.clone(),
    });
    let logout = settings
        .revocation
        .backchannel_logout
        .then(|| LogoutVerifier {
            signature: signature(auth.jwt.algorithms.clone()),
            issuer: meta.issuer.clone(),
            client_id: auth.client_id.clone(),
            leeway: auth.jwt.leeway,
            redis: redis.cloned(),
            hasher: hasher.clone(),
            rotation: rotation.cloned(),
            seen: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            replay_prefix: format!("{}:logout", settings.exchange.key_prefix),
        });
    spawn_auth_server_check(http.clone(), auth.issuer.clone(), readiness.clone());
    Ok(Some(EdgeParts {
        edge: Arc::new(edge),
        minter,
        http,
        token_endpoint: meta.token_endpoint.clone(),
        exchanger,
        logout,
        revocation_endpoint: meta.revocation_endpoint.clone(),
    }))
}

/// Each route's injected credential, in route order.
fn build_injections(
    settings: &Settings,
    secrets: &SecretRegistry,
    edge: Option<&EdgeParts>,
) -> Result<Vec<Option<Injection>>, StartError> {
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
                let (http, endpoint) = match edge {
                    Some(EdgeParts {
                        http,
                        token_endpoint: Some(endpoint),
                        ..
                    }) => (http.clone(), endpoint.clone()),
                    _ => {
                        return Err(StartError::Settings(crate::settings::SettingsError {
                            key,
                            reason: "the authorization server has no token_endpoint".into(),
                        }))
                    }
                };
                let cell = SecretRef::parse(secret)
                    .ok()
                    .and_then(|r| secrets.cell(&r.to_string()))
                    .expect("every reference was resolved at start");
                let source = ClientCredentials::new(
                    http,
                    endpoint,
                    client_id.clone(),
                    cell,
                    scope.clone(),
                    resource.clone(),
                );
                return Ok(Some(Injection::fetched(source)));
            }
            Ok(Injection::stored(inject, secrets))
        })
        .collect()
}

/// The TLS configuration, with the certificate watched for changes and its expiry in
/// readiness.
fn build_tls(
    settings: &Settings,
    readiness: &Arc<Readiness>,
) -> Result<Option<rustls::ServerConfig>, StartError> {
    let Some(t) = &settings.server.tls else {
        return Ok(None);
    };
    let certificates =
        CertificateReloader::load(&t.cert_file, &t.key_file).map_err(|e| match e {
            crate::tls::TlsError::File { path, reason } => StartError::Config {
                key: if std::path::Path::new(&path) == std::path::Path::new(&t.key_file) {
                    "server.tls.key_file"
                } else {
                    "server.tls.cert_file"
                },
                message: format!("{path}: {reason}"),
            },
            crate::tls::TlsError::Config(why) => StartError::Config {
                key: "server.tls",
                message: why,
            },
        })?;
    let report = {
        let readiness = Arc::downgrade(readiness);
        move |not_after: i64| {
            if let Some(readiness) = readiness.upgrade() {
                let expires = time::OffsetDateTime::from_unix_timestamp(not_after)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                let left = not_after - time::OffsetDateTime::now_utc().unix_timestamp();
                let state = if left <= 0 {
                    DependencyState::Down
                } else if left < 14 * 24 * 3600 {
                    DependencyState::Degraded
                } else {
                    DependencyState::Ok
                };
                readiness.report(
                    "tls_certificate",
                    state,
                    false,
                    Some(format!("expires {expires}")),
                );
            }
        }
    };
    report(certificates.not_after());
    certificates.spawn_watch(t.reload_interval, report);
    Ok(Some(crate::tls::server_config(certificates, t.tls13_only)?))
}

/// The plain-HTTP listener that only redirects to HTTPS on `https_port`, and only to
/// one of `hosts` (the configured names: the client's `Host` picks among them, never
/// adds to them).
fn redirect_server(
    addr: &str,
    hosts: Vec<String>,
    https_port: u16,
    drain_secs: u64,
) -> Result<Server, StartError> {
    let listener = bind("server.tls.redirect_listen", addr)?;
    let hosts: Arc<[String]> = hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect();
    Ok(HttpServer::new(move || {
        let hosts = hosts.clone();
        App::new().default_service(web::to(move |req: HttpRequest| {
            let hosts = hosts.clone();
            async move {
                let asked = req
                    .headers()
                    .get(actix_web::http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| crate::proxy::routes::strip_port(h).to_ascii_lowercase());
                let host = asked
                    .and_then(|a| hosts.iter().find(|h| **h == a))
                    .unwrap_or(&hosts[0]);
                let port = if https_port == 443 {
                    String::new()
                } else {
                    format!(":{https_port}")
                };
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                HttpResponse::PermanentRedirect()
                    .insert_header(("location", format!("https://{host}{port}{target}")))
                    .finish()
            }
        }))
    })
    .workers(1)
    .shutdown_timeout(drain_secs)
    .disable_signals()
    .listen(listener)?
    .run())
}

/// Reports the AS in readiness every 15 s (not required: cached tokens keep working).
fn spawn_auth_server_check(http: reqwest::Client, issuer: String, readiness: Arc<Readiness>) {
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

/// Stops a running application the way SIGTERM does.
#[derive(Clone)]
pub struct ShutdownHandle {
    public: ServerHandle,
    admin: ServerHandle,
    redirect: Option<ServerHandle>,
    readiness: Arc<Readiness>,
    delay: Duration,
}

impl ShutdownHandle {
    /// Readiness turns 503 at once; after the delay the listeners close and in-flight
    /// requests get the drain timeout to finish.
    pub async fn shutdown(&self) {
        tracing::info!(delay_ms = self.delay.as_millis() as u64, "shutting down");
        self.readiness.begin_shutdown();
        tokio::time::sleep(self.delay).await;
        if let Some(redirect) = &self.redirect {
            redirect.stop(true).await;
        }
        self.public.stop(true).await;
        self.admin.stop(true).await;
        tracing::info!("stopped");
    }
}

impl Application {
    /// Binds both listeners and builds the servers. Nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let metrics = telemetry::metrics_handle();
        let readiness = Arc::new(Readiness::default());
        let secrets = build_secrets(&settings, &readiness).await?;
        let redis = build_redis(&settings, &readiness, &secrets)?;
        let hasher = match stored(&secrets, &settings.replicas.shared_key) {
            Some(cell) => SharedHasher::new(&cell.current()),
            None => SharedHasher::random(),
        };
        let rotation = stored(&secrets, &settings.replicas.rotation_shared_key)
            .map(|cell| SharedHasher::new(&cell.current()));
        let keys = (&hasher, rotation.as_ref());
        let mut edge = build_edge(&settings, &readiness, &secrets, keys, redis.as_ref()).await?;
        let injections = build_injections(&settings, &secrets, edge.as_ref())?;
        let limiter = RateLimiter::new(&settings, redis.clone(), hasher.clone());
        let downstream =
            build_downstream(&settings, &secrets, &hasher, redis.as_ref(), edge.as_mut());
        let revoker = edge.as_ref().map(|e| {
            let revoker = Revoker::new(
                &settings,
                hasher.clone(),
                rotation.clone(),
                Evicts {
                    exchange: downstream.as_ref().map(|d| d.cache.clone()),
                    edge: Some(e.edge.clone()),
                },
                redis.clone(),
                readiness.clone(),
            );
            revoker.spawn_listener();
            revoker
        });
        let logout = edge
            .as_mut()
            .and_then(|e| e.logout.take())
            .map(web::Data::new);
        let admin_credential = stored(&secrets, &settings.revocation.admin_credential);
        let revocation_endpoint = edge.as_ref().and_then(|e| e.revocation_endpoint.clone());
        let as_http = edge.as_ref().map(|e| e.http.clone()).unwrap_or_default();
        let edge_handle = edge.as_ref().map(|e| e.edge.clone());
        let minter = edge.as_ref().map(|e| e.minter.clone());
        let proxy_state = web::Data::new(ProxyState {
            routes: RouteTable::new(
                &settings.routes,
                settings.server.upstream_cooldown,
                settings.server.max_body_bytes,
                injections,
            ),
            trusted_proxies: settings.server.trusted_proxies.clone(),
            edge: edge.map(|e| e.edge),
            identity: IdentityHeaders::from_settings(&settings.tokens),
            secrets: secrets.clone(),
            limiter: limiter.clone(),
            downstream: downstream.clone(),
            revoker: revoker.clone(),
        });
        let minter_data = minter.clone().map(web::Data::new);
        let revocation = revoker.clone().map(|revoker| {
            web::Data::new(RevocationState {
                revoker,
                admin_credential,
                http: as_http,
                revocation_endpoint,
                limiter: limiter.clone(),
                trusted_proxies: settings.server.trusted_proxies.clone(),
                edge: edge_handle.clone(),
            })
        });
        let serves_token = downstream.is_some();
        let token_clients = web::Data::new(TokenClients(
            settings
                .token_endpoint
                .clients
                .iter()
                .filter_map(|c| {
                    Some((
                        c.client_id.clone(),
                        stored(&secrets, &Some(c.secret.clone()))?,
                    ))
                })
                .collect(),
        ));
        let admin_revocation = revocation.clone();
        // With any CORS policy, every host-less route becomes a scope (longest prefix
        // first, as the table matches) so a policy never covers a more specific route.
        let compress = settings.compression.enabled;
        let compression = compress.then(|| CompressionPolicy(settings.compression.clone()));
        let any_cors = settings.routes.iter().any(|r| r.cors.is_some());
        let scopes: Vec<(
            String,
            Option<String>,
            Option<crate::settings::CorsSettings>,
        )> = proxy_state
            .routes
            .routes()
            .iter()
            .filter(|_| any_cors)
            .map(|r| {
                let prefix = if r.prefix == "/" {
                    String::new()
                } else {
                    r.prefix.clone()
                };
                (
                    prefix,
                    r.host.clone(),
                    settings.routes[r.index].cors.clone(),
                )
            })
            .collect();
        let tls = build_tls(&settings, &readiness)?;
        let hsts = settings
            .server
            .tls
            .as_ref()
            .filter(|t| t.hsts_max_age_secs > 0)
            .and_then(|t| {
                HeaderValue::from_str(&format!(
                    "max-age={}; includeSubDomains",
                    t.hsts_max_age_secs
                ))
                .ok()
            })
            .map(Hsts);
        let listener = bind("server.listen", &settings.server.listen)?;
        let port = listener.local_addr()?.port();
        let admin_listener = bind("server.admin_listen", &settings.server.admin_listen)?;
        let admin_port = admin_listener.local_addr()?.port();
        let workers = settings
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let max_connections = settings.server.upstream_pool_size;
        let drain_secs = settings.server.drain_timeout.as_secs().max(1);

        let public = HttpServer::new(move || {
            let clients = UpstreamClients::new(&proxy_state.routes, max_connections);
            let mut app = App::new();
            if let Some(minter) = &minter_data {
                app = app
                    .app_data(minter.clone())
                    .route("/.well-known/jwks.json", web::get().to(wellknown::jwks))
                    .route(
                        "/.well-known/oauth-authorization-server",
                        web::get().to(wellknown::metadata),
                    );
            }
            if let Some(hsts) = &hsts {
                app = app.app_data(hsts.clone());
            }
            if serves_token {
                app = app
                    .app_data(token_clients.clone())
                    .route("/token", web::post().to(token::exchange));
            }
            if let Some(revocation) = &revocation {
                app = app
                    .app_data(revocation.clone())
                    .route("/revoke", web::post().to(revocation::revoke_passthrough));
                if let Some(logout) = &logout {
                    app = app.app_data(logout.clone()).route(
                        "/backchannel-logout",
                        web::post().to(revocation::backchannel_logout),
                    );
                }
            }
            if let Some(policy) = &compression {
                app = app.app_data(policy.clone());
            }
            for (prefix, host, policy) in &scopes {
                let mut scope = web::scope(prefix).default_service(web::to(proxy::handle));
                if let Some(host) = host {
                    // Host routes come first in the table, and have their own policy.
                    scope = scope.guard(actix_web::guard::Host(host.clone()));
                }
                app = match policy {
                    Some(policy) => app.service(scope.wrap(cors::middleware(policy))),
                    None => app.service(scope),
                };
            }
            app.app_data(proxy_state.clone())
                .app_data(clients)
                // Only CORS scopes need the router to see canonical paths.
                .wrap(Condition::new(any_cors, from_fn(cors::canonical_routing)))
                .app_data(web::JsonConfig::default().error_handler(extractor_error))
                .app_data(web::QueryConfig::default().error_handler(extractor_error))
                .app_data(web::FormConfig::default().error_handler(extractor_error))
                .app_data(web::PathConfig::default().error_handler(extractor_error))
                .wrap(from_fn(ensure_problem))
                .wrap(Condition::new(compress, from_fn(compression::compress)))
                .wrap(from_fn(security_headers::apply))
                .wrap(TracingLogger::<AccessLog>::new())
                .wrap(from_fn(request_id::assign))
                .default_service(web::to(proxy::handle))
        })
        .workers(workers)
        .client_request_timeout(settings.server.client_request_timeout)
        .shutdown_timeout(drain_secs)
        .disable_signals();
        let public = match tls {
            Some(config) => public.listen_rustls_0_23(listener, config)?,
            None => public.listen(listener)?,
        }
        .run();
        let redirect = match settings
            .server
            .tls
            .as_ref()
            .and_then(|t| Some((t.redirect_listen.as_ref()?, t.redirect_hosts.clone())))
        {
            Some((addr, hosts)) => Some(redirect_server(addr, hosts, port, drain_secs)?),
            None => None,
        };

        let admin_readiness = web::Data::from(readiness.clone());
        let admin = HttpServer::new(move || {
            let mut app = App::new();
            if let Some(revocation) = &admin_revocation {
                app = app
                    .app_data(revocation.clone())
                    .app_data(web::JsonConfig::default().error_handler(extractor_error))
                    .route("/admin/revoke", web::post().to(revocation::admin_revoke));
            }
            app.app_data(admin_readiness.clone())
                .app_data(web::Data::new(metrics.clone()))
                .wrap(from_fn(request_id::assign))
                .route("/health/live", web::get().to(health::live))
                .route("/health/ready", web::get().to(health::ready))
                .route("/metrics", web::get().to(render_metrics))
                .default_service(web::to(not_found))
        })
        .workers(1)
        .shutdown_timeout(drain_secs)
        .disable_signals()
        .listen(admin_listener)?
        .run();

        metrics::gauge!("intercom_ready").set(1.0);
        Ok(Self {
            port,
            admin_port,
            public,
            admin,
            redirect,
            readiness,
            settings,
            minter,
        })
    }

    /// Intercom's signing keys, when it mints tokens (for rotation by hand and tests).
    pub fn minter(&self) -> Option<Arc<Minter>> {
        self.minter.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            public: self.public.handle(),
            admin: self.admin.handle(),
            redirect: self.redirect.as_ref().map(|r| r.handle()),
            readiness: self.readiness.clone(),
            delay: self.settings.server.shutdown_delay,
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            handle.shutdown().await;
        });
        tracing::info!(
            port = self.port,
            admin_port = self.admin_port,
            routes = self.settings.routes.len(),
            "intercom is serving"
        );
        if let Some(redirect) = self.redirect {
            tokio::spawn(redirect);
        }
        let (public, admin) = tokio::join!(self.public, self.admin);
        public.and(admin)
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

async fn render_metrics(handle: web::Data<PrometheusHandle>, _req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}
