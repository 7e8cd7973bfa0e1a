//! The Grafana dashboard and the alert rules name only metrics Intercom exports: an
//! Intercom process (its own metrics, none from other tests; the example binary, for a
//! filter) in front of the real AS,
//! Redis, an echo upstream, a WebSocket server and a dead address takes traffic that
//! produces every series they read, then its `/metrics` must hold every name.

use std::collections::BTreeSet;

use crate::chart::{alert_rules, dashboard, dashboard_queries, metric_names};
use crate::helpers::*;

const ADMIN: &str = "admin-credential-for-dashboard-tests";

/// The metrics Intercom exports in `metrics` (the Prometheus text format).
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            let n = n.strip_suffix("_bucket").unwrap_or(n);
            let n = n.strip_suffix("_count").unwrap_or(n);
            n.strip_suffix("_sum").unwrap_or(n).to_string()
        })
        .collect()
}

/// The names the dashboard's queries and the alert rules read.
fn named() -> BTreeSet<String> {
    let mut names = metric_names(&dashboard_queries(&dashboard()).join("\n"));
    names.extend(metric_names(&alert_rules()));
    names
}

struct World {
    auth: TestAuthServer,
    redis: Option<TestRedis>,
    upstream: TestUpstream,
    websocket: TestWebSocketServer,
    dir: tempfile::TempDir,
    secrets: std::path::PathBuf,
    ca: TestCa,
    public: u16,
}

impl World {
    async fn start() -> Self {
        let public = announced_port();
        let base = format!("http://127.0.0.1:{public}");
        let auth =
            TestAuthServer::start_with_env(&[("BFF_BASE", &base), ("TOKEN_TTL", "30")]).await;
        let (dir, secrets) = secrets_file();
        let ca = TestCa::new("dashboard CA");
        let client = ca.client("intercom");
        let mut text = std::fs::read_to_string(&secrets).unwrap();
        text.push_str(&format!(
            "cache_encryption_key = \"encryption-key-shared-by-replicas-42\"\nadmin_credential = \"{ADMIN}\"\nclient_cert = '''\n{}'''\nclient_key = '''\n{}'''\n",
            client.cert, client.key
        ));
        std::fs::write(&secrets, text).unwrap();
        Self {
            auth,
            redis: Some(TestRedis::start()),
            upstream: TestUpstream::start("dashboard"),
            websocket: TestWebSocketServer::start(),
            dir,
            secrets,
            ca,
            public,
        }
    }

    fn config(&self, admin_port: u16) -> String {
        let base = format!("http://127.0.0.1:{}", self.public);
        let ca_file = self.ca.write(self.dir.path(), "ca.pem");
        format!(
            r#"
                [server]
                listen = "127.0.0.1:{public}"
                admin_listen = "127.0.0.1:{admin_port}"
                [telemetry]
                log_level = "warn"
                [secrets]
                file = "{secrets}"
                poll_interval = "1s"
                [auth_server]
                issuer = "{issuer}"
                client_id = "intercom"
                client_secret = "file:intercom_client_secret"
                {redis}
                [exchange]
                encryption_key = "file:cache_encryption_key"
                [revocation]
                admin_credential = "file:admin_credential"
                [rate_limit]
                [rate_limit.tiers]
                free = [{{ requests = 1000, per = "1m" }}]
                [session]
                redirect_uri = "{base}/auth/callback"
                encryption_key = "file:session_key"
                scopes = ["openid", "profile", "email", "offline_access"]
                refresh_ahead = "29s"
                store = "redis"
                count_every = "200ms"
                [[routes]]
                name = "dash-api"
                prefix = "/api"
                upstreams = ["{up}"]
                auth = "bearer"
                rate_limit = {{}}
                [[routes]]
                name = "dash-billing"
                prefix = "/billing"
                upstreams = ["{up}"]
                auth = "bearer"
                [routes.exchange]
                audience = "https://billing.internal"
                allowed_scopes = ["invoice_read"]
                callers = ["app"]
                [[routes]]
                name = "dash-probed"
                prefix = "/probed"
                upstreams = ["{up}"]
                health_check = {{ path = "/", interval = "200ms", healthy_threshold = 1, unhealthy_threshold = 1 }}
                [[routes]]
                name = "dash-dead"
                prefix = "/dead"
                upstreams = ["http://{dead}"]
                [[routes]]
                name = "dash-chat"
                prefix = "/chat"
                upstreams = ["{ws}"]
                websocket = true
                [[routes]]
                name = "dash-mtls"
                prefix = "/mtls"
                upstreams = ["https://127.0.0.1:1"]
                upstream_tls = {{ ca_file = "{ca}", client_cert = "file:client_cert", client_key = "file:client_key" }}
                [[routes]]
                name = "dash-spa"
                prefix = "/spa"
                upstreams = ["{up}"]
                auth = "session"
                audience = "spa-api"
                [[routes]]
                name = "dash-invoices"
                prefix = "/invoices"
                upstreams = ["{up}"]
                auth = "bearer"
                [[routes.filters]]
                name = "claim_matches_path"
                claims = ["subscriber_id"]
                config = {{ pattern = "/invoices/{{subscriber_id}}" }}
            "#,
            public = self.public,
            secrets = self.secrets.display(),
            issuer = self.auth.issuer,
            redis = redis_config(self.redis.as_ref().unwrap(), ""),
            up = self.upstream.url(),
            dead = dead_address(),
            ws = self.websocket.url(),
            ca = ca_file.display(),
        )
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = test_client().get(url);
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    let mut response = request.send().await.unwrap();
    let _ = response.body().limit(1 << 20).await;
    response.status().as_u16()
}

/// Logs a user in through the AS's login page; the session cookie, as a header value.
async fn log_in(base: &str) -> String {
    let mut browser = Browser::default();
    let page = browser
        .navigate(&format!("{base}/auth/login?return_to=%2Fspa%2F"))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let landed = browser.submit_login(page, "dana").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let value = browser.cookie(base, "__Host-intercom-session").unwrap();
    format!("__Host-intercom-session={value}")
}

#[actix_web::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported_under_traffic() {
    let mut world = World::start().await;
    let announced = world.public;
    // The example binary: the stock commands, and a filter for the filter series.
    let program = example_binary("claim_matches_path");
    let (process, public, admin) = serve_program_on(
        &program,
        world.dir.path(),
        &[],
        || announced,
        |_, admin| world.config(admin),
    )
    .await;
    let base = format!("http://127.0.0.1:{public}");

    // Phantom tokens: a miss (introspection), a hit, the rate limit in Redis.
    let user = world.auth.user_token("dana", "profile", 600).await;
    let bearer = format!("Bearer {user}");
    for _ in 0..2 {
        assert_eq!(
            get(&format!("{base}/api/x"), &[("authorization", &bearer)]).await,
            200
        );
    }
    // A filter's refusal: dana's token has no subscriber_id claim.
    assert_eq!(
        get(&format!("{base}/invoices/7"), &[("authorization", &bearer)]).await,
        403
    );
    // Token exchange for the billing audience.
    let app = world
        .auth
        .client_token("app", "app-dev-secret", "invoice_read orders_read profile")
        .await;
    let app_bearer = format!("Bearer {app}");
    assert_eq!(
        get(
            &format!("{base}/billing/x"),
            &[("authorization", &app_bearer)]
        )
        .await,
        200
    );
    // A revocation through the admin API.
    let revoked = test_client()
        .post(format!("http://127.0.0.1:{admin}/admin/revoke"))
        .insert_header(("authorization", format!("Bearer {ADMIN}")))
        .send_json(&serde_json::json!({"sub": "nobody"}))
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    // A dead upstream: refused, ejected, 502/503.
    assert!(get(&format!("{base}/dead/x"), &[]).await >= 500);
    // A WebSocket tunnel, open while the metrics are read.
    let (_, _tunnel) = awc::Client::new()
        .ws(format!("{base}/chat/room"))
        .connect()
        .await
        .unwrap();
    // A browser session: login, a call, a refresh (due 1 s after login), a logout.
    let cookie = log_in(&base).await;
    let active = async |n: f64| {
        eventually(PATIENCE, async || {
            metric(
                &admin_metrics(admin).await,
                r#"intercom_sessions_active{store="redis"}"#,
            ) == n
        })
        .await
    };
    assert!(active(1.0).await, "the login's session is counted");
    assert_eq!(
        get(&format!("{base}/spa/me"), &[("cookie", &cookie)]).await,
        200
    );
    let refreshed = eventually(PATIENCE, async || {
        get(&format!("{base}/spa/me"), &[("cookie", &cookie)]).await;
        admin_metrics(admin)
            .await
            .contains("intercom_session_refreshes_total{")
    })
    .await;
    assert!(refreshed, "the session's token was refreshed");
    let out = test_client()
        .post(format!("{base}/auth/logout"))
        .insert_header(("cookie", cookie.as_str()))
        .insert_header(("x-csrf", "1"))
        .insert_header(("origin", base.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(active(0.0).await, "the logout's session is not counted");

    // Redis goes away: errors, the rate limiter's fallback, redis degraded (a new caller
    // holds no lease, so it asks Redis).
    world.redis.take();
    let other = world.auth.user_token("erin", "profile", 600).await;
    let other = format!("Bearer {other}");
    assert_eq!(
        get(&format!("{base}/api/x"), &[("authorization", &other)]).await,
        200
    );

    // A reload of the same file: counted as unchanged.
    hang_up(process.pid());

    // The probes, the secret refresh and readiness report on their own clocks.
    let names = named();
    let mut missing = BTreeSet::new();
    let all_there = eventually(PATIENCE, async || {
        let have = exported(&admin_metrics(admin).await);
        missing = names.difference(&have).cloned().collect();
        // The listener's certificate is another process's (below).
        missing.remove("intercom_tls_certificate_expiry_timestamp_seconds");
        missing.is_empty()
    })
    .await;
    assert!(all_there, "named but not exported: {missing:?}");
    assert!(names.len() > 25, "{names:?}");
}

#[actix_web::test]
async fn the_listeners_certificate_expiry_is_exported() {
    let ca = TestCa::new("listener CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server(&["127.0.0.1"]).write(dir.path(), "server");
    let config = |port: u16, admin: u16| {
        format!(
            r#"
                [server]
                listen = "127.0.0.1:{port}"
                admin_listen = "127.0.0.1:{admin}"
                [server.tls]
                cert_file = "{}"
                key_file = "{}"
            "#,
            cert.display(),
            key.display()
        )
    };
    let (_process, _, admin) = serve_process(dir.path(), config).await;
    let text = admin_metrics(admin).await;
    let not_after = metric(&text, "intercom_tls_certificate_expiry_timestamp_seconds");
    // The certificate's notAfter: ahead of now (rcgen's default validity), not the 0 of
    // a gauge never set.
    assert!(not_after > now() as f64, "{not_after}");
}
