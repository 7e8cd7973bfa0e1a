//! OpenTelemetry traces: an Intercom process exports its spans over OTLP/HTTP to a
//! receiver the test runs (a test double: no OpenTelemetry collector package exists
//! here; it decodes the protobuf with the crates the exporter encodes with). The spans
//! arrive with the caller's parent when the caller is trusted, the phases as children
//! of the request, no token in any attribute, the trace id in the access log, and the
//! upstream sees Intercom's `traceparent`.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

use crate::helpers::*;

/// One span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: Vec<(String, String)>,
}

fn text(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The OTLP/HTTP receiver: `POST /v1/traces` with protobuf bodies.
struct OtlpReceiver {
    port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
    handle: actix_web::dev::ServerHandle,
}

async fn receive(body: web::Bytes, spans: web::Data<Arc<Mutex<Vec<Received>>>>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut kept = spans.lock().unwrap();
    for resource in request.resource_spans {
        let attributes = resource
            .resource
            .map(|r| text(&r.attributes))
            .unwrap_or_default();
        let service = attributes
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                kept.push(Received {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name.clone(),
                    attributes: text(&span.attributes),
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .finish()
}

impl OtlpReceiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let shared = spans.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(shared.clone()))
                        .app_data(web::PayloadConfig::new(16 << 20))
                        .route("/v1/traces", web::post().to(receive))
                })
                .workers(1)
                .disable_signals()
                .listen(listener)
                .unwrap()
                .run();
                tx.send(server.handle()).unwrap();
                let _ = server.await;
            });
        });
        Self {
            port,
            spans,
            handle: rx.recv().unwrap(),
        }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Received> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)));
    }
}

/// An Intercom process in front of the shared AS and `upstream`, exporting every trace
/// to `receiver`; `server` adds lines to `[server]`.
async fn traced_intercom(
    dir: &std::path::Path,
    auth: &TestAuthServer,
    secrets: &std::path::Path,
    upstream: &TestUpstream,
    receiver: &OtlpReceiver,
    server: &str,
) -> (ChildProcess, u16) {
    let config = |port: u16, admin: u16| {
        format!(
            r#"
                [server]
                listen = "127.0.0.1:{port}"
                admin_listen = "127.0.0.1:{admin}"
                {server}
                [telemetry.traces]
                endpoint = "http://127.0.0.1:{}/v1/traces"
                sample_ratio = 1.0
                {}
                [[routes]]
                name = "traced"
                prefix = "/api"
                upstreams = ["{}"]
                auth = "bearer"
            "#,
            receiver.port,
            auth_config(auth, secrets, ""),
            upstream.url(),
        )
    };
    // The batch processor exports every 100 ms instead of every 5 s.
    let env = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let (process, port, _) = serve_process_with_env(dir, &env, config).await;
    (process, port)
}

async fn call(port: u16, token: &str, traceparent: &str) -> serde_json::Value {
    let mut res = test_client()
        .get(format!("http://127.0.0.1:{port}/api/orders?secret=q"))
        .insert_header(("authorization", format!("Bearer {token}")))
        .insert_header(("traceparent", traceparent))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[actix_web::test]
async fn spans_continue_a_trusted_callers_trace_and_the_upstream_sees_the_context() {
    let auth = TestAuthServer::shared().await;
    let upstream = TestUpstream::start("traced");
    let receiver = OtlpReceiver::start();
    let (dir, secrets) = secrets_file();
    let trusted = "trusted_proxies = [\"127.0.0.1/32\"]";
    let (process, port) =
        traced_intercom(dir.path(), &auth, &secrets, &upstream, &receiver, trusted).await;
    let token = auth.user_token("tracy", "profile", 600).await;
    let seen = call(port, &token, &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")).await;

    let mut spans = Vec::new();
    let arrived = eventually(PATIENCE, async || {
        spans = receiver.of_trace(CALLER_TRACE);
        ["request", "introspection", "upstream"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    })
    .await;
    assert!(arrived, "spans of the caller's trace: {spans:#?}");
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap().clone();
    let request = named("request");
    assert_eq!(request.service, "intercom");
    assert_eq!(
        request.parent_span_id, CALLER_SPAN,
        "the caller's span is the parent"
    );
    for phase in ["introspection", "upstream"] {
        assert_eq!(named(phase).parent_span_id, request.span_id, "{phase}");
    }
    let path = request
        .attributes
        .iter()
        .find(|(k, _)| k == "path")
        .unwrap();
    assert_eq!(path.1, "/api/orders", "the path, never the query");
    let upstream_span = named("upstream");
    assert!(upstream_span
        .attributes
        .iter()
        .any(|(k, v)| k == "route" && v == "traced"));

    // The upstream saw Intercom's context: the caller's trace, the upstream span's id.
    let sent = seen["headers"]["traceparent"][0].as_str().unwrap();
    assert_eq!(
        sent,
        format!("00-{CALLER_TRACE}-{}-01", upstream_span.span_id)
    );

    // Nothing of the token in any span.
    for span in receiver.spans.lock().unwrap().iter() {
        for (key, value) in &span.attributes {
            assert!(
                !value.contains(&token) && !value.contains("Bearer"),
                "{key}={value}"
            );
            assert!(!value.contains("secret=q"), "{key}={value}");
        }
    }
    // The access log line names the trace.
    let found = eventually(PATIENCE, async || {
        process.log_text().lines().any(|l| {
            l.contains("\"access\"") && l.contains(&format!("\"trace_id\":\"{CALLER_TRACE}\""))
        })
    })
    .await;
    assert!(found, "{}", process.log_text());
}

#[actix_web::test]
async fn an_untrusted_callers_trace_context_is_not_continued() {
    let auth = TestAuthServer::shared().await;
    let upstream = TestUpstream::start("traced");
    let receiver = OtlpReceiver::start();
    let (dir, secrets) = secrets_file();
    // No trusted proxies: the loopback caller is not believed.
    let (_process, port) =
        traced_intercom(dir.path(), &auth, &secrets, &upstream, &receiver, "").await;
    let token = auth.user_token("tracy", "profile", 600).await;
    let seen = call(port, &token, &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")).await;
    let sent = seen["headers"]["traceparent"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !sent.contains(CALLER_TRACE),
        "the client's trace went on: {sent}"
    );
    let own_trace = sent.split('-').nth(1).unwrap().to_string();
    let mut spans = Vec::new();
    let arrived = eventually(PATIENCE, async || {
        spans = receiver.of_trace(&own_trace);
        spans.iter().any(|s| s.name == "request")
    })
    .await;
    assert!(arrived, "{spans:#?}");
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert!(
        request.parent_span_id.is_empty(),
        "a root span: {request:?}"
    );
    assert!(receiver.of_trace(CALLER_TRACE).is_empty());
}
