//! Builds the shared state and the two actix servers (public and admin): the only place
//! that wires modules together. [`wiring`] calls each part's constructor; [`public`]
//! and [`admin`] are the two apps.

mod admin;
mod error;
mod public;
pub mod reload;
mod wiring;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};

use crate::broker::mint::Minter;
use crate::filter::FilterRegistry;
use crate::http::redirect;
use crate::readiness::Readiness;
use crate::settings::Settings;
use error::bind;
pub use error::StartError;

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
    reloader: Arc<reload::Reloader>,
}

/// Worker threads of the public listener: `server.workers`, else one per core.
fn workers(settings: &Settings) -> usize {
    settings
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How long in-flight requests get to finish at shutdown.
fn drain_secs(settings: &Settings) -> u64 {
    settings.server.drain_timeout.as_secs().max(1)
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
        // The batch exporter's own thread blocks while it sends.
        let _ = tokio::task::spawn_blocking(crate::telemetry::traces::flush).await;
        tracing::info!("stopped");
    }
}

impl Application {
    /// Binds both listeners and builds the servers. Nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        Self::build_with(settings, FilterRegistry::default()).await
    }

    /// [`Application::build`] in a binary of a team's own, with the filters it offers
    /// to the routes' `filters` (see [`crate::filter`]).
    pub async fn build_with(
        settings: Settings,
        filters: FilterRegistry,
    ) -> Result<Self, StartError> {
        // The recorder first, so what the parts record while they start is kept.
        let metrics = crate::telemetry::metrics_handle();
        crate::telemetry::traces::trust(&settings.server.trusted_proxies);
        // One TLS provider for every client that does not name its own (Redis over
        // `rediss://`); a second call (another app in this process) changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let wired = wiring::wire(&settings, filters).await?;
        crate::proxy::discovery::start(&wired.proxy.routes.load(), &settings.discovery)
            .await
            .map_err(|message| StartError::Config {
                key: "discovery",
                message,
            })?;
        crate::proxy::probes::spawn(&wired.proxy.routes.load(), &wired.readiness);
        let tls = match &settings.server.tls {
            Some(t) => Some(crate::tls::configure(t, &wired.readiness).map_err(|e| {
                StartError::Config {
                    key: e.key,
                    message: e.message,
                }
            })?),
            None => None,
        };
        let listener = bind("server.listen", &settings.server.listen)?;
        let port = listener.local_addr()?.port();
        let admin_listener = bind("server.admin_listen", &settings.server.admin_listen)?;
        let admin_port = admin_listener.local_addr()?.port();
        let public = public::server(&settings, &wired, listener, tls)?;
        let redirect = match settings
            .server
            .tls
            .as_ref()
            .and_then(|t| Some((t.redirect_listen.as_ref()?, t.redirect_hosts.clone())))
        {
            Some((addr, hosts)) => {
                let listener = bind("server.tls.redirect_listen", addr)?;
                let drain = drain_secs(&settings);
                Some(redirect::server(listener, hosts, port, drain)?)
            }
            None => None,
        };
        let admin = admin::server(&settings, &wired, metrics, admin_listener)?;
        metrics::gauge!("intercom_ready").set(1.0);
        let reloader = Arc::new(wired.reloader);
        Ok(Self {
            reloader,
            port,
            admin_port,
            public,
            admin,
            redirect,
            readiness: wired.readiness,
            settings,
            minter: wired.minter,
        })
    }

    /// Reloads read the configuration from `source` (the files it was started from): on
    /// SIGHUP, and when `server.reload_watch` is set, when they change.
    pub fn reload_from(&self, source: reload::SettingsSource) {
        self.reloader.read_from(source);
    }

    /// Applies a new configuration, as a reload does (for tests and embedders).
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        self.reloader.clone()
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
        if self.reloader.has_source() {
            tokio::spawn(reload::on_hangup(self.reloader.clone()));
            if let Some(every) = self.settings.server.reload_watch {
                tokio::spawn(reload::watch(self.reloader.clone(), every));
            }
        }
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
