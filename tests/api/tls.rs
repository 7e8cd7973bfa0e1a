//! TLS on the public listener: handshakes with a rustls client (TLS 1.3 and 1.2),
//! old protocols and plain HTTP refused, HSTS, the certificate reloaded without a
//! restart, its expiry in readiness, and the redirect listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::helpers::*;

/// Writes a fresh self-signed certificate for localhost / 127.0.0.1; returns its DER.
fn write_certificate(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key, made.cert.der().to_vec())
}

/// One HTTPS request with a rustls client that trusts `trusted` and speaks `versions`;
/// returns the answer's text, the protocol version and the server's certificate.
async fn https_get(
    port: u16,
    trusted: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
    path: &str,
) -> std::io::Result<(String, String, Vec<u8>)> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let (_, session) = tls.get_ref();
    let version = format!("{:?}", session.protocol_version().unwrap());
    let peer = session.peer_certificates().unwrap()[0].as_ref().to_vec();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    Ok((String::from_utf8_lossy(&answer).into_owned(), version, peer))
}

/// `[server.tls]` with the certificate and key (and `tls_extra` lines), and a route `/svc`
/// to `upstream`.
fn tls_app(cert: &Path, key: &Path, upstream: &TestUpstream, tls_extra: &str) -> String {
    format!(
        r#"
            [server.tls]
            cert_file = "{}"
            key_file = "{}"
            {tls_extra}
            [[routes]]
            name = "svc"
            prefix = "/svc"
            upstreams = ["{}"]
        "#,
        cert.display(),
        key.display(),
        upstream.url()
    )
}

#[actix_web::test]
async fn the_tls_listener_speaks_http2_by_alpn() {
    let upstream = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_certificate(dir.path());
    let app = spawn_app(&tls_app(&cert, &key, &upstream, "")).await;
    let h2 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&der).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], app.port).into())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", app.port);
    let res = h2
        .post(format!("{base}/svc/h2?x=1"))
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let seen: serde_json::Value = res.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/svc/h2");
    assert_eq!(seen["body_len"], 12);
    assert_eq!(
        seen["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        serde_json::json!([format!("localhost:{}", app.port)])
    );
    // Intercom's own answers over HTTP/2: a problem for an unknown path.
    let res = h2.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // Many requests multiplexed on the one connection.
    let answers =
        futures_util::future::join_all((0..20).map(|i| h2.get(format!("{base}/svc/{i}")).send()))
            .await;
    assert!(answers.iter().all(|a| a
        .as_ref()
        .is_ok_and(|r| r.status() == 200 && r.version() == reqwest::Version::HTTP_2)));
}

#[actix_web::test]
async fn tls_handshakes_reloads_and_refuses_old_protocols() {
    let upstream = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_certificate(dir.path());
    let redirect_port = announced_port();
    let tls_extra = format!(
        r#"
            reload_interval = "200ms"
            redirect_listen = "127.0.0.1:{redirect_port}"
            redirect_hosts = ["example.test", "[::1]"]
        "#
    );
    let app = spawn_app(&tls_app(&cert, &key, &upstream, &tls_extra)).await;

    let (text, version, peer) = https_get(app.port, &der, &[&rustls::version::TLS13], "/svc")
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(version, "TLSv1_3");
    assert_eq!(peer, der);
    assert!(
        text.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{text}"
    );
    let seen: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(
        seen["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );
    let (text, version, _) = https_get(app.port, &der, &[&rustls::version::TLS12], "/svc")
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"));
    assert_eq!(version, "TLSv1_2");

    // TLS 1.0 / 1.1 (OpenSSL's client, which still speaks them) and plain HTTP fail.
    for flag in ["-tls1", "-tls1_1"] {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", app.port),
                flag,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() || !text.contains("BEGIN CERTIFICATE"),
            "{flag} handshake succeeded"
        );
    }
    let (status, text) = raw_request(
        app.port,
        "GET /svc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_ne!(status, 200, "plain HTTP on the TLS port: {text}");

    // Swap the files: the next handshake presents the new certificate.
    let (_, _, new_der) = write_certificate(dir.path());
    assert!(
        eventually(PATIENCE, async || {
            let answer = https_get(app.port, &new_der, &[&rustls::version::TLS13], "/svc").await;
            matches!(answer, Ok((_, _, peer)) if peer == new_der)
        })
        .await,
        "the reloaded certificate is not served"
    );

    let mut ready = app
        .client
        .get(app.admin_url("/health/ready"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(body["dependencies"]["tls_certificate"]["detail"]
        .as_str()
        .unwrap()
        .starts_with("expires "));

    // The plain listener only redirects.
    let (status, text) = raw_request(
        redirect_port,
        "GET /svc/x?y=1 HTTP/1.1\r\nHost: example.test:80\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 308);
    assert!(
        text.to_ascii_lowercase().contains(&format!(
            "location: https://example.test:{}/svc/x?y=1",
            app.port
        )),
        "{text}"
    );
    // Another host is not reflected (an open redirect); a bracketed IPv6 host that is
    // configured keeps its brackets.
    for (host, to) in [
        ("evil.example", "example.test"),
        ("evil.example:80", "example.test"),
        ("[::1]:80", "[::1]"),
        ("EXAMPLE.test", "example.test"),
    ] {
        let (status, text) = raw_request(
            redirect_port,
            &format!("GET /p HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 308, "{host}");
        let location = format!("location: https://{to}:{}/p", app.port);
        assert!(
            text.to_ascii_lowercase().contains(&location),
            "{host}: {text}"
        );
    }
    assert_eq!(
        upstream.hits(),
        3,
        "only the three HTTPS requests reached the upstream"
    );
}

#[actix_web::test]
async fn tls13_only_refuses_tls12() {
    let upstream = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_certificate(dir.path());
    let app = spawn_app(&tls_app(&cert, &key, &upstream, "tls13_only = true")).await;
    assert!(
        https_get(app.port, &der, &[&rustls::version::TLS12], "/svc")
            .await
            .is_err()
    );
    assert!(
        https_get(app.port, &der, &[&rustls::version::TLS13], "/svc")
            .await
            .is_ok()
    );
}
