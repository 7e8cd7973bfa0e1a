//! A real nginx (Debian's `nginx-light`) on a free port: one `server` block given by the
//! test, in its own prefix directory, as a single process (no master, no daemon).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::*;

/// A running nginx serving one `server` block.
pub struct TestNginx {
    pub port: u16,
    pub process: ChildProcess,
    pub dir: tempfile::TempDir,
}

impl TestNginx {
    /// Starts nginx with `server`, a `server { ... }` body in which `{port}` is the
    /// listening port and `{dir}` a directory for the test's files; retried on another
    /// port when the chosen one was taken meanwhile.
    pub fn start(server: &str) -> Self {
        for attempt in 1..=PORT_ATTEMPTS {
            if let Some(nginx) = Self::try_start(server, attempt == PORT_ATTEMPTS) {
                return nginx;
            }
        }
        unreachable!("the last attempt panics")
    }

    fn try_start(server: &str, last: bool) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display().to_string();
        let body = server
            .replace("{port}", &port.to_string())
            .replace("{dir}", &d);
        let conf = format!(
            r#"
daemon off;
master_process off;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    server {{
{body}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf_path);
        let mut process = ChildProcess::spawn("nginx", cmd);
        let pid_file = dir.path().join("nginx.pid");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if process.exited() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                assert!(
                    !last && log.contains("Address already in use"),
                    "nginx did not start:\n{}\n{log}",
                    process.log_text()
                );
                return None;
            }
            // nginx writes its pid file after it bound its ports: this one is ours.
            let written = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if written.trim() == process.pid().to_string() && wait_for_port(port, PATIENCE) {
                return Some(Self { port, process, dir });
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start:\n{}",
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A path inside the nginx's directory (where `{dir}` points).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// nginx's error log (TLS handshake failures are logged at `info`).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Writes `text` into `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
