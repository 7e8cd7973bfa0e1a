//! Small real upstreams that answer with what they received.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use sha2::{Digest, Sha256};

use super::*;

/// A small real HTTP server that answers with what it received, as JSON: method, path,
/// query, headers, body length and SHA-256. Special paths: any ending in `/quiet`
/// (200 `quiet`, no echo), `/slow?ms=N`, `/events` (SSE, see `release_events`),
/// `/download?bytes=N` (a deterministic stream), `/status/N`.
pub struct TestUpstream {
    pub port: u16,
    pub name: String,
    hits: Arc<AtomicU64>,
    required_key: Arc<Mutex<Option<String>>>,
    release: Arc<tokio::sync::Notify>,
    handle: actix_web::dev::ServerHandle,
}

#[derive(Clone)]
struct UpstreamState {
    name: String,
    hits: Arc<AtomicU64>,
    /// When set, requests whose `x-api-key` differs are answered 401.
    required_key: Arc<Mutex<Option<String>>>,
    /// `/events` sends its last event when the test releases it.
    release: Arc<tokio::sync::Notify>,
}

impl TestUpstream {
    /// Starts on a port the OS picks; the socket is bound before the port is known, so
    /// nothing else can take it.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// Starts on `port` (to bring an upstream back where Intercom expects it).
    pub fn start_on(name: &str, port: u16) -> Self {
        Self::start_with(name, TcpListener::bind(("127.0.0.1", port)).unwrap())
    }

    /// Starts on `address` (another loopback address, `127.0.0.2:PORT`).
    pub fn start_at(name: &str, address: &str) -> Self {
        Self::start_with(name, TcpListener::bind(address).unwrap())
    }

    fn start_with(name: &str, listener: TcpListener) -> Self {
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU64::new(0));
        let required_key = Arc::new(Mutex::new(None));
        let release = Arc::new(tokio::sync::Notify::new());
        let state = UpstreamState {
            name: name.to_string(),
            hits: hits.clone(),
            required_key: required_key.clone(),
            release: release.clone(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(state.clone()))
                        .route("/slow", web::to(slow))
                        .route("/trickle", web::to(trickle))
                        .route("/events", web::to(events))
                        .route("/download", web::to(download))
                        .route("/status/{code}", web::to(status))
                        .default_service(web::to(echo))
                })
                .workers(2)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(listener)
                .unwrap()
                .run();
                tx.send(server.handle()).unwrap();
                let _ = server.await;
            });
        });
        let handle = rx.recv().unwrap();
        assert!(wait_for_port(port, Duration::from_secs(5)));
        Self {
            port,
            name: name.to_string(),
            hits,
            required_key,
            release,
            handle,
        }
    }

    /// Lets `/events` send its last event.
    pub fn release_events(&self) {
        self.release.notify_one();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, answer 401 unless `x-api-key` is `key` (like a service that rotated
    /// its API key).
    pub fn require_key(&self, key: &str) {
        *self.required_key.lock().unwrap() = Some(key.to_string());
    }

    /// Requests this upstream has received.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(handle.stop(false));
        });
    }
}

async fn echo(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<UpstreamState>,
) -> HttpResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let required = state.required_key.lock().unwrap().clone();
    if let Some(key) = required {
        let sent = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
        if sent != Some(key.as_str()) {
            return HttpResponse::Unauthorized().finish();
        }
    }
    if req.path().ends_with("/quiet") {
        // Answers without echoing: what a browser may see of an API's answer.
        return HttpResponse::Ok().content_type("text/plain").body("quiet");
    }
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(vec![]))
            .as_array_mut()
            .unwrap()
            .push(value.to_str().unwrap_or("<binary>").into());
    }
    let mut response = HttpResponse::Ok();
    response
        .insert_header(("x-upstream", state.name.clone()))
        .insert_header(("x-upstream-internal", "leak"))
        .insert_header(("server", "upstream-httpd/1.2.3"))
        .insert_header(("x-powered-by", "php/5.6"));
    // `x-echo-response-header: name: value` makes the answer carry that header.
    if let Some((name, value)) = req
        .headers()
        .get("x-echo-response-header")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(": "))
    {
        response.insert_header((name.to_string(), value.to_string()));
    }
    response.json(serde_json::json!({
        "upstream": state.name,
        "method": req.method().as_str(),
        "path": req.path(),
        "query": req.query_string(),
        "headers": headers,
        "body_len": len,
        "body_sha256": hex::encode(hasher.finalize()),
    }))
}

/// The `?ms=N` of `/slow` and `/trickle` (1000 when absent).
fn ms_param(req: &HttpRequest) -> u64 {
    req.query_string()
        .strip_prefix("ms=")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

async fn slow(req: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let ms = ms_param(&req);
    actix_web::rt::time::sleep(Duration::from_millis(ms)).await;
    HttpResponse::Ok().body(format!("slept {ms}ms"))
}

/// The head and a first chunk at once, the rest of the body after `ms`.
async fn trickle(req: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let ms = ms_param(&req);
    let first = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"first;"))
    });
    let rest = futures_util::stream::once(async move {
        actix_web::rt::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"rest"))
    });
    HttpResponse::Ok().streaming(futures_util::StreamExt::chain(first, rest))
}

/// Server-sent events: `first` at once, `last` when the test calls `release_events`.
async fn events(state: web::Data<UpstreamState>) -> HttpResponse {
    let first = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"data: first\n\n"))
    });
    let release = state.release.clone();
    let last = futures_util::stream::once(async move {
        release.notified().await;
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"data: last\n\n"))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(futures_util::StreamExt::chain(first, last))
}

/// The byte at position `i` of every deterministic test stream.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

/// `len` deterministic bytes as a stream of 64 KiB chunks.
pub fn pattern_stream(
    len: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + 'static {
    const CHUNK: u64 = 64 * 1024;
    futures_util::stream::iter((0..len.div_ceil(CHUNK)).map(move |c| {
        let start = c * CHUNK;
        let end = (start + CHUNK).min(len);
        Ok(bytes::Bytes::from(
            (start..end).map(pattern_byte).collect::<Vec<u8>>(),
        ))
    }))
}

/// The SHA-256 of `pattern_stream(len)`, in hex.
pub fn pattern_sha256(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    for i in 0..len {
        buf.push(pattern_byte(i));
        if buf.len() == 64 * 1024 {
            hasher.update(&buf);
            buf.clear();
        }
    }
    hasher.update(&buf);
    hex::encode(hasher.finalize())
}

async fn download(req: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let len: u64 = req
        .query_string()
        .strip_prefix("bytes=")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .streaming(pattern_stream(len))
}

async fn status(path: web::Path<u16>, state: web::Data<UpstreamState>) -> HttpResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(*path).unwrap()).finish()
}

/// Starts `tests/upstreams/<script>` with .venv's Python on a free port (its first
/// argument, then `args`) and waits until it prints `ready`; another port when it exits
/// (the port was taken).
fn python_server(name: &'static str, script: &str, args: &[&str]) -> (u16, ChildProcess) {
    for attempt in 1..=PORT_ATTEMPTS {
        let port = free_port();
        let mut cmd = std::process::Command::new(repo_root().join(".venv/bin/python"));
        cmd.arg(repo_root().join("tests/upstreams").join(script))
            .arg(port.to_string())
            .args(args);
        let mut process = ChildProcess::spawn(name, cmd);
        let deadline = std::time::Instant::now() + PATIENCE;
        while !process.log_text().contains("ready") && !process.exited() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not start:\n{}",
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if !process.exited() {
            return (port, process);
        }
        assert!(
            attempt < PORT_ATTEMPTS,
            "{name} did not start:\n{}",
            process.log_text()
        );
    }
    unreachable!("the last attempt panics")
}

/// A real WebSocket server (`tests/upstreams/ws_echo.py`, the Python `websockets`
/// package in .venv): it first sends what the handshake carried, as JSON, then echoes.
pub struct TestWebSocketServer {
    pub port: u16,
    pub process: ChildProcess,
}

impl TestWebSocketServer {
    pub fn start() -> Self {
        let (port, process) = python_server("ws_echo", "ws_echo.py", &[]);
        Self { port, process }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A real DNS server (`tests/upstreams/dns.py`, the Python `dnslib` package in .venv)
/// on UDP and TCP, answering A and AAAA queries from records the test sets.
pub struct TestDnsServer {
    pub port: u16,
    pub process: ChildProcess,
    records: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TestDnsServer {
    /// Starts answering with `records`, `{"name": ["address", ...]}`.
    pub fn start(records: serde_json::Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.json");
        std::fs::write(&path, records.to_string()).unwrap();
        let (port, process) = python_server("dns", "dns.py", &[path.to_str().unwrap()]);
        Self {
            port,
            process,
            records: path,
            _dir: dir,
        }
    }

    /// Answers with `records` from the next query on.
    pub fn set(&self, records: serde_json::Value) {
        let aside = self.records.with_extension("new");
        std::fs::write(&aside, records.to_string()).unwrap();
        std::fs::rename(aside, &self.records).unwrap();
    }
}
