//! The second floor under Intercom's forwarder, for `scripts/bench`: actix-web as the
//! server and hyper's client (hyper-util's pooled `Client`) to the upstream, no Intercom
//! code. Set beside `floor_awc`, it says whether another client library would move
//! Intercom's floor. Request bodies are read whole before they are sent (hyper's client
//! wants a `Send` body and actix's payload is not); the bench sends none.
//!
//!     floor_hyper LISTEN UPSTREAM WORKERS    e.g. floor_hyper 127.0.0.1:9001 http://127.0.0.1:8080 2

use actix_web::http::header::{self, HeaderMap, HeaderName};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// The headers that belong to one connection, not to the request (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
    "host",
];

struct Upstream {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// actix-web speaks `http` 0.2, hyper 1 speaks `http` 1: the headers cross by bytes.
fn to_hyper(headers: &HeaderMap) -> http1::HeaderMap {
    let mut out = http1::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            http1::HeaderName::from_bytes(name.as_str().as_bytes()),
            http1::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(n, v);
        }
    }
    out
}

async fn forward(req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let upstream = req.app_data::<Upstream>().expect("registered per worker");
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("{}{target}", upstream.base);
    let mut request = http1::Request::builder()
        .method(req.method().as_str())
        .uri(uri)
        .body(Full::new(body))
        .expect("a valid request");
    *request.headers_mut() = to_hyper(req.headers());
    let response = match upstream.client.request(request).await {
        Ok(response) => response,
        Err(_) => return HttpResponse::BadGateway().finish(),
    };
    let status = actix_web::http::StatusCode::from_u16(response.status().as_u16())
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut builder = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str() == "content-length" {
            continue;
        }
        builder.append_header((
            HeaderName::from_bytes(name.as_str().as_bytes()).expect("valid"),
            header::HeaderValue::from_bytes(value.as_bytes()).expect("valid"),
        ));
    }
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let frames = BodyStream::new(response.into_body().map_err(std::io::Error::other));
    let data = frames.filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(Ok::<Bytes, std::io::Error>),
            Err(e) => Some(Err(e)),
        }
    });
    match length {
        Some(len) => builder.body(actix_web::body::SizedStream::new(len, Box::pin(data))),
        None => builder.streaming(data),
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, base, workers] = args.as_slice() else {
        eprintln!("usage: floor_hyper LISTEN UPSTREAM WORKERS");
        std::process::exit(64);
    };
    let base = base.trim_end_matches('/').to_string();
    let workers: usize = workers.parse().expect("WORKERS is a number");
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let client = Client::builder(TokioExecutor::new()).build_http();
            App::new()
                .app_data(Upstream {
                    base: base.clone(),
                    client,
                })
                .default_service(web::to(forward))
        })
        .workers(workers)
        .bind(listen.as_str())?
        .run()
        .await
    })
}
