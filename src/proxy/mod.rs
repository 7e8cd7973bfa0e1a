//! The proxy: route table, path canonicalization, header hygiene and the forwarder.
//!
//! [`handle`] is the request path, one phase per step and in this order:
//! canonicalize → pick route → rewrite → forward → filter response → record.
//! Authentication, authorization and limits slot in after "pick route" as they land.

pub mod forward;
pub mod headers;
pub mod path;
pub mod routes;
pub mod upstreams;

use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use ipnet::IpNet;

use crate::http::access_log::{RouteTag, UpstreamLatency};
use crate::http::errors::ApiError;
use crate::http::request_id::{self, RequestId};
use forward::{BodyFraming, OutboundRequest, UpstreamAnswer, UpstreamClients};
use headers::ClientView;
use routes::{Match, Route, RouteTable};

/// What the proxy shares across workers.
pub struct ProxyState {
    pub routes: RouteTable,
    pub trusted_proxies: Vec<IpNet>,
}

/// The default service of the public listener: every request not served by Intercom
/// itself goes through here.
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ProxyState>,
) -> HttpResponse {
    let clients = req
        .app_data::<UpstreamClients>()
        .expect("startup registers the upstream clients on every worker");
    let mut route_tag: Option<RouteTag> = None;
    let result = proxy(&req, payload, &state, clients, &mut route_tag).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => error.at(&req).error_response(),
    };
    if let Some(tag) = route_tag {
        response.extensions_mut().insert(tag);
    }
    response
}

async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    state: &ProxyState,
    clients: &UpstreamClients,
    route_tag: &mut Option<RouteTag>,
) -> Result<HttpResponse, ApiError> {
    let canonical = path::canonicalize(req.uri().path())?;
    let route = pick_route(req, state, &canonical)?;
    *route_tag = Some(RouteTag {
        name: route.name.clone(),
        metrics: route.metrics.clone(),
    });
    let outbound = rewrite(req, state, route, &canonical);
    let answer = forward::send(clients, route, outbound, payload).await?;
    Ok(filter_response(route, answer, req))
}

/// Picks the route for the canonical path, or answers 404 / 405.
fn pick_route<'a>(
    req: &HttpRequest,
    state: &'a ProxyState,
    canonical: &str,
) -> Result<&'a Route, ApiError> {
    match state
        .routes
        .find(request_host(req), canonical, req.method())
    {
        Match::Found(route) => Ok(route),
        Match::WrongMethod(allow) => Err(ApiError::MethodNotAllowed { allow }),
        Match::None => Err(ApiError::NotFound),
    }
}

/// The host the client asked for: the request target's authority, else `Host`.
fn request_host(req: &HttpRequest) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// Builds the upstream request: new path, the client's headers less hop-by-hop ones,
/// `X-Forwarded-*`, then the route's rules.
fn rewrite(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
    canonical: &str,
) -> OutboundRequest {
    let mut path_and_query = path::encode(&route.upstream_path(canonical));
    if let Some(query) = req.uri().query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let framing = BodyFraming::of(req.headers());
    let mut headers: HeaderMap = req.headers().clone();
    headers::remove_hop_by_hop(&mut headers);
    let view = ClientView {
        peer: req.peer_addr().map(|a| a.ip()),
        // Not `connection_info()`: it believes the client's `X-Forwarded-Proto`.
        scheme: if req.app_config().secure() {
            "https"
        } else {
            "http"
        },
        host: request_host(req),
    };
    headers::set_forwarded(&mut headers, &view, &state.trusted_proxies);
    if let Some(id) = req.extensions().get::<RequestId>() {
        if let Ok(value) = header::HeaderValue::from_str(&id.0) {
            headers.insert(request_id::X_REQUEST_ID, value);
        }
    }
    route.request_headers.apply(&mut headers);
    OutboundRequest {
        method: req.method().clone(),
        path_and_query,
        headers,
        framing,
    }
}

/// Applies the route's response rules and records the upstream's latency.
fn filter_response(route: &Route, mut answer: UpstreamAnswer, req: &HttpRequest) -> HttpResponse {
    route.response_headers.apply(&mut answer.headers);
    let latency = answer.latency;
    let mut response = forward::into_response(answer, req.method());
    response.extensions_mut().insert(UpstreamLatency(latency));
    response
}
