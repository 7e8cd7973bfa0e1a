//! Edge protections: body size limits (refused early), request smuggling, slow
//! senders, and security headers on every answer.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::helpers::*;

fn route(name: &str, upstream: &TestUpstream, extra: &str) -> String {
    format!(
        r#"
            [[routes]]
            name = "{name}"
            prefix = "/{name}"
            upstreams = ["{}"]
            {extra}
        "#,
        upstream.url()
    )
}

#[actix_web::test]
async fn oversized_bodies_are_refused_without_reading_them() {
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        r#"
            [server]
            max_body_bytes = 1048576
            {}{}
        "#,
        route("small", &upstream, "max_body_bytes = 1024"),
        route("default", &upstream, ""),
    ))
    .await;
    // Announce 50 MB, send 1 KB, and wait: the 413 comes without the rest (a server
    // that waited for it would never answer; the read would time out).
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"POST /default/x HTTP/1.1\r\nHost: t\r\nContent-Length: 52428800\r\n\r\n")
        .unwrap();
    stream.write_all(&[b'a'; 1024]).unwrap();
    let mut answer = [0u8; 512];
    let n = stream
        .read(&mut answer)
        .expect("Intercom waited for the body");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.contains("urn:intercom:problem:payload-too-large") || text.contains("problem+json")
    );

    // Within the limit passes; the route's own limit is smaller than the server's.
    let mut res = app
        .client
        .post(app.url("/default/x"))
        .send_body(vec![b'a'; 4096])
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.body().await;
    let mut res = app
        .client
        .post(app.url("/small/x"))
        .send_body(vec![b'a'; 4096])
        .await
        .unwrap();
    assert_problem(&mut res, 413).await;

    // A chunked body is cut off when it passes the limit.
    let chunks = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'b'; 64 * 1024]))),
    );
    let res = app
        .client
        .post(app.url("/default/x"))
        .send_stream(chunks)
        .await;
    // An error means the connection was closed on the oversized stream: also refused.
    if let Ok(mut res) = res {
        assert_eq!(res.status(), 413);
        let _ = res.body().await;
    }
}

#[actix_web::test]
async fn request_smuggling_attempts_are_refused() {
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&route("svc", &upstream, "")).await;
    let attempts = [
        "POST /svc HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /svc HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "POST /svc HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST /svc HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST /svc HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        "POST /svc HTTP/1.1\r\nHost: t\r\nContent-Length: 1_0\r\n\r\n0123456789",
        "POST /svc HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ];
    let hits = upstream.hits();
    for attempt in attempts {
        let (status, text) = raw_request(app.port, attempt);
        assert!(
            status == 400 || status == 0 && text.is_empty(),
            "accepted:\n{attempt}\n-> {text}"
        );
    }
    assert_eq!(
        upstream.hits(),
        hits,
        "a smuggling attempt reached the upstream"
    );
}

#[actix_web::test]
async fn slow_senders_are_cut_off() {
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        r#"
            [server]
            client_request_timeout = "500ms"
            {}
        "#,
        route("svc", &upstream, "")
    ))
    .await;
    // The headers never finish: Intercom closes the connection (a read that times out
    // instead means it kept waiting).
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"GET /svc HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let ended = stream.read_to_end(&mut answer);
    assert!(ended.is_ok(), "the slow sender was not cut off: {ended:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(upstream.hits(), 0);
}

#[actix_web::test]
async fn security_headers_on_every_answer() {
    let upstream = TestUpstream::start("svc");
    let dead = dead_address();
    let app = spawn_app(&format!(
        r#"
            {}{}[[routes]]
            name = "unreachable"
            prefix = "/dead"
            upstreams = ["http://{dead}"]
        "#,
        route("svc", &upstream, ""),
        route("strict", &upstream, "security_headers = \"enforce\""),
    ))
    .await;
    let check = |h: &actix_web::http::header::HeaderMap, own: bool| {
        assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
        assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer");
        assert_eq!(h.get("x-xss-protection").unwrap(), "0");
        assert!(h.get("server").is_none(), "Server leaked");
        assert!(h.get("x-powered-by").is_none(), "X-Powered-By leaked");
        assert_eq!(h.get("content-security-policy").is_some(), own);
    };
    // 200 from an upstream: its own frame policy is kept...
    let res = app
        .client
        .get(app.url("/svc"))
        .insert_header(("x-echo-response-header", "x-frame-options: SAMEORIGIN"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    check(res.headers(), false);
    assert_eq!(res.headers().get("x-frame-options").unwrap(), "SAMEORIGIN");
    // ...unless the route enforces Intercom's.
    let res = app
        .client
        .get(app.url("/strict"))
        .insert_header(("x-echo-response-header", "x-frame-options: SAMEORIGIN"))
        .send()
        .await
        .unwrap();
    check(res.headers(), false);
    assert_eq!(res.headers().get("x-frame-options").unwrap(), "DENY");
    // Intercom's own 4xx and 5xx.
    let res = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    check(res.headers(), true);
    assert_eq!(res.headers().get("x-frame-options").unwrap(), "DENY");
    let res = app.client.get(app.url("/dead")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    check(res.headers(), true);
}

/// A body that pauses longer than the route's `body_idle` is ended with 408, and the
/// upstream connection it held is free for the next request (the pool has one).
#[actix_web::test]
async fn a_trickling_body_is_cut_with_408_and_frees_the_upstream_connection() {
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        r#"
            [server]
            upstream_pool_size = 1
            {}
        "#,
        route(
            "svc",
            &upstream,
            "timeouts = { connect = \"2s\", response = \"60s\", total = \"120s\", body_idle = \"500ms\" }"
        ),
    ))
    .await;
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    // Without the idle limit the answer would wait for the 60 s response timeout; the
    // read gives up long before that.
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"POST /svc/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let mut answer = [0u8; 1024];
    let n = stream
        .read(&mut answer)
        .expect("no answer to a paused body");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("urn:intercom:problem:request-timeout"),
        "{text}"
    );
    // The one pooled connection is free again.
    let res = app.client.get(app.url("/svc/next")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}
