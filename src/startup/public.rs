//! The public app: Intercom's own endpoints, the CORS scopes, and the proxy as the
//! default service, under one middleware stack.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::{from_fn, Condition};
use actix_web::{web, App, HttpServer};

use super::wiring::Wired;
use crate::endpoints::{revocation, session, token};
use crate::http::compression::CompressionPolicy;
use crate::http::errors::extractor_error;
use crate::http::security_headers::Hsts;
use crate::http::{compression, cors, envelope, wellknown};
use crate::proxy;
use crate::proxy::forward::UpstreamClients;
use crate::settings::{CorsSettings, Settings};

/// A CORS scope: a route's prefix (empty for `/`), its host, its policy.
type CorsScope = (String, Option<String>, Option<CorsSettings>);

/// With any CORS policy, every route becomes a scope (in the table's order: host routes
/// first, longest prefix first) so a policy never covers a more specific route.
pub(super) fn cors_scopes(settings: &Settings) -> Vec<CorsScope> {
    if !settings.routes.iter().any(|r| r.cors.is_some()) {
        return Vec::new();
    }
    let mut routes: Vec<_> = settings.routes.iter().collect();
    // As `RouteTable::new` orders them (a stable sort).
    routes.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.prefix.len())));
    routes
        .into_iter()
        .map(|r| {
            let prefix = if r.prefix == "/" { "" } else { &r.prefix };
            let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
            (prefix.to_string(), host, r.cors.clone())
        })
        .collect()
}

/// What Intercom answers itself on the public listener, each when configured.
#[derive(Clone)]
struct Endpoints {
    minter: Option<web::Data<std::sync::Arc<crate::broker::mint::Minter>>>,
    hsts: Option<Hsts>,
    token_clients: Option<web::Data<crate::endpoints::token::TokenClients>>,
    revocation: Option<web::Data<crate::endpoints::revocation::RevocationState>>,
    logout: Option<web::Data<crate::revoke::logout::LogoutVerifier>>,
    sessions: Option<web::Data<std::sync::Arc<crate::session::Sessions>>>,
}

/// The well-known documents, `/token`, `/revoke`, `/backchannel-logout` and `/auth/*`.
fn own_endpoints(config: &mut web::ServiceConfig, endpoints: &Endpoints) {
    if let Some(sessions) = &endpoints.sessions {
        config
            .app_data(sessions.clone())
            .route("/auth/login", web::get().to(session::login))
            .route("/auth/callback", web::get().to(session::callback))
            .route("/auth/logout", web::post().to(session::logout))
            .route("/auth/user", web::get().to(session::user))
            .route("/auth/session", web::get().to(session::status));
        if sessions.front_channel {
            config.route(
                "/auth/frontchannel-logout",
                web::get().to(session::frontchannel_logout),
            );
        }
    }
    if let Some(minter) = &endpoints.minter {
        config
            .app_data(minter.clone())
            .route("/.well-known/jwks.json", web::get().to(wellknown::jwks))
            .route(
                "/.well-known/oauth-authorization-server",
                web::get().to(wellknown::metadata),
            );
    }
    if let Some(hsts) = &endpoints.hsts {
        config.app_data(hsts.clone());
    }
    if let Some(clients) = &endpoints.token_clients {
        config
            .app_data(clients.clone())
            .route("/token", web::post().to(token::exchange));
    }
    if let Some(state) = &endpoints.revocation {
        config
            .app_data(state.clone())
            .route("/revoke", web::post().to(revocation::revoke_passthrough));
        if let Some(logout) = &endpoints.logout {
            config.app_data(logout.clone()).route(
                "/backchannel-logout",
                web::post().to(revocation::backchannel_logout),
            );
        }
    }
}

/// The public listener's server.
pub(super) fn server(
    settings: &Settings,
    wired: &Wired,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<Server> {
    let scopes = cors_scopes(settings);
    let any_cors = !scopes.is_empty();
    let compress = settings.compression.enabled;
    let compression = compress.then(|| CompressionPolicy(settings.compression.clone()));
    let proxy_state = wired.proxy.clone();
    let endpoints = Endpoints {
        minter: wired.minter.clone().map(web::Data::new),
        hsts: Hsts::from_settings(settings.server.tls.as_ref()),
        token_clients: wired.token_clients.clone(),
        revocation: wired.revocation.clone(),
        logout: wired.logout.clone(),
        sessions: wired.sessions.clone().map(web::Data::new),
    };
    let max_connections = settings.server.upstream_pool_size;
    let server = HttpServer::new(move || {
        let clients = UpstreamClients::new(&proxy_state.routes.load(), max_connections);
        let mut app = App::new();
        app = app.configure(|config| own_endpoints(config, &endpoints));
        if let Some(policy) = &compression {
            app = app.app_data(policy.clone());
        }
        for (prefix, host, policy) in &scopes {
            let mut scope = web::scope(prefix).default_service(web::to(proxy::handle));
            if let Some(host) = host {
                scope = scope.guard(actix_web::guard::Host(host.clone()));
            }
            app = match policy {
                Some(policy) => app.service(scope.wrap(cors::middleware(policy))),
                None => app.service(scope),
            };
        }
        // Middleware runs bottom-up on the way in: the envelope first (request id, span;
        // on the way out the problem re-dress, security headers and the access log, which
        // sees the final status), then compression, and (only for CORS scopes) canonical
        // routing.
        app.app_data(proxy_state.clone())
            .app_data(clients)
            .wrap(Condition::new(any_cors, from_fn(cors::canonical_routing)))
            .app_data(web::JsonConfig::default().error_handler(extractor_error))
            .app_data(web::QueryConfig::default().error_handler(extractor_error))
            .app_data(web::FormConfig::default().error_handler(extractor_error))
            .app_data(web::PathConfig::default().error_handler(extractor_error))
            .wrap(Condition::new(compress, from_fn(compression::compress)))
            .wrap(envelope::Envelope)
            .default_service(web::to(proxy::handle))
    })
    .workers(super::workers(settings))
    .client_request_timeout(settings.server.client_request_timeout)
    .shutdown_timeout(super::drain_secs(settings))
    .disable_signals();
    Ok(match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    }
    .run())
}
