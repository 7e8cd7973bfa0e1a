//! OpenTelemetry traces, off by default: the request's `tracing` span and its phases'
//! spans (`intercom` targets, `debug` level, so they cost nothing while traces are off)
//! become OpenTelemetry spans, exported over OTLP/HTTP by the SDK's batch processor on
//! its own thread. The W3C trace context (`traceparent`, `tracestate`) of a caller it is
//! configured to believe is continued; the context of each call Intercom makes (to an
//! upstream, to the authorization server) is sent with it.
//!
//! No span attribute holds a header value, a token or a query string: the spans carry
//! what the access log does (method, path without its query, route, status).

use std::net::IpAddr;
use std::sync::OnceLock;

use ipnet::IpNet;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::settings::{TraceContextSource, TraceSettings};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// Whose trace context is continued.
static ACCEPT: OnceLock<TraceContextSource> = OnceLock::new();
/// The peers `trusted_proxies` names (`server.trusted_proxies`), once start-up told.
static TRUSTED: OnceLock<Vec<IpNet>> = OnceLock::new();

/// True once traces are exported.
pub fn on() -> bool {
    PROVIDER.get().is_some()
}

/// The exporting layer for `settings`, or why it cannot be built. Call before any async
/// runtime starts (the exporter's blocking HTTP client may not be made inside one).
pub(super) fn layer<S>(
    settings: &TraceSettings,
) -> Result<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(settings.endpoint.as_str())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(settings.export_timeout)
        .build()
        .map_err(|e| format!("the OTLP exporter: {e}"))?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("intercom");
    let _ = PROVIDER.set(provider);
    let _ = ACCEPT.set(settings.accept_context_from);
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false))
}

/// The peers `accept_context_from = "trusted_proxies"` believes: the first start's
/// `server.trusted_proxies` (the subscriber, too, is the first start's).
pub fn trust(proxies: &[IpNet]) {
    let _ = TRUSTED.set(proxies.to_vec());
}

/// The caller's headers as the propagator reads them.
struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Continues the caller's trace in `span` when its context is believed: from anyone,
/// or from a trusted proxy. Before `span` is first entered.
pub fn continue_from(
    span: &Span,
    peer: Option<IpAddr>,
    headers: &actix_web::http::header::HeaderMap,
) {
    let Some(source) = ACCEPT.get() else {
        return;
    };
    let believed = match source {
        TraceContextSource::All => true,
        TraceContextSource::None => false,
        TraceContextSource::TrustedProxies => peer.is_some_and(|ip| {
            TRUSTED
                .get()
                .is_some_and(|nets| nets.iter().any(|n| n.contains(&ip)))
        }),
    };
    if !believed || headers.get("traceparent").is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

/// The pairs of the trace context a call made within `span` sends.
struct Pairs(Vec<(&'static str, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((key, value));
    }
}

/// `traceparent` (and `tracestate`) for a call made within `span`; none while traces
/// are off.
pub fn context_headers(span: &Span) -> Vec<(&'static str, String)> {
    if !on() {
        return Vec::new();
    }
    let mut pairs = Pairs(Vec::new());
    TraceContextPropagator::new().inject_context(&span.context(), &mut pairs);
    pairs.0
}

/// `request` (to the AS) with the current span's trace context; unchanged while traces
/// are off.
pub fn propagate(mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    for (name, value) in context_headers(&Span::current()) {
        request = request.header(name, value);
    }
    request
}

/// The trace id of `span`, for the access log; `None` while traces are off.
pub fn trace_id(span: &Span) -> Option<String> {
    if !on() {
        return None;
    }
    let context = span.context();
    let id = context.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

/// Exports what is left; at shutdown.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}
