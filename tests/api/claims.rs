//! Route access by verified claims, against the real oidc-provider: plan tiers, groups,
//! Keycloak-shaped `realm_access` / `resource_access` roles, claims from introspection
//! and from locally validated JWTs; refused callers never reach the upstream.

use crate::helpers::*;

/// Routes that each demand one shape of claim (names unique to this module: metrics are
/// process-wide).
/// The claim routes, named `<tag>-plan`, `<tag>-groups`, ...: metrics are process-wide,
/// so each test that counts them has route names of its own.
fn claim_routes(tag: &'static str) -> impl FnOnce(&TestUpstream) -> String {
    move |up| claim_routes_named(tag, up)
}

fn claim_routes_named(tag: &str, up: &TestUpstream) -> String {
    let name = |route: &str| format!("{tag}-{route}");
    [
        bearer_route(
            &name("plan"),
            "/plan",
            up,
            "required_claims = { plan = [\"pro\", \"enterprise\"] }",
        ),
        bearer_route(
            &name("groups"),
            "/groups",
            up,
            r#"
                required_claims = { groups = ["billing-admins"] }
                denied_claims = { groups = ["suspended"] }
            "#,
        ),
        // TOML's dotted key: nested tables, read as the path realm_access.roles.
        bearer_route(
            &name("realm"),
            "/realm",
            up,
            r#"
                [routes.required_claims]
                realm_access.roles = ["admin"]
            "#,
        ),
        // A client id with a dot, as one quoted name of the path.
        bearer_route(
            &name("client"),
            "/client",
            up,
            "required_claims = { 'resource_access.\"billing.api\".roles' = [\"invoice-reader\"] }",
        ),
        // A space-separated string claim, and two entries that must both hold.
        bearer_route(
            &name("words"),
            "/words",
            up,
            "required_claims = { entitlements = [\"export\"], plan = [\"pro\"] }",
        ),
        bearer_route(
            &name("staff"),
            "/staff",
            up,
            "required_claims = { groups = [\"staff\"] }",
        ),
    ]
    .concat()
}

const ROUTES: [&str; 5] = ["plan", "groups", "realm", "client", "words"];

async fn token_with(auth: &TestAuthServer, sub: &str, claims: serde_json::Value) -> String {
    auth.user_token_with(sub, "invoice_read", 600, &[("claims", &claims.to_string())])
        .await
}

#[actix_web::test]
async fn routes_admit_callers_by_their_verified_claims() {
    let Edge {
        auth,
        upstream,
        app,
        _secrets,
    } = start_edge(TestAuthServer::start().await, "", claim_routes("claims")).await;
    let alice = token_with(
        &auth,
        "alice",
        serde_json::json!({
            "plan": "pro",
            "groups": ["staff", "billing-admins"],
            "realm_access": { "roles": ["user", "admin"] },
            "resource_access": { "billing.api": { "roles": ["invoice-reader"] } },
            "entitlements": "read export",
        }),
    )
    .await;
    // Close to alice in every claim, and refused by each route for it.
    let bob = token_with(
        &auth,
        "bob",
        serde_json::json!({
            "plan": "free",
            "groups": ["staff", "billing-admins", "suspended"],
            "realm_access": { "roles": ["user"] },
            // Two levels billing → api: not the client "billing.api".
            "resource_access": { "billing": { "api": { "roles": ["invoice-reader"] } } },
            "entitlements": "read exporter",
        }),
    )
    .await;
    let carol = auth.user_token("carol", "invoice_read", 600).await;
    let before = app.metrics().await;
    let introspections = auth.stats().await["introspection"].as_u64().unwrap();

    for route in ROUTES {
        let mut res = get_with(&app, &format!("/{route}/x"), &alice).await;
        assert_eq!(res.status(), 200, "alice on /{route}");
        let _ = res.body().await;
    }
    let forwarded = upstream.hits();
    for (who, token) in [("bob", &bob), ("carol", &carol)] {
        for route in ROUTES {
            let mut res = get_with(&app, &format!("/{route}/x"), token).await;
            let body = assert_problem(&mut res, 403).await;
            assert_eq!(
                body["type"], "urn:intercom:problem:claim-requirement-not-met",
                "{who} on /{route}"
            );
            let detail = body["detail"].as_str().unwrap();
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
            // The claim is named; the caller's values are not.
            for value in ["free", "suspended", "user", "exporter", "invoice-reader"] {
                assert!(!detail.contains(value), "{detail}");
            }
            let named = match route {
                "groups" => "groups",
                "realm" => "realm_access.roles",
                "client" => "resource_access.\"billing.api\".roles",
                // Both entries fail for bob and carol; the first one refuses.
                "words" => "entitlements",
                _ => "plan",
            };
            assert!(detail.contains(named), "{who} on /{route}: {detail}");
        }
    }
    // bob holds billing-admins, but suspended refuses him; carol holds no group at all.
    let mut res = get_with(&app, "/groups/x", &bob).await;
    let body = assert_problem(&mut res, 403).await;
    assert!(
        body["detail"].as_str().unwrap().contains("refuses"),
        "{body}"
    );
    assert_eq!(
        upstream.hits(),
        forwarded,
        "a refused caller reached the upstream"
    );

    // A cached token is checked again on each route, with that route's claims: bob's
    // one introspection admitted him on /staff after refusing him everywhere else.
    let mut res = get_with(&app, "/staff/x", &bob).await;
    assert_eq!(res.status(), 200);
    let _ = res.body().await;
    let introspected = auth.stats().await["introspection"].as_u64().unwrap() - introspections;
    assert_eq!(
        introspected, 3,
        "one introspection per token, not per route"
    );

    let after = app.metrics().await;
    let delta = |route: &str, outcome: &str| {
        let series = format!(
            "intercom_claim_checks_total{{route=\"claims-{route}\",outcome=\"{outcome}\"}}"
        );
        metric(&after, &series) - metric(&before, &series)
    };
    assert_eq!(delta("plan", "admitted"), 1.0);
    assert_eq!(delta("plan", "missing"), 2.0);
    assert_eq!(delta("groups", "denied"), 2.0);
    assert_eq!(delta("groups", "missing"), 1.0);
    assert_eq!(delta("staff", "admitted"), 1.0);
}

#[actix_web::test]
async fn a_header_named_like_a_claim_changes_nothing() {
    let Edge {
        auth,
        upstream,
        app,
        _secrets,
    } = start_edge(
        TestAuthServer::shared().await,
        "",
        claim_routes("claims-spoof"),
    )
    .await;
    let bob = token_with(&auth, "bob", serde_json::json!({ "plan": "free" })).await;
    for (name, value) in [
        ("plan", "pro"),
        ("x-plan", "pro"),
        ("x-claim-plan", "pro"),
        ("groups", "billing-admins"),
        ("x-user-plan", "enterprise"),
        ("realm_access", "{\"roles\":[\"admin\"]}"),
    ] {
        for path in ["/plan/x", "/groups/x", "/realm/x"] {
            let mut res = app
                .client
                .get(app.url(path))
                .insert_header(("authorization", format!("Bearer {bob}")))
                .insert_header((name, value))
                .send()
                .await
                .unwrap();
            assert_problem(&mut res, 403).await;
        }
    }
    assert_eq!(upstream.hits(), 0);
}

#[actix_web::test]
async fn claims_of_locally_validated_jwts_are_checked_too() {
    let Edge {
        auth,
        upstream: _upstream,
        app,
        _secrets,
    } = start_edge(
        TestAuthServer::start().await,
        r#"
            [auth_server.jwt]
            audiences = ["https://jwt.claims.test"]
        "#,
        claim_routes("claims-jwt"),
    )
    .await;
    // The AS's client-credentials JWTs carry each client's plan: app's is pro, reader's
    // free.
    let jwt = |client: &'static str, secret: &'static str| {
        auth.jwt_token(client, secret, "invoice_read", "https://jwt.claims.test")
    };
    let pro = jwt("app", "app-dev-secret").await;
    let free = jwt("reader", "reader-dev-secret").await;
    let introspections = auth.stats().await["introspection"].as_u64().unwrap();
    let mut res = get_with(&app, "/plan/x", &pro).await;
    assert_eq!(res.status(), 200);
    let _ = res.body().await;
    let mut res = get_with(&app, "/plan/x", &free).await;
    let body = assert_problem(&mut res, 403).await;
    assert_eq!(
        body["type"],
        "urn:intercom:problem:claim-requirement-not-met"
    );
    assert_eq!(
        auth.stats().await["introspection"].as_u64().unwrap(),
        introspections,
        "the JWTs were validated here, not introspected"
    );
}
