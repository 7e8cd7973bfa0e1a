//! CORS per route: allowed and refused origins, preflights answered by Intercom and
//! never forwarded, credentials only with named origins.

use crate::helpers::*;

#[actix_web::test]
async fn cors_allows_named_origins_and_answers_preflights_itself() {
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        "[[routes]]\nname = \"web\"\nprefix = \"/web\"\nupstreams = [\"{0}\"]\n\
         cors = {{ origins = [\"https://app.example.com\"], methods = [\"GET\", \"POST\"], headers = [\"content-type\"], credentials = true }}\n\
         [[routes]]\nname = \"web-admin\"\nprefix = \"/web/admin\"\nupstreams = [\"{0}\"]\n\
         [[routes]]\nname = \"plain\"\nprefix = \"/plain\"\nupstreams = [\"{0}\"]\n",
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
