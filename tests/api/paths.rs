//! Path canonicalization at the edge: every escape encoding is answered 400 and never
//! reaches an upstream. Requests are written raw so no client library normalizes them.

use crate::helpers::*;

const ESCAPES: [&str; 16] = [
    "/api/../admin",
    "/api/%2e%2e/admin",
    "/api/%2E%2E/admin",
    "/api/.%2e/admin",
    "/api/%2e./admin",
    "/api/..;/admin",
    "/api/..%2fadmin",
    "/api/%2e%2e%2fadmin",
    "/api/..%5cadmin",
    "/api/%252e%252e/admin",
    "/api/%c0%ae%c0%ae/admin",
    "/api/%e0%80%ae%e0%80%ae/admin",
    "/api/%ef%bc%8e%ef%bc%8e/admin",
    "/api/%u002e%u002e/admin",
    "/api/..%00/admin",
    "/api/./../admin",
];

#[actix_web::test]
async fn escape_attempts_get_400_and_never_reach_an_upstream() {
    let api = TestUpstream::start("api");
    let admin = TestUpstream::start("admin");
    let config = format!(
        r#"
            [[routes]]
            name = "api"
            prefix = "/api"
            upstreams = ["{}"]
            [[routes]]
            name = "admin"
            prefix = "/admin"
            upstreams = ["{}"]
        "#,
        api.url(),
        admin.url()
    );
    let app = spawn_app(&config).await;

    // The counters work: a plain request reaches the upstream.
    let (status, _text) = raw_request(
        app.port,
        "GET /api/ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{_text}");
    assert_eq!(api.hits(), 1);

    let mut checked = 0;
    for path in ESCAPES {
        let (status, text) = raw_request(
            app.port,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 400, "{path} answered {status}:\n{text}");
        if text.contains("application/problem+json") {
            assert!(
                text.contains("urn:intercom:problem:bad-path"),
                "{path}: {text}"
            );
        }
        checked += 1;
    }
    // A raw backslash, which some servers treat as '/'.
    let (status, _) = raw_request(
        app.port,
        "GET /api/..\\admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400);
    assert!(checked >= 12);
    assert_eq!(api.hits(), 1, "an escape attempt reached the api upstream");
    assert_eq!(
        admin.hits(),
        0,
        "an escape attempt reached the admin upstream"
    );
}

/// Nested routes on one kind of upstream: `/api` is open, `/api/admin` is another
/// service. Each variant below is `/api/admin/users` to some server behind a gateway
/// (Tomcat, Spring and Jetty cut `;` parameters, IIS and .NET trim trailing dots and
/// spaces, some fold full-width and other look-alike separators); none may reach the
/// outer route's upstream.
#[actix_web::test]
async fn nested_routes_no_variant_reaches_the_outer_upstream() {
    let outer = TestUpstream::start("outer");
    let inner = TestUpstream::start("inner");
    let config = format!(
        r#"
            [[routes]]
            name = "api"
            prefix = "/api"
            upstreams = ["{}"]
            [[routes]]
            name = "admin"
            prefix = "/api/admin"
            case_insensitive = true
            upstreams = ["{}"]
        "#,
        outer.url(),
        inner.url()
    );
    let app = spawn_app(&config).await;
    let get = |path: &str| {
        raw_request(
            app.port,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(get("/api/ok").0, 200);
    assert_eq!(outer.hits(), 1, "the outer route works");
    for path in [
        "/api/admin;x/users",
        "/api/admin;jsessionid=1/users",
        "/api/admin%3Bx/users",
        "/api/admin%3b/users",
        "/api/admin./users",
        "/api/admin%2E/users",
        "/api/admin%20/users",
        "/api/admin%09/users",
        "/api/admin%C2%A0/users",
        "/api%EF%BC%8Fadmin/users",
        "/api%E2%88%95admin/users",
        "/api%E2%81%84admin/users",
        "/api%EF%BC%BCadmin/users",
        "/api%EF%B9%A8admin/users",
        "/api/admin%EF%BC%9Bx/users",
        "/api/admin%00/users",
    ] {
        let (status, text) = get(path);
        assert_eq!(status, 400, "{path} answered {status}:\n{text}");
        assert!(
            text.contains("urn:intercom:problem:bad-path"),
            "{path}: {text}"
        );
    }
    // Case: the inner route matches any case (its upstream routes so), so the outer
    // route never sees a differently cased admin path.
    for path in ["/API/ADMIN/users", "/Api/Admin/users", "/api/ADMIN/users"] {
        let (status, text) = get(path);
        assert_eq!(status, 200, "{path}: {text}");
        assert!(text.contains("x-upstream: inner"), "{path} went to: {text}");
    }
    assert_eq!(
        outer.hits(),
        1,
        "a variant reached the outer route's upstream"
    );
    assert_eq!(inner.hits(), 3);
}
