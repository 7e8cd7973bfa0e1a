//! The admin app: health, metrics, the admin revocation API and the explanation of a
//! request, on its own listener.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;

use super::wiring::Wired;
use crate::endpoints::{explain, revocation};
use crate::http::errors::{extractor_error, not_found};
use crate::http::{health, request_id};
use crate::settings::Settings;
use crate::telemetry;

/// The admin listener's server (one worker: it serves probes and scrapes).
pub(super) fn server(
    settings: &Settings,
    wired: &Wired,
    metrics: PrometheusHandle,
    listener: TcpListener,
) -> std::io::Result<Server> {
    let readiness = web::Data::from(wired.readiness.clone());
    let revocation = wired.revocation.clone();
    let explain = wired.explain.clone();
    Ok(HttpServer::new(move || {
        let mut app = App::new()
            .app_data(explain.clone())
            .app_data(web::JsonConfig::default().error_handler(extractor_error))
            .route("/admin/explain", web::post().to(explain::explain));
        if let Some(state) = &revocation {
            app = app
                .app_data(state.clone())
                .route("/admin/revoke", web::post().to(revocation::admin_revoke));
        }
        app.app_data(readiness.clone())
            .app_data(web::Data::new(metrics.clone()))
            .wrap(from_fn(request_id::assign))
            .route("/health/live", web::get().to(health::live))
            .route("/health/ready", web::get().to(health::ready))
            .route("/metrics", web::get().to(telemetry::render_metrics))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .shutdown_timeout(super::drain_secs(settings))
    .disable_signals()
    .listen(listener)?
    .run())
}
