//! Builds the shared state and the two actix servers (public and admin). The only place
//! that wires modules together.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{from_fn, Condition};
use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::broker::downstream::DownstreamTokens;
use crate::broker::mint::Minter;
use crate::broker::parts::BrokerParts;
use crate::endpoints::revocation::{self, RevocationState};
use crate::endpoints::token::{self, TokenClients};
use crate::http::access_log::AccessLog;
use crate::http::compression::CompressionPolicy;
use crate::http::errors::{ensure_problem, extractor_error, not_found};
use crate::http::health;
use crate::http::security_headers::Hsts;
use crate::http::wellknown;
use crate::http::{compression, cors, redirect, request_id, security_headers};
use crate::keyed_hash::SharedHasher;
use crate::limits::RateLimiter;
use crate::proxy::forward::UpstreamClients;
use crate::proxy::identity::IdentityHeaders;
use crate::proxy::inject;
use crate::proxy::routes::RouteTable;
use crate::proxy::{self, ProxyState};
use crate::readiness::Readiness;
use crate::redis::SharedRedis;
use crate::revoke::logout::LogoutVerifier;
use crate::revoke::{Evicts, Revoker};
use crate::settings::Settings;
use crate::telemetry;

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

impl From<crate::secrets::OpenError> for StartError {
    fn from(e: crate::secrets::OpenError) -> Self {
        match e {
            crate::secrets::OpenError::Settings(e) => StartError::Settings(e),
            crate::secrets::OpenError::Secret { key, error } => StartError::Secret { key, error },
        }
    }
}

impl From<crate::broker::parts::BuildError> for StartError {
    fn from(e: crate::broker::parts::BuildError) -> Self {
        use crate::broker::parts::BuildError;
        match e {
            BuildError::Discovery(e) => StartError::Discovery(e),
            BuildError::NoIntrospection => StartError::NoIntrospection,
            BuildError::Keys(e) => StartError::Keys(e),
            BuildError::Unresolved(key) => StartError::Config {
                key,
                message: "the secret was not resolved at start".into(),
            },
        }
    }
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
        let secrets = crate::secrets::open(&settings, &readiness).await?;
        let redis = SharedRedis::from_settings(&settings, &readiness, &secrets)
            .map_err(StartError::Redis)?;
        let hasher = match secrets.stored(settings.replicas.shared_key.as_deref()) {
            Some(cell) => SharedHasher::new(&cell.current()),
            None => SharedHasher::random(),
        };
        let rotation = secrets
            .stored(settings.replicas.rotation_shared_key.as_deref())
            .map(|cell| SharedHasher::new(&cell.current()));
        let keys = (&hasher, rotation.as_ref());
        let mut edge = BrokerParts::build(&settings, &readiness, &secrets, &hasher).await?;
        let injections = inject::for_routes(&settings, &secrets, edge.as_ref())?;
        let limiter = RateLimiter::new(&settings, redis.clone(), hasher.clone());
        let downstream = DownstreamTokens::from_settings(
            &settings,
            &secrets,
            &hasher,
            redis.as_ref(),
            edge.as_mut(),
        );
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
            .as_ref()
            .filter(|_| settings.revocation.backchannel_logout)
            .zip(settings.auth_server.as_ref())
            .map(|(parts, auth)| LogoutVerifier::new(&settings, auth, parts, redis.clone(), keys))
            .map(web::Data::new);
        let admin_credential = secrets.stored(settings.revocation.admin_credential.as_deref());
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
                .filter_map(|c| Some((c.client_id.clone(), secrets.stored(Some(&c.secret))?)))
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
        let tls = match &settings.server.tls {
            Some(t) => {
                Some(
                    crate::tls::configure(t, &readiness).map_err(|e| StartError::Config {
                        key: e.key,
                        message: e.message,
                    })?,
                )
            }
            None => None,
        };
        let hsts = Hsts::from_settings(settings.server.tls.as_ref());
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
            Some((addr, hosts)) => {
                let listener = bind("server.tls.redirect_listen", addr)?;
                Some(redirect::server(listener, hosts, port, drain_secs)?)
            }
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
                .route("/metrics", web::get().to(telemetry::render_metrics))
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
