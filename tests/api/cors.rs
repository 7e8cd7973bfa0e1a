//! CORS per route: allowed and refused origins, preflights answered by Intercom and
//! never forwarded, credentials only with named origins.

use crate::helpers::*;

#[actix_web::test]
async fn cors_allows_named_origins_and_answers_preflights_itself() {
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        r#"
            [[routes]]
            name = "web"
            prefix = "/web"
            upstreams = ["{0}"]
            cors = {{ origins = ["https://app.example.com"], methods = ["GET", "POST"], headers = ["content-type"], credentials = true }}
            [[routes]]
            name = "web-admin"
            prefix = "/web/admin"
            upstreams = ["{0}"]
            [[routes]]
            name = "plain"
            prefix = "/plain"
            upstreams = ["{0}"]
        "#,
        upstream.url()
    ))
    .await;

    // A simple request from an allowed origin.
    let res = app
        .client
        .get(app.url("/web/x"))
        .insert_header(("origin", "https://app.example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        res.headers()
            .get("access-control-allow-credentials")
            .unwrap(),
        "true"
    );

    // A preflight is answered here, never forwarded.
    let hits = upstream.hits();
    let res = app
        .client
        .request(actix_web::http::Method::OPTIONS, app.url("/web/x"))
        .insert_header(("origin", "https://app.example.com"))
        .insert_header(("access-control-request-method", "POST"))
        .insert_header(("access-control-request-headers", "content-type"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("access-control-allow-methods")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(upstream.hits(), hits, "the preflight reached the upstream");

    // Refused origins get no grant, and nothing is forwarded.
    for method in [
        actix_web::http::Method::OPTIONS,
        actix_web::http::Method::GET,
    ] {
        let res = app
            .client
            .request(method.clone(), app.url("/web/x"))
            .insert_header(("origin", "https://evil.example"))
            .insert_header(("access-control-request-method", "GET"))
            .send()
            .await
            .unwrap();
        assert!(
            !res.status().is_success(),
            "{method} from a refused origin: {}",
            res.status()
        );
        assert!(res.headers().get("access-control-allow-origin").is_none());
    }
    assert_eq!(
        upstream.hits(),
        hits,
        "a refused origin reached the upstream"
    );

    // A more specific route without a policy, and a route without one: no grants.
    for path in ["/web/admin/x", "/plain/x"] {
        let res = app
            .client
            .get(app.url(path))
            .insert_header(("origin", "https://app.example.com"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert!(
            res.headers().get("access-control-allow-origin").is_none(),
            "{path} granted CORS"
        );
    }
}

/// The policy is the route's as the route table matches it: on the canonical path, and
/// per host. With `origins = ["*"]`, an upstream cannot grant credentials.
#[actix_web::test]
async fn cors_is_decided_on_the_canonical_path_and_the_host() {
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        r#"
            [[routes]]
            name = "api"
            prefix = "/api"
            upstreams = ["{0}"]
            cors = {{ origins = ["https://app.example.com"], methods = ["GET"] }}
            [[routes]]
            name = "partner"
            prefix = "/api"
            host = "partner.test"
            upstreams = ["{0}"]
            cors = {{ origins = ["https://partner.example"], methods = ["GET"] }}
            [[routes]]
            name = "open"
            prefix = "/open"
            upstreams = ["{0}"]
            cors = {{ origins = ["*"], methods = ["GET"] }}
            response_headers = {{ set = {{ access-control-allow-credentials = "true" }} }}
        "#,
        upstream.url()
    ))
    .await;
    let preflight = |path: &'static str, host: &'static str, origin: &'static str| {
        let client = app.client.clone();
        let url = app.url(path);
        async move {
            client
                .request(actix_web::http::Method::OPTIONS, url)
                .insert_header(("host", host))
                .insert_header(("origin", origin))
                .insert_header(("access-control-request-method", "GET"))
                .send()
                .await
                .unwrap()
        }
    };
    let hits = upstream.hits();
    // Variants of /api/x that canonicalize to it get /api's policy: answered here.
    for path in ["//api/x", "/api//x", "///api///x"] {
        let res = preflight(path, "t", "https://app.example.com").await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            res.headers().get("access-control-allow-origin").unwrap(),
            "https://app.example.com",
            "{path}"
        );
        let res = preflight(path, "t", "https://evil.example").await;
        assert!(!res.status().is_success(), "{path}: {}", res.status());
    }
    assert_eq!(upstream.hits(), hits, "a preflight reached the upstream");
    // The host route has its own policy.
    let res = preflight("/api/x", "partner.test", "https://partner.example").await;
    assert_eq!(res.status(), 200);
    let res = preflight("/api/x", "partner.test", "https://app.example.com").await;
    assert!(!res.status().is_success(), "{}", res.status());
    // Any origin: the upstream's credentials grant is removed.
    let res = app
        .client
        .get(app.url("/open/x"))
        .insert_header(("origin", "https://anyone.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("access-control-allow-origin").is_some());
    assert!(
        res.headers()
            .get("access-control-allow-credentials")
            .is_none(),
        "credentials granted to any origin"
    );
    // The canonical path is what the upstream receives.
    let mut res = app.client.get(app.url("//api//y")).send().await.unwrap();
    let seen: serde_json::Value = res.json().await.unwrap();
    assert_eq!(seen["path"], "/api/y");
}
