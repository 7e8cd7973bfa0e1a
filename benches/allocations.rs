//! Heap allocations per request, counted by a wrapping global allocator over the
//! binary's own (mimalloc): Intercom's open route and its cached phantom route against
//! the floor (actix-web + awc and no Intercom code, `examples/floor_awc.rs`) and a direct
//! call, all in this one process, so every count includes the same client and upstream.
//! What a contender adds over the direct call is its own work per request.
//!
//! Run: `cargo bench --bench allocations` (after `scripts/test deps`: it starts the test
//! authorization server, tests/authserver, for the phantom route's token).
//! `ALLOC_TRACE=intercom-noauth cargo bench --bench allocations` also prints where one
//! request of that contender allocates inside Intercom (the innermost `intercom::` frame
//! of each allocation's backtrace, counted; `ALLOC_TRACE_FILE=path` keeps the backtraces).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpServer};

#[allow(dead_code)] // its `main` is the example's, not ours
#[path = "../examples/floor_awc.rs"]
mod floor_awc;
#[allow(dead_code)] // the other benches use the rest
mod support;

/// Counts every allocation (a `realloc` counts as one) and the bytes asked for.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// While set, every allocation's backtrace is kept (`ALLOC_TRACE`).
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while a backtrace is taken: its own allocations are not traced.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn counted(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) && !IN_TRACE.with(|t| t.replace(true)) {
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        TRACES.lock().unwrap().push(trace);
        IN_TRACE.with(|t| t.set(false));
    }
}

/// The innermost frame of Intercom's own code in a backtrace, or what called it.
fn intercom_frame(trace: &str) -> String {
    trace
        .lines()
        .map(str::trim)
        .filter_map(|l| l.split_once(": ").map(|(_, f)| f))
        .find(|f| f.contains("intercom::") && !f.contains("intercom::telemetry"))
        .map(|f| f.rsplit_once("::h").map_or(f, |(name, _)| name).to_string())
        .unwrap_or_else(|| "(outside Intercom's code: the client, the upstream, actix)".into())
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Requests counted per contender (after as many to warm up).
const REQUESTS: u64 = 5_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test authorization server, stopped when dropped.
struct AuthServer(Child);

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_auth_server(port: u16) -> AuthServer {
    let child = Command::new("node")
        .arg("server.mjs")
        .current_dir("tests/authserver")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs tests/authserver (scripts/test deps installs it)");
    let auth = AuthServer(child);
    let client = awc::Client::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let discovery = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
    while !matches!(client.get(&discovery).send().await, Ok(r) if r.status().is_success()) {
        assert!(
            Instant::now() < deadline,
            "the authorization server did not start"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    auth
}

/// Allocations and bytes per request over `REQUESTS` sequential keep-alive requests.
async fn per_request(
    client: &awc::Client,
    url: &str,
    bearer: Option<&str>,
    trace: bool,
) -> (f64, f64) {
    let call = || async {
        let mut request = client.get(url);
        if let Some(token) = bearer {
            request = request.insert_header(("authorization", format!("Bearer {token}")));
        }
        let mut res = request.send().await.expect("the contender answers");
        assert!(res.status().is_success(), "{url}: {}", res.status());
        res.body().await.unwrap();
    };
    for _ in 0..REQUESTS {
        call().await;
    }
    let (a, b) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..REQUESTS {
        call().await;
    }
    let n = REQUESTS as f64;
    let counts = (
        (ALLOCATIONS.load(Ordering::Relaxed) - a) as f64 / n,
        (BYTES.load(Ordering::Relaxed) - b) as f64 / n,
    );
    if trace {
        TRACING.store(true, Ordering::Relaxed);
        call().await;
        TRACING.store(false, Ordering::Relaxed);
        let mut by_frame = BTreeMap::<String, u32>::new();
        let traces: Vec<String> = TRACES.lock().unwrap().drain(..).collect();
        if let Ok(file) = std::env::var("ALLOC_TRACE_FILE") {
            std::fs::write(file, traces.join("\n----\n")).unwrap();
        }
        for t in traces {
            *by_frame.entry(intercom_frame(&t)).or_default() += 1;
        }
        let mut rows: Vec<_> = by_frame.into_iter().collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.1));
        println!("allocations of one request to {url}, by the innermost frame of Intercom's code:");
        for (frame, count) in rows {
            println!("  {count:4}  {frame}");
        }
    }
    counts
}

fn main() {
    actix_web::rt::System::new().block_on(async {
        let upstream = HttpServer::new(|| App::new().default_service(web::to(|| async { "ok" })))
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
        let upstream_port = upstream.addrs()[0].port();
        actix_web::rt::spawn(upstream.run());
        let upstream_url = format!("http://127.0.0.1:{upstream_port}");

        let floor_port = free_port();
        let floor = floor_awc::server(&format!("127.0.0.1:{floor_port}"), &upstream_url, 1)
            .expect("the floor binds");
        actix_web::rt::spawn(floor);

        let as_port = free_port();
        let _auth = start_auth_server(as_port).await;
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.toml");
        std::fs::write(&secrets, "intercom_client_secret = \"intercom-dev-secret\"\n").unwrap();
        let settings = support::settings(&format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 1
[telemetry]
log_level = "warn"
[secrets]
file = "{secrets}"
[auth_server]
issuer = "http://127.0.0.1:{as_port}"
client_id = "intercom"
client_secret = "file:intercom_client_secret"
[[routes]]
name = "noauth"
prefix = "/open"
upstreams = ["{upstream_url}"]
[[routes]]
name = "phantom"
prefix = "/api"
upstreams = ["{upstream_url}"]
auth = "bearer"
audience = "bench"
required_scopes = ["invoice_*"]
"#,
            secrets = secrets.display()
        ));
        let intercom = intercom::startup::Application::build(settings)
            .await
            .expect("Intercom builds");
        let intercom_port = intercom.port();
        actix_web::rt::spawn(intercom.run_until_stopped());

        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let mut token = client
            .post(format!("http://127.0.0.1:{as_port}/__test/token"))
            .query(&[("sub", "bench"), ("scope", "invoice_read"), ("ttl", "3600")])
            .unwrap()
            .send()
            .await
            .expect("the AS issues a token");
        let token: serde_json::Value = token.json().await.unwrap();
        let token = token["access_token"].as_str().unwrap().to_string();

        let intercom_url = format!("http://127.0.0.1:{intercom_port}");
        let contenders = [
            ("direct", format!("{upstream_url}/x"), None),
            ("floor-awc", format!("http://127.0.0.1:{floor_port}/x"), None),
            ("intercom-noauth", format!("{intercom_url}/open/x"), None),
            ("intercom-phantom", format!("{intercom_url}/api/x"), Some(token.as_str())),
        ];
        println!("{REQUESTS} requests each after as many to warm up; the same client and upstream in every row");
        println!(
            "| contender | allocations / request | bytes / request | allocations over direct | over floor-awc |"
        );
        println!("|---|---:|---:|---:|---:|");
        let mut direct = 0.0;
        let mut floor = 0.0;
        for (name, url, bearer) in &contenders {
            let trace = std::env::var("ALLOC_TRACE").is_ok_and(|t| t == *name);
            let (allocations, bytes) = per_request(&client, url, *bearer, trace).await;
            match *name {
                "direct" => direct = allocations,
                "floor-awc" => floor = allocations,
                _ => {}
            }
            let over_floor = if name.starts_with("intercom") {
                format!("{:+.1}", allocations - floor)
            } else {
                String::new()
            };
            println!(
                "| {name} | {allocations:.1} | {bytes:.0} | {:+.1} | {over_floor} |",
                allocations - direct
            );
        }
    });
}
