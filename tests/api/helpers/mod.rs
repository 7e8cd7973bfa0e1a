#![allow(dead_code)] // shared by test modules; not every test uses every helper
//! The test harness: Intercom in-process on port 0, and the real parts it talks to,
//! one file each: `redis-server` (`redis`), the `oidc-provider` authorization server
//! (`authserver`), OpenBao (`openbao`) and small real upstreams (`upstream`), each on a
//! free port, stopped on drop, their logs printed when a test fails. This file holds the
//! app itself, polling, metrics and the configuration snippets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use intercom::settings::{Settings, TelemetrySettings};
use intercom::startup::{Application, ShutdownHandle};

mod authserver;
mod browser;
mod chromium;
mod edge;
mod nginx;
mod openbao;
mod pki;
mod redis;
mod upstream;

pub use authserver::*;
pub use browser::*;
pub use chromium::*;
pub use edge::*;
pub use nginx::*;
pub use openbao::*;
pub use pki::*;
pub use redis::*;
pub use upstream::*;

/// The repository root, for `config/` and `tests/authserver/`.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on loopback for a child process (Redis, nginx, the AS, ...) or an
/// address meant to stay dead: off the kernel's ephemeral range (see
/// [`announced_port`]), so that a `:0` listener of another test can never be handed it,
/// neither before the process binds it nor while it is down between a kill and a
/// restart (the killed Redis, the stopped upstream, the dead address would then reach
/// that listener: a test once counted a stranger's probe as a request).
pub fn free_port() -> u16 {
    announced_port()
}

/// A free port outside the kernel's ephemeral range (32768–60999 here), for a listener
/// whose address must be known before it is bound (a redirect URI registered at the AS,
/// a port written into a configuration): the ports handed out for `:0` binds, which
/// every other helper uses, can never take it meanwhile.
pub fn announced_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 12_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((start + n * 7) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Everything the in-process apps log, for assertions on log content.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn log_buffer() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let settings = TelemetrySettings {
            log_format: intercom::settings::LogFormat::Json,
            log_level: "debug,h2=info,hyper=info".into(),
            traces: None,
            clients: Default::default(),
        };
        intercom::telemetry::init_tracing(&settings, buffer.clone());
        buffer
    })
}

/// All log output of the in-process apps so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().0.lock().unwrap()).into_owned()
}

/// Builds settings from the repository's `config/` plus `extra_toml`, listening on
/// free ports.
pub fn settings_with(extra_toml: &str) -> Settings {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test.toml");
    std::fs::write(&file, extra_toml).unwrap();
    let env = vec![
        (
            "INTERCOM__SERVER__LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        (
            "INTERCOM__SERVER__ADMIN_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        ("INTERCOM__SERVER__WORKERS".to_string(), "2".to_string()),
    ];
    Settings::load(&repo_root().join("config"), Some(&file), &env)
        .unwrap_or_else(|e| panic!("test configuration is invalid: {e}"))
}

/// A running in-process Intercom.
pub struct TestApp {
    pub minter: Option<std::sync::Arc<intercom::broker::mint::Minter>>,
    pub address: String,
    pub admin_address: String,
    pub port: u16,
    pub shutdown: ShutdownHandle,
    pub client: awc::Client,
    /// Applies a new configuration as a reload does.
    pub reloader: std::sync::Arc<intercom::startup::reload::Reloader>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{}", self.admin_address, path)
    }
    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let mut res = self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap();
        String::from_utf8(res.body().limit(10 << 20).await.unwrap().to_vec()).unwrap()
    }
}

/// Starts Intercom in-process with the given TOML layered over `config/`.
pub async fn spawn_app(extra_toml: &str) -> TestApp {
    spawn_app_with(settings_with(extra_toml)).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    spawn_app_filtered(settings, intercom::filter::FilterRegistry::new()).await
}

/// Starts Intercom in-process with the filters of `registry` on offer.
pub async fn spawn_app_filtered(
    settings: Settings,
    registry: intercom::filter::FilterRegistry,
) -> TestApp {
    log_buffer();
    let app = Application::build_with(settings, registry)
        .await
        .expect("application builds");
    let port = app.port();
    let admin_port = app.admin_port();
    let shutdown = app.shutdown_handle();
    let minter = app.minter();
    let reloader = app.reloader();
    actix_web::rt::spawn(app.run_until_stopped());
    let client = test_client();
    let live = format!("http://127.0.0.1:{admin_port}/health/live");
    let deadline = std::time::Instant::now() + PATIENCE;
    while !matches!(client.get(&live).send().await, Ok(r) if r.status().is_success()) {
        assert!(
            std::time::Instant::now() < deadline,
            "Intercom did not start"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    TestApp {
        minter,
        address: format!("http://127.0.0.1:{port}"),
        admin_address: format!("http://127.0.0.1:{admin_port}"),
        port,
        shutdown,
        client: test_client(),
        reloader,
    }
}

/// The value of a series in a Prometheus text exposition, summed over every label set
/// that `series` is a prefix of (`name`, `name{a="b"}` or `name{a="b",`); 0 when absent.
/// Tests compare values and changes, never the mere presence of a series.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            name.strip_prefix(series).is_some_and(|rest| {
                rest.is_empty() || series.ends_with([',', '{']) || rest.starts_with(['{', ',', '}'])
            })
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// The test process's metrics now: every in-process app records into this one registry,
/// so tests compare a value before and after what they do.
pub fn process_metrics() -> String {
    intercom::telemetry::metrics_handle().render()
}

/// A client that never follows redirects and waits long enough for slow tests.
pub fn test_client() -> awc::Client {
    awc::Client::builder()
        .disable_redirects()
        .timeout(Duration::from_secs(60))
        .finish()
}

/// GETs `path` on `app` with `headers`, and returns the status and the answer as JSON:
/// what the echo upstream saw when the request got through, a problem body when it did
/// not (`Null` when the answer is not JSON).
pub async fn upstream_saw(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut req = app.client.get(app.url(path));
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    let mut res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// [`upstream_saw`] with the bearer token `token`.
pub async fn upstream_saw_with_token(
    app: &TestApp,
    path: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    let bearer = format!("Bearer {token}");
    upstream_saw(app, path, &[("authorization", &bearer)]).await
}

/// Sends raw bytes as one HTTP/1.1 request and returns the status and whole answer.
/// For paths no client library would send as they are.
pub fn raw_request(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Polls `check` every 25 ms until it holds or `within` passes: for whatever a
/// background task (a poller, a subscriber, a refresher) does in its own time. The
/// deadline is generous on purpose; a passing check returns at once.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How long background work may take on a loaded 2-core machine before a test calls it
/// lost: far beyond what it takes, so that only a broken feature reaches it.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Waits until something accepts TCP connections on the port.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process whose log is printed if the test fails.
pub struct ChildProcess {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChildProcess {
    pub fn spawn(name: &'static str, mut command: Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e} (did the test setup run?)"));
        Self {
            name,
            child,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has already ended (e.g. it could not bind its port).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

/// How often a child that binds a port chosen beforehand is retried on another port
/// when something else took it first.
const PORT_ATTEMPTS: usize = 5;

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log_text());
        }
    }
}

/// Writes the secrets file Intercom reads its AS client secret from.
pub fn secrets_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    std::fs::write(
        &path,
        r#"
            intercom_client_secret = "intercom-dev-secret"
            replicas_shared_key = "key-shared-by-replicas-0123456789abcdef"
            session_key = "key-that-seals-sessions-0123456789abcdef"
        "#,
    )
    .unwrap();
    (dir, path)
}

/// The `[redis]` and `[replicas]` sections for replicas sharing `redis` (the shared key
/// is in [`secrets_file`]), plus `extra` lines in `[redis]`.
pub fn redis_config(redis: &dyn RedisUnderTest, extra: &str) -> String {
    format!(
        r#"
            {}{extra}
            [replicas]
            shared_key = "file:replicas_shared_key"
        "#,
        redis.section()
    )
}

/// `[redis]` for `redis`, with a per-call deadline of seconds: a loaded 2-core box can
/// miss the 100 ms default, and no test measures Redis's speed (Redis down is a
/// stopped server, refused at once).
pub fn redis_section(redis: &TestRedis) -> String {
    redis.section()
}

/// The `[secrets]` and `[auth_server]` sections for a test AS, plus `extra` lines in
/// `[auth_server]`.
pub fn auth_config(auth: &TestAuthServer, secrets: &Path, extra: &str) -> String {
    format!(
        r#"
            [secrets]
            file = "{}"
            [auth_server]
            issuer = "{}"
            client_id = "intercom"
            client_secret = "file:intercom_client_secret"
            {extra}
        "#,
        secrets.display(),
        auth.issuer
    )
}

/// Runs the `intercom` binary as a child with the given configuration file.
pub fn intercom_binary(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    program_with_config(Path::new(env!("CARGO_BIN_EXE_intercom")), config, args, env)
}

/// An example binary of `examples/` (built by `scripts/test`, which builds them first).
pub fn example_binary(name: &str) -> std::path::PathBuf {
    // target/debug/deps/api-… → target/debug/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: scripts/test builds it (cargo build --example {name})",
        path.display()
    );
    path
}

/// `program` (the `intercom` binary or one built from the library) with the repository's
/// `config/` and the given configuration file.
pub fn program_with_config(
    program: &Path,
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("--config-dir")
        .arg(repo_root().join("config"))
        .arg("--config")
        .arg(config)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Intercom as its own process, serving `config(port, admin_port)` written into `dir`.
/// The ports are chosen first, so a clash (another test took one meanwhile) ends the
/// process at start-up: then it is started again on other ports.
pub async fn serve_process(
    dir: &Path,
    config: impl Fn(u16, u16) -> String,
) -> (ChildProcess, u16, u16) {
    serve_process_with_env(dir, &[], config).await
}

/// [`serve_process`] with `env` set for the process.
pub async fn serve_process_with_env(
    dir: &Path,
    env: &[(&str, &str)],
    config: impl Fn(u16, u16) -> String,
) -> (ChildProcess, u16, u16) {
    serve_process_on(dir, env, free_port, config).await
}

/// [`serve_process_with_env`] with the public port from `public` (an
/// [`announced_port`] when the AS must know it first).
pub async fn serve_process_on(
    dir: &Path,
    env: &[(&str, &str)],
    public: impl Fn() -> u16,
    config: impl Fn(u16, u16) -> String,
) -> (ChildProcess, u16, u16) {
    let program = Path::new(env!("CARGO_BIN_EXE_intercom"));
    serve_program_on(program, dir, env, public, config).await
}

/// [`serve_process_on`] for another binary built from the library (an example).
pub async fn serve_program_on(
    program: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    public: impl Fn() -> u16,
    config: impl Fn(u16, u16) -> String,
) -> (ChildProcess, u16, u16) {
    let client = test_client();
    for _ in 0..PORT_ATTEMPTS {
        let (port, admin_port) = (public(), free_port());
        let file = dir.join("intercom.toml");
        std::fs::write(&file, config(port, admin_port)).unwrap();
        let command = program_with_config(program, &file, &["serve"], env);
        let mut process = ChildProcess::spawn("intercom", command);
        let live = format!("http://127.0.0.1:{admin_port}/health/live");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if process.exited() {
                break; // a port was taken: choose others
            }
            let answered =
                matches!(client.get(&live).send().await, Ok(r) if r.status().is_success());
            if answered && TcpStream::connect(("127.0.0.1", port)).is_ok() && !process.exited() {
                return (process, port, admin_port);
            }
            assert!(
                Instant::now() < deadline,
                "Intercom did not start:\n{}",
                process.log_text()
            );
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("Intercom found no free ports in {PORT_ATTEMPTS} attempts");
}

/// Sends SIGHUP to `pid` (an Intercom process reloads its configuration).
pub fn hang_up(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The `/metrics` of the Intercom whose admin listener is on `admin` (a process's own).
pub async fn admin_metrics(admin: u16) -> String {
    let mut res = test_client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap();
    String::from_utf8(res.body().limit(16 << 20).await.unwrap().to_vec()).unwrap()
}

/// Peak and current resident memory of a process, in bytes (Linux).
pub fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Asserts a response is RFC 9457 problem+json with the given status, and returns it.
pub async fn assert_problem(
    res: &mut awc::ClientResponse<
        impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
    >,
    status: u16,
) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    let body: serde_json::Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"]
        .as_str()
        .unwrap()
        .starts_with("urn:intercom:problem:"));
    assert!(body["title"].is_string());
    assert!(body["request_id"].is_string());
    body
}

/// A socket address string for a port that nothing listens on.
pub fn dead_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Sends `GET url` with `Authorization: Bearer token` for each pair, `concurrency` at a
/// time, and returns the statuses (in completion order).
pub async fn concurrent_gets(requests: Vec<(String, String)>, concurrency: usize) -> Vec<u16> {
    use futures_util::StreamExt;
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(concurrency))
        .timeout(Duration::from_secs(60))
        .finish();
    futures_util::stream::iter(requests)
        .map(|(url, token)| {
            let client = client.clone();
            async move {
                client
                    .get(url)
                    .insert_header(("authorization", format!("Bearer {token}")))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// The state `/health/ready` gives a dependency (`ok`, `degraded`, ...; empty before it
/// reported).
pub async fn dependency(app: &TestApp, name: &str) -> String {
    dependency_report(app, name).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What `/health/ready` says of one dependency (`Null` when it is not listed).
pub async fn dependency_report(app: &TestApp, name: &str) -> serde_json::Value {
    let mut res = app
        .client
        .get(app.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    body["dependencies"][name].clone()
}
