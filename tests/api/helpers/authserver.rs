//! The real `oidc-provider` authorization server (tests/authserver), on a free port.

use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// The real `oidc-provider` (tests/authserver), on a free port.
pub struct TestAuthServer {
    pub issuer: String,
    pub process: ChildProcess,
}

/// The AS that tests without needs of their own share while any of them runs.
static SHARED: tokio::sync::Mutex<std::sync::Weak<TestAuthServer>> =
    tokio::sync::Mutex::const_new(std::sync::Weak::new());

impl TestAuthServer {
    pub async fn start() -> Self {
        Self::start_with_env(&[]).await
    }

    /// One AS for the tests that neither configure it, nor count its calls, nor stop
    /// it: started by the first, stopped when the last one running lets it go.
    pub async fn shared() -> std::sync::Arc<Self> {
        let mut slot = SHARED.lock().await;
        if let Some(auth) = slot.upgrade() {
            return auth;
        }
        let auth = std::sync::Arc::new(Self::start().await);
        *slot = std::sync::Arc::downgrade(&auth);
        auth
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

    /// Starts on `port` (to bring an AS back where Intercom expects it); `None` when
    /// the port is taken.
    pub async fn start_on(port: u16, env: &[(&str, &str)]) -> Option<Self> {
        Self::try_start_on(port, env).await
    }

    /// The port the AS listens on.
    pub fn port(&self) -> u16 {
        url::Url::parse(&self.issuer).unwrap().port().unwrap()
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

    /// Switches the AS's run-time faults (`/__test/hooks`): `token_delay_ms` (a slow
    /// token endpoint), `id_token_fault` (`aud`, `nonce`, `iss`, `expired`; needs
    /// `SIGNING_KID`); an empty value clears one.
    pub async fn hooks(&self, hooks: &[(&str, &str)]) {
        let res = test_client()
            .post(format!("{}/__test/hooks", self.issuer))
            .query(&hooks)
            .unwrap()
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
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
