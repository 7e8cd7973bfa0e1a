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
        "[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstreams = [\"{}\"]\n\
         [[routes]]\nname = \"admin\"\nprefix = \"/admin\"\nupstreams = [\"{}\"]\n",
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
