//! Browser sessions (Intercom as the SPA's backend-for-frontend), against the real
//! oidc-provider: the code flow with PKCE through the AS's login page, session routes
//! that reach the API with the internal JWT (never the cookie), CSRF, open redirects,
//! refresh under concurrency with rotating refresh tokens, logout and back-channel
//! logout across replicas that share Redis.

use std::time::Duration;

use crate::helpers::*;

/// Intercom replicas logging browsers in at one AS; the first is where the AS sends
/// browsers back (`base`). Keep every field bound: dropping one stops that process.
struct Bff {
    auth: TestAuthServer,
    upstream: TestUpstream,
    _apps: Vec<TestApp>,
    bases: Vec<String>,
    _redis: Option<TestRedis>,
    _cluster: Option<TestRedisCluster>,
    _secrets: tempfile::TempDir,
}

impl Bff {
    fn base(&self) -> &str {
        &self.bases[0]
    }
}

/// `replicas` Intercoms (sharing Redis when more than one), the AS started with
/// `as_env`, `extra` lines in `[session]`.
async fn start_bff(replicas: usize, as_env: &[(&str, &str)], extra: &str) -> Bff {
    start_bff_at("127.0.0.1", replicas, as_env, extra).await
}

/// [`start_bff`] with browsers sent to `host` (`localhost` for Chromium, which keeps
/// `Secure` cookies from `http://localhost`).
async fn start_bff_at(host: &str, replicas: usize, as_env: &[(&str, &str)], extra: &str) -> Bff {
    let redis = (replicas > 1).then(TestRedis::start);
    start_bff_sharing(host, replicas, as_env, extra, redis, None, &[]).await
}

/// [`start_bff`] with the replicas' sessions in a Redis Cluster.
async fn start_bff_on_cluster(replicas: usize, as_env: &[(&str, &str)], extra: &str) -> Bff {
    let cluster = Some(TestRedisCluster::start());
    start_bff_sharing("127.0.0.1", replicas, as_env, extra, None, cluster, &[]).await
}

async fn start_bff_sharing(
    host: &str,
    replicas: usize,
    as_env: &[(&str, &str)],
    extra: &str,
    redis: Option<TestRedis>,
    cluster: Option<TestRedisCluster>,
    secrets_extra: &[(&str, &str)],
) -> Bff {
    let ports: Vec<u16> = (0..replicas).map(|_| announced_port()).collect();
    let bases: Vec<String> = ports.iter().map(|p| format!("http://{host}:{p}")).collect();
    let mut env = vec![("BFF_BASE", bases[0].as_str())];
    env.extend_from_slice(as_env);
    let auth = TestAuthServer::start_with_env(&env).await;
    let upstream = TestUpstream::start("spa-api");
    let (dir, secrets) = secrets_file();
    for (name, value) in secrets_extra {
        let line = format!("{name} = {}\n", toml::Value::String(value.to_string()));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&secrets)
            .unwrap();
        std::io::Write::write_all(&mut file, line.as_bytes()).unwrap();
    }
    let store: Option<&dyn RedisUnderTest> = match (&redis, &cluster) {
        (Some(redis), _) => Some(redis),
        (None, Some(cluster)) => Some(cluster),
        (None, None) => None,
    };
    let shared = if store.is_some() {
        r#"
            store = "redis"
        "#
    } else {
        ""
    };
    let redis_sections = store.map(|r| redis_config(r, "")).unwrap_or_default();
    let config = format!(
        r#"
            {}[session]
            redirect_uri = "{base}/auth/callback"
            encryption_key = "file:session_key"
            scopes = ["openid", "profile", "email", "offline_access"]
            post_logout_redirect_uri = "{base}/"
            {shared}{extra}
            {redis_sections}
            [[routes]]
            name = "spa-api"
            prefix = "/api"
            upstreams = ["{up}"]
            auth = "session"
            audience = "spa-api"
            [[routes]]
            name = "spa-pages"
            prefix = "/app"
            upstreams = ["{up}"]
            auth = "session"
            on_missing = "login"
            [[routes]]
            name = "spa-mail"
            prefix = "/mail"
            upstreams = ["{up}"]
            auth = "session"
            required_claims = {{ email = ["kate@example.test"] }}
        "#,
        auth_config(&auth, &secrets, ""),
        base = bases[0],
        up = upstream.url(),
    );
    let mut apps = Vec::new();
    for port in &ports {
        let mut settings = settings_with(&config);
        settings.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
        apps.push(spawn_app_with(settings).await);
    }
    Bff {
        auth,
        upstream,
        _apps: apps,
        bases,
        _redis: redis,
        _cluster: cluster,
        _secrets: dir,
    }
}

/// Logs `user` in through the AS's login page, starting at `/auth/login?return_to=`;
/// the page the browser lands on.
async fn log_in(browser: &mut Browser, base: &str, user: &str, return_to: &str) -> Page {
    let query = serde_urlencoded::to_string([("return_to", return_to)]).unwrap();
    let login_page = browser
        .navigate(&format!("{base}/auth/login?{query}"))
        .await;
    assert_eq!(
        login_page.status, 200,
        "{} at {}",
        login_page.body, login_page.url
    );
    browser.submit_login(login_page, user).await
}

const SESSION_COOKIE: &str = "__Host-intercom-session";

/// Logs `user` in on the first replica of `bff`; the browser, its session cookie (a
/// `Cookie` header value) and a URL on the second replica, which serves the session.
async fn logged_in_across(bff: &Bff, user: &str) -> (Browser, String, String) {
    let base = bff.base().to_string();
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, user, "/app/").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let cookie = format!(
        "{SESSION_COOKIE}={}",
        browser.cookie(&base, SESSION_COOKIE).unwrap()
    );
    let on_second = format!("{}/api/me", bff.bases[1]);
    let page = call(
        &mut Browser::default(),
        "GET",
        &on_second,
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(
        page.status, 200,
        "the second replica serves the session: {}",
        page.body
    );
    (browser, cookie, on_second)
}

async fn call(browser: &mut Browser, method: &str, url: &str, headers: &[(&str, &str)]) -> Page {
    browser.send(method, url, headers, None).await
}

fn problem_type(page: &Page) -> String {
    problem_field(page, "type")
}

fn problem_detail(page: &Page) -> String {
    problem_field(page, "detail")
}

fn problem_field(page: &Page, field: &str) -> String {
    let body: serde_json::Value = serde_json::from_str(&page.body).unwrap_or_default();
    body[field].as_str().unwrap_or_default().to_string()
}

#[actix_web::test]
async fn a_browser_logs_in_calls_the_api_and_logs_out() {
    let bff = start_bff(1, &[], "").await;
    let base = bff.base().to_string();
    let mut browser = Browser::default();

    let landed = log_in(&mut browser, &base, "alice", "/app/home?tab=1").await;
    assert_eq!(landed.status, 200, "{} at {}", landed.body, landed.url);
    let seen: serde_json::Value = serde_json::from_str(&landed.body).unwrap();
    assert_eq!(seen["path"], "/app/home");
    assert_eq!(seen["query"], "tab=1");
    // The upstream gets the internal JWT and identity headers, never Intercom's cookies.
    assert_eq!(seen["headers"]["x-user-id"][0], "alice");
    let internal = bearer_of(&seen);
    let header = josekit::jwt::decode_header(&internal).unwrap();
    assert_eq!(header.claim("typ").unwrap(), "at+jwt");
    assert!(seen["headers"].get("cookie").is_none(), "{seen}");

    // The cookies as set: the session's and the login's own, each __Host-, HttpOnly,
    // Secure, SameSite=Lax, Path=/, no Domain.
    let ours: Vec<&String> = browser
        .set_cookie_log
        .iter()
        .filter(|(at, _)| base.ends_with(at.as_str()))
        .map(|(_, line)| line)
        .collect();
    assert!(ours.iter().any(|l| l.starts_with("__Host-intercom-flow-")));
    let session_line = ours
        .iter()
        .find(|l| l.starts_with(&format!("{SESSION_COOKIE}=")) && !l.contains("Max-Age=0"))
        .expect("a session cookie");
    for line in &ours {
        let parsed = cookie::Cookie::parse(line.as_str()).unwrap();
        assert_eq!(parsed.http_only(), Some(true), "{line}");
        assert_eq!(parsed.secure(), Some(true), "{line}");
        assert_eq!(parsed.same_site(), Some(cookie::SameSite::Lax), "{line}");
        assert_eq!(parsed.path(), Some("/"), "{line}");
        assert_eq!(parsed.domain(), None, "{line}");
    }
    let session_id = cookie::Cookie::parse(session_line.as_str())
        .unwrap()
        .value()
        .to_string();
    // The flow's cookie is gone once the login completed.
    let names = browser.cookie_names(&base);
    assert!(
        names
            .iter()
            .all(|k| !k.starts_with("__Host-intercom-flow-")),
        "{names:?}"
    );

    // What the SPA may read: claims and the remaining lifetime, no token.
    let user = call(&mut browser, "GET", &format!("{base}/auth/user"), &[]).await;
    assert_eq!(user.status, 200);
    let view: serde_json::Value = serde_json::from_str(&user.body).unwrap();
    assert_eq!(view["claims"]["sub"], "alice");
    assert_eq!(view["claims"]["email"], "alice@example.test");
    assert!(view["expires_in"].as_u64().unwrap() > 0);
    assert!(
        !user.body.contains("eyJ"),
        "a JWT in /auth/user: {}",
        user.body
    );
    for page in [&user, &landed] {
        for (name, value) in page.headers.iter() {
            assert!(
                !value.to_str().unwrap_or("").contains("eyJ"),
                "{name} carries a JWT"
            );
        }
    }
    let status = call(&mut browser, "GET", &format!("{base}/auth/session"), &[]).await;
    assert_eq!(status.status, 200);

    // CSRF: a state-changing call needs the header and an allowed Origin.
    let api = format!("{base}/api/orders");
    let no_header = call(&mut browser, "POST", &api, &[("origin", &base)]).await;
    assert_eq!(
        (no_header.status, problem_type(&no_header).as_str()),
        (403, "urn:intercom:problem:csrf-refused")
    );
    let foreign = call(
        &mut browser,
        "POST",
        &api,
        &[("x-csrf", "1"), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(foreign.status, 403);
    let no_origin = call(&mut browser, "POST", &api, &[("x-csrf", "1")]).await;
    assert_eq!(no_origin.status, 403);
    let hits = bff.upstream.hits();
    let allowed = call(
        &mut browser,
        "POST",
        &api,
        &[("x-csrf", "1"), ("origin", &base)],
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(
        bff.upstream.hits(),
        hits + 1,
        "only the allowed call reached the API"
    );

    // Without a session: an API call gets 401 problem+json, a page a login redirect.
    let mut stranger = Browser::default();
    let denied = call(&mut stranger, "GET", &api, &[]).await;
    assert_eq!(
        (denied.status, problem_type(&denied).as_str()),
        (401, "urn:intercom:problem:session-required")
    );
    let page = call(&mut stranger, "GET", &format!("{base}/app/inbox?x=1"), &[]).await;
    assert_eq!(page.status, 302);
    assert_eq!(
        page.headers.get("location").unwrap(),
        "/auth/login?return_to=%2Fapp%2Finbox%3Fx%3D1"
    );
    // A made-up session id is no session.
    let forged = call(
        &mut stranger,
        "GET",
        &api,
        &[("cookie", &format!("{SESSION_COOKIE}=forged"))],
    )
    .await;
    assert_eq!(forged.status, 401);

    // Logout: CSRF-protected, the session gone server side, the refresh token revoked,
    // the browser sent to the AS's end_session with id_token_hint.
    let refused = call(&mut browser, "POST", &format!("{base}/auth/logout"), &[]).await;
    assert_eq!(refused.status, 403);
    let revocations = bff.auth.stats().await["revocation"].as_u64().unwrap();
    let out = call(
        &mut browser,
        "POST",
        &format!("{base}/auth/logout"),
        &[("x-csrf", "1"), ("origin", &base)],
    )
    .await;
    assert_eq!(out.status, 303, "{}", out.body);
    let location = out.headers.get("location").unwrap().to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/session/end", bff.auth.issuer)),
        "{location}"
    );
    assert!(location.contains("id_token_hint="), "{location}");
    assert!(location.contains("post_logout_redirect_uri="), "{location}");
    assert_eq!(
        bff.auth.stats().await["revocation"].as_u64().unwrap(),
        revocations + 1
    );
    assert!(
        browser.cookie(&base, SESSION_COOKIE).is_none(),
        "the cookie was not cleared"
    );
    let replayed = call(
        &mut stranger,
        "GET",
        &api,
        &[("cookie", &format!("{SESSION_COOKIE}={session_id}"))],
    )
    .await;
    assert_eq!(replayed.status, 401, "the old cookie still opens a session");
}

#[actix_web::test]
async fn logins_refuse_open_redirects_and_swapped_or_replayed_states() {
    let bff = start_bff(1, &[], "").await;
    let base = bff.base().to_string();
    let mut browser = Browser::default();
    for evil in [
        "//evil.example",
        "/\\evil.example",
        "https:evil.example",
        "%2f%2fevil.example",
        "/%5cevil.example",
        "https://app.example@evil.example/",
        "/\tevil",
        "javascript:alert(1)",
        "https://evil.example/",
    ] {
        let query = serde_urlencoded::to_string([("return_to", evil)]).unwrap();
        let page = call(
            &mut browser,
            "GET",
            &format!("{base}/auth/login?{query}"),
            &[],
        )
        .await;
        assert_eq!(page.status, 400, "{evil:?}");
        assert_eq!(problem_type(&page), "urn:intercom:problem:login-failed");
        assert!(page.headers.get("location").is_none());
    }

    // Two logins in two tabs of one browser both complete, each where it was headed.
    let query = |to: &str| serde_urlencoded::to_string([("return_to", to)]).unwrap();
    let first = browser
        .navigate(&format!("{base}/auth/login?{}", query("/app/one")))
        .await;
    let second = browser
        .navigate(&format!("{base}/auth/login?{}", query("/app/two")))
        .await;
    let landed_second = browser.submit_login(second, "bob").await;
    let landed_first = browser.submit_login(first, "bob").await;
    for (page, path) in [(&landed_first, "/app/one"), (&landed_second, "/app/two")] {
        assert_eq!(page.status, 200, "{}", page.body);
        let seen: serde_json::Value = serde_json::from_str(&page.body).unwrap();
        assert_eq!(seen["path"], path);
    }

    // A callback whose state this browser never started, or started elsewhere.
    let mut other = Browser::default();
    let start = call(&mut other, "GET", &format!("{base}/auth/login"), &[]).await;
    let authorize = url::Url::parse(&next_url(&start)).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let swapped = call(
        &mut browser,
        "GET",
        &format!("{base}/auth/callback?code=x&state={state}"),
        &[],
    )
    .await;
    assert_eq!(
        (swapped.status, problem_type(&swapped).as_str()),
        (400, "urn:intercom:problem:login-failed")
    );
    let unknown = call(
        &mut other,
        "GET",
        &format!("{base}/auth/callback?code=x&state=never-issued"),
        &[],
    )
    .await;
    assert_eq!(unknown.status, 400);
    // A page navigation gets a page that says so (and a way back), with the same status.
    let page = call(
        &mut other,
        "GET",
        &format!("{base}/auth/callback?code=x&state=never-issued%3Cscript%3E"),
        &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
    )
    .await;
    assert_eq!(page.status, 400, "{}", page.body);
    let kind = page.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(kind.starts_with("text/html"), "{kind} {}", page.body);
    assert!(page.body.contains("<h1>Login failed</h1>"), "{}", page.body);
    assert!(
        page.body.contains(problem_detail(&unknown).as_str()),
        "{}",
        page.body
    );
    assert!(page.body.contains("href=\"/auth/login\""));
    assert!(!page.body.contains("<script") && !page.body.contains("never-issued"));
    assert_eq!(page.headers.get("cache-control").unwrap(), "no-store");

    // A completed login's callback, replayed: its login cookie is gone, so is the code.
    let mut replayer = Browser::default();
    let page = replayer.navigate(&format!("{base}/auth/login")).await;
    let mut answer = replayer
        .send(
            "POST",
            &page.url,
            &[],
            Some(&[("prompt", "login"), ("login", "carol"), ("password", "pw")]),
        )
        .await;
    while !answer
        .headers
        .get("location")
        .is_some_and(|l| l.to_str().unwrap().contains("/auth/callback"))
    {
        let next = next_url(&answer);
        answer = replayer.send("GET", &next, &[], None).await;
        assert!((300..400).contains(&answer.status), "{}", answer.body);
    }
    let callback = next_url(&answer);
    let done = replayer.send("GET", &callback, &[], None).await;
    assert_eq!(done.status, 302);
    let again = replayer.send("GET", &callback, &[], None).await;
    assert_eq!(
        (again.status, problem_type(&again).as_str()),
        (400, "urn:intercom:problem:login-failed")
    );
    assert!(again
        .set_cookies
        .iter()
        .all(|c| !c.starts_with(SESSION_COOKIE)));
}

#[actix_web::test]
async fn concurrent_calls_while_the_token_expires_refresh_it_once() {
    refresh_once(start_bff(2, &[("TOKEN_TTL", "30")], REFRESH_SOON).await).await;
}

#[actix_web::test]
async fn on_a_redis_cluster_concurrent_calls_while_the_token_expires_refresh_it_once() {
    refresh_once(start_bff_on_cluster(2, &[("TOKEN_TTL", "30")], REFRESH_SOON).await).await;
}

/// Access tokens live 30 s (`TOKEN_TTL`) and are refreshed in their last 27 s: due 3 s
/// after login.
const REFRESH_SOON: &str = r#"
    refresh_ahead = "27s"
"#;

/// Logs `user` in at the first replica: the session cookie (`name=value`) and when the
/// login ended.
async fn session_of(bff: &Bff, user: &str) -> (String, std::time::Instant) {
    let base = bff.base().to_string();
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, user, "/app/").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let logged_in = std::time::Instant::now();
    let cookie = format!(
        "{SESSION_COOKIE}={}",
        browser.cookie(&base, SESSION_COOKIE).unwrap()
    );
    (cookie, logged_in)
}

/// `GET url` with the session cookie: the status and the body.
async fn get_with_cookie(url: String, cookie: String) -> (u16, String) {
    let mut res = test_client()
        .get(url)
        .insert_header(("cookie", cookie))
        .send()
        .await
        .unwrap();
    let body = res.body().await.unwrap_or_default();
    (
        res.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn refresh_once(bff: Bff) {
    let (cookie, logged_in) = session_of(&bff, "dana").await;
    let before = bff.auth.stats().await;
    // Wall-clock time must pass for the token to come due; nothing here depends on
    // how fast the machine is.
    actix_web::rt::time::sleep(Duration::from_secs(4).saturating_sub(logged_in.elapsed())).await;

    // 50 calls at once, split over both replicas (they share the session in Redis).
    let calls = (0..50).map(|i| {
        get_with_cookie(
            format!("{}/api/burst/{i}", bff.bases[i % 2]),
            cookie.clone(),
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let after = bff.auth.stats().await;
    let count = |stats: &serde_json::Value, name: &str| stats[name].as_u64().unwrap();
    assert_eq!(
        count(&after, "refresh") - count(&before, "refresh"),
        1,
        "exactly one refresh"
    );
    assert_eq!(
        count(&after, "refresh_refused"),
        count(&before, "refresh_refused"),
        "no refresh token presented twice"
    );

    // The next burst after the rotated token is due again: one more refresh, with the
    // rotated refresh token (the AS refuses the old one).
    actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    let again = get_with_cookie(format!("{}/api/again", bff.bases[1]), cookie.clone()).await;
    assert_eq!(again.0, 200, "{}", again.1);
    let last = bff.auth.stats().await;
    assert_eq!(count(&last, "refresh") - count(&before, "refresh"), 2);
    assert_eq!(
        count(&last, "refresh_refused"),
        count(&before, "refresh_refused")
    );
}

/// A refresh lease of 1 s, renewed every third of it.
const SHORT_LEASE: &str = r#"
    refresh_ahead = "27s"
    refresh_lease = "1s"
"#;

#[actix_web::test]
async fn a_refresh_slower_than_its_lease_keeps_the_lease_and_refreshes_once() {
    let bff = start_bff(2, &[("TOKEN_TTL", "30")], SHORT_LEASE).await;
    let (cookie, logged_in) = session_of(&bff, "erin").await;
    // The AS now takes 3 s per token request, three terms of the 1 s lease.
    bff.auth.hooks(&[("token_delay_ms", "3000")]).await;
    let renewed = || {
        metric(
            &process_metrics(),
            "intercom_session_lease_renewals_total{outcome=\"renewed\"",
        )
    };
    let (before, renewals) = (bff.auth.stats().await, renewed());
    let count = |stats: &serde_json::Value, name: &str| stats[name].as_u64().unwrap();
    actix_web::rt::time::sleep(Duration::from_secs(4).saturating_sub(logged_in.elapsed())).await;

    let get = |url: String| get_with_cookie(url, cookie.clone());
    // The first call takes the lease and asks the AS.
    let first = actix_web::rt::spawn(get(format!("{}/api/slow/first", bff.bases[0])));
    assert!(
        eventually(Duration::from_secs(10), async || {
            count(&bff.auth.stats().await, "token") > count(&before, "token")
        })
        .await,
        "the refresh reached the AS"
    );
    // Wall-clock time must pass the lease's first term while the AS holds the refresh:
    // without renewal the other replica would now take the lapsed lease and present
    // the same refresh token again (the rotating AS refuses it and ends the grant).
    actix_web::rt::time::sleep(Duration::from_millis(1600)).await;
    let calls = (0..20).map(|i| get(format!("{}/api/slow/{i}", bff.bases[i % 2])));
    let answers = futures_util::future::join_all(calls).await;
    let first = first.await.unwrap();
    assert_eq!(first.0, 200, "{}", first.1);
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let after = bff.auth.stats().await;
    assert_eq!(count(&after, "refresh") - count(&before, "refresh"), 1);
    assert_eq!(
        count(&after, "refresh_refused"),
        count(&before, "refresh_refused"),
        "no refresh token presented twice"
    );
    assert!(
        renewed() >= renewals + 2.0,
        "the lease was renewed while the AS answered"
    );
    // The session goes on with the rotated token.
    bff.auth.hooks(&[("token_delay_ms", "")]).await;
    let page = call(
        &mut Browser::default(),
        "GET",
        &format!("{}/api/after", bff.bases[1]),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
}

/// A fresh ES256 key pair under `kid`: the private JWK (Intercom's stored key) and the
/// public JWK set (what the AS holds for the client).
fn client_key_pair(kid: &str) -> (String, String) {
    let pair = josekit::jws::ES256.generate_key_pair().unwrap();
    let mut private = pair.to_jwk_key_pair();
    private.set_key_id(kid);
    private.set_algorithm("ES256");
    let mut public = pair.to_jwk_public_key();
    public.set_key_id(kid);
    public.set_algorithm("ES256");
    let jwks = serde_json::json!({ "keys": [serde_json::to_value(public.as_ref()).unwrap()] });
    (private.to_string(), jwks.to_string())
}

const PRIVATE_KEY_JWT: &str = r#"
    client_id = "intercom-pkjwt"
    client_auth = "private_key_jwt"
    client_key = "file:bff_client_key"
    refresh_ahead = "27s"
"#;

#[actix_web::test]
async fn a_client_with_private_key_jwt_logs_in_refreshes_and_revokes_without_a_secret() {
    let (private, jwks) = client_key_pair("bff-1");
    let as_env = [("BFF_CLIENT_JWKS", jwks.as_str()), ("TOKEN_TTL", "30")];
    let secrets = [("bff_client_key", private.as_str())];
    let bff = start_bff_sharing(
        "127.0.0.1",
        1,
        &as_env,
        PRIVATE_KEY_JWT,
        None,
        None,
        &secrets,
    )
    .await;
    let base = bff.base().to_string();
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "pia", "/app/").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let logged_in = std::time::Instant::now();
    let api = format!("{base}/api/me");
    let page = call(&mut browser, "GET", &api, &[]).await;
    assert_eq!(page.status, 200, "{}", page.body);

    // The access token comes due (it lives 30 s, refreshed in its last 27): the
    // refresh authenticates with a new assertion.
    let before = bff.auth.stats().await;
    let count = |stats: &serde_json::Value, name: &str| stats[name].as_u64().unwrap();
    actix_web::rt::time::sleep(Duration::from_secs(4).saturating_sub(logged_in.elapsed())).await;
    let page = call(&mut browser, "GET", &api, &[]).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let after = bff.auth.stats().await;
    assert_eq!(count(&after, "refresh") - count(&before, "refresh"), 1);

    // Logout revokes the refresh token, as the same client, with an assertion the AS
    // accepts (it answers 401 to a client that fails to authenticate).
    let out = call(
        &mut browser,
        "POST",
        &format!("{base}/auth/logout"),
        &[("x-csrf", "1"), ("origin", &base)],
    )
    .await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(
        eventually(Duration::from_secs(10), async || {
            count(&bff.auth.stats().await, "revocation_ok") == count(&after, "revocation_ok") + 1
        })
        .await,
        "the refresh token was revoked: {}",
        bff.auth.stats().await
    );
}

#[actix_web::test]
async fn a_private_key_the_as_does_not_hold_fails_the_login_and_a_malformed_one_the_start() {
    // The AS holds another key under the same kid.
    let (private, _) = client_key_pair("bff-1");
    let (_, jwks) = client_key_pair("bff-1");
    let as_env = [("BFF_CLIENT_JWKS", jwks.as_str())];
    let secrets = [("bff_client_key", private.as_str())];
    let bff = start_bff_sharing(
        "127.0.0.1",
        1,
        &as_env,
        PRIVATE_KEY_JWT,
        None,
        None,
        &secrets,
    )
    .await;
    let base = bff.base().to_string();
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "pia", "/app/").await;
    assert_eq!(
        (landed.status, problem_type(&landed).as_str()),
        (400, "urn:intercom:problem:login-failed"),
        "{}",
        landed.body
    );
    assert!(
        problem_detail(&landed).contains("invalid_client"),
        "{}",
        landed.body
    );
    assert!(browser.cookie(&base, SESSION_COOKIE).is_none());

    // A stored key that is no private JWK stops the start, naming the key.
    let (dir, secrets) = secrets_file();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&secrets)
        .unwrap();
    std::io::Write::write_all(&mut file, b"bff_client_key = \"not a key\"\n").unwrap();
    let config = format!(
        r#"
            {}[session]
            redirect_uri = "{base}/auth/callback"
            encryption_key = "file:session_key"
            {PRIVATE_KEY_JWT}
        "#,
        auth_config(&bff.auth, &secrets, ""),
    );
    let error = match intercom::startup::Application::build(settings_with(&config)).await {
        Ok(_) => panic!("started with a malformed client key"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("session.client_key"), "{error}");
    drop(dir);
}

#[actix_web::test]
async fn with_a_double_submit_token_state_changing_calls_must_echo_the_sessions_token() {
    let bff = start_bff(1, &[], "csrf_token = true").await;
    let base = bff.base().to_string();
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "tess", "/app/").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let token = browser
        .cookie(&base, "__Host-intercom-csrf")
        .expect("the CSRF cookie");
    assert_eq!(token.len(), 64, "{token}");
    let set = browser
        .set_cookie_log
        .iter()
        .map(|(_, c)| c)
        .find(|c| c.starts_with("__Host-intercom-csrf="))
        .cloned()
        .unwrap_or_default();
    assert!(
        !set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure"),
        "{set}"
    );
    // The SPA may also read it from /auth/user.
    let user = call(&mut browser, "GET", &format!("{base}/auth/user"), &[]).await;
    let seen: serde_json::Value = serde_json::from_str(&user.body).unwrap();
    assert_eq!(seen["csrf_token"], token.as_str());

    let api = format!("{base}/api/orders");
    for (csrf, why) in [
        ("1".to_string(), "any value"),
        ("0".repeat(64), "a made-up token"),
        (String::new(), "an empty one"),
    ] {
        let headers = [("x-csrf", csrf.as_str()), ("origin", base.as_str())];
        let page = call(&mut browser, "POST", &api, &headers).await;
        assert_eq!(page.status, 403, "{why}: {}", page.body);
        assert_eq!(
            problem_type(&page),
            "urn:intercom:problem:csrf-refused",
            "{why}"
        );
        assert!(
            problem_detail(&page).contains("CSRF token"),
            "{why}: {}",
            page.body
        );
    }
    // Another session's token opens nothing here.
    let mut other = Browser::default();
    log_in(&mut other, &base, "uma", "/app/").await;
    let theirs = other.cookie(&base, "__Host-intercom-csrf").unwrap();
    assert_ne!(theirs, token);
    let page = call(
        &mut browser,
        "POST",
        &api,
        &[("x-csrf", &theirs), ("origin", &base)],
    )
    .await;
    assert_eq!(page.status, 403, "{}", page.body);

    // The session's own token passes; the upstream sees neither Intercom cookie.
    let page = call(
        &mut browser,
        "POST",
        &api,
        &[("x-csrf", &token), ("origin", &base)],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let seen: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    assert!(
        seen["headers"].get("cookie").is_none(),
        "{}",
        seen["headers"]
    );
    // GET needs none of it.
    let page = call(&mut browser, "GET", &api, &[]).await;
    assert_eq!(page.status, 200);

    // Logout is state-changing too; it clears both cookies.
    let logout = format!("{base}/auth/logout");
    let refused = call(
        &mut browser,
        "POST",
        &logout,
        &[("x-csrf", "1"), ("origin", &base)],
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let out = call(
        &mut browser,
        "POST",
        &logout,
        &[("x-csrf", &token), ("origin", &base)],
    )
    .await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(browser.cookie(&base, SESSION_COOKIE).is_none());
    assert!(browser.cookie(&base, "__Host-intercom-csrf").is_none());
}

#[actix_web::test]
async fn callbacks_refuse_id_tokens_for_another_client_or_with_a_wrong_nonce() {
    let bff = start_bff(1, &[("SIGNING_KID", "as-key")], "").await;
    let base = bff.base().to_string();
    for fault in ["aud", "nonce", "iss", "expired"] {
        bff.auth.hooks(&[("id_token_fault", fault)]).await;
        let mut browser = Browser::default();
        let landed = log_in(&mut browser, &base, "quinn", "/app/").await;
        assert_eq!(
            (landed.status, problem_type(&landed).as_str()),
            (400, "urn:intercom:problem:login-failed"),
            "{fault}: {}",
            landed.body
        );
        assert!(
            problem_detail(&landed).contains("the ID token failed verification"),
            "{fault}: {}",
            landed.body
        );
        assert!(
            browser.cookie(&base, SESSION_COOKIE).is_none(),
            "{fault}: no session"
        );
    }
    // The same login with the AS's own ID token completes: the fault was the cause.
    bff.auth.hooks(&[("id_token_fault", "")]).await;
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "quinn", "/app/").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    assert!(browser.cookie(&base, SESSION_COOKIE).is_some());
}

#[actix_web::test]
async fn a_back_channel_logout_ends_the_session_on_every_replica() {
    back_channel_logout(start_bff(2, &[], "").await).await;
}

#[actix_web::test]
async fn on_a_redis_cluster_a_back_channel_logout_ends_the_session_on_every_replica() {
    back_channel_logout(start_bff_on_cluster(2, &[], "").await).await;
}

async fn back_channel_logout(bff: Bff) {
    let base = bff.base().to_string();
    let (mut browser, cookie, on_second) = logged_in_across(&bff, "erin").await;
    let mut stranger = Browser::default();

    // The user logs out at the AS itself (not through Intercom): the AS tells Intercom
    // on the back channel.
    let confirm = browser
        .navigate(&format!("{}/session/end", bff.auth.issuer))
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let xsrf = confirm
        .body
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the AS's logout form")
        .to_string();
    let done = browser
        .send(
            "POST",
            &format!("{}/session/end/confirm", bff.auth.issuer),
            &[],
            Some(&[("xsrf", &xsrf), ("logout", "yes")]),
        )
        .await;
    assert!(
        (200..400).contains(&done.status),
        "{} {}",
        done.status,
        done.body
    );
    assert_eq!(bff.auth.stats().await["backchannel_logout"], 1);
    let ended = eventually(Duration::from_secs(10), async || {
        let page = call(&mut stranger, "GET", &on_second, &[("cookie", &cookie)]).await;
        page.status == 401
    })
    .await;
    assert!(ended, "the second replica still serves the session");
    let first = call(
        &mut stranger,
        "GET",
        &format!("{base}/api/me"),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(first.status, 401);
}

/// Follows redirects from `url` until one points at a fragment (a silent login's answer
/// to the SPA) or an answer is not a redirect; that answer.
async fn until_fragment(browser: &mut Browser, url: &str) -> Page {
    let mut page = browser.send("GET", url, &[], None).await;
    for _ in 0..20 {
        let location = page
            .headers
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        match location {
            Some(l) if !l.contains('#') => {
                let next = next_url(&page);
                page = browser.send("GET", &next, &[], None).await;
            }
            _ => return page,
        }
    }
    page
}

#[actix_web::test]
async fn silent_logins_answer_the_spa_and_sessions_time_out() {
    let bff = start_bff(
        1,
        &[],
        r#"
        idle_timeout = "3s"
        absolute_timeout = "6s"
    "#,
    )
    .await;
    let base = bff.base().to_string();

    // No session at the AS: the SPA gets a clear answer in the fragment, no error page.
    let mut fresh = Browser::default();
    let answer = until_fragment(
        &mut fresh,
        &format!("{base}/auth/login?prompt=none&return_to=/app/x"),
    )
    .await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    assert_eq!(
        answer.headers.get("location").unwrap(),
        "/app/x#intercom_login=login_required"
    );
    assert!(fresh.cookie(&base, SESSION_COOKIE).is_none());

    // With a session at the AS, a silent login completes without a page.
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "frank", "/app/").await;
    assert_eq!(landed.status, 200);
    let first = browser.cookie(&base, SESSION_COOKIE).unwrap();
    let silent = browser
        .navigate(&format!(
            "{base}/auth/login?prompt=none&return_to=/app/silent"
        ))
        .await;
    assert_eq!(silent.status, 200, "{} at {}", silent.body, silent.url);
    let seen: serde_json::Value = serde_json::from_str(&silent.body).unwrap();
    assert_eq!(seen["path"], "/app/silent");
    // A new session id at every login: no fixation.
    let second = browser.cookie(&base, SESSION_COOKIE).unwrap();
    assert_ne!(first, second);

    // Idle: unused for longer than idle_timeout, the session is over.
    let cookie = format!("{SESSION_COOKIE}={first}");
    actix_web::rt::time::sleep(Duration::from_secs(4)).await;
    let idle = call(
        &mut Browser::default(),
        "GET",
        &format!("{base}/api/x"),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(idle.status, 401);

    // Absolute: used every half second, it still ends absolute_timeout after login.
    let mut browser = Browser::default();
    // Timed from before the login began: the session cannot end sooner than 5 s after
    // it (6 s after its creation, counted in whole seconds).
    let logged_in = std::time::Instant::now();
    let landed = log_in(&mut browser, &base, "grace", "/app/").await;
    assert_eq!(landed.status, 200);
    let cookie = format!(
        "{SESSION_COOKIE}={}",
        browser.cookie(&base, SESSION_COOKIE).unwrap()
    );
    let mut ended_after = None;
    while logged_in.elapsed() < Duration::from_secs(30) {
        let page = call(
            &mut Browser::default(),
            "GET",
            &format!("{base}/api/x"),
            &[("cookie", &cookie)],
        )
        .await;
        if page.status == 401 {
            ended_after = Some(logged_in.elapsed());
            break;
        }
        assert_eq!(page.status, 200, "{}", page.body);
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    }
    let ended_after = ended_after.expect("the session outlived its absolute timeout");

    // A script logs out with fetch: it gets the AS's logout URL to go to, as JSON.
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "heidi", "/app/").await;
    assert_eq!(landed.status, 200);
    let out = call(
        &mut browser,
        "POST",
        &format!("{base}/auth/logout"),
        &[
            ("x-csrf", "1"),
            ("origin", &base),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(out.status, 200, "{}", out.body);
    let answer: serde_json::Value = serde_json::from_str(&out.body).unwrap();
    let url = answer["end_session_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/session/end?", bff.auth.issuer)),
        "{url}"
    );
    let after = call(&mut browser, "GET", &format!("{base}/auth/session"), &[]).await;
    assert_eq!(after.status, 401);
    assert!(
        ended_after >= Duration::from_secs(5),
        "ended after {ended_after:?}, before its absolute timeout"
    );
}

#[actix_web::test]
async fn in_chromium_the_login_leaves_no_token_the_page_can_read() {
    use fantoccini::Locator;
    let bff = start_bff_at("localhost", 1, &[], "").await;
    let base = bff.base().to_string();
    let chromium = TestChromium::start().await;
    let browser = &chromium.client;

    // A page navigation without a session goes to the AS's login page and back.
    browser.goto(&format!("{base}/app/quiet")).await.unwrap();
    let login = browser
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .unwrap();
    login.send_keys("ivan").await.unwrap();
    let password = browser
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap();
    password.send_keys("pw").await.unwrap();
    browser
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let landed = eventually(Duration::from_secs(30), async || {
        browser
            .current_url()
            .await
            .is_ok_and(|u| u.as_str() == format!("{base}/app/quiet"))
    })
    .await;
    assert!(
        landed,
        "not back on the page: {:?}",
        browser.current_url().await
    );
    assert!(browser.source().await.unwrap().contains("quiet"));

    // The cookie as Chromium stored it.
    let cookies = browser.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == SESSION_COOKIE)
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.secure(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Lax)");
    assert_eq!(session.path(), Some("/"));
    assert_eq!(session.domain(), Some("localhost"), "a host-only cookie");
    assert!(
        cookies
            .iter()
            .all(|c| !c.name().starts_with("__Host-intercom-flow-")),
        "the login's cookie outlived the login: {cookies:?}"
    );

    // Nothing the page's script can read holds a token.
    let readable = browser
        .execute(
            "return [document.cookie, localStorage.length, sessionStorage.length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(readable, serde_json::json!(["", 0, 0]));
    let fetch =
        |script: &'static str| async move { browser.execute_async(script, vec![]).await.unwrap() };
    let user = fetch(
        "const done = arguments[0]; fetch('/auth/user').then(async (r) => done([r.status, await r.text()]))",
    )
    .await;
    assert_eq!(user[0], 200);
    let text = user[1].as_str().unwrap();
    assert!(text.contains("ivan") && !text.contains("eyJ"), "{text}");

    // Same-origin calls with the CSRF header pass; a cross-site POST never reaches the API.
    let hits = bff.upstream.hits();
    let call = fetch(
        "const done = arguments[0]; fetch('/api/quiet', { method: 'POST', headers: { 'X-CSRF': '1' } }).then((r) => done(r.status))",
    )
    .await;
    assert_eq!(call, 200);
    assert_eq!(bff.upstream.hits(), hits + 1);
    browser
        .goto(&format!(
            "{}/.well-known/openid-configuration",
            bff.auth.issuer
        ))
        .await
        .unwrap();
    let script = format!(
        "const done = arguments[0]; Promise.allSettled([\
         fetch('{base}/api/quiet', {{ method: 'POST', mode: 'no-cors', credentials: 'include', body: 'x' }}),\
         fetch('{base}/api/quiet', {{ method: 'POST', credentials: 'include', headers: {{ 'X-CSRF': '1' }} }})\
         ]).then(() => done(true))"
    );
    browser.execute_async(&script, vec![]).await.unwrap();
    assert_eq!(
        bff.upstream.hits(),
        hits + 1,
        "a cross-site request reached the API"
    );

    // Logout from the page's script: the session is gone.
    browser.goto(&format!("{base}/app/quiet")).await.unwrap();
    let out = fetch(
        "const done = arguments[0]; fetch('/auth/logout', { method: 'POST', headers: { 'X-CSRF': '1', Accept: 'application/json' } })\
         .then(async (r) => { const j = await r.json(); const s = await fetch('/auth/session'); done([r.status, j.end_session_url.startsWith('http'), s.status]); })",
    )
    .await;
    assert_eq!(out, serde_json::json!([200, true, 401]));
    chromium.close().await;
}

/// Fills in and sends the AS's dev login form on the current page of `browser`.
async fn chromium_submit_login(browser: &fantoccini::Client, user: &str) {
    use fantoccini::Locator;
    let login = browser
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .unwrap();
    login.send_keys(user).await.unwrap();
    let password = browser
        .find(Locator::Css("input[name=password]"))
        .await
        .unwrap();
    password.send_keys("pw").await.unwrap();
    browser
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// True once `browser`'s current URL is `url` (polled, with a deadline).
async fn chromium_lands_on(browser: &fantoccini::Client, url: &str) -> bool {
    eventually(Duration::from_secs(30), async || {
        browser.current_url().await.is_ok_and(|u| u.as_str() == url)
    })
    .await
}

#[actix_web::test]
async fn in_chromium_two_tabs_log_in_at_once_and_the_as_logout_page_ends_both() {
    use fantoccini::Locator;
    let bff = start_bff_at("localhost", 1, &[], "").await;
    let base = bff.base().to_string();
    let chromium = TestChromium::start().await;
    let browser = &chromium.client;

    // Tab one starts a login and stops at the AS's login page.
    let first = browser.window().await.unwrap();
    browser
        .goto(&format!("{base}/auth/login?return_to=/app/one"))
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .unwrap();
    // Tab two starts its own, and completes it.
    let second = browser.new_window(true).await.unwrap().handle;
    browser.switch_to_window(second.clone()).await.unwrap();
    browser
        .goto(&format!("{base}/auth/login?return_to=/app/two"))
        .await
        .unwrap();
    chromium_submit_login(browser, "wendy").await;
    assert!(
        chromium_lands_on(browser, &format!("{base}/app/two")).await,
        "tab two: {:?}",
        browser.current_url().await
    );
    // Tab one's login, begun first, completes after: its state was its own.
    browser.switch_to_window(first.clone()).await.unwrap();
    chromium_submit_login(browser, "wendy").await;
    assert!(
        chromium_lands_on(browser, &format!("{base}/app/one")).await,
        "tab one: {:?} {}",
        browser.current_url().await,
        browser.source().await.unwrap_or_default()
    );
    assert!(browser.source().await.unwrap().contains("/app/one"));
    let cookies = browser.get_all_cookies().await.unwrap();
    assert!(
        cookies
            .iter()
            .all(|c| !c.name().starts_with("__Host-intercom-flow-")),
        "a login's cookie outlived its login: {cookies:?}"
    );

    // Logout as an SPA does it: POST /auth/logout, then to the AS's logout page, whose
    // "Yes, sign me out" ends the AS's session and comes back to post_logout_redirect_uri.
    let fetched = browser
        .execute_async(
            "const done = arguments[0]; fetch('/auth/logout', { method: 'POST', headers: { 'X-CSRF': '1', Accept: 'application/json' } })\
             .then(async (r) => done((await r.json()).end_session_url))",
            vec![],
        )
        .await
        .unwrap();
    let end_session = fetched.as_str().unwrap().to_string();
    assert!(end_session.starts_with(&bff.auth.issuer), "{end_session}");
    browser.goto(&end_session).await.unwrap();
    browser
        .wait()
        .for_element(Locator::Css("button[name=logout][value=yes]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(
        chromium_lands_on(browser, &format!("{base}/")).await,
        "after the AS's logout: {:?}",
        browser.current_url().await
    );
    // The AS told Intercom (back-channel), which ends the other login's session too
    // (its cookie was overwritten by the later login, but it lived on server side).
    assert!(
        eventually(Duration::from_secs(10), async || {
            bff.auth.stats().await["backchannel_logout"].as_u64() >= Some(1)
        })
        .await,
        "no back-channel logout: {}",
        bff.auth.stats().await
    );
    // Both tabs are logged out, here and at the AS: tab two's next page asks for a login
    // again (the AS has no session to log it in silently).
    browser.switch_to_window(second).await.unwrap();
    browser.goto(&format!("{base}/app/two")).await.unwrap();
    browser
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("the AS's login page again");
    chromium.close().await;
}

#[actix_web::test]
async fn a_logout_on_one_replica_ends_the_session_another_holds_in_memory() {
    let bff = start_bff(
        2,
        &[],
        r#"
        memory_ttl = "60s"
    "#,
    )
    .await;
    let base = bff.base().to_string();
    // The second replica reads the session and keeps it (for a minute).
    let (mut browser, cookie, on_second) = logged_in_across(&bff, "judy").await;
    let mut other = Browser::default();
    let out = call(
        &mut browser,
        "POST",
        &format!("{base}/auth/logout"),
        &[("x-csrf", "1"), ("origin", &base)],
    )
    .await;
    assert_eq!(out.status, 303);
    let ended = eventually(Duration::from_secs(10), async || {
        call(&mut other, "GET", &on_second, &[("cookie", &cookie)])
            .await
            .status
            == 401
    })
    .await;
    assert!(ended, "the second replica's memory outlived the logout");
}

#[actix_web::test]
async fn claim_rules_on_session_routes_read_the_id_tokens_claims() {
    // The access token's introspection carries no email; the ID token does.
    let bff = start_bff(1, &[], "").await;
    let base = bff.base().to_string();
    for (user, status) in [("kate", 200), ("leo", 403)] {
        let mut browser = Browser::default();
        let landed = log_in(&mut browser, &base, user, "/app/").await;
        assert_eq!(landed.status, 200, "{}", landed.body);
        let page = call(&mut browser, "GET", &format!("{base}/mail/inbox"), &[]).await;
        assert_eq!(page.status, status, "{user}: {}", page.body);
        if status == 403 {
            assert_eq!(
                problem_type(&page),
                "urn:intercom:problem:claim-requirement-not-met"
            );
            assert!(!page.body.contains("leo@"), "{}", page.body);
        }
    }
}

#[actix_web::test]
async fn a_front_channel_logout_ends_the_sessions_of_its_sid() {
    let bff = start_bff(
        1,
        &[],
        r#"
            frontchannel_logout = true
            user_claims = ["sub", "sid"]
        "#,
    )
    .await;
    let base = bff.base().to_string();
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "nina", "/app/").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let user = call(&mut browser, "GET", &format!("{base}/auth/user"), &[]).await;
    let view: serde_json::Value = serde_json::from_str(&user.body).unwrap();
    let sid = view["claims"]["sid"]
        .as_str()
        .expect("the ID token names its sid")
        .to_string();
    let query =
        |iss: &str, sid: &str| serde_urlencoded::to_string([("iss", iss), ("sid", sid)]).unwrap();
    let logout = format!("{base}/auth/frontchannel-logout");
    // Another issuer, or no sid: refused, and the session lives on.
    for q in [
        query("https://evil.example", &sid),
        query(&bff.auth.issuer, ""),
    ] {
        let page = call(
            &mut Browser::default(),
            "GET",
            &format!("{logout}?{q}"),
            &[],
        )
        .await;
        assert_eq!(page.status, 400, "{}", page.body);
    }
    let alive = call(&mut browser, "GET", &format!("{base}/auth/session"), &[]).await;
    assert_eq!(alive.status, 200);
    // The AS's logout page loads it with its own iss and the sid: the session ends.
    let page = call(
        &mut Browser::default(),
        "GET",
        &format!("{logout}?{}", query(&bff.auth.issuer, &sid)),
        &[],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let ended = call(&mut browser, "GET", &format!("{base}/auth/session"), &[]).await;
    assert_eq!(ended.status, 401);
}

#[actix_web::test]
async fn logins_follow_the_as_when_it_rotates_its_signing_key() {
    let Bff {
        auth,
        upstream: _upstream,
        _apps,
        bases,
        _redis,
        _cluster,
        _secrets,
    } = start_bff(1, &[("SIGNING_KID", "key-before")], "").await;
    let base = bases[0].clone();
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "olga", "/app/").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    // The AS comes back on its port with a new signing key, one Intercom never saw.
    let port = auth.port();
    drop(auth);
    let auth = TestAuthServer::start_on(port, &[("BFF_BASE", &base), ("SIGNING_KID", "key-after")])
        .await
        .expect("the AS's port is free again");
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "pavel", "/app/").await;
    assert_eq!(
        landed.status, 200,
        "the ID token signed with the new key: {}",
        landed.body
    );
    assert!(auth.stats().await["introspection"].as_u64().unwrap() >= 1);
}

#[actix_web::test]
async fn a_session_websocket_opens_only_from_an_allowed_origin() {
    let server = TestWebSocketServer::start();
    let ws_route = format!(
        r#"
            [[routes]]
            name = "spa-ws"
            prefix = "/ws"
            upstreams = ["{}"]
            auth = "session"
            websocket = true
        "#,
        server.url()
    );
    let bff = start_bff(1, &[], &ws_route).await;
    let base = bff.base().to_string();
    let mut browser = Browser::default();
    let landed = log_in(&mut browser, &base, "wendy", "/app/").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let cookie = browser.cookie(&base, SESSION_COOKIE).expect("a session");
    let connect = |origin: &'static str| {
        awc::Client::new()
            .ws(format!("{base}/ws/live"))
            .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
            .origin(if origin == "ours" {
                base.as_str()
            } else {
                origin
            })
            .connect()
    };
    // Another site's page would open the tunnel with the user's cookie: refused.
    match connect("https://evil.example").await {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => assert_eq!(status, 403),
        other => panic!("expected 403, got {:?}", other.map(|(r, _)| r.status())),
    }
    // The SPA's own origin: the tunnel opens with the session's internal JWT upstream.
    let (response, mut framed) = connect("ours").await.unwrap();
    assert_eq!(response.status(), 101);
    let first = loop {
        match futures_util::StreamExt::next(&mut framed).await {
            Some(Ok(awc::ws::Frame::Text(text))) => break text,
            Some(Ok(_)) => continue,
            other => panic!("expected the handshake's echo, got {other:?}"),
        }
    };
    let seen: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(seen["headers"]["x-user-id"][0], "wendy");
    assert!(seen["headers"].get("cookie").is_none(), "{seen}");
}
