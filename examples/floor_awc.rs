//! The floor under Intercom's forwarder, for `scripts/bench`: actix-web + awc and no
//! Intercom code. It accepts, forwards to one upstream with the client's end-to-end
//! headers, streams both bodies, and answers. No middleware, no routes, no auth: what
//! it costs is what the stack costs, so Intercom's no-auth route can be measured against
//! it.
//!
//!     floor_awc LISTEN UPSTREAM WORKERS      e.g. floor_awc 127.0.0.1:9000 http://127.0.0.1:8080 2

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap, HeaderName};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// The headers that belong to one connection, not to the request (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in &HOP_BY_HOP {
        out.remove(name);
    }
    out.remove(header::TRANSFER_ENCODING);
    out.remove(header::CONTENT_LENGTH);
    out.remove(header::HOST);
    out
}

struct Upstream {
    base: String,
    client: awc::Client,
}

async fn forward(req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let upstream = req.app_data::<Upstream>().expect("registered per worker");
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut request = upstream
        .client
        .request(req.method().clone(), format!("{}{target}", upstream.base));
    *request.headers_mut() = end_to_end(req.headers());
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let sent = match length {
        Some(len) if len > 0 => request.send_body(SizedStream::new(len, payload)).await,
        _ if chunked => request.send_stream(payload).await,
        _ => request.send().await,
    };
    let response = match sent {
        Ok(response) => response,
        Err(_) => return HttpResponse::BadGateway().finish(),
    };
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let headers = end_to_end(response.headers());
    let mut builder = HttpResponse::build(response.status());
    let mut answer = match length {
        Some(len) => builder.body(SizedStream::new(len, response)),
        None => builder.streaming(response),
    };
    *answer.headers_mut() = headers;
    answer
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, base, workers] = args.as_slice() else {
        eprintln!("usage: floor_awc LISTEN UPSTREAM WORKERS");
        std::process::exit(64);
    };
    let workers: usize = workers.parse().expect("WORKERS is a number");
    actix_web::rt::System::new().block_on(async move { server(listen, base, workers)?.await })
}

/// The floor's server, unstarted (`benches/allocations.rs` runs it in its own process).
pub fn server(listen: &str, base: &str, workers: usize) -> std::io::Result<actix_web::dev::Server> {
    let base = base.trim_end_matches('/').to_string();
    Ok(HttpServer::new(move || {
        let connector = awc::Connector::new().limit(256);
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .no_default_headers()
            .finish();
        App::new()
            .app_data(Upstream {
                base: base.clone(),
                client,
            })
            .default_service(web::to(forward))
    })
    .workers(workers)
    .bind(listen)?
    .run())
}
