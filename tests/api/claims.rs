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

/// `claims_to_headers`: verified claims reach the upstream as headers, encoded when they
/// are not ASCII, left out when a header cannot carry them; the client's copies never.
#[actix_web::test]
async fn verified_claims_become_headers_and_client_copies_never_pass() {
    let Edge {
        auth,
        upstream: _upstream,
        app,
        _secrets,
    } = start_edge(TestAuthServer::shared().await, "", |up| {
        bearer_route(
            "claim-headers",
            "/tenant",
            up,
            r#"
                [routes.claims_to_headers]
                X-Tenant = "tenant_id"
                X-Org-Name = "org.name"
                X-Roles = "roles"
                X-Seats = "seats"
                X-Evil = "evil"
            "#,
        )
    })
    .await;
    let dana = token_with(
        &auth,
        "dana",
        serde_json::json!({
            "tenant_id": "acme",
            "org": { "name": "José & Co" },
            "roles": ["admin", "ops"],
            "seats": 12,
            "evil": "a\r\nX-Injected: yes",
        }),
    )
    .await;
    let refused = "intercom_claim_headers_total{route=\"claim-headers\",outcome=\"refused\"}";
    let before = metric(&app.metrics().await, refused);
    let bearer = format!("Bearer {dana}");
    let spoofed = [
        ("authorization", bearer.as_str()),
        ("x-tenant", "spoofed"),
        ("x_tenant", "spoofed-underscore"),
        ("X-EVIL", "spoofed"),
        ("x-injected", "spoofed"),
    ];
    let (status, seen) = upstream_saw(&app, "/tenant/x", &spoofed).await;
    assert_eq!(status, 200, "{seen}");
    let headers = &seen["headers"];
    assert_eq!(headers["x-tenant"], serde_json::json!(["acme"]));
    assert!(headers.get("x_tenant").is_none(), "{headers}");
    assert_eq!(headers["x-org-name"][0], "UTF-8''Jos%C3%A9%20&%20Co");
    assert_eq!(headers["x-roles"][0], "admin,ops");
    assert_eq!(headers["x-seats"][0], "12");
    assert!(
        headers.get("x-evil").is_none(),
        "a refused value is left out: {headers}"
    );
    // The client's own x-injected is an ordinary header; no claim made one.
    assert_eq!(headers["x-injected"], serde_json::json!(["spoofed"]));
    assert_eq!(metric(&app.metrics().await, refused), before + 1.0);

    // A caller without the claims: the headers are absent, and the spoofed ones too.
    let erin = auth.user_token("erin", "invoice_read", 600).await;
    let bearer = format!("Bearer {erin}");
    let (status, seen) = upstream_saw(
        &app,
        "/tenant/x",
        &[("authorization", bearer.as_str()), ("x-tenant", "spoofed")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(seen["headers"].get("x-tenant").is_none(), "{seen}");
}

#[test]
fn claim_headers_need_a_verified_caller_and_an_ordinary_header() {
    let route = |auth: &str, headers: &str| {
        format!(
            r#"
                [auth_server]
                issuer = "http://127.0.0.1:1"
                client_id = "i"
                client_secret = "file:x"
                [[routes]]
                name = "r"
                prefix = "/r"
                upstreams = ["http://127.0.0.1:2"]
                auth = "{auth}"
                claims_to_headers = {{ {headers} }}
            "#
        )
    };
    for (auth, headers, key) in [
        (
            "none",
            "X-Tenant = \"tenant\"",
            "routes[0].claims_to_headers",
        ),
        (
            "bearer",
            "Authorization = \"tenant\"",
            "routes[0].claims_to_headers.authorization",
        ),
        (
            "bearer",
            "X-User-Id = \"tenant\"",
            "routes[0].claims_to_headers.x-user-id",
        ),
        (
            "bearer",
            "X_Forwarded_For = \"tenant\"",
            "routes[0].claims_to_headers.x_forwarded_for",
        ),
        ("bearer", "\"Bad Header\" = \"tenant\"", "Bad Header"),
        ("bearer", "X-Tenant = \"a..b\"", "claim path"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra.toml");
        std::fs::write(&file, route(auth, headers)).unwrap();
        let loaded = intercom::settings::Settings::load(
            dir.path(),
            Some(&file),
            &Vec::<(String, String)>::new(),
        );
        let error = loaded.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(key), "{auth} {headers}: {error:?}");
    }
}
