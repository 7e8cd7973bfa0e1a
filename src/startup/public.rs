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
use crate::http::{compression, envelope, wellknown};
use crate::proxy;
use crate::proxy::forward::UpstreamClients;
use crate::settings::Settings;

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
        // Middleware runs bottom-up on the way in: the envelope first (request id, span;
        // on the way out the problem re-dress, security headers and the access log, which
        // sees the final status), then compression.
        app.app_data(proxy_state.clone())
            .app_data(clients)
            .app_data(web::JsonConfig::default().error_handler(extractor_error))
            .app_data(web::QueryConfig::default().error_handler(extractor_error))
            .app_data(web::FormConfig::default().error_handler(extractor_error))
            .app_data(web::PathConfig::default().error_handler(extractor_error))
            .wrap(Condition::new(compress, from_fn(compression::compress)))
            .wrap(envelope::Envelope)
            // Everything Intercom does not answer itself goes to the proxy, through the
            // CORS policy of the route it falls under (in the route table in force).
            .default_service(actix_service::apply(
                proxy::cors::RouteCors {
                    proxy: proxy_state.clone(),
                },
                web::to(proxy::handle),
            ))
    })
    .workers(super::workers(settings))
    .on_connect(no_delay)
    .client_request_timeout(settings.server.client_request_timeout)
    .shutdown_timeout(super::drain_secs(settings))
    .disable_signals();
    Ok(match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    }
    .run())
}

/// Turns Nagle's algorithm off on a client's connection, as nginx does (`tcp_nodelay`):
/// a response whose body comes after its head (streamed from the upstream: an HTTP/2
/// upstream's `DATA` follows its `HEADERS`, an event stream's events) is two writes, and
/// with Nagle the second waits for the client to acknowledge the first, which a client
/// waiting for the whole answer delays by up to 40 ms.
fn no_delay(connection: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    use actix_web::rt::net::TcpStream;
    let tcp = connection.downcast_ref::<TcpStream>().or_else(|| {
        connection
            .downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<TcpStream>>()
            .map(|tls| tls.get_ref().0)
    });
    if let Some(tcp) = tcp {
        let _ = tcp.set_nodelay(true);
    }
}

#[cfg(test)]
mod tests {
    #[actix_web::test]
    async fn a_client_connection_gets_no_delay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let client = actix_web::rt::net::TcpStream::connect(address)
            .await
            .unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let accepted = actix_web::rt::net::TcpStream::from_std(accepted).unwrap();
        assert!(!accepted.nodelay().unwrap());
        super::no_delay(&accepted, &mut actix_web::dev::Extensions::new());
        assert!(accepted.nodelay().unwrap());
        drop(client);
    }
}
