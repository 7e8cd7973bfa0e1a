//! Compression: negotiated by `Accept-Encoding`, above the threshold, for listed
//! content types, never twice.

use std::io::Read;

use crate::helpers::*;

#[actix_web::test]
async fn responses_are_compressed_when_it_is_worth_it_and_never_twice() {
    let upstream = TestUpstream::start("svc");
    let app = spawn_app(&format!(
        r#"
            [compression]
            enabled = true
            min_bytes = 256
            [[routes]]
            name = "svc"
            prefix = "/svc"
            upstreams = ["{}"]
        "#,
        upstream.url()
    ))
    .await;
    let get = |accept: &'static str, extra: Option<(&'static str, &'static str)>| {
        let mut req = app
            .client
            .get(app.url("/svc/some/long/path/so/the/echo/is/large/enough"))
            .insert_header(("accept-encoding", accept));
        if let Some(h) = extra {
            req = req.insert_header(h);
        }
        req.send()
    };

    // gzip, decoded here: the same JSON the upstream sent.
    let mut res = get("gzip", None).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("content-encoding").unwrap(), "gzip");
    assert!(res
        .headers()
        .get("vary")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("accept-encoding"));
    let compressed = res.body().await.unwrap();
    let mut json = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut json)
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(seen["upstream"], "svc");

    for (accept, expected) in [("br", "br"), ("zstd", "zstd"), ("gzip;q=0.5, br;q=1", "br")] {
        let res = get(accept, None).await.unwrap();
        assert_eq!(
            res.headers().get("content-encoding").unwrap(),
            expected,
            "{accept}"
        );
    }

    // Not asked for, not worth it, not compressible, already encoded: sent as it is.
    let res = get("identity", None).await.unwrap();
    assert!(res.headers().get("content-encoding").is_none());
    let res = get(
        "gzip",
        Some(("x-echo-response-header", "content-type: image/png")),
    )
    .await
    .unwrap();
    assert!(
        res.headers().get("content-encoding").is_none(),
        "an image was compressed"
    );
    let res = get(
        "gzip",
        Some(("x-echo-response-header", "content-encoding: br")),
    )
    .await
    .unwrap();
    assert_eq!(
        res.headers().get("content-encoding").unwrap(),
        "br",
        "compressed twice"
    );
    let small = spawn_app(&format!(
        r#"
            [compression]
            enabled = true
            min_bytes = 100000
            [[routes]]
            name = "svc"
            prefix = "/svc"
            upstreams = ["{}"]
        "#,
        upstream.url()
    ))
    .await;
    let res = small
        .client
        .get(small.url("/svc/x"))
        .insert_header(("accept-encoding", "gzip"))
        .send()
        .await
        .unwrap();
    assert!(
        res.headers().get("content-encoding").is_none(),
        "a small body was compressed"
    );
}
