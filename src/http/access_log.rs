//! The request's span and its one access-log line (written by [`super::envelope`]).
//!
//! The span holds the request id, method and path (never the query, which may hold a
//! token); the line adds the route, status, total and upstream latency, body size and,
//! for an answer that hides it from the client, the error's cause.

use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use tracing::Span;

use crate::telemetry::RequestMetrics;

/// The route that served a request, set by the proxy on the response.
#[derive(Clone)]
pub struct RouteTag {
    pub name: std::sync::Arc<str>,
    pub metrics: std::sync::Arc<RequestMetrics>,
}

/// How long the upstream took to answer with its head.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLatency(pub std::time::Duration);

/// The request's span: its id, method and path (never the query).
pub fn span(id: &super::request_id::RequestId, request: &ServiceRequest) -> Span {
    let span = tracing::info_span!(
        "request",
        request_id = %id.as_str(),
        method = %request.method(),
        path = %request.path(),
    );
    if crate::telemetry::traces::on() {
        let peer = request.peer_addr().map(|a| a.ip());
        crate::telemetry::traces::continue_from(&span, peer, request.headers());
    }
    span
}

/// Counts the answer in its route's metrics and writes the access-log line.
pub fn record<B: MessageBody>(span: &Span, res: &ServiceResponse<B>, elapsed: Duration) {
    let tag = res.response().extensions().get::<RouteTag>().cloned();
    let (route, metrics) = match tag {
        Some(tag) => (tag.name, tag.metrics),
        None => ("none".into(), RequestMetrics::unrouted()),
    };
    let upstream = res
        .response()
        .extensions()
        .get::<UpstreamLatency>()
        .map(|u| u.0);
    let bytes = match res.response().body().size() {
        BodySize::Sized(n) => Some(n),
        BodySize::None => Some(0),
        BodySize::Stream => None,
    };
    let cause = res
        .response()
        .extensions()
        .get::<super::errors::ErrorCause>()
        .map(|c| c.0.clone());
    let status = res.status().as_u16();
    metrics.record(
        status,
        elapsed.as_secs_f64(),
        upstream.map(|u| u.as_secs_f64()),
        bytes,
    );
    tracing::info!(
        target: "intercom::access",
        parent: span,
        route = %route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_ms = upstream.map(|u| u.as_secs_f64() * 1000.0),
        bytes,
        cause = cause.as_deref(),
        trace_id = crate::telemetry::traces::trace_id(span).as_deref(),
        "access"
    );
}
