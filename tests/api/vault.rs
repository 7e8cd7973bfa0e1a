//! Credentials in Vault, against a real OpenBao: KV v2 and v1, token and AppRole auth
//! with renewal, rotation under load, a dual-secret roll, Vault down and back, the file
//! store's reload, and no secret value in logs, bodies or metrics.

use std::time::Duration;

use futures_util::StreamExt;

use crate::helpers::*;

/// `[secrets]` with OpenBao (token auth) polled every `poll`.
fn vault_config(
    bao: &TestOpenBao,
    token_file: &std::path::Path,
    poll: &str,
    extra: &str,
) -> String {
    format!(
        r#"
            [secrets]
            poll_interval = "{poll}"
            [secrets.vault]
            address = "{}"
            auth = "token"
            token_file = "{}"
            {extra}
        "#,
        bao.address(),
        token_file.display()
    )
}

fn inject_route(name: &str, upstream: &TestUpstream, inject: &str) -> String {
    format!(
        r#"
            [[routes]]
            name = "{name}"
            prefix = "/{name}"
            upstreams = ["{}"]
            inject = {inject}
        "#,
        upstream.url()
    )
}

async fn seen_by_upstream(
    app: &TestApp,
    path: &str,
    client_header: Option<(&str, &str)>,
) -> serde_json::Value {
    let headers: Vec<(&str, &str)> = client_header.into_iter().collect();
    let (status, seen) = upstream_saw(app, path, &headers).await;
    assert_eq!(status, 200, "GET {path}");
    seen
}

#[actix_web::test]
async fn kv2_and_kv1_secrets_are_injected_replacing_client_copies() {
    let bao = TestOpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = bao.token_file(dir.path());
    bao.put_kv2(
        "intercom/billing",
        serde_json::json!({"api_key": "kv2-api-key-111", "password": "kv2-pass-222"}),
    )
    .await;
    bao.api(
        "POST",
        "sys/mounts/legacy",
        serde_json::json!({"type": "kv", "options": {"version": "1"}}),
    )
    .await;
    bao.api(
        "POST",
        "legacy/intercom/crm",
        serde_json::json!({"token": "kv1-token-333"}),
    )
    .await;
    let upstream = TestUpstream::start("svc");

    let v2 = spawn_app(&format!(
        "{}{}{}",
        vault_config(&bao, &token, "30s", ""),
        inject_route("keyed", &upstream, "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/billing#api_key\" }"),
        inject_route("basic", &upstream, "{ type = \"basic\", username = \"svc\", secret = \"vault:secret/intercom/billing#password\" }"),
    ))
    .await;
    let seen = seen_by_upstream(&v2, "/keyed", Some(("x-api-key", "client-guess"))).await;
    assert_eq!(
        seen["headers"]["x-api-key"],
        serde_json::json!(["kv2-api-key-111"]),
        "replaced, never merged"
    );
    let seen = seen_by_upstream(
        &v2,
        "/basic",
        Some(("authorization", "Basic Y2xpZW50OmNsaWVudA==")),
    )
    .await;
    // base64("svc:kv2-pass-222")
    assert_eq!(
        seen["headers"]["authorization"],
        serde_json::json!(["Basic c3ZjOmt2Mi1wYXNzLTIyMg=="])
    );

    let v1 = spawn_app(&format!(
        "{}{}",
        vault_config(&bao, &token, "30s", "kv_version = 1"),
        inject_route(
            "crm",
            &upstream,
            "{ type = \"bearer\", secret = \"vault:legacy/intercom/crm#token\" }"
        ),
    ))
    .await;
    let seen = seen_by_upstream(&v1, "/crm", None).await;
    assert_eq!(
        seen["headers"]["authorization"],
        serde_json::json!(["Bearer kv1-token-333"])
    );

    let mut ready = v2
        .client
        .get(v2.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["dependencies"]["secret_store"]["status"], "ok");
}

#[actix_web::test]
async fn rotation_under_load_fails_no_request_and_a_dual_roll_retries_once() {
    let bao = TestOpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = bao.token_file(dir.path());
    bao.put_kv2("intercom/svc", serde_json::json!({"key": "rot-key-v1"}))
        .await;
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        "{}{}",
        vault_config(&bao, &token, "200ms", ""),
        inject_route("svc", &upstream, "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/svc#key\" }"),
    ))
    .await;

    // 200 requests while the secret rotates in OpenBao.
    let rotate = async {
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        bao.put_kv2("intercom/svc", serde_json::json!({"key": "rot-key-v2"}))
            .await;
    };
    let load = futures_util::stream::iter(0..200)
        .map(|_| async {
            let res = app.client.get(app.url("/svc")).send().await.unwrap();
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            res.status().as_u16()
        })
        .buffer_unordered(8)
        .collect::<Vec<u16>>();
    let (statuses, ()) = futures_util::join!(load, rotate);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed requests during rotation: {statuses:?}"
    );
    assert!(
        eventually(PATIENCE, async || seen_by_upstream(&app, "/svc", None)
            .await["headers"]["x-api-key"]
            == serde_json::json!(["rot-key-v2"]))
        .await,
        "the rotated key is injected"
    );

    // A dual-secret roll the poll has not seen yet: the target already wants the new
    // key; Intercom asks the store again on the 401 and retries once.
    let slow = spawn_app(&format!(
        "{}{}",
        vault_config(&bao, &token, "1h", ""),
        inject_route("svc", &upstream, "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/svc#key\" }"),
    ))
    .await;
    bao.put_kv2("intercom/svc", serde_json::json!({"key": "rot-key-v3"}))
        .await;
    upstream.require_key("rot-key-v3");
    let hits = upstream.hits();
    let retries = || {
        metric(
            &process_metrics(),
            "intercom_credential_retries_total{route=\"svc\"}",
        )
    };
    let retried = retries();
    let seen = seen_by_upstream(&slow, "/svc", None).await;
    assert_eq!(
        seen["headers"]["x-api-key"],
        serde_json::json!(["rot-key-v3"])
    );
    assert_eq!(upstream.hits() - hits, 2, "one refusal, one retry");
    assert!(retries() > retried, "the retry was counted");
    let hits = upstream.hits();
    seen_by_upstream(&slow, "/svc", None).await;
    assert_eq!(
        upstream.hits() - hits,
        1,
        "the new key is used from then on"
    );

    // The same with a small body: it is held, and sent whole with the retry. (Another
    // instance: one that just asked the store on a refusal waits CREDENTIAL_RETRY_BACKOFF
    // before asking again.)
    let slow = spawn_app(&format!(
        "{}{}",
        vault_config(&bao, &token, "1h", ""),
        inject_route("svc", &upstream, "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/svc#key\" }"),
    ))
    .await;
    bao.put_kv2("intercom/svc", serde_json::json!({"key": "rot-key-v4"}))
        .await;
    upstream.require_key("rot-key-v4");
    let hits = upstream.hits();
    let mut res = slow
        .client
        .post(slow.url("/svc"))
        .send_body(vec![7u8; 1024])
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: serde_json::Value = res.json().await.unwrap();
    assert_eq!(seen["body_len"], 1024, "the body was lost on the retry");
    assert_eq!(upstream.hits() - hits, 2);

    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "intercom_secret_refresh_total{outcome=\"rotated\"}"
        ) >= 2.0
    );
    let age = metric(
        &metrics,
        "intercom_secret_age_seconds{secret=\"vault:secret/intercom/svc#key\"}",
    );
    assert!(age < 60.0, "the secret rotated seconds ago, age {age}");
    for value in ["rot-key-v1", "rot-key-v2", "rot-key-v3", "rot-key-v4"] {
        assert!(!metrics.contains(value), "a secret value is in /metrics");
        assert!(
            !captured_logs().contains(value),
            "a secret value is in the logs"
        );
    }
}

#[actix_web::test]
async fn vault_down_serves_last_known_values_and_recovers() {
    let mut bao = TestOpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = bao.token_file(dir.path());
    bao.put_kv2("intercom/svc", serde_json::json!({"key": "down-key-1"}))
        .await;
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        "{}{}",
        vault_config(&bao, &token, "200ms", "timeout = \"500ms\""),
        inject_route("svc", &upstream, "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/svc#key\" }"),
    ))
    .await;
    bao.stop();
    assert!(
        eventually(PATIENCE, async || secret_store_status(&app).await
            == "degraded")
        .await,
        "readiness did not notice the store is down"
    );
    let seen = seen_by_upstream(&app, "/svc", None).await;
    assert_eq!(
        seen["headers"]["x-api-key"],
        serde_json::json!(["down-key-1"]),
        "last-known value"
    );
    let mut ready = app
        .client
        .get(app.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "Vault down must not take the instance out"
    );
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body["dependencies"]["secret_store"]["status"], "degraded",
        "{body}"
    );
    assert!(body["dependencies"]["secret_store"]["detail"]
        .as_str()
        .unwrap()
        .contains("oldest"));

    bao.launch().await; // dev mode starts empty: ops restore the secret
    bao.put_kv2("intercom/svc", serde_json::json!({"key": "down-key-1"}))
        .await;
    assert!(
        eventually(PATIENCE, async || secret_store_status(&app).await == "ok").await,
        "readiness did not notice the store is back"
    );
}

/// The secret store's status in readiness.
async fn secret_store_status(app: &TestApp) -> String {
    let mut ready = app
        .client
        .get(app.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = ready.json().await.unwrap();
    body["dependencies"]["secret_store"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[actix_web::test]
async fn approle_logs_in_and_keeps_its_token_alive() {
    let bao = TestOpenBao::start().await;
    bao.put_kv2("intercom/svc", serde_json::json!({"key": "approle-key-1"}))
        .await;
    bao.api(
        "POST",
        "sys/auth/approle",
        serde_json::json!({"type": "approle"}),
    )
    .await;
    bao.api(
        "PUT",
        "sys/policies/acl/intercom",
        serde_json::json!({
            "policy": r#"
            path "secret/data/intercom/*" { capabilities = ["read"] }
            path "secret/metadata/intercom/*" { capabilities = ["read"] }
        "#
        }),
    )
    .await;
    bao.api(
        "POST",
        "auth/approle/role/intercom",
        serde_json::json!({
            "token_policies": "intercom", "token_ttl": "2s", "token_max_ttl": "4s"
        }),
    )
    .await;
    let role_id = bao
        .api(
            "GET",
            "auth/approle/role/intercom/role-id",
            serde_json::Value::Null,
        )
        .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = bao
        .api(
            "POST",
            "auth/approle/role/intercom/secret-id",
            serde_json::json!({}),
        )
        .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("role_id"), &role_id).unwrap();
    std::fs::write(dir.path().join("secret_id"), &secret_id).unwrap();
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        r#"
            [secrets]
            poll_interval = "300ms"
            [secrets.vault]
            address = "{}"
            auth = "approle"
            role_id_file = "{}"
            secret_id_file = "{}"
            {}
        "#,
        bao.address(),
        dir.path().join("role_id").display(),
        dir.path().join("secret_id").display(),
        inject_route("svc", &upstream, "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/svc#key\" }"),
    ))
    .await;
    assert_eq!(
        seen_by_upstream(&app, "/svc", None).await["headers"]["x-api-key"],
        serde_json::json!(["approle-key-1"])
    );
    // Past the token's TTL and its maximum: renewals and a fresh login keep reads working.
    actix_web::rt::time::sleep(Duration::from_secs(6)).await;
    bao.put_kv2("intercom/svc", serde_json::json!({"key": "approle-key-2"}))
        .await;
    assert!(
        eventually(PATIENCE, async || seen_by_upstream(&app, "/svc", None)
            .await["headers"]["x-api-key"]
            == serde_json::json!(["approle-key-2"]))
        .await,
        "reads keep working past the token's maximum TTL"
    );
    let metrics = app.metrics().await;
    assert!(
        metric(&metrics, "intercom_vault_token_renewals_total") >= 1.0,
        "no renewal happened"
    );
    assert!(
        metric(&metrics, "intercom_vault_logins_total") >= 2.0,
        "no fresh login past the token's maximum TTL"
    );
}

#[actix_web::test]
async fn a_bad_reference_stops_start_naming_it_and_the_file_store_reloads() {
    let bao = TestOpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = bao.token_file(dir.path());
    let upstream = TestUpstream::start("svc");
    let settings = settings_with(&format!(
        "{}{}",
        vault_config(&bao, &token, "30s", ""),
        inject_route("svc", &upstream, "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/missing#key\" }"),
    ));
    let err = match intercom::startup::Application::build(settings).await {
        Ok(_) => panic!("started with a missing secret"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("routes[0].inject.secret"), "{err}");
    assert!(err.contains("vault:secret/intercom/missing#key"), "{err}");

    // The file store: a changed file is picked up at the next poll.
    let file = dir.path().join("secrets.toml");
    std::fs::write(
        &file,
        r#"
        api_key = "file-key-1"
    "#,
    )
    .unwrap();
    let app = spawn_app(&format!(
        r#"
            [secrets]
            file = "{}"
            poll_interval = "200ms"
            {}
        "#,
        file.display(),
        inject_route(
            "svc",
            &upstream,
            "{ type = \"header\", header = \"x-api-key\", secret = \"file:api_key\" }"
        ),
    ))
    .await;
    assert_eq!(
        seen_by_upstream(&app, "/svc", None).await["headers"]["x-api-key"],
        serde_json::json!(["file-key-1"])
    );
    actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    std::fs::write(
        &file,
        r#"
        api_key = "file-key-2"
    "#,
    )
    .unwrap();
    assert!(
        eventually(PATIENCE, async || seen_by_upstream(&app, "/svc", None)
            .await["headers"]["x-api-key"]
            == serde_json::json!(["file-key-2"]))
        .await,
        "the file store reloaded"
    );
    assert!(
        !captured_logs().contains("file-key-"),
        "a secret value is in the logs"
    );
}

#[actix_web::test]
async fn client_credentials_tokens_are_fetched_once_and_refreshed_ahead() {
    // 16 s tokens: refreshed from 12 s on, which leaves a slow machine 4 s to make the
    // request that starts the refresh while the first token is still valid.
    let auth = TestAuthServer::start_with_env(&[("TOKEN_TTL", "16")]).await;
    let upstream = TestUpstream::start("svc");
    let (_dir, app) =
        client_credentials_app(&auth, &inject_route("svc", &upstream, CLIENT_CREDENTIALS)).await;
    let before = auth.stats().await["token"].as_u64().unwrap();
    let fetched = std::time::Instant::now();
    let mut tokens = std::collections::HashSet::new();
    for _ in 0..20 {
        let seen =
            seen_by_upstream(&app, "/svc", Some(("authorization", "Bearer client-token"))).await;
        tokens.insert(
            seen["headers"]["authorization"][0]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(tokens.len(), 1, "one token for many requests");
    assert_eq!(
        auth.stats().await["token"].as_u64().unwrap() - before,
        1,
        "one fetch"
    );
    let first = tokens.into_iter().next().unwrap();
    assert_ne!(
        first, "Bearer client-token",
        "the client's header was replaced"
    );

    // In the last quarter of its life the token is refreshed in the background, while
    // requests keep being served with the one still valid.
    actix_web::rt::time::sleep(Duration::from_millis(12_200)).await;
    let seen = seen_by_upstream(&app, "/svc", None).await;
    // Measured, not guessed: only while the first token is still valid (16 s from its
    // fetch) must it be the one served.
    if fetched.elapsed() < Duration::from_secs(15) {
        assert_eq!(
            seen["headers"]["authorization"][0].as_str().unwrap(),
            first,
            "served while refreshing"
        );
    }
    let mut second = String::new();
    assert!(
        eventually(PATIENCE, async || {
            let seen = seen_by_upstream(&app, "/svc", None).await;
            second = seen["headers"]["authorization"][0]
                .as_str()
                .unwrap()
                .to_string();
            second != first
        })
        .await,
        "refreshed before expiry"
    );
    assert_eq!(auth.stats().await["token"].as_u64().unwrap() - before, 2);

    // The token is a real one: the AS says it is active, for the route's client.
    let mut res = test_client()
        .post(format!("{}/token/introspection", auth.issuer))
        .basic_auth("intercom", "intercom-dev-secret")
        .send_form(&[("token", second.strip_prefix("Bearer ").unwrap())])
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["client_id"], "app");
    assert!(!captured_logs().contains(second.strip_prefix("Bearer ").unwrap()));
}

/// An upstream that refuses every credential costs the AS one token fetch per back-off
/// interval, not one per request; concurrent refusals share it.
#[actix_web::test]
async fn an_upstream_refusing_every_credential_costs_one_refresh_per_interval() {
    let auth = TestAuthServer::start().await;
    let upstream = TestUpstream::start("svc");
    let route = format!(
        r#"
            [[routes]]
            name = "refusing"
            prefix = "/svc"
            upstreams = ["{}"]
            rewrite = "/status/401"
            inject = {CLIENT_CREDENTIALS}
        "#,
        upstream.url()
    );
    let (_dir, app) = client_credentials_app(&auth, &route).await;
    let before = auth.stats().await["token"].as_u64().unwrap();
    for _ in 0..10 {
        let res = app.client.get(app.url("/svc")).send().await.unwrap();
        assert_eq!(
            res.status().as_u16(),
            401,
            "the upstream's answer is relayed"
        );
    }
    let requests = (0..32).map(|_| (app.url("/svc"), String::new())).collect();
    let statuses = concurrent_gets(requests, 16).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let fetched = auth.stats().await["token"].as_u64().unwrap() - before;
    // The first token, and one refresh after the first refusal.
    assert!(fetched <= 2, "42 refusals cost {fetched} token fetches");
}

/// The `inject` of a route whose upstream gets `app`'s client-credentials token.
const CLIENT_CREDENTIALS: &str = "{ type = \"client_credentials\", client_id = \"app\", secret = \"file:app_secret\", scope = \"invoice_read\" }";

/// Intercom with `routes` and the secrets a client-credentials injection needs (in a file
/// store kept in the returned directory).
async fn client_credentials_app(
    auth: &TestAuthServer,
    routes: &str,
) -> (tempfile::TempDir, TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.toml");
    std::fs::write(
        &file,
        r#"
            intercom_client_secret = "intercom-dev-secret"
            app_secret = "app-dev-secret"
        "#,
    )
    .unwrap();
    let app = spawn_app(&format!(
        r#"
            [secrets]
            file = "{}"
            [auth_server]
            issuer = "{}"
            client_id = "intercom"
            client_secret = "file:intercom_client_secret"
            {routes}
        "#,
        file.display(),
        auth.issuer,
    ))
    .await;
    (dir, app)
}

#[actix_web::test]
async fn an_oversized_vault_answer_is_refused_at_start_and_at_rotation() {
    let bao = TestOpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = bao.token_file(dir.path());
    let upstream = TestUpstream::start("svc");
    // 1.2 MB of secret: more than the 1 MiB an answer may hold.
    let huge = "h".repeat(1_200_000);
    bao.put_kv2("intercom/huge", serde_json::json!({ "key": huge }))
        .await;
    let settings = settings_with(&format!(
        "{}{}",
        vault_config(&bao, &token, "30s", ""),
        inject_route(
            "svc",
            &upstream,
            "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/huge#key\" }"
        ),
    ));
    let err = match intercom::startup::Application::build(settings).await {
        Ok(_) => panic!("started with an oversized Vault answer"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("routes[0].inject.secret"), "{err}");
    assert!(err.contains("vault:secret/intercom/huge#key"), "{err}");
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
    assert!(
        !err.contains("hhhhhhhh"),
        "the answer's body is in the error"
    );

    // A CA bundle that cannot be read stops start-up naming the key.
    let settings = settings_with(&vault_config(
        &bao,
        &token,
        "30s",
        "ca_file = \"/nonexistent/vault-ca.pem\"",
    ));
    let err = match intercom::startup::Application::build(settings).await {
        Ok(_) => panic!("started with an unreadable vault.ca_file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("vault.ca_file /nonexistent/vault-ca.pem"),
        "{err}"
    );

    // A secret that grows past the limit at rotation keeps its last-known value.
    bao.put_kv2(
        "intercom/grows",
        serde_json::json!({ "key": "small-key-1" }),
    )
    .await;
    let before = process_metrics();
    let app = spawn_app(&format!(
        "{}{}",
        vault_config(&bao, &token, "200ms", ""),
        inject_route(
            "svc",
            &upstream,
            "{ type = \"header\", header = \"x-api-key\", secret = \"vault:secret/intercom/grows#key\" }"
        ),
    ))
    .await;
    bao.put_kv2("intercom/grows", serde_json::json!({ "key": huge }))
        .await;
    let failures = "intercom_secret_refresh_total{outcome=\"error\"}";
    assert!(
        eventually(PATIENCE, async || metric(&process_metrics(), failures)
            > metric(&before, failures))
        .await,
        "the oversized answer counts as a failed refresh"
    );
    assert_eq!(
        seen_by_upstream(&app, "/svc", None).await["headers"]["x-api-key"],
        serde_json::json!(["small-key-1"])
    );
    assert!(
        eventually(PATIENCE, async || captured_logs().lines().any(|l| l
            .contains("secret refresh failed")
            && l.contains("larger than 1048576 bytes")))
        .await,
        "the log names the cause"
    );
}
