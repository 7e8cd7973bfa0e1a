//! The harness's real parts answer as the other tests expect.

use crate::helpers::*;

#[test]
fn redis_server_starts_and_answers() {
    let redis = TestRedis::start();
    assert_eq!(redis.command("PING"), "+PONG");
    assert_eq!(redis.command("SET intercom-test:k v"), "+OK");
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
}

#[actix_web::test]
async fn auth_server_issues_introspects_and_counts() {
    let auth = TestAuthServer::start().await;
    let token = auth
        .client_token("app", "app-dev-secret", "invoice_read")
        .await;
    let mut res = test_client()
        .post(format!("{}/token/introspection", auth.issuer))
        .basic_auth("intercom", "intercom-dev-secret")
        .send_form(&[("token", token.as_str())])
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["client_id"], "app");
    assert_eq!(auth.stats().await["introspection"], 1);

    let user = auth
        .user_token("alice", "invoice_read invoice_write", 60)
        .await;
    let mut res = test_client()
        .post(format!("{}/token", auth.issuer))
        .basic_auth("intercom", "intercom-dev-secret")
        .send_form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", user.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", "https://orders.internal"),
            ("scope", "invoice_write"),
        ])
        .await
        .unwrap();
    let exchanged: serde_json::Value = res.json().await.unwrap();
    assert_eq!(exchanged["scope"], "invoice_write", "{exchanged}");
    assert_eq!(auth.stats().await["exchange"], 1);
}
