//! Logs, traces and metrics: the `tracing` subscriber (JSON or human, and the
//! OpenTelemetry exporter of [`traces`] when configured), and the Prometheus recorder
//! behind `/metrics`.
//!
//! Nothing here ever sees a header value: the access log is built from the method, the
//! canonical path without its query, the route name, the status and timings.

pub mod clients;
pub mod traces;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, TelemetrySettings};

/// The log lines' layer, JSON or human, for whatever subscriber it joins.
fn log_layer<S, W>(
    format: LogFormat,
    writer: W,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    }
}

/// Installs the global subscriber writing to `writer`, and the trace exporter when
/// `[telemetry.traces]` is set (a failure to build it is logged, and logs go on). Later
/// calls are ignored, so tests that start several apps in one process keep the first.
pub fn init_tracing<W>(settings: &TelemetrySettings, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let traced = settings.traces.as_ref().map(traces::layer);
    let failed = match traced {
        // Intercom's own spans go to the exporter, the phases' `debug` ones included,
        // whatever the log level: each layer has its own filter.
        Some(Ok(exporter)) => {
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("intercom", tracing::Level::DEBUG);
            let _ = tracing_subscriber::registry()
                .with(log_layer(settings.log_format, writer).with_filter(filter))
                .with(exporter.with_filter(spans))
                .try_init();
            None
        }
        // Without traces, one global filter: what it disables costs nothing.
        other => {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(log_layer(settings.log_format, writer))
                .try_init();
            other.and_then(Result::err)
        }
    };
    if let Some(e) = failed {
        tracing::error!(error = %e, "traces are off: the exporter cannot be built");
    }
}

/// The process-wide Prometheus handle, installed once as the global recorder.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .expect("static bucket list is not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "intercom_exchange_cache_entry_age_seconds".into(),
                    ),
                    &[
                        1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                    ],
                )
                .expect("static bucket list is not empty")
                .install_recorder()
                .expect("the Prometheus recorder is installed only here");
            describe_metrics();
            handle
        })
        .clone()
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "intercom_http_requests_total",
        "Requests answered, by route and status class"
    );
    describe_histogram!(
        "intercom_http_request_duration_seconds",
        Unit::Seconds,
        "Time from request to response head, by route and status class"
    );
    describe_histogram!(
        "intercom_upstream_duration_seconds",
        Unit::Seconds,
        "Time the upstream took to answer with a response head, by route"
    );
    describe_counter!(
        "intercom_upstream_errors_total",
        "Failed exchanges with an upstream instance, by route, kind (refused, timeout, tls, reset, protocol) and instance"
    );
    describe_counter!(
        "intercom_http_response_bytes_total",
        Unit::Bytes,
        "Response body bytes whose size was known at the head, by route"
    );
    describe_counter!(
        "intercom_exchange_cache_requests_total",
        "Exchange cache lookups by tier (l1, l2), audience and result"
    );
    describe_histogram!(
        "intercom_exchange_cache_entry_age_seconds",
        Unit::Seconds,
        "Age of exchange cache entries when hit, by tier"
    );
    describe_histogram!(
        "intercom_exchange_duration_seconds",
        Unit::Seconds,
        "RFC 8693 token exchange latency at the authorization server, by audience"
    );
    describe_counter!(
        "intercom_revocations_total",
        "Revocations by source (admin, backchannel_logout, rfc7009) and kind"
    );
    describe_counter!(
        "intercom_rate_limit_decisions_total",
        "Rate-limit decisions by route, tier and outcome (never by caller)"
    );
    describe_histogram!(
        "intercom_redis_duration_seconds",
        Unit::Seconds,
        "Redis call latency by operation"
    );
    describe_gauge!(
        "intercom_dependency_state",
        "Each dependency's state as /health/ready reports it: 0 ok, 1 degraded, 2 down"
    );
    describe_gauge!(
        "intercom_tls_certificate_expiry_timestamp_seconds",
        "notAfter of the public listener's certificate, in seconds since the epoch"
    );
    describe_gauge!(
        "intercom_upstream_instances",
        "Instances of each route's upstream, healthy or not"
    );
    describe_gauge!(
        "intercom_ready",
        "1 while the instance is ready to take traffic"
    );
}

/// The request metrics of one route, registered once so the hot path only touches
/// atomics: a counter and a latency histogram per status class, upstream latency and
/// response bytes.
pub struct RequestMetrics {
    by_class: [(metrics::Counter, metrics::Histogram); 5],
    upstream: metrics::Histogram,
    bytes: metrics::Counter,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestMetrics")
    }
}

impl RequestMetrics {
    /// Registers the series for `route` (a configured name, never request data).
    pub fn new(route: &str) -> Self {
        let series = |class: &'static str| {
            let labels = [
                ("route", route.to_string()),
                ("status_class", class.to_string()),
            ];
            (
                metrics::counter!("intercom_http_requests_total", &labels),
                metrics::histogram!("intercom_http_request_duration_seconds", &labels),
            )
        };
        Self {
            by_class: [
                series("1xx"),
                series("2xx"),
                series("3xx"),
                series("4xx"),
                series("5xx"),
            ],
            upstream: metrics::histogram!("intercom_upstream_duration_seconds", "route" => route.to_string()),
            bytes: metrics::counter!("intercom_http_response_bytes_total", "route" => route.to_string()),
        }
    }

    /// The metrics of requests no route matched.
    pub fn unrouted() -> std::sync::Arc<RequestMetrics> {
        static NONE: OnceLock<std::sync::Arc<RequestMetrics>> = OnceLock::new();
        NONE.get_or_init(|| std::sync::Arc::new(RequestMetrics::new("none")))
            .clone()
    }

    /// Records one answered request.
    pub fn record(
        &self,
        status: u16,
        seconds: f64,
        upstream_seconds: Option<f64>,
        bytes: Option<u64>,
    ) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let (count, duration) = &self.by_class[class];
        count.increment(1);
        duration.record(seconds);
        if let Some(up) = upstream_seconds {
            self.upstream.record(up);
        }
        if let Some(bytes) = bytes {
            self.bytes.increment(bytes);
        }
    }
}

/// `GET /metrics` on the admin listener: the Prometheus text format.
pub async fn render_metrics(
    handle: actix_web::web::Data<PrometheusHandle>,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}
