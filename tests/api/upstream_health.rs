//! Upstream health, retries and balancing against real upstreams: an instance killed
//! under load (no idempotent request fails, the active probe takes it out and brings it
//! back), readiness per route (unready only for a `required` route), a retry budget that
//! stops retries when every instance fails, weights, and instances discovered by DNS
//! (a real DNS server) that follow its answers.

use std::cell::{Cell, RefCell};
use std::net::TcpListener;
use std::rc::Rc;

use crate::helpers::*;

/// What readiness says of a route's instances: its status and detail.
async fn upstream_readiness(app: &TestApp, route: &str) -> (String, String) {
    let entry = dependency_report(app, &format!("upstream:{route}")).await;
    (
        entry["status"].as_str().unwrap_or_default().to_string(),
        entry["detail"].as_str().unwrap_or_default().to_string(),
    )
}

#[actix_web::test]
async fn an_instance_killed_under_load_fails_no_request_and_returns_when_it_recovers() {
    let a = TestUpstream::start("a");
    // Off the kernel's ephemeral range: while `b` is down, no other test's listener can
    // be handed its port (and take the probes and requests meant for it).
    let b = TestUpstream::start_on("b", announced_port());
    let b_port = b.port;
    let app = Rc::new(
        spawn_app(&format!(
            r#"
            [[routes]]
            name = "probed"
            prefix = "/probed"
            upstreams = ["{}", "{}"]
            health_check = {{ path = "/healthz", interval = "100ms", timeout = "1s", healthy_threshold = 1, unhealthy_threshold = 1 }}
            "#,
            a.url(),
            b.url()
        ))
        .await,
    );
    assert!(
        eventually(PATIENCE, async || upstream_readiness(&app, "probed").await
            == ("ok".into(), "2 of 2 instances healthy".into()))
        .await
    );

    // Load: rounds of concurrent GETs until told to stop.
    let stop = Rc::new(Cell::new(false));
    let statuses = Rc::new(RefCell::new(Vec::<u16>::new()));
    let load = actix_web::rt::spawn({
        let (stop, statuses, app) = (stop.clone(), statuses.clone(), app.clone());
        async move {
            while !stop.get() {
                let round = (0..16)
                    .map(|_| (app.url("/probed/x"), String::new()))
                    .collect();
                let answered = concurrent_gets(round, 4).await;
                statuses.borrow_mut().extend(answered);
            }
        }
    });
    let served = |n: usize| {
        let statuses = statuses.clone();
        async move || statuses.borrow().len() >= n
    };
    assert!(
        eventually(PATIENCE, served(32)).await,
        "the load did not start"
    );
    b.stop().await;
    drop(b);
    let ejected = eventually(PATIENCE, async || {
        upstream_readiness(&app, "probed").await
            == ("degraded".into(), "1 of 2 instances healthy".into())
    })
    .await;
    assert!(ejected, "the dead instance stayed in");
    let after = statuses.borrow().len() + 64;
    assert!(
        eventually(PATIENCE, served(after)).await,
        "the load stalled"
    );

    // Back on its port: the probe brings it in again, and it takes requests.
    let b = TestUpstream::start_on("b", b_port);
    let back = eventually(PATIENCE, async || {
        upstream_readiness(&app, "probed").await.0 == "ok"
    })
    .await;
    assert!(back, "the recovered instance was not taken back");
    let hits = b.hits();
    let after = statuses.borrow().len() + 64;
    assert!(
        eventually(PATIENCE, served(after)).await,
        "the load stalled"
    );
    stop.set(true);
    load.await.unwrap();
    assert!(b.hits() > hits, "the recovered instance got no request");

    let statuses = statuses.borrow().clone();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    eprintln!(
        "{failed} of {} requests failed while an instance died",
        statuses.len()
    );
    assert_eq!(failed, 0);
    let probes = metric(
        &app.metrics().await,
        &format!("intercom_upstream_probes_total{{route=\"probed\",instance=\"127.0.0.1:{b_port}\",result=\"unhealthy\"}}"),
    );
    assert!(probes >= 1.0);
}

/// An upstream that accepts every connection and closes it at once: every exchange
/// breaks before an answer.
fn closing_upstream() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    (port, thread)
}

#[actix_web::test]
async fn the_retry_budget_stops_retries_when_every_instance_fails() {
    let (one, _t1) = closing_upstream();
    let (two, _t2) = closing_upstream();
    // Never ejected, so every request meets a failing instance and wants a retry.
    let app = spawn_app(&format!(
        r#"
            [[routes]]
            name = "budget"
            prefix = "/budget"
            upstreams = ["http://127.0.0.1:{one}", "http://127.0.0.1:{two}"]
            passive_health = {{ consecutive_failures = 0 }}
            retry = {{ attempts = 1, budget = 0.2 }}
        "#
    ))
    .await;
    for _ in 0..100 {
        let mut res = app.client.get(app.url("/budget/x")).send().await.unwrap();
        let problem = assert_problem(&mut res, 502).await;
        assert_eq!(problem["type"], "urn:intercom:problem:upstream-protocol");
    }
    let metrics = app.metrics().await;
    let retried = metric(
        &metrics,
        "intercom_upstream_retries_total{route=\"budget\",outcome=\"retried\"}",
    );
    let refused = metric(
        &metrics,
        "intercom_upstream_retries_total{route=\"budget\",outcome=\"over_budget\"}",
    );
    // Every connection closed under the request: counted as resets, per instance.
    let resets = metric(
        &metrics,
        &format!("intercom_upstream_errors_total{{route=\"budget\",kind=\"reset\",instance=\"127.0.0.1:{one}\"}}"),
    );
    assert!(resets >= 1.0, "{resets}");
    // One retry decision per request; the budget (3, plus a fifth of the requests in its
    // ten-second window) let only some through.
    assert_eq!(retried + refused, 100.0);
    assert!(refused > 0.0, "no retry was refused: {retried} retried");
    assert!(retried >= 3.0, "the floor of three retries: {retried}");
}

#[actix_web::test]
async fn readiness_fails_only_for_a_required_route_without_instances() {
    let a = TestUpstream::start("a");
    let dead = dead_address();
    let config = |required: bool| {
        format!(
            r#"
            [[routes]]
            name = "needed-{required}"
            prefix = "/needed"
            upstreams = ["http://{dead}"]
            required = {required}
            health_check = {{ path = "/", interval = "100ms", healthy_threshold = 1, unhealthy_threshold = 1 }}
            [[routes]]
            name = "fine-{required}"
            prefix = "/fine"
            upstreams = ["{}"]
            "#,
            a.url()
        )
    };
    for required in [false, true] {
        let app = spawn_app(&config(required)).await;
        let down = eventually(PATIENCE, async || {
            upstream_readiness(&app, &format!("needed-{required}")).await
                == ("down".into(), "0 of 1 instances healthy".into())
        })
        .await;
        assert!(down, "required = {required}");
        assert_eq!(
            upstream_readiness(&app, &format!("fine-{required}"))
                .await
                .0,
            "ok"
        );
        let res = app
            .client
            .get(app.admin_url("/health/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            if required { 503 } else { 200 },
            "required = {required}"
        );
        // Every instance out: 503 with Retry-After, the upstream never tried.
        let mut res = app.client.get(app.url("/needed/x")).send().await.unwrap();
        let problem = assert_problem(&mut res, 503).await;
        assert_eq!(problem["type"], "urn:intercom:problem:no-healthy-upstream");
        assert!(res.headers().contains_key("retry-after"));
    }
}

#[actix_web::test]
async fn weights_share_the_requests() {
    let a = TestUpstream::start("a");
    let b = TestUpstream::start("b");
    let app = spawn_app(&format!(
        r#"
            [[routes]]
            name = "weighted"
            prefix = "/weighted"
            upstreams = [{{ url = "{}", weight = 3 }}, "{}"]
        "#,
        a.url(),
        b.url()
    ))
    .await;
    for _ in 0..40 {
        let (status, _) = upstream_saw(&app, "/weighted/x", &[]).await;
        assert_eq!(status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (30, 10));
}

#[actix_web::test]
async fn upstream_connections_are_timed_and_counted_while_open() {
    // Off the ephemeral range: once it stops, no other test's listener takes its port.
    let upstream = TestUpstream::start_on("pooled", announced_port());
    let app = spawn_app(&format!(
        r#"
            [[routes]]
            name = "conn-metered"
            prefix = "/conn-metered"
            upstreams = ["{}"]
        "#,
        upstream.url()
    ))
    .await;
    let instance = format!(
        "route=\"conn-metered\",instance=\"127.0.0.1:{}\"",
        upstream.port
    );
    let connects = format!("intercom_upstream_connect_duration_seconds_count{{{instance}}}");
    let open = format!("intercom_upstream_connections_open{{{instance}}}");
    // Ten requests in a row on one client connection (one worker): one upstream
    // connection, dialled once and kept open in the pool.
    for _ in 0..10 {
        let (status, _) = upstream_saw(&app, "/conn-metered/x", &[]).await;
        assert_eq!(status, 200);
    }
    let text = app.metrics().await;
    assert_eq!(metric(&text, &connects), 1.0, "{text}");
    assert_eq!(metric(&text, &open), 1.0);
    assert!(
        metric(
            &text,
            &format!("intercom_upstream_connect_duration_seconds_sum{{{instance}}}")
        ) > 0.0
    );
    // The upstream goes away: the pool finds its connection closed at the next request
    // (then nothing answers: 502), and it is no longer counted.
    upstream.stop().await;
    let (status, _) = upstream_saw(&app, "/conn-metered/x", &[]).await;
    assert_eq!(status, 502);
    assert!(
        eventually(PATIENCE, async || metric(&app.metrics().await, &open)
            == 0.0)
        .await,
        "the closed connection is still counted"
    );
}

/// `localhost` resolves to `127.0.0.1` and to `::1` (RFC 6761: the resolver answers it
/// itself, whatever `/etc/hosts` lists): with a server on each, the one upstream name is
/// two instances, and requests reach both, each instance labelled by its address.
#[actix_web::test]
async fn localhost_with_a_server_on_each_address_family_is_two_instances() {
    let v4 = TestUpstream::start_at("v4", "127.0.0.1:0");
    let v6 = TestUpstream::start_at("v6", &format!("[::1]:{}", v4.port));
    // A name server that knows no name: `localhost` never reaches it.
    let dns = TestDnsServer::start(serde_json::json!({}));
    let app = spawn_app(&format!(
        r#"
            [discovery]
            nameservers = ["127.0.0.1:{}"]
            [[routes]]
            name = "dual-stack"
            prefix = "/dual"
            upstreams = ["http://localhost:{}"]
            discover = true
        "#,
        dns.port, v4.port
    ))
    .await;
    assert!(
        eventually(PATIENCE, async || {
            upstream_readiness(&app, "dual-stack").await.1 == "2 of 2 instances healthy"
        })
        .await,
        "{:?}",
        upstream_readiness(&app, "dual-stack").await
    );
    let before = (v4.hits(), v6.hits());
    for _ in 0..10 {
        let (status, seen) = upstream_saw(&app, "/dual/x", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(seen["headers"]["host"][0], format!("localhost:{}", v4.port));
    }
    assert_eq!((v4.hits() - before.0, v6.hits() - before.1), (5, 5));
    let metrics = app.metrics().await;
    for instance in [
        format!("127.0.0.1:{}", v4.port),
        format!("[::1]:{}", v4.port),
    ] {
        let series = format!(
            "intercom_upstream_connections_open{{route=\"dual-stack\",instance=\"{instance}\"}}"
        );
        assert!(metric(&metrics, &series) >= 1.0, "{series} in {metrics}");
    }
}

#[actix_web::test]
async fn discovered_addresses_are_instances_and_follow_the_dns() {
    let name = "svc.intercom.test";
    let dns = TestDnsServer::start(serde_json::json!({ name: ["127.0.0.1"] }));
    let a = TestUpstream::start_at("a", "127.0.0.1:0");
    // The same port on another loopback address: one name, two instances.
    let b = TestUpstream::start_at("b", &format!("127.0.0.2:{}", a.port));
    let app = spawn_app(&format!(
        r#"
            [discovery]
            nameservers = ["127.0.0.1:{}"]
            min_interval = "50ms"
            max_interval = "200ms"
            [[routes]]
            name = "found"
            prefix = "/found"
            upstreams = ["http://{name}:{}"]
            discover = true
        "#,
        dns.port, a.port
    ))
    .await;
    let instances = async |n: usize| {
        eventually(PATIENCE, async || {
            upstream_readiness(&app, "found").await.1 == format!("{n} of {n} instances healthy")
        })
        .await
    };
    let spread = async |requests: u64| {
        let before = (a.hits(), b.hits());
        for _ in 0..requests {
            let (status, seen) = upstream_saw(&app, "/found/x", &[]).await;
            assert_eq!(status, 200);
            // The name, not the address, is the Host the upstream sees.
            assert_eq!(seen["headers"]["host"][0], format!("{name}:{}", a.port));
        }
        (a.hits() - before.0, b.hits() - before.1)
    };
    assert!(instances(1).await);
    assert_eq!(spread(10).await, (10, 0));

    dns.set(serde_json::json!({ name: ["127.0.0.1", "127.0.0.2"] }));
    assert!(instances(2).await, "the new address was not taken in");
    assert_eq!(spread(20).await, (10, 10));

    dns.set(serde_json::json!({ name: ["127.0.0.2"] }));
    assert!(
        eventually(PATIENCE, async || spread(4).await == (0, 4)).await,
        "the address that left still gets requests"
    );
    // A name that stops resolving keeps the instances known.
    dns.set(serde_json::json!({}));
    let failed = "intercom_upstream_resolutions_total{route=\"found\",outcome=\"failed\"}";
    let before = metric(&app.metrics().await, failed);
    assert!(
        eventually(PATIENCE, async || metric(&app.metrics().await, failed)
            > before)
        .await
    );
    assert_eq!(spread(4).await, (0, 4));
}
