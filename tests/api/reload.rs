//! Hot reload: an Intercom process reloads its file on SIGHUP (or when the file changes)
//! under load, without a failed request, every answer from exactly the old or the new
//! route; an invalid file changes nothing; keys that take a restart are named and keep
//! their value; changes the running parts cannot serve are refused.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use futures_util::StreamExt;

use crate::helpers::*;

async fn ready(admin: u16) -> serde_json::Value {
    let mut res = test_client()
        .get(format!("http://127.0.0.1:{admin}/health/ready"))
        .send()
        .await
        .unwrap();
    res.json().await.unwrap()
}

/// Waits until the last reload reports `outcome` at `generation`.
async fn reloaded(admin: u16, outcome: &str, generation: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let seen = eventually(PATIENCE, async || {
        last = ready(admin).await["last_reload"].clone();
        last["outcome"] == outcome && last["generation"] == generation
    })
    .await;
    assert!(
        seen,
        "no {outcome} reload at generation {generation}: {last}"
    );
    last
}

/// Writes `text` as the configuration file, aside first so a reload never reads half.
fn write_config(dir: &Path, text: &str) {
    let aside = dir.join("intercom.toml.new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(aside, dir.join("intercom.toml")).unwrap();
}

/// Generation `k` of the configuration: `/svc` goes to `even` or `odd` by `k` and says
/// `k` in `x-generation`; `/extra-k` exists only in generation `k`.
fn generation(
    k: u64,
    listen: (u16, u16),
    even: &TestUpstream,
    odd: &TestUpstream,
    extra: &str,
) -> String {
    let up = if k.is_multiple_of(2) { even } else { odd };
    format!(
        r#"
            [server]
            listen = "127.0.0.1:{}"
            admin_listen = "127.0.0.1:{}"
            {extra}
            [[routes]]
            name = "svc"
            prefix = "/svc"
            strip_prefix = true
            upstreams = ["{}"]
            [routes.response_headers]
            set = {{ "x-generation" = "{k}" }}
            [[routes]]
            name = "extra-{k}"
            prefix = "/extra-{k}"
            strip_prefix = true
            upstreams = ["{}"]
        "#,
        listen.0,
        listen.1,
        up.url(),
        even.url(),
    )
}

/// An Intercom process serving generation 1 (`extra` in `[server]`) from a file in
/// `dir`, in front of the two upstreams the generations alternate between.
struct Reloading {
    even: TestUpstream,
    odd: TestUpstream,
    dir: tempfile::TempDir,
    process: ChildProcess,
    port: u16,
    admin: u16,
}

impl Reloading {
    async fn start(extra: &str) -> Self {
        let even = TestUpstream::start("even");
        let odd = TestUpstream::start("odd");
        let dir = tempfile::tempdir().unwrap();
        let (process, port, admin) =
            serve_process(dir.path(), |p, a| generation(1, (p, a), &even, &odd, extra)).await;
        Self {
            even,
            odd,
            dir,
            process,
            port,
            admin,
        }
    }
}

/// What one request under load got: its status, the upstream that answered, the
/// generation the answer claims.
type Seen = (u16, String, u64);

async fn load_loop(url: String, stop: Rc<RefCell<bool>>, seen: Rc<RefCell<Vec<Seen>>>) {
    let client = test_client();
    while !*stop.borrow() {
        let outcome = match client.get(&url).send().await {
            Ok(mut res) => {
                let header = |name: &str| {
                    res.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let upstream = header("x-upstream");
                let generation = header("x-generation").parse().unwrap_or(0);
                let status = res.status().as_u16();
                let _ = res.body().await;
                (status, upstream, generation)
            }
            Err(e) => (0, e.to_string(), 0),
        };
        seen.borrow_mut().push(outcome);
    }
}

#[actix_web::test]
async fn twenty_reloads_under_load_fail_no_request_and_each_answer_is_the_old_or_the_new_route() {
    let world = Reloading::start("").await;
    let (even, odd, dir) = (&world.even, &world.odd, &world.dir);
    let (process, port, admin) = (&world.process, world.port, world.admin);
    let base = format!("http://127.0.0.1:{port}");
    let stop = Rc::new(RefCell::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let seen = Rc::new(RefCell::new(Vec::new()));
            let task = actix_web::rt::spawn(load_loop(
                format!("{base}/svc/x"),
                stop.clone(),
                seen.clone(),
            ));
            (task, seen)
        })
        .collect();
    let client = test_client();
    for k in 2..=21u64 {
        // A request of generation k-1 in flight across the reload: its route is gone
        // from generation k, and it still finishes on it.
        let mut streaming = client
            .get(format!("{base}/extra-{}/events", k - 1))
            .send()
            .await
            .unwrap();
        assert_eq!(streaming.status(), 200);
        let first = tokio::time::timeout(PATIENCE, streaming.next())
            .await
            .unwrap();
        assert_eq!(&first.unwrap().unwrap()[..], b"data: first\n\n");

        write_config(dir.path(), &generation(k, (port, admin), even, odd, ""));
        hang_up(process.pid());
        reloaded(admin, "applied", k).await;

        even.release_events();
        let rest = streaming.body().await.unwrap();
        assert_eq!(
            &rest[..],
            b"data: last\n\n",
            "the old route finished its answer"
        );
        let status = |path: String| {
            let client = client.clone();
            async move { client.get(path).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status(format!("{base}/extra-{k}/x")).await, 200, "added");
        assert_eq!(
            status(format!("{base}/extra-{}/x", k - 1)).await,
            404,
            "removed"
        );
    }
    // Every loop has been answered by the last generation.
    let caught_up = eventually(PATIENCE, async || {
        loops
            .iter()
            .all(|(_, seen)| seen.borrow().last().is_some_and(|s| s.2 == 21))
    })
    .await;
    assert!(caught_up);
    *stop.borrow_mut() = true;
    let mut total = 0;
    for (task, seen) in loops {
        task.await.unwrap();
        let seen = seen.borrow();
        let mut last = 0;
        for (status, upstream, generation) in seen.iter() {
            assert_eq!(*status, 200, "a failed request under reloads: {upstream}");
            let expected = if generation.is_multiple_of(2) {
                "even"
            } else {
                "odd"
            };
            assert_eq!(
                upstream, expected,
                "generation {generation} answered by {upstream}"
            );
            assert!(*generation >= last, "an older route after a newer one");
            last = *generation;
        }
        assert_eq!(last, 21, "the loop ends on the last generation");
        total += seen.len();
    }
    assert!(total > 40, "{total} requests ran");
    let metrics = admin_metrics(admin).await;
    assert_eq!(
        metric(
            &metrics,
            "intercom_config_reloads_total{outcome=\"applied\"}"
        ),
        20.0
    );
    assert_eq!(metric(&metrics, "intercom_config_generation"), 21.0);
}

#[actix_web::test]
async fn an_invalid_file_changes_nothing_and_is_reported_with_its_key() {
    let world = Reloading::start("").await;
    let (even, odd, dir) = (&world.even, &world.odd, &world.dir);
    let (process, port, admin) = (&world.process, world.port, world.admin);
    let base = format!("http://127.0.0.1:{port}");
    let good = generation(1, (port, admin), even, odd, "");
    let rejected = |metrics: &str| {
        metric(
            metrics,
            "intercom_config_reloads_total{outcome=\"rejected\"}",
        )
    };
    for (bad, key) in [
        (
            good.replace("prefix = \"/svc\"", "prefix = \"svc\""),
            "routes[0].prefix",
        ),
        (
            good.replace("strip_prefix = true", "strip_prefixx = true"),
            "strip_prefixx",
        ),
        (good.replace("[[routes]]", "[[routes]"), "intercom.toml"),
        (
            good.replace("upstreams = [\"http", "upstreams = [\"ftp"),
            "routes[0].upstreams",
        ),
    ] {
        let before = rejected(&admin_metrics(admin).await);
        write_config(dir.path(), &bad);
        hang_up(process.pid());
        let counted = eventually(PATIENCE, async || {
            rejected(&admin_metrics(admin).await) == before + 1.0
        })
        .await;
        assert!(
            counted,
            "the reload of a bad file was not counted as rejected"
        );
        let last = ready(admin).await["last_reload"].clone();
        assert_eq!(last["outcome"], "rejected");
        assert_eq!(last["generation"], 1, "nothing changed");
        assert!(
            last["error"].as_str().unwrap().contains(key),
            "{key}: {last}"
        );
        let logged = process.log_text();
        assert!(
            logged.contains("configuration reload rejected") && logged.contains(key),
            "{key}: {logged}"
        );
        // Still served by generation 1.
        let res = test_client()
            .get(format!("{base}/svc/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers().get("x-generation").unwrap(), "1");
    }
    assert_eq!(
        metric(&admin_metrics(admin).await, "intercom_config_generation"),
        1.0
    );
}

#[actix_web::test]
async fn keys_that_take_a_restart_are_named_and_keep_their_running_value() {
    let world = Reloading::start("").await;
    let (even, odd, dir) = (&world.even, &world.odd, &world.dir);
    let (process, port, admin) = (&world.process, world.port, world.admin);
    // The admin listener moves, the shutdown delay changes, and a route changes.
    let elsewhere = free_port();
    let moved = generation(2, (port, elsewhere), even, odd, "shutdown_delay = \"1s\"");
    write_config(dir.path(), &moved);
    hang_up(process.pid());
    let last = reloaded(admin, "applied", 2).await;
    assert_eq!(
        last["restart_required"],
        serde_json::json!(["server.admin_listen", "server.shutdown_delay"])
    );
    let logged = process.log_text();
    for key in ["server.admin_listen", "server.shutdown_delay"] {
        assert!(
            logged.contains(&format!("\"key\":\"{key}\"")) && logged.contains("takes a restart"),
            "{key}: {logged}"
        );
    }
    // The admin listener stayed where it was; the route changed.
    assert!(std::net::TcpStream::connect(("127.0.0.1", elsewhere)).is_err());
    let res = test_client()
        .get(format!("http://127.0.0.1:{port}/svc/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers().get("x-upstream").unwrap(), "even");

    // The same file again: nothing that can change at run time changed.
    hang_up(process.pid());
    reloaded(admin, "unchanged", 2).await;
}

#[actix_web::test]
async fn a_watched_file_reloads_when_it_changes() {
    let watch = "reload_watch = \"200ms\"";
    let world = Reloading::start(watch).await;
    let (even, odd, dir) = (&world.even, &world.odd, &world.dir);
    let (port, admin) = (world.port, world.admin);
    write_config(dir.path(), &generation(2, (port, admin), even, odd, watch));
    reloaded(admin, "applied", 2).await;
    let res = test_client()
        .get(format!("http://127.0.0.1:{port}/extra-2/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// One route `name` under `prefix` to `upstream`, with `extra` lines.
fn one_route(name: &str, prefix: &str, upstream: &TestUpstream, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstreams = [\"{}\"]\n{extra}\n",
        upstream.url()
    )
}

#[actix_web::test]
async fn changes_the_running_parts_cannot_serve_are_refused() {
    use intercom::startup::reload::ReloadOutcome;
    let upstream = TestUpstream::start("up");
    let app = spawn_app(&one_route("r", "/r", &upstream, "")).await;
    // A secret reference the running process never resolved.
    let inject = "inject = { type = \"bearer\", secret = \"file:never_resolved\" }";
    let outcome = app
        .reloader
        .apply(settings_with(&one_route("r", "/r", &upstream, inject)))
        .await;
    match outcome {
        ReloadOutcome::Rejected(error) => {
            assert_eq!(error.key, "routes[0].inject.secret", "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(app.reloader.generation(), 1);
    // A valid change applies, and removes the old route's readiness entry.
    let probed = "health_check = { path = \"/\", interval = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 1 }";
    let other = one_route("s", "/s", &upstream, probed);
    assert!(matches!(
        app.reloader.apply(settings_with(&other)).await,
        ReloadOutcome::Applied { generation: 2 }
    ));
    let status = app
        .client
        .get(app.url("/s/x"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let status = app
        .client
        .get(app.url("/r/x"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
    let gone = eventually(PATIENCE, async || {
        let report = dependency_report(&app, "upstream:s").await;
        report["status"] == "ok" && dependency_report(&app, "upstream:r").await.is_null()
    })
    .await;
    assert!(gone, "readiness follows the new routes");
}

#[actix_web::test]
async fn a_reload_changes_a_routes_rate_limit_tiers() {
    let upstream = TestUpstream::start("up");
    let config = |requests: u32| {
        format!(
            r#"
                [rate_limit.tiers]
                free = [{{ requests = {requests}, per = "1h" }}]
                [[routes]]
                name = "reload-limited"
                prefix = "/limited"
                upstreams = ["{}"]
                rate_limit = {{}}
            "#,
            upstream.url()
        )
    };
    let app = spawn_app(&config(1)).await;
    let get = async || {
        let res = app.client.get(app.url("/limited/x")).send().await.unwrap();
        res.status().as_u16()
    };
    assert_eq!(get().await, 200);
    assert_eq!(get().await, 429, "one request an hour");
    let outcome = app.reloader.apply(settings_with(&config(1000))).await;
    assert!(
        matches!(
            outcome,
            intercom::startup::reload::ReloadOutcome::Applied { .. }
        ),
        "{outcome:?}"
    );
    // Five in a row: the new tier's windows, not only fresh ones of the old tier.
    for _ in 0..5 {
        assert_eq!(get().await, 200, "the new tier's windows");
    }
}

#[actix_web::test]
async fn a_reload_changes_a_routes_cors_policy() {
    let upstream = TestUpstream::start("up");
    let route = |cors: &str| one_route("reload-cors", "/app", &upstream, cors);
    let app = spawn_app(&route("")).await;
    let preflight = async |origin: &str| {
        app.client
            .request(actix_web::http::Method::OPTIONS, app.url("/app/x"))
            .insert_header(("origin", origin))
            .insert_header(("access-control-request-method", "GET"))
            .send()
            .await
            .unwrap()
    };
    let hits = upstream.hits();
    let res = preflight("https://app.example").await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert_eq!(
        upstream.hits(),
        hits + 1,
        "without a policy the upstream answers"
    );

    let policy = "cors = { origins = [\"https://app.example\"], methods = [\"GET\"] }";
    let outcome = app.reloader.apply(settings_with(&route(policy))).await;
    assert!(
        matches!(
            outcome,
            intercom::startup::reload::ReloadOutcome::Applied { .. }
        ),
        "{outcome:?}"
    );
    let res = preflight("https://app.example").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
    assert!(!preflight("https://evil.example")
        .await
        .status()
        .is_success());
    assert_eq!(
        upstream.hits(),
        hits + 1,
        "preflights are answered by Intercom now"
    );
}
