//! Service to service: RFC 8693 exchange per audience at the real oidc-provider, the
//! two-tier cache shared by two Intercom instances through one real `redis-server`,
//! and revocation reaching every copy.

use std::time::Duration;

use crate::helpers::*;

const CALLER_SCOPES: &str = "invoice_read orders_read profile";
const ADMIN: &str = "admin-credential-for-tests";

/// An AS, an upstream, a Redis and the secrets two Intercom instances share.
struct World {
    auth: TestAuthServer,
    upstream: TestUpstream,
    redis: Option<TestRedis>,
    /// Instead of `redis`: a Redis Cluster.
    cluster: Option<TestRedisCluster>,
    /// Instead of `redis`: a master and replica watched by a sentinel.
    sentinel: Option<TestRedisSentinel>,
    _dir: tempfile::TempDir,
    secrets: std::path::PathBuf,
}

impl World {
    /// As [`World::start`], with a Redis Cluster as the shared tier.
    async fn start_on_cluster() -> Self {
        let mut world = Self::start(&[]).await;
        world.redis = None;
        world.cluster = Some(TestRedisCluster::start());
        world
    }

    /// As [`World::start`], with Redis behind a sentinel as the shared tier.
    async fn start_on_sentinel() -> Self {
        let mut world = Self::start(&[]).await;
        world.redis = None;
        world.sentinel = Some(TestRedisSentinel::start());
        world
    }

    async fn start(as_env: &[(&str, &str)]) -> Self {
        let (dir, secrets) = secrets_file();
        let mut text = std::fs::read_to_string(&secrets).unwrap();
        text.push_str(&format!(
            r#"
                cache_encryption_key = "encryption-key-shared-by-replicas-42"
                admin_credential = "{ADMIN}"
                token_client_app = "app:token-endpoint-secret"
            "#
        ));
        std::fs::write(&secrets, text).unwrap();
        Self {
            auth: TestAuthServer::start_with_env(as_env).await,
            upstream: TestUpstream::start("billing"),
            redis: Some(TestRedis::start()),
            cluster: None,
            sentinel: None,
            _dir: dir,
            secrets,
        }
    }

    fn redis(&self) -> &TestRedis {
        self.redis.as_ref().expect("redis runs")
    }

    /// The shared tier, whichever it is.
    fn shared(&self) -> &dyn RedisUnderTest {
        match (&self.cluster, &self.sentinel) {
            (Some(cluster), _) => cluster,
            (None, Some(sentinel)) => sentinel,
            (None, None) => self.redis(),
        }
    }

    /// An Intercom whose `/intercom/billing` route exchanges for "https://billing.internal";
    /// `route` adds lines to `[routes.exchange]`, `rest` adds sections.
    async fn intercom(&self, route: &str, rest: &str) -> TestApp {
        self.intercom_with(route, "", rest).await
    }

    /// As [`World::intercom`], with more `[exchange]` keys.
    async fn intercom_with(&self, route: &str, exchange: &str, rest: &str) -> TestApp {
        self.intercom_keyed("", route, exchange, rest).await
    }

    /// As [`World::intercom_with`], with `route_keys` on the billing route itself.
    async fn intercom_keyed(
        &self,
        route_keys: &str,
        route: &str,
        exchange: &str,
        rest: &str,
    ) -> TestApp {
        let config = format!(
            r#"
                {}
                {}
                [exchange]
                encryption_key = "file:cache_encryption_key"
                {exchange}
                [revocation]
                admin_credential = "file:admin_credential"
                [[routes]]
                name = "billing"
                prefix = "/intercom/billing"
                strip_prefix = true
                upstreams = ["{}"]
                auth = "bearer"
                {route_keys}
                [routes.exchange]
                audience = "https://billing.internal"
                allowed_scopes = ["invoice_read", "invoice_write"]
                callers = ["app"]
                {route}
                {rest}
            "#,
            auth_config(&self.auth, &self.secrets, ""),
            redis_config(self.shared(), "retry_interval = \"300ms\""),
            self.upstream.url(),
        );
        spawn_app(&config).await
    }

    async fn exchanges(&self) -> u64 {
        self.auth.stats().await["exchange"].as_u64().unwrap()
    }

    async fn app_token(&self) -> String {
        self.auth
            .client_token("app", "app-dev-secret", CALLER_SCOPES)
            .await
    }
}

async fn call(app: &TestApp, token: &str) -> (u16, serde_json::Value) {
    upstream_saw_with_token(app, "/intercom/billing/invoices", token).await
}

/// What `POST /token` answered.
type TokenAnswer = awc::ClientResponse<
    std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>>,
    >,
>;

/// `POST /token` on `app` for the billing target: `caller`'s bearer token asks for
/// `subject`'s token.
async fn exchange_at(app: &TestApp, caller: &str, subject: &str) -> TokenAnswer {
    app.client
        .post(app.url("/token"))
        .insert_header(("authorization", format!("Bearer {caller}")))
        .send_form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", subject),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", "https://billing.internal"),
        ])
        .await
        .unwrap()
}

/// The bearer token the upstream received.
fn sent_token(seen: &serde_json::Value) -> String {
    seen["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string()
}

async fn admin_revoke(
    app: &TestApp,
    credential: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut res = app
        .client
        .post(app.admin_url("/admin/revoke"))
        .insert_header(("authorization", format!("Bearer {credential}")))
        .send_json(&body)
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or_default())
}

#[actix_web::test]
async fn an_exchange_on_one_instance_is_a_shared_hit_on_the_other() {
    shared_hit(World::start(&[]).await).await;
}

#[actix_web::test]
async fn on_a_redis_cluster_an_exchange_on_one_instance_is_a_shared_hit_on_the_other() {
    shared_hit(World::start_on_cluster().await).await;
}

async fn shared_hit(world: World) {
    let a = world.intercom("", "").await;
    let b = world.intercom("", "").await;
    let caller = world.app_token().await;

    let (status, seen) = call(&a, &caller).await;
    assert_eq!(status, 200, "{seen}");
    let exchanged = sent_token(&seen);
    assert_ne!(
        exchanged, caller,
        "the target never sees the caller's token"
    );
    assert_eq!(seen["path"], "/invoices");
    assert_eq!(world.exchanges().await, 1);

    // What the AS issued: for the target's audience, downscoped, with `act`.
    let said = world.auth.introspect(&exchanged).await;
    assert_eq!(said["active"], true, "{said}");
    let aud = &said["aud"];
    assert!(
        aud == "https://billing.internal" || aud[0] == "https://billing.internal",
        "{said}"
    );
    assert_eq!(said["scope"], "invoice_read", "caller's ∩ allowed: {said}");
    assert_eq!(said["act"]["sub"], "intercom", "{said}");
    assert_eq!(said["sub"], "app", "{said}");

    // B: served from Redis, no second exchange, the same token. (The metrics registry is
    // the test process's, shared by every app in it: compare changes.)
    let l2_hits = metric(&b.metrics().await, "intercom_exchange_cache_requests_total{tier=\"l2\",audience=\"https://billing.internal\",result=\"hit\"}");
    let (status, seen) = call(&b, &caller).await;
    assert_eq!(status, 200);
    assert_eq!(sent_token(&seen), exchanged);
    assert_eq!(world.exchanges().await, 1, "B's answer came from L2");
    let metrics = b.metrics().await;
    assert!(
        metric(&metrics, "intercom_exchange_cache_requests_total{tier=\"l2\",audience=\"https://billing.internal\",result=\"hit\"}") > l2_hits,
        "{metrics}"
    );
    // A again: an L1 hit.
    assert_eq!(call(&a, &caller).await.0, 200);
    assert_eq!(world.exchanges().await, 1);

    // Neither token reaches a log line or a metric.
    let logs = captured_logs();
    let metrics = a.metrics().await;
    for secret in [caller.as_str(), exchanged.as_str()] {
        assert!(!logs.contains(secret) && !metrics.contains(secret));
    }
    // Redis holds ciphertext only, and no key names a token or an identity.
    let keys = world.shared().keys();
    assert!(
        keys.iter().any(|k| k.starts_with("intercom:x:e:")),
        "{keys:?}"
    );
    for key in &keys {
        for secret in [
            caller.as_str(),
            exchanged.as_str(),
            "app",
            "intercom:x:e:eyJ",
        ] {
            assert!(!key.contains(secret), "key {key} holds {secret}");
        }
        if key.starts_with("intercom:x:e:") {
            let value = world.shared().get(key);
            assert!(value.starts_with("v1."), "{value}");
            // Not "eyJ" alone: three characters turn up in ~0.5 % of random base64
            // texts this long. `{"alg":` in base64 does not happen by chance.
            for secret in [
                caller.as_str(),
                exchanged.as_str(),
                "eyJhbGciOi",
                "invoice_read",
                "\"app\"",
            ] {
                assert!(!value.contains(secret), "value of {key} holds {secret}");
            }
        }
    }
}

#[actix_web::test]
async fn callers_and_scopes_outside_the_policy_are_denied_without_asking_the_as() {
    let world = World::start(&[]).await;
    let a = world
        .intercom(
            "",
            r#"
                [[routes]]
                name = "vault"
                prefix = "/intercom/vault"
                upstreams = ["http://127.0.0.1:9"]
                auth = "bearer"
                [routes.exchange]
                audience = "https://forbidden.internal"
                allowed_scopes = ["invoice_read"]
                callers = ["app"]
            "#,
        )
        .await;
    // A caller the target does not list.
    let reader = world
        .auth
        .client_token("reader", "reader-dev-secret", "invoice_read")
        .await;
    let mut res = a
        .client
        .get(a.url("/intercom/billing/x"))
        .insert_header(("authorization", format!("Bearer {reader}")))
        .send()
        .await
        .unwrap();
    // No scope would help: its own problem, and no made-up `scope` in the challenge.
    let body = assert_problem(&mut res, 403).await;
    assert_eq!(body["type"], "urn:intercom:problem:caller-not-allowed");
    assert!(body["detail"].as_str().unwrap().contains("may not call"));
    let challenge = res
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(!challenge.contains("scope=\""), "{challenge}");
    // A listed caller without any scope the target may receive: the challenge names
    // the scopes (RFC 6750 §3), nothing else.
    let narrow = world
        .auth
        .client_token("app", "app-dev-secret", "orders_read")
        .await;
    let mut res = a
        .client
        .get(a.url("/intercom/billing/x"))
        .insert_header(("authorization", format!("Bearer {narrow}")))
        .send()
        .await
        .unwrap();
    let body = assert_problem(&mut res, 403).await;
    assert_eq!(body["type"], "urn:intercom:problem:insufficient-scope");
    assert_eq!(
        res.headers().get("www-authenticate").unwrap(),
        "Bearer realm=\"intercom\", error=\"insufficient_scope\", scope=\"invoice_read invoice_write\""
    );
    assert_eq!(
        world.exchanges().await,
        0,
        "policy refusals never reach the AS"
    );

    // The AS refuses the target: 403, remembered briefly (no second call).
    let caller = world.app_token().await;
    for _ in 0..2 {
        let mut res = a
            .client
            .get(a.url("/intercom/vault/x"))
            .insert_header(("authorization", format!("Bearer {caller}")))
            .send()
            .await
            .unwrap();
        assert_problem(&mut res, 403).await;
    }
    assert_eq!(world.exchanges().await, 1, "the refusal was cached");
}

#[actix_web::test]
async fn a_subject_the_as_refuses_gets_the_same_401_on_every_try() {
    let world = World::start(&[]).await;
    let a = world
        .intercom(
            "",
            r#"
                [[routes]]
                name = "orders"
                prefix = "/intercom/orders"
                upstreams = ["http://127.0.0.1:9"]
                auth = "bearer"
                [routes.exchange]
                audience = "https://orders.internal"
                allowed_scopes = ["orders_read"]
                callers = ["app"]
            "#,
        )
        .await;
    let caller = world.app_token().await;
    assert_eq!(
        call(&a, &caller).await.0,
        200,
        "admitted, and cached at the edge"
    );
    // Revoked at the AS behind Intercom's back: the edge still admits it from its cache,
    // and the AS refuses to exchange it (invalid_grant).
    world.auth.revoke(&caller, "app", "app-dev-secret").await;
    let before = world.exchanges().await;
    for attempt in 0..2 {
        let mut res = a
            .client
            .get(a.url("/intercom/orders/x"))
            .insert_header(("authorization", format!("Bearer {caller}")))
            .send()
            .await
            .unwrap();
        let body = assert_problem(&mut res, 401).await;
        assert_eq!(
            body["type"], "urn:intercom:problem:invalid-token",
            "try {attempt}"
        );
    }
    assert_eq!(
        world.exchanges().await,
        before + 1,
        "the second answer was remembered"
    );
}

#[actix_web::test]
async fn intercoms_own_endpoints_are_limited_per_client_address() {
    let world = World::start(&[]).await;
    let a = world
        .intercom(
            "",
            r#"
                [rate_limit]
                endpoints = [{ requests = 4, per = "1h" }]
            "#,
        )
        .await;
    let caller = world.app_token().await;
    let token = || exchange_at(&a, &caller, &caller);
    for _ in 0..2 {
        assert_eq!(token().await.status().as_u16(), 200);
    }
    // /revoke and /backchannel-logout draw on the same budget.
    let res = a
        .client
        .post(a.url("/revoke"))
        .basic_auth("app", "app-dev-secret")
        .send_form(&[("token", "junk-1")])
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "RFC 7009: unknown tokens are fine"
    );
    let res = a
        .client
        .post(a.url("/backchannel-logout"))
        .send_form(&[("logout_token", "not-a-jwt")])
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let before = world.auth.stats().await["revocation"].as_u64().unwrap();
    for _ in 0..3 {
        let mut res = a
            .client
            .post(a.url("/revoke"))
            .basic_auth("app", "app-dev-secret")
            .send_form(&[("token", "junk-2")])
            .await
            .unwrap();
        assert_problem(&mut res, 429).await;
    }
    assert_eq!(
        world.auth.stats().await["revocation"].as_u64().unwrap(),
        before,
        "refused before the AS"
    );
    let mut res = token().await;
    assert_problem(&mut res, 429).await;
}

#[actix_web::test]
async fn an_absurd_expires_in_from_the_as_is_clamped() {
    // Just below 2^64: it parses as a u64, and adding it to "now" overflowed.
    let world = World::start(&[("EXCHANGE_TTL", "18446744073709549568")]).await;
    let a = world.intercom("", "").await;
    let caller = world.app_token().await;
    for _ in 0..2 {
        assert_eq!(call(&a, &caller).await.0, 200);
    }
    assert_eq!(world.exchanges().await, 1, "cached, for at most the clamp");
    let mut res = exchange_at(&a, &caller, &caller).await;
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(expires_in <= 366 * 86_400, "{expires_in}");
}

#[actix_web::test]
async fn each_caller_gets_its_own_minted_token_for_one_subject() {
    let world = World::start(&[]).await;
    // `app` is named; `reader` is allowed by its own scope.
    let a = world
        .intercom(
            r#"
            mode = "mint"
            caller_scopes = ["invoice_read"]
        "#,
            "",
        )
        .await;
    let subject = world
        .auth
        .user_token_with("erin", CALLER_SCOPES, 600, &[("client_id", "app")])
        .await;
    let mut acts = Vec::new();
    for (client, secret) in [("app", "app-dev-secret"), ("reader", "reader-dev-secret")] {
        let caller = world
            .auth
            .client_token(client, secret, "invoice_read")
            .await;
        let mut res = exchange_at(&a, &caller, &subject).await;
        assert_eq!(res.status().as_u16(), 200, "{client}");
        let body: serde_json::Value = res.json().await.unwrap();
        let token = body["access_token"].as_str().unwrap();
        // Its signature is checked in the mint test above; here only who it names.
        let payload = base64_url(token.split('.').nth(1).unwrap());
        let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(claims["sub"], "erin");
        acts.push(claims["act"]["sub"].as_str().unwrap().to_string());
    }
    assert_eq!(
        acts,
        ["app", "reader"],
        "the delegation names whoever asked"
    );
}

fn base64_url(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

#[actix_web::test]
async fn concurrent_misses_for_one_token_make_one_exchange() {
    let world = World::start(&[]).await;
    let a = world.intercom("", "").await;
    let caller = world.app_token().await;
    let requests = (0..256)
        .map(|_| (a.url("/intercom/billing/x"), caller.clone()))
        .collect();
    let statuses = concurrent_gets(requests, 256).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(world.exchanges().await, 1);
}

#[actix_web::test]
async fn redis_gone_keeps_serving_from_memory_and_the_as_then_shares_again() {
    let mut world = World::start(&[]).await;
    let port = world.redis().port;
    let a = world.intercom("", "").await;
    let b = world.intercom("", "").await;
    let first = world.app_token().await;
    assert_eq!(call(&a, &first).await.0, 200);

    world.redis = None; // stops redis-server
    assert_eq!(call(&a, &first).await.0, 200, "L1 hit");
    let second = world.app_token().await;
    assert_eq!(call(&a, &second).await.0, 200, "direct exchange");
    let mut ready = a
        .client
        .get(a.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["dependencies"]["redis"]["status"], "degraded");

    world.redis = Some(TestRedis::start_on(port));
    // New callers until one's entry lands in Redis (the first may still find it resting).
    let mut third = None;
    assert!(
        eventually(PATIENCE, async || {
            let token = world.app_token().await;
            assert_eq!(call(&a, &token).await.0, 200);
            let stored = world
                .redis()
                .keys()
                .iter()
                .any(|k| k.starts_with("intercom:x:e:"));
            if stored {
                third = Some(token);
            }
            stored
        })
        .await,
        "A stores in Redis again"
    );
    let third = third.unwrap();
    // B is back on Redis once it resubscribed and reloaded the denylist.
    assert!(
        eventually(PATIENCE, async || {
            let mut ready = b
                .client
                .get(b.admin_url("/health/ready"))
                .send()
                .await
                .unwrap();
            let ready: serde_json::Value = ready.json().await.unwrap();
            let deps = &ready["dependencies"];
            deps["redis"]["status"] == "ok" && deps["denylist"]["status"] == "ok"
        })
        .await,
        "B did not reconnect to Redis"
    );
    let before = world.exchanges().await;
    assert_eq!(call(&b, &third).await.0, 200);
    assert_eq!(world.exchanges().await, before, "B: an L2 hit");
}

#[actix_web::test]
async fn entries_are_renewed_ahead_of_expiry_without_a_request_waiting() {
    // A 30 s token renewed past a tenth of its life: the test waits 3 s for that, and a
    // slow machine has the remaining 26 s before the old token would expire.
    let world = World::start(&[("EXCHANGE_TTL", "30")]).await;
    let renewing = r#"
        refresh_ahead = 0.1
        skew = "1s"
    "#;
    let a = world.intercom_with("", renewing, "").await;
    let b = world.intercom_with("", renewing, "").await;
    let caller = world.app_token().await;
    let (_, seen) = call(&a, &caller).await;
    let old = sent_token(&seen);
    assert_eq!(call(&b, &caller).await.0, 200);
    assert_eq!(world.exchanges().await, 1);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // Past a tenth of its life: both replicas answer at once with the old token, and one of
    // them (the holder of the Redis lock) renews it behind the request.
    for app in [&a, &b] {
        let (status, seen) = call(app, &caller).await;
        assert_eq!(status, 200);
        assert_eq!(
            sent_token(&seen),
            old,
            "the request did not wait for the renewal"
        );
    }
    assert!(
        eventually(PATIENCE, async || world.exchanges().await == 2).await,
        "renewed in the background"
    );
    let mut renewed = Vec::new();
    for app in [&a, &b] {
        let mut token = String::new();
        assert!(
            eventually(PATIENCE, async || {
                token = sent_token(&call(app, &caller).await.1);
                token != old
            })
            .await,
            "each replica serves the renewed token"
        );
        renewed.push(token);
    }
    assert_eq!(renewed[0], renewed[1], "one renewal, shared through Redis");
    assert_eq!(world.auth.introspect(&renewed[0]).await["active"], true);
    assert_eq!(world.exchanges().await, 2, "renewed once across replicas");
}

#[actix_web::test]
async fn a_revocation_on_one_instance_is_refused_on_the_other() {
    revocation_shared(World::start(&[]).await).await;
}

#[actix_web::test]
async fn on_a_redis_cluster_a_revocation_on_one_instance_is_refused_on_the_other() {
    revocation_shared(World::start_on_cluster().await).await;
}

#[actix_web::test]
async fn behind_a_sentinel_a_revocation_after_a_failover_is_refused_on_the_other() {
    let world = World::start_on_sentinel().await;
    let a = world.intercom("", "").await;
    let b = world.intercom("", "").await;
    let alice = world
        .auth
        .user_token_with("alice", CALLER_SCOPES, 600, &[("client_id", "app")])
        .await;
    for app in [&a, &b] {
        assert_eq!(call(app, &alice).await.0, 200);
    }
    // The master hands over to its replica; both instances keep their subscriptions
    // (the old master, now a replica, delivers what the new one publishes) or make new
    // ones to the master the sentinel names.
    let sentinel = world.sentinel.as_ref().unwrap();
    sentinel.failover().await;
    let (status, body) = admin_revoke(&a, ADMIN, serde_json::json!({"sub": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(PATIENCE, async || call(&b, &alice).await.0 == 401).await,
        "B refuses alice after the failover"
    );
    // The revocation is stored on the new master: a replica started now would load it.
    assert!(
        eventually(PATIENCE, async || {
            world
                .shared()
                .keys()
                .iter()
                .any(|k| k.ends_with(":x:denylist"))
        })
        .await,
        "the denylist is not on the new master (revoke: {body}): {:?}",
        world.shared().keys()
    );
}

async fn revocation_shared(world: World) {
    let a = world.intercom("", "").await;
    let b = world.intercom("", "").await;
    let alice = world
        .auth
        .user_token_with("alice", CALLER_SCOPES, 600, &[("client_id", "app")])
        .await;
    let bob = world
        .auth
        .user_token_with("bob", CALLER_SCOPES, 600, &[("client_id", "app")])
        .await;
    for app in [&a, &b] {
        assert_eq!(call(app, &alice).await.0, 200);
        assert_eq!(call(app, &bob).await.0, 200);
    }
    let entries = |world: &World| {
        world
            .shared()
            .keys()
            .iter()
            .filter(|k| k.starts_with("intercom:x:e:"))
            .count()
    };
    assert_eq!(entries(&world), 2);

    // The admin API refuses anyone without the credential, and bad bodies.
    assert_eq!(
        admin_revoke(&a, "wrong", serde_json::json!({"sub": "alice"}))
            .await
            .0,
        401
    );
    assert_eq!(admin_revoke(&a, ADMIN, serde_json::json!({})).await.0, 400);
    assert_eq!(
        admin_revoke(&a, ADMIN, serde_json::json!({"sub": "a", "sid": "b"}))
            .await
            .0,
        400
    );
    let series = "intercom_revocations_total{source=\"admin\",kind=\"sub\"}";
    let revoked_before = metric(&a.metrics().await, series);
    let (status, body) = admin_revoke(&a, ADMIN, serde_json::json!({"sub": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shared_entries_evicted"], 1);
    assert_eq!(body["announced"], true);
    assert_eq!(entries(&world), 1, "alice's L2 entry is gone, bob's stays");

    assert!(
        eventually(PATIENCE, async || call(&b, &alice).await.0 == 401).await,
        "B refuses alice"
    );
    assert_eq!(call(&a, &alice).await.0, 401);
    assert_eq!(call(&b, &bob).await.0, 200, "bob is untouched");
    // A token issued after the revocation is fine.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = world
        .auth
        .user_token_with("alice", CALLER_SCOPES, 600, &[("client_id", "app")])
        .await;
    assert_eq!(call(&b, &fresh).await.0, 200);
    assert_eq!(
        metric(&a.metrics().await, series) - revoked_before,
        1.0,
        "one revocation counted"
    );

    // Everything: no exchanged token made before it is served again, by a replica that
    // heard it or by one started after it (the shared tier is not scanned: entries made
    // before are passed over until they expire).
    let (status, body) = admin_revoke(&a, ADMIN, serde_json::json!({"all": true})).await;
    assert_eq!(status, 200, "{body}");
    // Entries are compared by the second: wait until the clock is past the revocation's.
    let revoked_by = now();
    assert!(eventually(PATIENCE, async || now() > revoked_by).await);
    let before = world.exchanges().await;
    let c = world.intercom("", "").await;
    assert!(
        eventually(PATIENCE, async || dependency(&c, "denylist").await == "ok").await,
        "C never loaded the denylist"
    );
    assert_eq!(call(&c, &bob).await.0, 200);
    assert_eq!(
        world.exchanges().await,
        before + 1,
        "C served bob's old entry"
    );
    assert_eq!(call(&b, &bob).await.0, 200);
    assert_eq!(world.exchanges().await, before + 1, "B takes C's new entry");
}

#[actix_web::test]
async fn backchannel_logout_evicts_the_subject_everywhere_and_forgeries_are_refused() {
    let world = World::start(&[("SIGNING_KID", "as-key")]).await;
    let a = world.intercom("", "").await;
    let b = world.intercom("", "").await;
    let carol = world
        .auth
        .user_token_with(
            "carol",
            CALLER_SCOPES,
            600,
            &[("client_id", "app"), ("sid", "sess-1")],
        )
        .await;
    for app in [&a, &b] {
        assert_eq!(call(app, &carol).await.0, 200);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |jti: &str| {
        serde_json::json!({
            "iss": world.auth.issuer, "aud": "intercom", "iat": now, "exp": now + 120,
            "jti": jti, "sid": "sess-1",
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} }
        })
    };
    let post = |app: &TestApp, token: String| {
        let client = app.client.clone();
        let url = app.url("/backchannel-logout");
        async move {
            client
                .post(url)
                .send_form(&[("logout_token", token.as_str())])
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let header = serde_json::json!({ "typ": "logout+jwt" });
    // Forgeries: each refused, nothing revoked.
    let mut bad = Vec::new();
    let mut c = claims("j-aud");
    c["aud"] = "someone-else".into();
    bad.push(world.auth.sign(header.clone(), c).await);
    let mut c = claims("j-events");
    c["events"] = serde_json::json!({});
    bad.push(world.auth.sign(header.clone(), c).await);
    let mut c = claims("j-nonce");
    c["nonce"] = "n".into();
    bad.push(world.auth.sign(header.clone(), c).await);
    let mut c = claims("j-iss");
    c["iss"] = "https://evil.example".into();
    bad.push(world.auth.sign(header.clone(), c).await);
    let mut c = claims("j-old");
    c["iat"] = (now - 3600).into();
    bad.push(world.auth.sign(header.clone(), c).await);
    let mut c = claims("j-who");
    c.as_object_mut().unwrap().remove("sid");
    bad.push(world.auth.sign(header.clone(), c).await);
    bad.push(
        world
            .auth
            .sign(
                serde_json::json!({ "typ": "logout+jwt", "kid": "unknown" }),
                claims("j-kid"),
            )
            .await,
    );
    let unsigned = {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            b64(serde_json::json!({"alg": "none"})),
            b64(claims("j-none"))
        )
    };
    bad.push(unsigned);
    bad.push("not-a-jwt".into());
    for token in bad {
        assert_eq!(post(&a, token).await, 400);
    }
    // No form at all: a problem, like every other refusal.
    let mut res = a
        .client
        .post(a.url("/backchannel-logout"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(&mut res, 400).await;
    assert_eq!(body["type"], "urn:intercom:problem:bad-request");
    assert_eq!(call(&b, &carol).await.0, 200, "no forgery revoked anything");

    let good = world.auth.sign(header.clone(), claims("j-good")).await;
    assert_eq!(post(&a, good.clone()).await, 200);
    assert!(
        eventually(PATIENCE, async || call(&b, &carol).await.0 == 401).await,
        "the session's token is refused on B"
    );
    assert_eq!(call(&a, &carol).await.0, 401);
    assert!(
        !world
            .redis()
            .keys()
            .iter()
            .any(|k| k.starts_with("intercom:x:e:")),
        "the session's shared entry is gone"
    );
    assert_eq!(
        post(&b, good).await,
        400,
        "a replayed logout token is refused"
    );
}

#[actix_web::test]
async fn the_token_endpoint_answers_in_the_rfc_8693_shape() {
    let world = World::start(&[]).await;
    let a = world.intercom("", "").await;
    let caller = world.app_token().await;
    let form = |audience: &str, scope: &str| {
        vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange".to_string(),
            ),
            ("subject_token", caller.clone()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token".to_string(),
            ),
            ("audience", audience.to_string()),
            ("scope", scope.to_string()),
        ]
    };
    let post = |bearer: Option<&str>, form: Vec<(&'static str, String)>| {
        let mut req = a.client.post(a.url("/token"));
        if let Some(token) = bearer {
            req = req.insert_header(("authorization", format!("Bearer {token}")));
        }
        async move { req.send_form(&form).await.unwrap() }
    };
    let mut res = post(
        Some(&caller),
        form("https://billing.internal", "invoice_read"),
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers().get("cache-control").unwrap(), "no-store");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "invoice_read");
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(world.auth.introspect(token).await["active"], true);
    // The same answer through the proxy: one cache.
    let (_, seen) = call(&a, &caller).await;
    assert_eq!(sent_token(&seen), token);
    assert_eq!(world.exchanges().await, 1);

    // Bad requests: problem+json, never a 500.
    let mut wrong_grant = form("https://billing.internal", "");
    wrong_grant[0].1 = "client_credentials".into();
    let cases = [
        (None, form("https://billing.internal", ""), 401),
        (Some(caller.as_str()), wrong_grant, 400),
        (
            Some(caller.as_str()),
            form("https://nowhere.internal", ""),
            400,
        ),
        (
            Some(caller.as_str()),
            form("https://billing.internal", "admin"),
            403,
        ),
    ];
    for (bearer, form, status) in cases {
        let mut res = post(bearer, form).await;
        assert_problem(&mut res, status).await;
    }
}

#[actix_web::test]
async fn mint_mode_signs_a_downscoped_token_naming_the_caller() {
    let world = World::start(&[]).await;
    let a = world.intercom("mode = \"mint\"", "").await;
    let caller = world.app_token().await;
    let (status, seen) = call(&a, &caller).await;
    assert_eq!(status, 200);
    let token = sent_token(&seen);
    let mut res = a
        .client
        .get(a.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    let set = josekit::jwk::JwkSet::from_bytes(res.body().await.unwrap()).unwrap();
    let header = josekit::jwt::decode_header(&token).unwrap();
    let kid = header.claim("kid").unwrap().as_str().unwrap();
    let key = set.get(kid)[0];
    let verifier = josekit::jws::ES256.verifier_from_jwk(key).unwrap();
    let (claims, _) = josekit::jwt::decode_with_verifier(&token, &verifier).unwrap();
    assert_eq!(claims.audience().unwrap(), vec!["https://billing.internal"]);
    assert_eq!(claims.claim("scope").unwrap(), "invoice_read");
    assert_eq!(claims.claim("act").unwrap()["sub"], "app");
    assert_eq!(world.exchanges().await, 0, "minted here, not at the AS");
}

#[actix_web::test]
async fn rfc_7009_revocation_through_intercom_reaches_every_replica() {
    let world = World::start(&[]).await;
    let a = world.intercom("", "").await;
    let b = world.intercom("", "").await;
    let caller = world.app_token().await;
    for app in [&a, &b] {
        assert_eq!(call(app, &caller).await.0, 200);
    }
    // A client that does not own the token is refused by the AS, and nothing changes.
    let res = a
        .client
        .post(a.url("/revoke"))
        .basic_auth("app", "wrong-secret")
        .send_form(&[("token", caller.as_str())])
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(call(&b, &caller).await.0, 200);

    let res = a
        .client
        .post(a.url("/revoke"))
        .basic_auth("app", "app-dev-secret")
        .send_form(&[("token", caller.as_str())])
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(world.auth.introspect(&caller).await["active"], false);
    // Both replicas had it cached; both refuse it now.
    assert!(eventually(PATIENCE, async || call(&b, &caller).await.0 == 401).await);
    assert_eq!(call(&a, &caller).await.0, 401);
    let denied = world.redis().command("ZCARD intercom:x:denylist");
    assert_eq!(denied, ":1", "the real token is on the denylist");

    // Junk: the AS answers 200 for any string (RFC 7009 §2.2), but nothing that is not
    // a real token of the client asking becomes a denylist entry or a broadcast.
    let revocations = |m: &str| metric(m, "intercom_revocations_total{source=\"rfc7009\"");
    let before = revocations(&a.metrics().await);
    for i in 0..50 {
        let res = a
            .client
            .post(a.url("/revoke"))
            .basic_auth("app", "app-dev-secret")
            .send_form(&[("token", format!("junk-{i}").as_str())])
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
    }
    // Nor a real token of another client.
    let theirs = world
        .auth
        .client_token("reader", "reader-dev-secret", "invoice_read")
        .await;
    let res = a
        .client
        .post(a.url("/revoke"))
        .basic_auth("app", "app-dev-secret")
        .send_form(&[("token", theirs.as_str())])
        .await
        .unwrap();
    assert!(res.status().as_u16() < 500);
    assert_eq!(world.redis().command("ZCARD intercom:x:denylist"), ":1");
    assert_eq!(revocations(&a.metrics().await), before);
}

#[actix_web::test]
async fn an_actor_token_vouches_for_intercom_in_the_delegation() {
    let world = World::start(&[]).await;
    let a = world.intercom("actor = true", "").await;
    let caller = world.app_token().await;
    let (status, seen) = call(&a, &caller).await;
    assert_eq!(status, 200);
    let stats = world.auth.stats().await;
    assert_eq!(
        stats["actor"], 1,
        "the AS saw and checked an actor token: {stats}"
    );
    let said = world.auth.introspect(&sent_token(&seen)).await;
    assert_eq!(said["act"]["sub"], "intercom", "{said}");
    // A second caller reuses Intercom's cached actor token.
    let other = world.app_token().await;
    assert_eq!(call(&a, &other).await.0, 200);
    let stats = world.auth.stats().await;
    let issued = stats["token"].as_u64().unwrap() - stats["exchange"].as_u64().unwrap();
    assert_eq!(issued, 3, "two caller tokens and one actor token: {stats}");
}

#[actix_web::test]
async fn the_token_endpoint_takes_configured_clients_with_basic_authentication() {
    let world = World::start(&[]).await;
    let a = world
        .intercom(
            "",
            r#"
                [token_endpoint]
                clients = [{ client_id = "app", secret = "file:token_client_app" }]
            "#,
        )
        .await;
    let subject = world
        .auth
        .user_token_with("dora", CALLER_SCOPES, 600, &[("client_id", "app")])
        .await;
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", subject.as_str()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("audience", "https://billing.internal"),
    ];
    let mut res = a
        .client
        .post(a.url("/token"))
        .basic_auth("app", "app:token-endpoint-secret")
        .send_form(&form)
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["scope"], "invoice_read");
    let said = world
        .auth
        .introspect(body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(said["sub"], "dora", "{said}");
    for (id, secret) in [("app", "wrong"), ("stranger", "app:token-endpoint-secret")] {
        let mut res = a
            .client
            .post(a.url("/token"))
            .basic_auth(id, secret)
            .send_form(&form)
            .await
            .unwrap();
        assert_problem(&mut res, 401).await;
        assert_eq!(
            res.headers().get("www-authenticate").unwrap(),
            "Basic realm=\"intercom\""
        );
    }
    assert_eq!(world.exchanges().await, 1);
}

#[actix_web::test]
async fn internal_jwts_presented_back_are_accepted_and_revoked_with_their_subject() {
    let world = World::start(&[]).await;
    // Billing takes internal JWTs minted for the orders service, and only those.
    let a = world
        .intercom_keyed(
            "internal_audiences = [\"orders-svc\"]",
            "mode = \"mint\"",
            "",
            &format!(
                r#"
                    [tokens]
                    accept_internal = true
                    [[routes]]
                    name = "orders"
                    prefix = "/api/orders"
                    upstreams = ["{}"]
                    auth = "bearer"
                    audience = "orders-svc"
                    [[routes]]
                    name = "reports"
                    prefix = "/api/reports"
                    upstreams = ["{}"]
                    auth = "bearer"
                    audience = "reports-svc"
                "#,
                world.upstream.url(),
                world.upstream.url()
            ),
        )
        .await;
    let alice = world
        .auth
        .user_token_with(
            "alice",
            CALLER_SCOPES,
            600,
            &[("client_id", "app"), ("sid", "s-9")],
        )
        .await;
    // The orders service receives Intercom's internal JWT for alice...
    let mut res = a
        .client
        .get(a.url("/api/orders/1"))
        .insert_header(("authorization", format!("Bearer {alice}")))
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = res.json().await.unwrap();
    let internal = sent_token(&seen);
    assert_ne!(internal, alice);
    // ...and calls billing through Intercom with it.
    let (status, seen) = call(&a, &internal).await;
    assert_eq!(status, 200, "{seen}");
    let minted = sent_token(&seen);
    let claims = josekit::jwt::decode_header(&minted).unwrap();
    assert_eq!(claims.claim("typ").unwrap(), "at+jwt");
    // A tampered internal JWT is refused.
    let mut forged = internal.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_eq!(call(&a, &forged).await.0, 401);
    // An internal JWT minted for another upstream is not accepted on billing: a service
    // cannot replay a user's internal JWT against any API.
    let mut res = a
        .client
        .get(a.url("/api/reports/1"))
        .insert_header(("authorization", format!("Bearer {alice}")))
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = res.json().await.unwrap();
    let for_reports = sent_token(&seen);
    let mut res = a
        .client
        .get(a.url("/intercom/billing/x"))
        .insert_header(("authorization", format!("Bearer {for_reports}")))
        .send()
        .await
        .unwrap();
    let body = assert_problem(&mut res, 401).await;
    assert!(
        body["detail"].as_str().unwrap().contains("not accepted"),
        "{body}"
    );
    // Nor on a plain route that names none.
    let mut res = a
        .client
        .get(a.url("/api/reports/2"))
        .insert_header(("authorization", format!("Bearer {internal}")))
        .send()
        .await
        .unwrap();
    assert_problem(&mut res, 401).await;
    // Nor at /token for billing, as the subject.
    let mut res = exchange_at(&a, &alice, &for_reports).await;
    assert_problem(&mut res, 401).await;
    // Revoking alice's token itself refuses what was derived from it (the internal JWT
    // carries its source's revocation id).
    let bob = world
        .auth
        .user_token_with("bob", CALLER_SCOPES, 600, &[("client_id", "app")])
        .await;
    let mut res = a
        .client
        .get(a.url("/api/orders/3"))
        .insert_header(("authorization", format!("Bearer {bob}")))
        .send()
        .await
        .unwrap();
    let bob_internal = sent_token(&res.json::<serde_json::Value>().await.unwrap());
    assert_eq!(call(&a, &bob_internal).await.0, 200);
    let (status, _) = admin_revoke(&a, ADMIN, serde_json::json!({"token": bob})).await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&a, &bob_internal).await.0,
        401,
        "derived from a revoked token"
    );
    // Revoking the session refuses the internal JWT minted before it.
    let (status, _) = admin_revoke(&a, ADMIN, serde_json::json!({"sid": "s-9"})).await;
    assert_eq!(status, 200);
    let mut res = a
        .client
        .get(a.url("/intercom/billing/x"))
        .insert_header(("authorization", format!("Bearer {internal}")))
        .send()
        .await
        .unwrap();
    let body = assert_problem(&mut res, 401).await;
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
}

#[actix_web::test]
async fn on_a_redis_cluster_revocations_reach_every_replica_after_a_node_dies() {
    let mut world = World::start_on_cluster().await;
    let a = world.intercom("", "").await;
    let b = world.intercom("", "").await;
    let erin = world
        .auth
        .user_token_with("erin", CALLER_SCOPES, 600, &[("client_id", "app")])
        .await;
    for app in [&a, &b] {
        assert_eq!(call(app, &erin).await.0, 200);
    }
    // Every replica subscribes on the first node of `nodes` first: that node dies (a
    // master, whose replica takes over, or a replica), and the subscribers move on.
    let cluster = world.cluster.as_mut().expect("a cluster");
    let first = cluster.nodes[0].port;
    cluster.kill(first);
    let settled = eventually(PATIENCE * 2, async || {
        cluster.nodes[1..].iter().all(|n| {
            n.process.is_none() || n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
        })
    })
    .await;
    assert!(settled, "the cluster did not settle without its first node");

    let revoked = eventually(PATIENCE, async || {
        admin_revoke(&a, ADMIN, serde_json::json!({"sub": "erin"}))
            .await
            .1["announced"]
            == true
    })
    .await;
    assert!(revoked, "A could not share the revocation");
    assert!(
        eventually(PATIENCE, async || call(&b, &erin).await.0 == 401).await,
        "B never heard the revocation"
    );
}
