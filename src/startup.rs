//! Builds the shared state and the two actix servers (public and admin). The only place
//! that wires modules together.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing_actix_web::TracingLogger;

use crate::http::access_log::AccessLog;
use crate::http::errors::{extractor_error, not_found};
use crate::http::health::{self, Readiness};
use crate::http::request_id;
use crate::proxy::forward::UpstreamClients;
use crate::proxy::routes::RouteTable;
use crate::proxy::{self, ProxyState};
use crate::settings::Settings;
use crate::telemetry;

/// A built, bound, not yet running Intercom.
pub struct Application {
    port: u16,
    admin_port: u16,
    public: Server,
    admin: Server,
    readiness: Arc<Readiness>,
    settings: Settings,
}

/// Stops a running application the way SIGTERM does.
#[derive(Clone)]
pub struct ShutdownHandle {
    public: ServerHandle,
    admin: ServerHandle,
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
        self.public.stop(true).await;
        self.admin.stop(true).await;
        tracing::info!("stopped");
    }
}

impl Application {
    /// Binds both listeners and builds the servers. Nothing is served until
    /// [`Application::run_until_stopped`].
    pub fn build(settings: Settings) -> std::io::Result<Self> {
        let metrics = telemetry::metrics_handle();
        let readiness = Arc::new(Readiness::default());
        let proxy_state = web::Data::new(ProxyState {
            routes: RouteTable::new(&settings.routes, settings.server.upstream_cooldown),
            trusted_proxies: settings.server.trusted_proxies.clone(),
        });
        let listener = TcpListener::bind(&settings.server.listen)?;
        let port = listener.local_addr()?.port();
        let admin_listener = TcpListener::bind(&settings.server.admin_listen)?;
        let admin_port = admin_listener.local_addr()?.port();
        let workers = settings
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let max_connections = settings.server.upstream_pool_size;
        let drain_secs = settings.server.drain_timeout.as_secs().max(1);

        let public = HttpServer::new(move || {
            let clients = UpstreamClients::new(&proxy_state.routes, max_connections);
            App::new()
                .app_data(proxy_state.clone())
                .app_data(clients)
                .app_data(web::JsonConfig::default().error_handler(extractor_error))
                .app_data(web::QueryConfig::default().error_handler(extractor_error))
                .app_data(web::PathConfig::default().error_handler(extractor_error))
                .wrap(TracingLogger::<AccessLog>::new())
                .wrap(from_fn(request_id::assign))
                .default_service(web::to(proxy::handle))
        })
        .workers(workers)
        .shutdown_timeout(drain_secs)
        .disable_signals()
        .listen(listener)?
        .run();

        let admin_readiness = web::Data::from(readiness.clone());
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_readiness.clone())
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
            readiness,
            settings,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            public: self.public.handle(),
            admin: self.admin.handle(),
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
