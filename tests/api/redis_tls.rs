//! Redis over TLS (`rediss://`), against a real `redis-server` and a real Redis Cluster
//! that speak only TLS: Redis's certificate verified against the system's roots
//! (`SSL_CERT_FILE`) or `redis.ca_file`, and mTLS with `redis.client_cert` from the
//! secret store; an untrusted server or a missing client certificate leaves Redis
//! `degraded`, never used.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::*;

/// A test's certificates, written into its directory: a CA, Redis's certificate for
/// 127.0.0.1 and a client certificate (both signed by it), and another CA.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: Issued,
    client_files: (PathBuf, PathBuf),
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca = TestCa::new("Intercom test CA");
        let client = ca.client("intercom");
        Self {
            ca: ca.write(dir, "ca.pem"),
            other_ca: TestCa::new("Another CA").write(dir, "other-ca.pem"),
            server: ca.server(&["127.0.0.1"]).write(dir, "redis"),
            client_files: client.write(dir, "client"),
            client,
        }
    }

    /// `redis-server`'s TLS arguments: TLS only, on `port`; client certificates
    /// required when `verify_clients`.
    fn server_args(&self, port: u16, verify_clients: bool) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &path(&self.server.0),
            "--tls-key-file",
            &path(&self.server.1),
            "--tls-ca-cert-file",
            &path(&self.ca),
            "--tls-auth-clients",
            if verify_clients { "yes" } else { "no" },
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `redis-cli` over TLS with the client certificate, bounded in time (`--cluster
    /// create` waits for the nodes to meet as long as it takes: a bus that cannot
    /// connect fails the test instead of hanging it).
    fn redis_cli(&self) -> Command {
        let mut cli = Command::new("timeout");
        cli.args(["120", "redis-cli", "--tls"])
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.client_files.0)
            .arg("--key")
            .arg(&self.client_files.1);
        cli
    }

    /// `redis-cli` against `port`.
    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = self
            .redis_cli()
            .args(["-p", &port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether a rate-limit window is in the Redis on `port`.
    fn has_window(&self, port: u16) -> bool {
        self.cli(port, &["--scan"]).contains("intercom:rl:")
    }

    /// A secrets file with the replicas' key and the client certificate and key.
    fn secrets(&self, dir: &Path) -> PathBuf {
        let path = dir.join("secrets.toml");
        write_secrets(&path, &self.client);
        path
    }
}

/// Writes the secrets file with `client` as Redis's client certificate: aside, then
/// renamed, so the store never reads half a file.
fn write_secrets(path: &Path, client: &Issued) {
    let aside = path.with_extension("new");
    std::fs::write(
        &aside,
        format!(
            "replicas_shared_key = \"key-shared-by-replicas-0123456789abcdef\"\n\
             redis_cert = '''\n{}'''\nredis_key = '''\n{}'''\n",
            client.cert, client.key
        ),
    )
    .unwrap();
    std::fs::rename(aside, path).unwrap();
}

/// A `redis-server` that speaks only TLS, on an announced port.
async fn start_tls_redis(pki: &Pki, verify_clients: bool) -> (ChildProcess, u16) {
    let port = announced_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(pki.server_args(port, verify_clients));
    let process = ChildProcess::spawn("redis-server-tls", cmd);
    assert!(
        eventually(PATIENCE, async || pki.cli(port, &["PING"]).contains("PONG")).await,
        "the TLS redis-server did not start:\n{}",
        process.log_text()
    );
    (process, port)
}

/// Intercom with a rate-limited route (its windows live in Redis), `redis` as its
/// `[redis]` section.
fn app_config(secrets: &Path, redis: &str) -> String {
    format!(
        r#"
            [secrets]
            file = "{secrets}"
            {redis}
            timeout = "5s"
            retry_interval = "300ms"
            [replicas]
            shared_key = "file:replicas_shared_key"
            [[routes]]
            name = "open"
            prefix = "/open"
            upstreams = ["http://127.0.0.1:9"]
            [routes.rate_limit]
            key = "address"
            [rate_limit.tiers]
            free = [{{ requests = 100, per = "1h" }}]
        "#,
        secrets = secrets.display()
    )
}

/// Sends requests to the rate-limited route until Redis's readiness is `want`.
async fn ready_after_requests(app: &TestApp, want: &str) -> bool {
    eventually(PATIENCE, async || {
        let _ = app.client.get(app.url("/open/x")).send().await;
        dependency(app, "redis").await == want
    })
    .await
}

#[actix_web::test]
async fn redis_over_tls_is_verified_against_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (_redis, port) = start_tls_redis(&pki, false).await;
    let secrets = pki.secrets(dir.path());
    let config = |public: u16, admin: u16| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{public}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n{}",
            app_config(
                &secrets,
                &format!("[redis]\nurl = \"rediss://127.0.0.1:{port}\"")
            )
        )
    };
    let ready = |admin: u16| async move {
        let mut res = test_client()
            .get(format!("http://127.0.0.1:{admin}/health/ready"))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        body["dependencies"]["redis"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let hit = |public: u16| async move {
        let _ = test_client()
            .get(format!("http://127.0.0.1:{public}/open/x"))
            .send()
            .await;
    };

    // Trusting the CA as a system root (SSL_CERT_FILE): the windows live in Redis.
    let trusting = dir.path().join("trusting");
    std::fs::create_dir(&trusting).unwrap();
    let ca = pki.ca.display().to_string();
    let (_trusting, public, admin) =
        serve_process_with_env(&trusting, &[("SSL_CERT_FILE", &ca)], config).await;
    hit(public).await;
    assert!(
        eventually(PATIENCE, async || pki.has_window(port)).await,
        "no rate-limit window reached the TLS Redis"
    );
    assert_eq!(ready(admin).await, "ok");

    // Trusting another CA: the handshake fails, and Redis is never ok.
    let wary = dir.path().join("wary");
    std::fs::create_dir(&wary).unwrap();
    let other = pki.other_ca.display().to_string();
    let (_wary, public, admin) =
        serve_process_with_env(&wary, &[("SSL_CERT_FILE", &other)], config).await;
    assert!(
        eventually(PATIENCE, async || {
            hit(public).await;
            ready(admin).await == "degraded"
        })
        .await,
        "a Redis certificate from an untrusted CA was accepted"
    );
}

#[actix_web::test]
async fn mtls_redis_is_reached_with_the_ca_file_and_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (_redis, port) = start_tls_redis(&pki, true).await;
    let secrets = pki.secrets(dir.path());
    let redis = |ca: &Path, client: bool| {
        format!(
            "[redis]\nurl = \"rediss://127.0.0.1:{port}\"\nca_file = \"{}\"\n{}",
            ca.display(),
            if client {
                "client_cert = \"file:redis_cert\"\nclient_key = \"file:redis_key\""
            } else {
                ""
            }
        )
    };

    // The CA from ca_file, not the system's, and the client certificate: served.
    let trusted = spawn_app(&app_config(&secrets, &redis(&pki.ca, true))).await;
    let _ = trusted.client.get(trusted.url("/open/x")).send().await;
    assert!(
        eventually(PATIENCE, async || pki.has_window(port)).await,
        "no rate-limit window reached the mTLS Redis"
    );
    assert_eq!(dependency(&trusted, "redis").await, "ok");

    // No client certificate: Redis refuses the handshake; Intercom serves without it.
    let anonymous = spawn_app(&app_config(&secrets, &redis(&pki.ca, false))).await;
    assert!(
        ready_after_requests(&anonymous, "degraded").await,
        "Redis with tls-auth-clients took a connection without a client certificate"
    );

    // A ca_file of another CA: Redis's certificate is refused.
    let wary = spawn_app(&app_config(&secrets, &redis(&pki.other_ca, true))).await;
    assert!(
        ready_after_requests(&wary, "degraded").await,
        "a Redis certificate outside ca_file was accepted"
    );
    // The trusted instance was never disturbed.
    assert_eq!(dependency(&trusted, "redis").await, "ok");
}

#[actix_web::test]
async fn a_rotated_client_certificate_is_presented_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (_redis, port) = start_tls_redis(&pki, true).await;
    // First a certificate Redis does not trust (another CA's): refused.
    let secrets = dir.path().join("secrets.toml");
    write_secrets(&secrets, &TestCa::new("Stranger CA").client("intercom"));
    let redis = format!(
        "[redis]\nurl = \"rediss://127.0.0.1:{port}\"\nca_file = \"{}\"\n\
         client_cert = \"file:redis_cert\"\nclient_key = \"file:redis_key\"",
        pki.ca.display()
    );
    let config =
        app_config(&secrets, &redis).replace("[secrets]", "[secrets]\npoll_interval = \"200ms\"");
    let app = spawn_app(&config).await;
    assert!(
        ready_after_requests(&app, "degraded").await,
        "a client certificate of an untrusted CA was accepted"
    );
    // The store's next read brings the trusted one; the next connection presents it.
    write_secrets(&secrets, &pki.client);
    assert!(
        ready_after_requests(&app, "ok").await,
        "the rotated client certificate was not presented"
    );
    assert!(
        eventually(PATIENCE, async || pki.has_window(port)).await,
        "no rate-limit window reached Redis after the rotation"
    );
}

#[actix_web::test]
async fn a_cluster_over_mtls_is_followed_with_the_ca_file_and_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // Three masters that speak only TLS, to clients and on the cluster bus.
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (port, bus) = (announced_port(), announced_port());
        let mut cmd = Command::new("redis-server");
        cmd.current_dir(dir.path())
            .args(pki.server_args(port, true))
            // On the cluster bus a node is the client of its peers: it presents the
            // client certificate (a server certificate is not one for client auth).
            .arg("--tls-client-cert-file")
            .arg(&pki.client_files.0)
            .arg("--tls-client-key-file")
            .arg(&pki.client_files.1)
            .args([
                "--tls-cluster",
                "yes",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
            ]);
        nodes.push((ChildProcess::spawn("redis-cluster-node-tls", cmd), port));
    }
    for (process, port) in &nodes {
        assert!(
            eventually(PATIENCE, async || pki
                .cli(*port, &["PING"])
                .contains("PONG"))
            .await,
            "a TLS cluster node did not start:\n{}",
            process.log_text()
        );
    }
    let addresses: Vec<String> = nodes
        .iter()
        .map(|(_, port)| format!("127.0.0.1:{port}"))
        .collect();
    let created = pki
        .redis_cli()
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "redis-cli --cluster create failed:\n{}",
        String::from_utf8_lossy(&created.stdout)
    );
    assert!(
        eventually(PATIENCE, async || nodes.iter().all(|(_, port)| pki
            .cli(*port, &["CLUSTER", "INFO"])
            .contains("cluster_state:ok")))
        .await,
        "the TLS cluster did not settle"
    );
    let secrets = pki.secrets(dir.path());
    let redis = |client: bool| {
        format!(
            "[redis]\nmode = \"cluster\"\nnodes = [\"rediss://{}\"]\nca_file = \"{}\"\n{}",
            addresses[0],
            pki.ca.display(),
            if client {
                "client_cert = \"file:redis_cert\"\nclient_key = \"file:redis_key\""
            } else {
                ""
            }
        )
    };

    // One seed node: the others are learnt from the cluster and reached with the same
    // CA and client certificate. The window lands on its slot's master, whichever.
    let app = spawn_app(&app_config(&secrets, &redis(true))).await;
    let _ = app.client.get(app.url("/open/x")).send().await;
    assert!(
        eventually(PATIENCE, async || nodes
            .iter()
            .any(|(_, port)| pki.has_window(*port)))
        .await,
        "no rate-limit window reached the TLS cluster"
    );
    assert_eq!(dependency(&app, "redis").await, "ok");

    // Without the client certificate the cluster's nodes refuse the handshake.
    let anonymous = spawn_app(&app_config(&secrets, &redis(false))).await;
    assert!(
        ready_after_requests(&anonymous, "degraded").await,
        "a TLS cluster node took a connection without a client certificate"
    );
}
