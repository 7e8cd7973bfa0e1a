//! The filter API: filters of a binary's own at the three phases, against the real AS and
//! a real upstream, and the shipped example (`examples/claim_matches_path`) as the
//! process a team would build and run.

use std::sync::Arc;

use intercom::filter::{
    async_trait, Filter, FilterRegistry, FilterRequest, FilterSettings, HeaderMap, HeaderName,
    HeaderValue, Phase, Refusal, StatusCode,
};

use crate::helpers::*;

/// Refuses a request that carries `x-deny` (at `authenticated`), stamps the outbound
/// request with the caller and drops `x-drop-me` (at `before_forwarding`), and marks the
/// answer while dropping the upstream's `x-upstream-secret` (at `response`).
struct Stamp {
    mark: String,
}

#[async_trait(?Send)]
impl Filter for Stamp {
    fn phases(&self) -> &[Phase] {
        &[
            Phase::Authenticated,
            Phase::BeforeForwarding,
            Phase::Response,
        ]
    }

    async fn authenticated(&self, request: &FilterRequest<'_>) -> Result<(), Refusal> {
        match request.headers.contains_key("x-deny") {
            true => Err(Refusal::new(
                StatusCode::IM_A_TEAPOT,
                "the stamp filter refuses x-deny",
            )),
            false => Ok(()),
        }
    }

    async fn before_forwarding(
        &self,
        request: &FilterRequest<'_>,
        upstream: &mut HeaderMap,
    ) -> Result<(), Refusal> {
        let who = request
            .principal
            .and_then(|p| p.sub.as_deref())
            .unwrap_or("nobody");
        let value = format!("{} {} {} {}", self.mark, request.route, request.path, who);
        upstream.insert(
            HeaderName::from_static("x-stamp"),
            HeaderValue::from_str(&value).unwrap(),
        );
        upstream.remove("x-drop-me");
        Ok(())
    }

    fn on_response(&self, _: &FilterRequest<'_>, status: StatusCode, headers: &mut HeaderMap) {
        headers.insert(
            HeaderName::from_static("x-filtered"),
            HeaderValue::from_str(status.as_str()).unwrap(),
        );
        headers.remove("x-upstream-secret");
    }
}

fn registry() -> FilterRegistry {
    FilterRegistry::new().register("stamp", |settings: &FilterSettings| {
        let mark = settings.config["mark"]
            .as_str()
            .ok_or("config.mark is required")?;
        Ok(Arc::new(Stamp {
            mark: mark.to_string(),
        }) as Arc<dyn Filter>)
    })
}

#[actix_web::test]
async fn filters_refuse_and_rewrite_at_their_phases() {
    let auth = TestAuthServer::shared().await;
    let upstream = TestUpstream::start("filtered");
    let (_dir, secrets) = secrets_file();
    let config = format!(
        "{}{}{}",
        auth_config(&auth, &secrets, ""),
        bearer_route(
            "filters-bearer",
            "/stamped",
            &upstream,
            r#"
                [[routes.filters]]
                name = "stamp"
                config = { mark = "m1" }
            "#,
        ),
        r#"
            [[routes]]
            name = "filters-open"
            prefix = "/open"
            upstreams = ["UP"]
            [[routes.filters]]
            name = "stamp"
            config = { mark = "m2" }
        "#
        .replace("UP", &upstream.url()),
    );
    let app = spawn_app_filtered(settings_with(&config), registry()).await;
    let token = auth.user_token("filter-alice", "invoice_read", 600).await;

    // Allowed: the upstream sees the stamp (the canonical path, the verified caller) and
    // not the header the filter drops; the client sees the response phase's work.
    let mut res = app
        .client
        .get(app.url("/stamped//b"))
        .insert_header(("authorization", format!("Bearer {token}")))
        .insert_header(("x-drop-me", "1"))
        .insert_header(("x-echo-response-header", "x-upstream-secret: s3cr3t"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(res.status(), 200, "{body}");
    let seen = &body["headers"];
    assert_eq!(
        seen["x-stamp"][0],
        "m1 filters-bearer /stamped/b filter-alice"
    );
    assert!(seen.get("x-drop-me").is_none(), "{seen}");
    assert_eq!(res.headers().get("x-filtered").unwrap(), "200");
    assert!(res.headers().get("x-upstream-secret").is_none());

    // Refused at `authenticated`: the filter's status in problem+json, nothing forwarded.
    let before = app.metrics().await;
    let hits = upstream.hits();
    let mut res = app
        .client
        .get(app.url("/stamped/b"))
        .insert_header(("authorization", format!("Bearer {token}")))
        .insert_header(("x-deny", "1"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(&mut res, 418).await;
    assert_eq!(problem["type"], "urn:intercom:problem:refused-by-filter");
    assert_eq!(problem["detail"], "the stamp filter refuses x-deny");
    assert_eq!(upstream.hits(), hits);
    let series = r#"intercom_filter_refusals_total{route="filters-bearer",filter="stamp"}"#;
    assert_eq!(
        metric(&app.metrics().await, series) - metric(&before, series),
        1.0
    );

    // The filter runs after authentication: a bad token is refused before it.
    let mut res = app
        .client
        .get(app.url("/stamped/b"))
        .insert_header(("authorization", "Bearer not-a-token"))
        .insert_header(("x-deny", "1"))
        .send()
        .await
        .unwrap();
    assert_problem(&mut res, 401).await;

    // On a route without auth the filter sees no principal.
    let mut res = app.client.get(app.url("/open/x")).send().await.unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body["headers"]["x-stamp"][0],
        "m2 filters-open /open/x nobody"
    );
    app.shutdown.shutdown().await;
}

#[actix_web::test]
async fn a_filter_the_binary_lacks_or_a_bad_config_stops_the_start() {
    let upstream = TestUpstream::start("unfiltered");
    let route = |filter: &str| {
        format!(
            r#"
                [[routes]]
                name = "f"
                prefix = "/f"
                upstreams = ["{}"]
                [[routes.filters]]
                {filter}
            "#,
            upstream.url()
        )
    };
    for (filter, expected) in [
        (
            "name = \"nope\"",
            "no filter \"nope\" in this binary (registered: stamp)",
        ),
        ("name = \"stamp\"", "config.mark is required"),
    ] {
        let settings = settings_with(&route(filter));
        let error = match intercom::startup::Application::build_with(settings, registry()).await {
            Ok(_) => panic!("{filter} started"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("routes[0].filters[0]"), "{error}");
        assert!(error.contains(expected), "{error}");
    }
    // The intercom binary itself has no filters, and says so.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.toml");
    std::fs::write(&file, route("name = \"stamp\"")).unwrap();
    let out = intercom_binary(&file, &["check-config"], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].filters[0]") && stderr.contains("registered: none"),
        "{stderr}"
    );
}

/// The example binary: `claim_matches_path` on `/invoices/{subscriber_id}`.
#[actix_web::test]
async fn the_example_binary_matches_a_claim_to_the_path() {
    let program = example_binary("claim_matches_path");
    let auth = TestAuthServer::shared().await;
    let upstream = TestUpstream::start("invoices");
    let (dir, secrets) = secrets_file();
    let route = |filter_config: &str| {
        bearer_route(
            "invoices",
            "/invoices",
            &upstream,
            &format!(
                r#"
                    [[routes.filters]]
                    name = "claim_matches_path"
                    {filter_config}
                "#
            ),
        )
    };
    let good = r#"claims = ["subscriber_id"]
                    config = { pattern = "/invoices/{subscriber_id}" }"#;

    // A bad config: check-config names the key and the reason.
    for (bad, reason) in [
        (
            r#"config = { pattern = "/invoices/{subscriber_id}" }"#,
            "list \"subscriber_id\" in claims",
        ),
        (
            r#"config = { pattern = "/invoices" }"#,
            "exactly one {parameter}",
        ),
        (r#"config = { patern = "/x/{y}" }"#, "unknown field"),
    ] {
        let file = dir.path().join("bad.toml");
        let text = format!("{}{}", auth_config(&auth, &secrets, ""), route(bad));
        std::fs::write(&file, text).unwrap();
        let out = program_with_config(&program, &file, &["check-config"], &[])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad}: {stderr}");
        assert!(
            stderr.contains("routes[0].filters[0]") && stderr.contains(reason),
            "{stderr}"
        );
    }

    let (_process, port, _) = serve_program_on(&program, dir.path(), &[], free_port, |p, a| {
        format!(
            r#"
                [server]
                listen = "127.0.0.1:{p}"
                admin_listen = "127.0.0.1:{a}"
                {}{}
            "#,
            auth_config(&auth, &secrets, ""),
            route(good)
        )
    })
    .await;
    let client = test_client();
    let get = |path: &str, token: &str| {
        client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .insert_header(("authorization", format!("Bearer {token}")))
            .send()
    };
    let as_text = serde_json::json!({ "subscriber_id": "42" }).to_string();
    let as_number = serde_json::json!({ "subscriber_id": 42 }).to_string();
    let s42 = auth
        .user_token_with("sub-42", "invoice_read", 600, &[("claims", &as_text)])
        .await;
    let n42 = auth
        .user_token_with("num-42", "invoice_read", 600, &[("claims", &as_number)])
        .await;
    let none = auth.user_token("no-claim", "invoice_read", 600).await;

    let hits = upstream.hits();
    for (path, token) in [
        ("/invoices/42", &s42),
        ("/invoices/42/items/7", &s42),
        ("/invoices/42", &n42),
    ] {
        let mut res = get(path, token).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let _ = res.body().await;
    }
    // Paths outside the pattern are the route's, unfiltered.
    let mut res = get("/invoices", &none).await.unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.body().await;
    assert_eq!(upstream.hits(), hits + 4);

    for (path, token, detail) in [
        (
            "/invoices/43",
            &s42,
            "the token's subscriber_id claim does not match this path",
        ),
        // The canonical path is what is compared: no spelling slips past.
        (
            "/invoices/%34%33",
            &s42,
            "the token's subscriber_id claim does not match this path",
        ),
        (
            "/invoices//43",
            &s42,
            "the token's subscriber_id claim does not match this path",
        ),
        (
            "/invoices/42",
            &none,
            "the token carries no subscriber_id claim",
        ),
    ] {
        let mut res = get(path, token).await.unwrap();
        let problem = assert_problem(&mut res, 403).await;
        assert_eq!(
            problem["type"], "urn:intercom:problem:refused-by-filter",
            "{path}"
        );
        assert_eq!(problem["detail"], detail, "{path}");
        let challenge = res
            .headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
    }
    assert_eq!(
        upstream.hits(),
        hits + 4,
        "no refused request was forwarded"
    );
}

/// A reload builds the routes' filters anew: a changed `config` applies to the next
/// request, and a filter the binary lacks is refused without touching the running table.
#[actix_web::test]
async fn a_reload_rebuilds_the_filters() {
    use intercom::startup::reload::ReloadOutcome;
    let upstream = TestUpstream::start("refiltered");
    let route = |filter: &str| {
        format!(
            r#"
                [[routes]]
                name = "filters-reloaded"
                prefix = "/re"
                upstreams = ["{}"]
                [[routes.filters]]
                {filter}
            "#,
            upstream.url()
        )
    };
    let app = spawn_app_filtered(
        settings_with(&route("name = \"stamp\"\nconfig = { mark = \"before\" }")),
        registry(),
    )
    .await;
    let stamp = || async {
        let mut res = app.client.get(app.url("/re/x")).send().await.unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        body["headers"]["x-stamp"][0].as_str().unwrap().to_string()
    };
    assert!(stamp().await.starts_with("before "));
    let applied = app
        .reloader
        .apply(settings_with(&route(
            "name = \"stamp\"\nconfig = { mark = \"after\" }",
        )))
        .await;
    assert!(
        matches!(applied, ReloadOutcome::Applied { .. }),
        "{applied:?}"
    );
    assert!(stamp().await.starts_with("after "));
    match app
        .reloader
        .apply(settings_with(&route("name = \"gone\"")))
        .await
    {
        ReloadOutcome::Rejected(error) => assert_eq!(error.key, "routes[0].filters[0]", "{error}"),
        other => panic!("{other:?}"),
    }
    assert!(
        stamp().await.starts_with("after "),
        "the running table stayed"
    );
    app.shutdown.shutdown().await;
}
