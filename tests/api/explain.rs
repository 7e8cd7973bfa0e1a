//! `POST /admin/explain` and `intercom explain`, against the real AS, Redis and an echo
//! upstream: an allowed request and a refusal at every phase, each explanation checked
//! against what the proxy then does with the same request; the explanation spends no
//! rate-limit cell and never holds a token or a secret.

use std::sync::Arc;

use intercom::filter::{
    async_trait, Filter, FilterRegistry, FilterRequest, Phase, Refusal, StatusCode,
};
use serde_json::{json, Value};

use crate::helpers::*;

const ADMIN: &str = "admin-credential-for-explain-tests";
const API_KEY: &str = "upstream-api-key-never-shown";

/// Refuses a request that carries `x-deny`.
struct Deny;

#[async_trait(?Send)]
impl Filter for Deny {
    fn phases(&self) -> &[Phase] {
        &[Phase::Authenticated]
    }

    async fn authenticated(&self, request: &FilterRequest<'_>) -> Result<(), Refusal> {
        match request.headers.contains_key("x-deny") {
            true => Err(Refusal::new(
                StatusCode::IM_A_TEAPOT,
                "denied by the deny filter",
            )),
            false => Ok(()),
        }
    }
}

struct World {
    app: TestApp,
    auth: Arc<TestAuthServer>,
    upstream: TestUpstream,
    _redis: TestRedis,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
        let auth = TestAuthServer::shared().await;
        let upstream = TestUpstream::start("explained");
        let redis = TestRedis::start();
        let (dir, secrets) = secrets_file();
        let mut text = std::fs::read_to_string(&secrets).unwrap();
        text.push_str(&format!(
            "admin_credential = \"{ADMIN}\"\nupstream_api_key = \"{API_KEY}\"\ncache_key = \"exchange-cache-key-0123456789abcdef\"\n"
        ));
        std::fs::write(&secrets, text).unwrap();
        let up = upstream.url();
        let config = format!(
            r#"
                {auth}{redis}
                [revocation]
                admin_credential = "file:admin_credential"
                [exchange]
                encryption_key = "file:cache_key"
                [rate_limit.tiers]
                free = [{{ requests = 3, per = "1m" }}]
                [[routes]]
                name = "explain-api"
                prefix = "/api"
                upstreams = ["{up}"]
                auth = "bearer"
                audience = "billing"
                required_scopes = ["invoice_read"]
                inject = {{ type = "header", header = "x-api-key", secret = "file:upstream_api_key" }}
                [[routes.filters]]
                name = "deny"
                [[routes]]
                name = "explain-admin"
                prefix = "/api/admin"
                upstreams = ["{up}"]
                auth = "bearer"
                required_scopes = ["admin"]
                [[routes]]
                name = "explain-limited"
                prefix = "/limited"
                upstreams = ["{up}"]
                auth = "bearer"
                rate_limit = {{}}
                [[routes]]
                name = "explain-billing"
                prefix = "/billing"
                upstreams = ["{up}"]
                auth = "bearer"
                [routes.exchange]
                audience = "https://billing.internal"
                allowed_scopes = ["invoice_read"]
                callers = ["app"]
                [[routes]]
                name = "explain-open"
                prefix = "/open"
                upstreams = ["{up}"]
                max_body_bytes = 10
                [[routes]]
                name = "explain-post-only"
                prefix = "/only-post"
                upstreams = ["{up}"]
                methods = ["POST"]
            "#,
            auth = auth_config(&auth, &secrets, ""),
            redis = redis_config(&redis, ""),
        );
        let filters =
            FilterRegistry::new().register("deny", |_| Ok(Arc::new(Deny) as Arc<dyn Filter>));
        let app = spawn_app_filtered(settings_with(&config), filters).await;
        Self {
            app,
            auth,
            upstream,
            _redis: redis,
            _dir: dir,
        }
    }

    /// The explanation of `ask`.
    async fn explain(&self, ask: Value) -> Value {
        let mut res = self
            .app
            .client
            .post(self.app.admin_url("/admin/explain"))
            .insert_header(("authorization", format!("Bearer {ADMIN}")))
            .send_json(&ask)
            .await
            .unwrap();
        let body: Value = res.json().limit(1 << 20).await.unwrap();
        assert_eq!(res.status(), 200, "{body}");
        body
    }

    /// What the proxy answers to the same request: the status, and the body as JSON.
    async fn proxy(&self, ask: &Value) -> (u16, Value) {
        let method =
            actix_web::http::Method::from_bytes(ask["method"].as_str().unwrap_or("GET").as_bytes())
                .unwrap();
        let mut request = self
            .app
            .client
            .request(method, self.app.url(ask["path"].as_str().unwrap()));
        let mut body = None;
        for (name, value) in ask["headers"].as_object().into_iter().flatten() {
            if name == "content-length" {
                body = Some(vec![b'x'; value.as_str().unwrap().parse().unwrap()]);
                continue;
            }
            request = request.insert_header((name.as_str(), value.as_str().unwrap()));
        }
        let mut res = match body {
            Some(body) => request.send_body(body).await.unwrap(),
            None => request.send().await.unwrap(),
        };
        let bytes = res.body().limit(1 << 20).await.unwrap();
        (
            res.status().as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Explains `ask`, then sends it: the refusal the explanation names is the proxy's.
    async fn refused(&self, ask: Value, phase: &str, status: u16, kind: &str) -> Value {
        let explained = self.explain(ask.clone()).await;
        assert_eq!(explained["decision"], "refuse", "{explained}");
        assert_eq!(explained["refused_by"], phase, "{explained}");
        assert_eq!(explained["status"], status, "{explained}");
        let kind = format!("urn:intercom:problem:{kind}");
        assert_eq!(explained["type"], kind.as_str(), "{explained}");
        let last = explained["phases"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(
            (last["phase"].as_str(), last["outcome"].as_str()),
            (Some(phase), Some("refused"))
        );
        let hits = self.upstream.hits();
        let (answered, problem) = self.proxy(&ask).await;
        assert_eq!(answered, status, "the proxy agrees: {problem}");
        assert_eq!(problem["type"], kind.as_str(), "{problem}");
        assert_eq!(self.upstream.hits(), hits, "nothing was forwarded");
        explained
    }
}

fn get(path: &str, headers: Value) -> Value {
    json!({ "method": "GET", "path": path, "headers": headers })
}

#[actix_web::test]
async fn an_allowed_request_is_explained_as_the_proxy_then_serves_it() {
    let world = World::start().await;
    let token = world
        .auth
        .user_token_with(
            "explain-alice",
            "invoice_read profile",
            600,
            &[("client_id", "app")],
        )
        .await;
    let ask = get(
        "/api/orders/7?page=2",
        json!({ "authorization": format!("Bearer {token}"), "x-user-id": "spoofed" }),
    );
    let explained = world.explain(ask.clone()).await;
    assert_eq!(explained["decision"], "forward", "{explained}");
    let phases = explained["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "canonical_path",
            "route",
            "authentication",
            "authorization",
            "filters",
            "rate_limit",
            "exchange",
            "upstream_request"
        ]
    );
    let phase = |name: &str| phases.iter().find(|p| p["phase"] == name).unwrap().clone();
    assert_eq!(phase("canonical_path")["path"], "/api/orders/7");
    let route = phase("route");
    assert_eq!(route["route"], "explain-api");
    let skipped = route["not_matched"].as_array().unwrap();
    let reason = |name: &str| {
        skipped
            .iter()
            .find(|r| r["route"] == name)
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(reason("explain-admin"), "the path is not under /api/admin");
    assert_eq!(reason("explain-open"), "the path is not under /open");
    let authentication = phase("authentication");
    assert_eq!(authentication["source"], "authorization_header");
    assert_eq!(authentication["validation"], "introspection");
    assert_eq!(authentication["principal"]["sub"], "explain-alice");
    assert_eq!(authentication["principal"]["client_id"], "app");
    let authorization = phase("authorization");
    assert_eq!(authorization["outcome"], "allowed");
    assert_eq!(authorization["required_scopes"], json!(["invoice_read"]));
    assert_eq!(phase("filters")["filters"], json!(["deny"]));
    assert_eq!(phase("rate_limit")["outcome"], "none");
    let upstream = phase("upstream_request");
    assert_eq!(upstream["path"], "/api/orders/7?page=2");
    let headers = &upstream["headers"];
    assert_eq!(
        headers["x-user-id"],
        json!(["explain-alice"]),
        "the spoofed copy is gone"
    );
    assert_eq!(headers["x-client-id"], json!(["app"]));
    assert!(headers["authorization"][0]
        .as_str()
        .unwrap()
        .contains("internal JWT"));
    assert_eq!(
        headers["x-api-key"],
        json!(["<header credential from file:upstream_api_key>"])
    );
    assert_eq!(upstream["credential"]["kind"], "header");
    let claims = &upstream["internal_jwt_claims"];
    assert_eq!(claims["sub"], "explain-alice");
    assert_eq!(claims["aud"], "billing");
    // No token, signature or secret in the answer.
    let text = explained.to_string();
    for secret in [token.as_str(), API_KEY, ADMIN] {
        assert!(!text.contains(secret), "the answer holds a secret");
    }

    // The proxy then does what was explained.
    let (status, seen) = world.proxy(&ask).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["path"], "/api/orders/7");
    assert_eq!(seen["headers"]["x-user-id"], json!(["explain-alice"]));
    assert_eq!(seen["headers"]["x-api-key"], json!([API_KEY]));
    let sent = seen["headers"]["authorization"][0].as_str().unwrap();
    let payload = sent
        .strip_prefix("Bearer ")
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    use base64::Engine;
    let sent_claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    for claim in ["sub", "aud", "client_id", "scope", "iss"] {
        assert_eq!(sent_claims[claim], claims[claim], "{claim}");
    }
    // The token is now cached: the next explanation says so.
    let again = world.explain(ask).await;
    assert_eq!(again["phases"][2]["validation"], "cache");
    world.app.shutdown.shutdown().await;
}

#[actix_web::test]
async fn a_refusal_at_each_phase_is_the_proxys_refusal() {
    let world = World::start().await;
    let reader = world
        .auth
        .user_token_with(
            "explain-bob",
            "invoice_read",
            600,
            &[("client_id", "reader")],
        )
        .await;
    let bearer = format!("Bearer {reader}");

    world
        .refused(
            get("/api/%2e%2e/admin", json!({})),
            "canonical_path",
            400,
            "bad-path",
        )
        .await;
    let none = world
        .refused(get("/nowhere", json!({})), "route", 404, "not-found")
        .await;
    let reasons = none["phases"][1]["not_matched"].as_array().unwrap().len();
    assert_eq!(reasons, 6, "every route says why: {none}");
    world
        .refused(
            get("/only-post/x", json!({})),
            "route",
            405,
            "method-not-allowed",
        )
        .await;
    let big =
        json!({ "method": "POST", "path": "/open/x", "headers": { "content-length": "100" } });
    world.refused(big, "body", 413, "payload-too-large").await;
    world
        .refused(
            get("/api/x", json!({})),
            "authentication",
            401,
            "missing-token",
        )
        .await;
    let junk = world
        .refused(
            get(
                "/api/x",
                json!({ "authorization": "Bearer not-a-live-token" }),
            ),
            "authentication",
            401,
            "invalid-token",
        )
        .await;
    assert_eq!(junk["phases"][2]["validation"], "introspection");
    world
        .refused(
            get("/api/admin/x", json!({ "authorization": bearer })),
            "authorization",
            403,
            "insufficient-scope",
        )
        .await;
    let denied = world
        .refused(
            get("/api/x", json!({ "authorization": bearer, "x-deny": "1" })),
            "filters",
            418,
            "refused-by-filter",
        )
        .await;
    assert_eq!(denied["phases"][4]["refused_by_filter"], "deny");
    world
        .refused(
            get("/billing/x", json!({ "authorization": bearer })),
            "exchange",
            403,
            "caller-not-allowed",
        )
        .await;

    // A malformed description is a 400 that names the field, never the value.
    let mut res = world
        .app
        .client
        .post(world.app.admin_url("/admin/explain"))
        .insert_header(("authorization", format!("Bearer {ADMIN}")))
        .send_json(&json!({ "path": "/api/x", "headers": { "authorization": "Bearer a\u{1}b" } }))
        .await
        .unwrap();
    let problem = assert_problem(&mut res, 400).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("authorization"),
        "{problem}"
    );
    assert!(!problem.to_string().contains("Bearer a"));
    // Without the admin credential: 401, as /admin/revoke.
    let mut res = world
        .app
        .client
        .post(world.app.admin_url("/admin/explain"))
        .insert_header(("authorization", "Bearer wrong"))
        .send_json(&json!({ "path": "/api/x" }))
        .await
        .unwrap();
    assert_problem(&mut res, 401).await;
    world.app.shutdown.shutdown().await;
}

#[actix_web::test]
async fn explaining_spends_no_cell_and_sees_the_limit_the_proxy_enforces() {
    let world = World::start().await;
    let token = world
        .auth
        .user_token("explain-carol", "invoice_read", 600)
        .await;
    let ask = get(
        "/limited/x",
        json!({ "authorization": format!("Bearer {token}") }),
    );
    let remaining = |explained: &Value| explained["phases"][5]["windows"][0]["remaining"].clone();
    for _ in 0..5 {
        let explained = world.explain(ask.clone()).await;
        assert_eq!(explained["decision"], "forward", "{explained}");
        assert_eq!(explained["phases"][5]["tier"], "free");
        assert_eq!(remaining(&explained), 3, "{explained}");
    }
    for _ in 0..3 {
        assert_eq!(world.proxy(&ask).await.0, 200, "explaining spent no cell");
    }
    let explained = world
        .refused(ask.clone(), "rate_limit", 429, "rate-limited")
        .await;
    assert_eq!(remaining(&explained), 0);
    world.app.shutdown.shutdown().await;
}

#[actix_web::test]
async fn intercom_explain_asks_a_running_instance() {
    let world = World::start().await;
    let token = world
        .auth
        .user_token("explain-dave", "invoice_read", 600)
        .await;
    let admin = world.app.admin_url("");
    let run = |path: &str, token: Option<&str>, extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_intercom"));
        cmd.args(["explain", path, "--admin", &admin]).args(extra);
        cmd.env("INTERCOM_ADMIN_CREDENTIAL", ADMIN);
        match token {
            Some(t) => cmd.env("INTERCOM_EXPLAIN_TOKEN", t),
            None => cmd.env_remove("INTERCOM_EXPLAIN_TOKEN"),
        };
        // Off this thread: the in-process Intercom's tasks share it.
        actix_web::rt::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = run("/api/x", Some(&token), &["-H", "x-trace: 1"])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let explained: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(explained["decision"], "forward");
    assert_eq!(explained["phases"][7]["headers"]["x-trace"], json!(["1"]));
    assert!(!stdout.contains(&token));
    let out = run("/api/x", None, &[]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let explained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(explained["type"], "urn:intercom:problem:missing-token");
    world.app.shutdown.shutdown().await;
}
