//! Phantom tokens the authorization server's way: the introspection answer carries the
//! AS's own JWT for the token, and routes with `upstream_token = "authorization_server"`
//! forward it.
//!
//! The test AS is oidc-provider, which has no such mode, and Keycloak and Curity cannot
//! run here: with `AS_JWT_INTROSPECTION` it answers `Accept: application/jwt` in their
//! two documented shapes (Curity: the JWT as the body; Keycloak: the JSON answer with the
//! JWT in `jwt`), signed by its own key (see `tests/authserver/server.mjs`). It stands in
//! for them; everything Intercom does with the answer is real.

use josekit::jwk::JwkSet;
use josekit::jws;
use josekit::jwt;

use crate::helpers::*;

/// The AS's JWT audience for locally validated JWT access tokens.
const JWT_AUDIENCE: &str = "https://jwt.asj.test";

/// Intercom in front of an AS answering in `mode` (`body` or `claim`), asked with
/// `format`; `/as` forwards the AS's JWT, `/minted` Intercom's own.
async fn start(mode: &str, format: &str) -> Edge {
    let auth = TestAuthServer::start_with_env(&[
        ("SIGNING_KID", "asj-key"),
        ("AS_JWT_INTROSPECTION", mode),
    ])
    .await;
    start_edge(
        auth,
        &format!(
            r#"
            introspection_format = "{format}"
            [auth_server.jwt]
            audiences = ["{JWT_AUDIENCE}"]
        "#
        ),
        |up| {
            [
                bearer_route(
                    "asj-as",
                    "/as",
                    up,
                    r#"
                        upstream_token = "authorization_server"
                        strip_prefix = true
                    "#,
                ),
                bearer_route("asj-minted", "/minted", up, "strip_prefix = true"),
            ]
            .concat()
        },
    )
    .await
}

/// Verifies a JWT against the AS's published keys, independently of Intercom.
async fn verify_at_as(auth: &TestAuthServer, token: &str) -> jwt::JwtPayload {
    let mut res = test_client()
        .get(format!("{}/jwks", auth.issuer))
        .send()
        .await
        .unwrap();
    let set = JwkSet::from_bytes(res.body().await.unwrap()).unwrap();
    let header = jwt::decode_header(token).unwrap();
    let kid = header.claim("kid").unwrap().as_str().unwrap();
    let key = set
        .get(kid)
        .first()
        .copied()
        .expect("kid published by the AS");
    let verifier = jws::RS256.verifier_from_jwk(key).unwrap();
    jwt::decode_with_verifier(token, &verifier).unwrap().0
}

async fn introspections(auth: &TestAuthServer) -> u64 {
    auth.stats().await["introspection"].as_u64().unwrap()
}

/// What the upstream saw through `path`: its `Authorization` token and identity headers.
async fn seen(app: &TestApp, path: &str, token: &str) -> (String, String, String) {
    let (status, seen) = upstream_saw_with_token(app, path, token).await;
    assert_eq!(status, 200, "{seen}");
    let header = |name: &str| seen["headers"][name][0].as_str().unwrap().to_string();
    (bearer_of(&seen), header("x-user-id"), header("x-scopes"))
}

async fn the_as_jwt_is_forwarded_verified_and_cached(mode: &str, format: &str) {
    let Edge {
        auth,
        upstream: _upstream,
        app,
        _secrets,
    } = start(mode, format).await;
    let token = auth
        .user_token("alice", "invoice_read orders_read", 600)
        .await;
    let before = introspections(&auth).await;

    let (forwarded, user, scopes) = seen(&app, "/as/x", &token).await;
    assert_ne!(forwarded, token);
    let claims = verify_at_as(&auth, &forwarded).await;
    assert_eq!(claims.issuer(), Some(auth.issuer.as_str()));
    assert_eq!(claims.subject(), Some("alice"));
    assert_eq!(claims.claim("scope").unwrap(), "invoice_read orders_read");
    assert!(claims.expires_at().unwrap() > std::time::SystemTime::now());

    // The same caller on a minted route: Intercom's JWT, the same identity headers.
    let (minted, minted_user, minted_scopes) = seen(&app, "/minted/x", &token).await;
    let header = jwt::decode_header(&minted).unwrap();
    assert_eq!(header.claim("alg").unwrap(), "ES256", "Intercom's own key");
    assert_ne!(minted, forwarded);
    assert_eq!(
        (user.as_str(), scopes.as_str()),
        ("alice", "invoice_read orders_read")
    );
    assert_eq!((minted_user, minted_scopes), (user, scopes));

    // A hit forwards the same JWT and asks the AS nothing.
    let (again, _, _) = seen(&app, "/as/y", &token).await;
    assert_eq!(again, forwarded);
    assert_eq!(introspections(&auth).await - before, 1);

    // The client never sees it: not in the answer's headers, not in its body.
    let mut res = get_with(&app, "/as/status/204", &token).await;
    assert_eq!(res.status(), 204);
    let signature = forwarded.rsplit('.').next().unwrap();
    for (name, value) in res.headers() {
        let value = value.to_str().unwrap_or("");
        assert!(!value.contains(signature), "{name} carries the AS's JWT");
    }
    assert!(res.body().await.unwrap().is_empty());

    // A JWT access token validated here is the AS's JWT itself: forwarded as it came.
    let jwt = auth
        .jwt_token("app", "app-dev-secret", "invoice_read", JWT_AUDIENCE)
        .await;
    let (forwarded, user, _) = seen(&app, "/as/x", &jwt).await;
    assert_eq!(forwarded, jwt);
    assert_eq!(user, "app");
}

#[actix_web::test]
async fn keycloaks_jwt_claim_is_forwarded_verified_and_cached() {
    the_as_jwt_is_forwarded_verified_and_cached("claim", "json_with_jwt").await;
}

#[actix_web::test]
async fn curitys_jwt_body_is_forwarded_verified_and_cached() {
    the_as_jwt_is_forwarded_verified_and_cached("body", "jwt_body").await;
}

/// Each spoiled JWT in `faults` is refused with 503 on both routes, never forwarded,
/// never cached as active.
async fn spoiled_jwts_are_refused(mode: &str, format: &str, faults: &[&str]) {
    let Edge {
        auth,
        upstream,
        app,
        _secrets,
    } = start(mode, format).await;
    for fault in faults {
        let claims = serde_json::json!({ "as_jwt_fault": fault }).to_string();
        let token = auth
            .user_token_with("alice", "invoice_read", 600, &[("claims", &claims)])
            .await;
        let before = introspections(&auth).await;
        for path in ["/as/x", "/minted/x"] {
            let mut res = get_with(&app, path, &token).await;
            let body = assert_problem(&mut res, 503).await;
            assert_eq!(
                body["type"], "urn:intercom:problem:auth-server-unavailable",
                "{fault} on {path}"
            );
        }
        assert_eq!(
            introspections(&auth).await - before,
            2,
            "{fault}: a failed answer is not cached"
        );
    }
    assert_eq!(upstream.hits(), 0, "a spoiled JWT reached the upstream");
    // A token the AS does not know: inactive (Curity answers 204), 401.
    let mut res = get_with(&app, "/as/x", "never-issued-token").await;
    let body = assert_problem(&mut res, 401).await;
    assert_eq!(body["type"], "urn:intercom:problem:invalid-token");
}

#[actix_web::test]
async fn a_tampered_disagreeing_or_expired_jwt_claim_is_refused() {
    spoiled_jwts_are_refused(
        "claim",
        "json_with_jwt",
        &["tampered", "sub", "expired", "issuer"],
    )
    .await;
}

#[actix_web::test]
async fn a_tampered_or_expired_jwt_body_is_refused() {
    spoiled_jwts_are_refused("body", "jwt_body", &["tampered", "expired", "issuer"]).await;
}
