//! Bodies stream through both ways: 50 MB up and 50 MB down arrive whole (by hash),
//! and Intercom's memory does not grow by the body size.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::helpers::*;

const SIZE: u64 = 50 * 1024 * 1024;

#[actix_web::test]
async fn fifty_megabytes_each_way_without_buffering() {
    let upstream = TestUpstream::start("big");
    let dir = tempfile::tempdir().unwrap();
    // A separate process, so its memory is its own.
    let (intercom, port, _) = serve_process(dir.path(), |port, admin_port| {
        format!(
            r#"
                [server]
                listen = "127.0.0.1:{port}"
                admin_listen = "127.0.0.1:{admin_port}"
                workers = 1
                [[routes]]
                name = "big"
                prefix = "/big"
                upstreams = ["{}"]
                strip_prefix = true
                max_body_bytes = 104857600
            "#,
            upstream.url()
        )
    })
    .await;
    // A fresh connection per phase: the test is about bodies, not about reusing an idle
    // keep-alive connection that the server may be closing just then.
    let client = test_client;
    let base = format!("http://127.0.0.1:{port}");

    // Warm up, then take the baseline.
    let mut res = client()
        .get(format!("{base}/big/warm"))
        .send()
        .await
        .unwrap();
    let _ = res.body().await;
    let (_, baseline) = memory_of(intercom.pid());

    let mut res = client()
        .post(format!("{base}/big/upload"))
        .send_body(actix_web::body::SizedStream::new(
            SIZE,
            pattern_stream(SIZE),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got: serde_json::Value = res.json().await.unwrap();
    assert_eq!(got["body_len"], SIZE);
    assert_eq!(
        got["body_sha256"],
        pattern_sha256(SIZE),
        "upload changed on the way"
    );

    let mut res = client()
        .get(format!("{base}/big/download?bytes={SIZE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = res.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(len, SIZE);
    assert_eq!(
        hex::encode(hasher.finalize()),
        pattern_sha256(SIZE),
        "download changed"
    );

    // A chunked upload (no Content-Length) streams the same way.
    let mut res = client()
        .post(format!("{base}/big/chunked"))
        .send_stream(pattern_stream(3 * 1024 * 1024 + 7))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got: serde_json::Value = res.json().await.unwrap();
    assert_eq!(got["body_len"], 3 * 1024 * 1024 + 7);
    assert_eq!(got["body_sha256"], pattern_sha256(3 * 1024 * 1024 + 7));

    let (peak, _) = memory_of(intercom.pid());
    eprintln!("intercom memory: baseline {baseline} B, peak {peak} B");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 20 * 1024 * 1024,
        "Intercom's peak memory grew by {} MiB for a {} MiB body",
        growth >> 20,
        SIZE >> 20
    );
}
