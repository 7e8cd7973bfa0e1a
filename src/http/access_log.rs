//! The request's span and its one access-log line, through `tracing-actix-web`.
//!
//! The span holds the request id, method and path (never the query, which may hold a
//! token); the line adds the route, status, total and upstream latency and body size.

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::HttpMessage;
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;

use super::request_id::{RequestId, RequestStart};
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

/// Builds the per-request span and writes the access log when the head is sent.
pub struct AccessLog;

impl RootSpanBuilder for AccessLog {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let id = request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| "-".into());
        tracing::info_span!(
            "request",
            request_id = %id,
            method = %request.method(),
            path = %request.path(),
        )
    }

    fn on_request_end<B: MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        let Ok(res) = outcome else {
            // actix turns handler errors into responses; this is an unanswered failure.
            tracing::error!(parent: &span, "request failed before a response was built");
            return;
        };
        let elapsed = res
            .request()
            .extensions()
            .get::<RequestStart>()
            .map(|s| s.0.elapsed())
            .unwrap_or_default();
        let (route, metrics) = match res.response().extensions().get::<RouteTag>() {
            Some(tag) => (tag.name.clone(), tag.metrics.clone()),
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
        let status = res.status().as_u16();
        metrics.record(
            status,
            elapsed.as_secs_f64(),
            upstream.map(|u| u.as_secs_f64()),
            bytes,
        );
        tracing::info!(
            target: "intercom::access",
            parent: &span,
            route = %route,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream_ms = upstream.map(|u| u.as_secs_f64() * 1000.0),
            bytes,
            "access"
        );
    }
}
