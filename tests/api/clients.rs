//! Traffic by verified client and its anomalies, from real traffic: tokens of the real
//! AS (introspected) and Intercom's own internal JWTs, to a real upstream.

use std::time::Duration;

use futures_util::future::join_all;

use crate::helpers::*;

/// The anomalies of three clients, each reported once, in a process of its own (its
/// counters are its own, so the totals are exact).
#[actix_web::test]
async fn each_anomaly_is_reported_once_by_real_traffic() {
    let auth = TestAuthServer::shared().await;
    let upstream = TestUpstream::start("watched");
    let (dir, secrets) = secrets_file();
    let window = Duration::from_secs(1);
    let (process, port, admin) = serve_process(dir.path(), |p, a| {
        format!(
            r#"
                [server]
                listen = "127.0.0.1:{p}"
                admin_listen = "127.0.0.1:{a}"
                [telemetry.clients]
                top = 3
                rank_every = "1h"
                window = "1s"
                warmup_windows = 3
                min_requests = 10
                volume_factor = 5.0
                error_ratio_jump = 0.4
                {}{}
            "#,
            auth_config(&auth, &secrets, ""),
            bearer_route("watched", "/watched", &upstream, "strip_prefix = true")
        )
    })
    .await;
    // The AS introspects tokens of its registered clients only: app, reader, intercom.
    let token = |client: &'static str, scope: &'static str| {
        let auth = auth.clone();
        async move {
            auth.user_token_with(client, scope, 600, &[("client_id", client)])
                .await
        }
    };
    let client = test_client();
    let send = |token: String, path: &'static str| {
        let request = client
            .get(format!("http://127.0.0.1:{port}/watched{path}"))
            .insert_header(("authorization", format!("Bearer {token}")));
        async move {
            let mut res = request.send().await.unwrap();
            let _ = res.body().await;
            res.status().as_u16()
        }
    };
    let burst = |token: &String, n: usize, path: &'static str| {
        join_all((0..n).map(|_| send(token.clone(), path)))
    };

    // A new scope: the first token sets the baseline; the second adds invoice_write.
    let read = token("app", "invoice_read").await;
    let write = token("app", "invoice_read invoice_write").await;
    let first = burst(&read, 3, "/a").await;
    assert_eq!(first, [200; 3], "{}", process.log_text());
    assert_eq!(burst(&write, 3, "/a").await, [200; 3]);

    // A spike: one request a window, then sixty at once. Errors: ten good requests a
    // window, then twenty the upstream refuses with 404 (a volume within its usual range; 4xx,
    // not 5xx, which passive health would count against the instance and eject it).
    // The pauses make the windows pass (time is what the averages are over).
    let spiky = token("reader", "invoice_read").await;
    let erring = token("intercom", "invoice_read").await;
    let spike = async {
        for _ in 0..5 {
            assert_eq!(send(spiky.clone(), "/a").await, 200);
            actix_web::rt::time::sleep(window).await;
        }
        burst(&spiky, 60, "/a").await
    };
    let errors = async {
        for _ in 0..5 {
            assert!(burst(&erring, 10, "/a").await.iter().all(|s| *s == 200));
            actix_web::rt::time::sleep(window).await;
        }
        burst(&erring, 20, "/status/404").await
    };
    let (spiked, errored) = futures_util::join!(spike, errors);
    assert!(
        spiked.iter().all(|s| *s == 200),
        "{spiked:?}\n{}",
        process.log_text()
    );
    assert!(
        errored.iter().all(|s| *s == 404),
        "{errored:?}\n{}",
        process.log_text()
    );

    let metrics = admin_metrics(admin).await;
    let kind = |k: &str| {
        metric(
            &metrics,
            &format!(r#"intercom_anomalies_total{{kind="{k}"}}"#),
        )
    };
    assert_eq!(kind("new_scope"), 1.0, "{metrics}");
    assert_eq!(kind("volume_spike"), 1.0, "{metrics}");
    assert_eq!(kind("error_ratio_jump"), 1.0, "{metrics}");
    // One log line each, naming the client and what was found, never a token.
    let log = process.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "intercom::anomaly")
        .collect();
    let found: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap().to_string(),
                l["client"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(found.len(), 3, "{found:?}");
    for expected in [
        ("new_scope", "app"),
        ("volume_spike", "reader"),
        ("error_ratio_jump", "intercom"),
    ] {
        assert!(
            found.contains(&(expected.0.into(), expected.1.into())),
            "{found:?}"
        );
    }
    let scope_line = lines.iter().find(|l| l["kind"] == "new_scope").unwrap();
    assert_eq!(scope_line["scope"], "invoice_write");
    for token in [&read, &write, &spiky, &erring] {
        assert!(!log.contains(token.as_str()));
    }

    // The traffic itself, by client, route and class.
    let series = |client: &str, class: &str| {
        metric(
            &metrics,
            &format!(
                r#"intercom_client_requests_total{{client="{client}",route="watched",class="{class}"}}"#
            ),
        )
    };
    assert_eq!(series("reader", "ok"), 65.0);
    assert_eq!(series("intercom", "ok"), 50.0);
    assert_eq!(series("intercom", "4xx"), 20.0);
    assert_eq!(series("app", "ok"), 6.0);
    let scope = |client: &str, scope: &str| {
        metric(
            &metrics,
            &format!(
                r#"intercom_client_scope_requests_total{{client="{client}",scope="{scope}"}}"#
            ),
        )
    };
    assert_eq!(scope("app", "invoice_read"), 6.0);
    assert_eq!(scope("app", "invoice_write"), 3.0);
}

/// 2,000 distinct clients through the proxy (Intercom's own internal JWTs, validated
/// like any token): the `client` label goes to `top` of them; the rest count as
/// `other`. (The unit test of `telemetry::clients` holds the cap with 10,000: through
/// HTTP that many cost a loaded CI box more than the other tests can spare.)
#[actix_web::test]
async fn the_client_label_cap_holds_with_thousands_of_clients() {
    let auth = TestAuthServer::shared().await;
    let upstream = TestUpstream::start("capped");
    let (_dir, secrets) = secrets_file();
    let config = format!(
        r#"
            [tokens]
            accept_internal = true
            [rate_limit]
            unknown_tokens = []
            [telemetry.clients]
            top = 5
            {}{}
        "#,
        auth_config(&auth, &secrets, ""),
        bearer_route(
            "client-cap",
            "/capped",
            &upstream,
            "internal_audiences = [\"cap-aud\"]"
        )
    );
    let app = spawn_app(&config).await;
    let minter = app.minter.clone().unwrap();
    let exp = intercom::clock::now_secs() + 600;
    let tokens: Vec<String> = (0..2_000)
        .map(|i| {
            let principal = intercom::broker::Principal {
                sub: Some(format!("user-{i}")),
                client_id: Some(format!("capped-{i}")),
                scopes: vec!["invoice_read".into()],
                exp,
                ..Default::default()
            };
            minter.mint(&principal, "cap-aud").unwrap().jwt.to_string()
        })
        .collect();
    for chunk in tokens.chunks(16) {
        let statuses = join_all(chunk.iter().map(|token| {
            let request = app
                .client
                .get(app.url("/capped/x"))
                .insert_header(("authorization", format!("Bearer {token}")));
            async move {
                let mut res = request.send().await.unwrap();
                let _ = res.body().await;
                res.status().as_u16()
            }
        }))
        .await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let metrics = app.metrics().await;
    let labelled: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("intercom_client_requests_total{client=\"capped-"))
        .collect();
    let clients: std::collections::BTreeSet<&str> = labelled
        .iter()
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert_eq!(clients.len(), 5, "{labelled:?}");
    let all = metric(
        &metrics,
        r#"intercom_client_requests_total{client="other",route="client-cap",class="ok"}"#,
    ) + labelled
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert_eq!(all, 2_000.0);
    let scope_series = metrics
        .lines()
        .filter(|l| l.starts_with("intercom_client_scope_requests_total{client=\"capped-"))
        .count();
    assert!(scope_series <= 5, "{scope_series}");
    app.shutdown.shutdown().await;
}
