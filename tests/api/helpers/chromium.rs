//! Real headless Chromium (Debian's `chromium`), driven through `chromedriver` over
//! WebDriver with `fantoccini`. Root needs `--no-sandbox`; each browser has its own
//! profile directory. `close` ends the session (chromedriver then ends Chromium); the
//! driver itself is stopped on drop.

use super::*;

/// A chromedriver with one headless Chromium session.
pub struct TestChromium {
    pub client: fantoccini::Client,
    driver: ChildProcess,
    _profile: tempfile::TempDir,
}

impl TestChromium {
    pub async fn start() -> Self {
        let profile = tempfile::tempdir().unwrap();
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let mut command = Command::new("chromedriver");
            command.arg(format!("--port={port}"));
            let mut driver = ChildProcess::spawn("chromedriver", command);
            let up = wait_for_port(port, Duration::from_secs(20));
            if !up || driver.exited() {
                eprintln!("chromedriver: port {port} not usable, attempt {attempt}");
                continue;
            }
            let args = serde_json::json!([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                format!("--user-data-dir={}", profile.path().display()),
            ]);
            let mut capabilities = serde_json::Map::new();
            capabilities.insert(
                "goog:chromeOptions".into(),
                serde_json::json!({ "args": args, "binary": "/usr/bin/chromium" }),
            );
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let client = fantoccini::ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .unwrap_or_else(|e| panic!("chromium did not start: {e}\n{}", driver.log_text()));
            return Self {
                client,
                driver,
                _profile: profile,
            };
        }
        panic!("chromedriver found no free port in {PORT_ATTEMPTS} attempts");
    }

    /// Ends the browser session (chromedriver closes Chromium).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}
