//! Revocation reaches every replica: through the shared key even without an exchange
//! route, from a denylist loaded whole into a replica started later (into a large
//! Redis), and after a Redis outage, from the queue of announcements not shared yet.

use crate::helpers::*;

const ADMIN: &str = "admin-credential-for-revocation-tests";

/// Replicas sharing one real redis-server and the real AS, with a plain bearer route
/// (`/api`, no exchange) and the admin API.
struct Replicas {
    auth: TestAuthServer,
    upstream: TestUpstream,
    redis: Option<TestRedis>,
    _dir: tempfile::TempDir,
    secrets: std::path::PathBuf,
}

impl Replicas {
    async fn start() -> Self {
        let (dir, secrets) = secrets_file();
        let mut text = std::fs::read_to_string(&secrets).unwrap();
        text.push_str(&format!(
            r#"
                admin_credential = "{ADMIN}"
                replicas_next_key = "the-next-shared-key-fedcba9876543210"
            "#
        ));
        std::fs::write(&secrets, text).unwrap();
        Self {
            auth: TestAuthServer::start_with_env(&[("SIGNING_KID", "as-key")]).await,
            upstream: TestUpstream::start("api"),
            redis: Some(TestRedis::start()),
            _dir: dir,
            secrets,
        }
    }

    fn redis(&self) -> &TestRedis {
        self.redis.as_ref().expect("redis runs")
    }

    async fn replica(&self) -> TestApp {
        let shared = redis_config(self.redis(), "retry_interval = \"300ms\"");
        self.replica_sharing(&shared).await
    }

    /// A replica whose `[redis]` and `[replicas]` sections are `shared`.
    async fn replica_sharing(&self, shared: &str) -> TestApp {
        spawn_app(&format!(
            r#"
                {}{shared}[revocation]
                admin_credential = "file:admin_credential"
                [[routes]]
                name = "api"
                prefix = "/api"
                upstreams = ["{}"]
                auth = "bearer"
            "#,
            auth_config(&self.auth, &self.secrets, ""),
            self.upstream.url(),
        ))
        .await
    }
}

async fn call(app: &TestApp, token: &str) -> u16 {
    upstream_saw_with_token(app, "/api/x", token).await.0
}

async fn admin_revoke(app: &TestApp, body: serde_json::Value) -> (u16, serde_json::Value) {
    let mut res = app
        .client
        .post(app.admin_url("/admin/revoke"))
        .insert_header(("authorization", format!("Bearer {ADMIN}")))
        .send_json(&body)
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or_default())
}

/// A logout token signed by the AS, with `jti` and one of `sub` / `sid`.
async fn logout_token(auth: &TestAuthServer, jti: &str, (who, value): (&str, &str)) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({
        "iss": auth.issuer, "aud": "intercom", "iat": now, "exp": now + 120, "jti": jti,
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} }
    });
    claims[who] = value.into();
    auth.sign(serde_json::json!({ "typ": "logout+jwt" }), claims)
        .await
}

#[actix_web::test]
async fn replicas_without_an_exchange_route_share_revocations() {
    let world = Replicas::start().await;
    let a = world.replica().await;
    let b = world.replica().await;
    let dora = world.auth.user_token("dora", "invoice_read", 600).await;
    let eve = world.auth.user_token("eve", "invoice_read", 600).await;
    for app in [&a, &b] {
        assert_eq!(call(app, &dora).await, 200);
        assert_eq!(call(app, &eve).await, 200);
    }
    let (status, body) = admin_revoke(&a, serde_json::json!({"sub": "dora"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["announced"], true);
    // B admitted dora from its own cache; it hashes her id under the same shared key as
    // A, so A's announcement finds her there.
    assert!(
        eventually(PATIENCE, async || call(&b, &dora).await == 401).await,
        "B keeps admitting a token revoked on A"
    );
    assert_eq!(call(&a, &dora).await, 401);
    assert_eq!(call(&b, &eve).await, 200, "eve is untouched");
    // Redis holds the denylist hashed: no subject in a key or a member.
    let members = world.redis().command("ZRANGE intercom:x:denylist 0 -1");
    assert!(!members.contains("dora"), "{members}");
}

#[actix_web::test]
async fn a_replica_started_into_a_large_redis_loads_the_whole_denylist() {
    let world = Replicas::start().await;
    // A production-sized keyspace: 300,000 other keys (a whole-keyspace SCAN would not
    // finish within one call's deadline).
    assert_eq!(world.redis().command("DEBUG POPULATE 300000 other"), "+OK");
    let a = world.replica().await;
    let frank = world.auth.user_token("frank", "invoice_read", 600).await;
    assert_eq!(call(&a, &frank).await, 200);
    for sub in ["frank", "gina", "hal"] {
        let (status, _) = admin_revoke(&a, serde_json::json!({ "sub": sub })).await;
        assert_eq!(status, 200);
    }
    // B starts after the revocations: it never heard them, it loads them.
    let b = world.replica().await;
    assert!(
        eventually(PATIENCE, async || dependency(&b, "denylist").await == "ok").await,
        "the denylist never loaded"
    );
    assert_eq!(
        call(&b, &frank).await,
        401,
        "B admits a token revoked before it started"
    );
    let ivan = world.auth.user_token("ivan", "invoice_read", 600).await;
    assert_eq!(call(&b, &ivan).await, 200);
}

#[actix_web::test]
async fn revocations_during_a_redis_outage_are_queued_and_shared_when_it_returns() {
    let mut world = Replicas::start().await;
    let port = world.redis().port;
    let a = world.replica().await;
    let b = world.replica().await;
    let jo = world
        .auth
        .user_token_with("jo", "invoice_read", 600, &[("sid", "sess-jo")])
        .await;
    let kim = world.auth.user_token("kim", "invoice_read", 600).await;
    for app in [&a, &b] {
        assert_eq!(call(app, &jo).await, 200);
        assert_eq!(call(app, &kim).await, 200);
    }

    world.redis = None; // stops redis-server
                        // The admin API: applied here at once, queued for the others (202).
    let (status, body) = admin_revoke(&a, serde_json::json!({"sub": "kim"})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["announced"], false);
    assert_eq!(body["queued"], true);
    assert_eq!(call(&a, &kim).await, 401);

    // A back-channel logout that cannot be shared is a 5xx, so the AS sends it again.
    let logout = logout_token(&world.auth, "outage-1", ("sid", "sess-jo")).await;
    let post_logout = async || {
        let mut res = a
            .client
            .post(a.url("/backchannel-logout"))
            .send_form(&[("logout_token", logout.as_str())])
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.body().await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = post_logout().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("urn:intercom:problem:revocation-not-shared"),
        "{body}"
    );

    // Redis returns: the queue drains, and B refuses both without hearing them live
    // (it reloads the denylist when it resubscribes, or hears the queued announcement).
    world.redis = Some(TestRedis::start_on(port));
    assert!(
        eventually(PATIENCE, async || call(&b, &kim).await == 401).await,
        "a revocation made during the outage never reached B"
    );
    assert!(
        eventually(PATIENCE, async || call(&b, &jo).await == 401).await,
        "a logout made during the outage never reached B"
    );
    // The AS's retry of the same logout token is accepted, not refused as a replay.
    let (status, body) = post_logout().await;
    assert_eq!(status, 200, "{body}");
    assert!(
        metric(&a.metrics().await, "intercom_revocations_pending") == 0.0,
        "the queue drained"
    );
}

/// Rotating the shared key: replicas of step 1 (`shared_key` old, `rotation_shared_key`
/// new) and of step 2 (the other way round) recognise each other's revocations and
/// logout `jti`s, because everything is announced and recorded under both keys.
#[actix_web::test]
async fn replicas_in_the_middle_of_a_key_rotation_hear_each_other() {
    let world = Replicas::start().await;
    let redis = redis_section(world.redis());
    let step1 = world
        .replica_sharing(&format!(
            r#"
                {redis}[replicas]
                shared_key = "file:replicas_shared_key"
                rotation_shared_key = "file:replicas_next_key"
            "#
        ))
        .await;
    let step2 = world
        .replica_sharing(&format!(
            r#"
                {redis}[replicas]
                shared_key = "file:replicas_next_key"
                rotation_shared_key = "file:replicas_shared_key"
            "#
        ))
        .await;
    let lee = world.auth.user_token("lee", "invoice_read", 600).await;
    let max = world.auth.user_token("max", "invoice_read", 600).await;
    for app in [&step1, &step2] {
        assert_eq!(call(app, &lee).await, 200);
        assert_eq!(call(app, &max).await, 200);
    }
    assert_eq!(
        admin_revoke(&step1, serde_json::json!({"sub": "lee"}))
            .await
            .0,
        200
    );
    assert_eq!(
        admin_revoke(&step2, serde_json::json!({"sub": "max"}))
            .await
            .0,
        200
    );
    assert!(
        eventually(PATIENCE, async || call(&step2, &lee).await == 401).await,
        "step 2 missed step 1's revocation"
    );
    assert!(
        eventually(PATIENCE, async || call(&step1, &max).await == 401).await,
        "step 1 missed step 2's revocation"
    );
    // A logout token used on one is a replay on the other.
    let logout = logout_token(&world.auth, "rotation-1", ("sub", "nobody")).await;
    let post = async |app: &TestApp| {
        app.client
            .post(app.url("/backchannel-logout"))
            .send_form(&[("logout_token", logout.as_str())])
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post(&step1).await, 200);
    assert_eq!(post(&step2).await, 400, "a replay across the rotation");
}
