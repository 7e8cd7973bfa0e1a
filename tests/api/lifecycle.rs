//! The binary's lifecycle: `check-config` exit codes, and SIGTERM draining in-flight
//! requests while readiness turns 503.

use std::time::{Duration, Instant};

use crate::helpers::*;

#[test]
fn check_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
            [[routes]]
            name = "a"
            prefix = "/a"
            upstreams = ["http://127.0.0.1:1"]
            [[routes]]
            name = "b"
            prefix = "/b"
            upstreams = ["http://127.0.0.1:1"]
            [[routes]]
            name = "c"
            prefix = "/c"
            upstreams = ["htp://x"]
        "#,
    )
    .unwrap();
    let out = intercom_binary(&bad, &["check-config"], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[2].upstreams[0]: \"htp://x\" is not a valid URL"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    // `serve` fails the same way, before binding anything.
    let port = announced_port();
    let out = intercom_binary(
        &bad,
        &["serve"],
        &[("INTERCOM__SERVER__LISTEN", &format!("127.0.0.1:{port}"))],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        r#"
            [[routes]]
            name = "a"
            prefix = "/a"
            upstreams = ["http://127.0.0.1:1"]
        "#,
    )
    .unwrap();
    let out = intercom_binary(&good, &["check-config"], &[])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = intercom_binary(&good, &["--version"], &[])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[actix_web::test]
async fn sigterm_turns_unready_and_drains_a_slow_request() {
    let upstream = TestUpstream::start("slow");
    let dir = tempfile::tempdir().unwrap();
    let (mut intercom, port, admin_port) = serve_process(dir.path(), |port, admin_port| {
        format!(
            r#"
                [server]
                listen = "127.0.0.1:{port}"
                admin_listen = "127.0.0.1:{admin_port}"
                shutdown_delay = "700ms"
                drain_timeout = "10s"
                [[routes]]
                name = "slow"
                prefix = "/slow"
                upstreams = ["{}"]
            "#,
            upstream.url()
        )
    })
    .await;
    let client = test_client();
    let ready = format!("http://127.0.0.1:{admin_port}/health/ready");
    assert_eq!(client.get(&ready).send().await.unwrap().status(), 200);

    let slow = actix_web::rt::spawn({
        let client = test_client();
        let url = format!("http://127.0.0.1:{port}/slow?ms=2000");
        async move {
            let mut res = client.get(url).send().await.unwrap();
            let body = res.body().await.unwrap();
            (res.status().as_u16(), body)
        }
    });
    // The slow request is in flight once the upstream has it.
    assert!(eventually(PATIENCE, async || upstream.hits() >= 1).await);
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &intercom.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Readiness turns 503 during the shutdown delay, while the slow request drains.
    let mut body = serde_json::Value::Null;
    assert!(
        eventually(PATIENCE, async || {
            let mut res = client.get(&ready).send().await.unwrap();
            if res.status() != 503 {
                return false;
            }
            body = res.json().await.unwrap();
            true
        })
        .await,
        "readiness did not turn 503"
    );
    assert_eq!(body["status"], "shutting_down");

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "the in-flight request was cut");
    assert_eq!(&body[..], b"slept 2000ms");

    let exit = intercom.child.wait().unwrap();
    assert!(
        exit.success(),
        "exit status {exit:?}\n{}",
        intercom.log_text()
    );
    assert!(
        signalled.elapsed() >= Duration::from_millis(700),
        "the shutdown delay was skipped"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// What validation cannot see but start-up finds (a TLS file that does not load, an
/// address that cannot be bound) stops `serve` like any configuration error: exit 64,
/// one line naming the key.
#[test]
fn unusable_files_and_addresses_stop_serve_with_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let route = r#"
        [[routes]]
        name = "a"
        prefix = "/a"
        upstreams = ["http://127.0.0.1:1"]
    "#;
    let listen = |port: u16| {
        format!(
            r#"
            [server]
            listen = "127.0.0.1:{port}"
            admin_listen = "127.0.0.1:0"
        "#
        )
    };
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let cases = [
        (
            format!(
                r#"
                    {}[server.tls]
                    cert_file = "{}"
                    key_file = "{}"
                "#,
                listen(0),
                dir.path().join("missing.pem").display(),
                garbage.display()
            ),
            "server.tls.cert_file",
        ),
        (
            // 192.0.2.1 (TEST-NET-1) is not an address of this machine.
            r#"
                [server]
                listen = "192.0.2.1:8080"
                admin_listen = "127.0.0.1:0"
            "#
            .to_string(),
            "server.listen: cannot listen on 192.0.2.1:8080",
        ),
        (
            r#"
                [server]
                listen = "127.0.0.1:0"
                admin_listen = "192.0.2.1:9901"
            "#
            .to_string(),
            "server.admin_listen",
        ),
        (
            format!(
                r#"
                    {}[server.tls]
                    cert_file = "{}"
                    key_file = "{}"
                    redirect_listen = "localhost:80"
                    redirect_hosts = ["a.test"]
                "#,
                listen(0),
                garbage.display(),
                garbage.display()
            ),
            "server.tls.redirect_listen",
        ),
        (
            format!(
                r#"
                    {}[server.tls]
                    cert_file = "{}"
                    key_file = "{}"
                    redirect_listen = "127.0.0.1:0"
                "#,
                listen(0),
                garbage.display(),
                garbage.display()
            ),
            "server.tls.redirect_hosts: is required",
        ),
    ];
    for (i, (config, key)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.toml"));
        std::fs::write(&file, format!("{config}{route}")).unwrap();
        let out = intercom_binary(&file, &["serve"], &[]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "case {i}: {stderr}");
        assert!(
            stderr.contains(key),
            "case {i}: expected {key:?} in {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "case {i}: {stderr}");
    }
}
