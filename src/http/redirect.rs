//! The plain-HTTP listener of `server.tls.redirect_listen`: it serves nothing, it only
//! answers 308 to the same path over HTTPS.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// The plain-HTTP listener that only redirects to HTTPS on `https_port`, and only to
/// one of `hosts` (the configured names: the client's `Host` picks among them, never
/// adds to them).
pub fn server(
    listener: TcpListener,
    hosts: Vec<String>,
    https_port: u16,
    drain_secs: u64,
) -> std::io::Result<Server> {
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
                    .map(|h| super::path::strip_port(h).to_ascii_lowercase());
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
