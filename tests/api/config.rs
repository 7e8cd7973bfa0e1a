//! Settings: layering and validation errors that name the key.

use intercom::settings::Settings;

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn layers_apply_in_order_defaults_profile_file_then_variables() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "local.toml",
        r#"
            [server]
            listen = "127.0.0.1:8081"
            admin_listen = "127.0.0.1:9902"
            upstream_pool_size = 16
        "#,
    );
    write(
        dir.path(),
        "extra.toml",
        r#"
            [server]
            admin_listen = "127.0.0.1:9903"
        "#,
    );
    let env = vec![
        ("INTERCOM_ENV".to_string(), "local".to_string()),
        (
            "INTERCOM__SERVER__UPSTREAM_POOL_SIZE".to_string(),
            "7".to_string(),
        ),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let s = Settings::load(dir.path(), Some(&dir.path().join("extra.toml")), &env).unwrap();
    assert_eq!(
        s.server.listen.to_string(),
        "127.0.0.1:8081",
        "profile file overrides the defaults"
    );
    assert_eq!(
        s.server.admin_listen.to_string(),
        "127.0.0.1:9903",
        "--config overrides the profile"
    );
    assert_eq!(
        s.server.upstream_pool_size, 7,
        "environment overrides files"
    );
    assert_eq!(
        s.server.drain_timeout.as_secs(),
        30,
        "built-in default kept"
    );
    // Without any file at all, the built-in defaults are a valid configuration.
    let empty = tempfile::tempdir().unwrap();
    let d = Settings::load(empty.path(), None, &Vec::new()).unwrap();
    assert_eq!(d.server.listen.to_string(), "127.0.0.1:8080");
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    // Relative paths in the dev profile resolve from the repository root, which is
    // where cargo runs integration tests.
    let env = vec![("INTERCOM_ENV".to_string(), "dev".to_string())];
    let dev = Settings::load(&root, None, &env).unwrap_or_else(|e| panic!("dev: {e}"));
    assert!(dev.auth_server.is_some());
    Settings::load(&root, None, &Vec::new()).unwrap_or_else(|e| panic!("default: {e}"));
}

fn error_for(extra: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "extra.toml", extra);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // As `intercom check-config` does: the settings, then the file secrets they name.
    let checked = Settings::load(dir.path(), Some(&dir.path().join("extra.toml")), &env)
        .and_then(|s| intercom::secrets::file::check_references(&s));
    match checked {
        Ok(()) => panic!("accepted: {extra}"),
        Err(e) => e.to_string(),
    }
}

/// An `[auth_server]` section, so `bearer` routes pass that check.
const AS: &str = r#"
    [auth_server]
    issuer = "http://127.0.0.1:1"
    client_id = "i"
    client_secret = "file:x"
"#;

const ROUTE: &str = r#"
        [[routes]]
        name = "a"
        prefix = "/a"
        upstreams = ["http://127.0.0.1:1"]
    "#;

#[test]
fn validation_errors_name_the_key() {
    type Case<'a> = (String, &'a [(&'a str, &'a str)], &'a str);
    let cases: Vec<Case> = vec![
        (
            format!(r#"
                {ROUTE}[[routes]]
                name = "b"
                prefix = "/b"
                upstreams = ["http://127.0.0.1:1"]
                [[routes]]
                name = "c"
                prefix = "/c"
                upstreams = ["htp//x"]
            "#),
            &[],
            "routes[2].upstreams[0]: \"htp//x\" is not a valid URL",
        ),
        (
            format!(r#"
                {ROUTE}[[routes]]
                name = "a"
                prefix = "/b"
                upstreams = ["http://127.0.0.1:1"]
            "#),
            &[],
            "routes[1].name: \"a\" is used by another route",
        ),
        (
            format!(r#"
                {ROUTE}[[routes]]
                name = "b"
                prefix = "/a"
                upstreams = ["http://127.0.0.1:1"]
            "#),
            &[],
            "routes[1].prefix",
        ),
        (
            r#"
                [[routes]]
                name = "a"
                prefix = "a"
                upstreams = ["http://127.0.0.1:1"]
            "#.into(),
            &[],
            "routes[0].prefix",
        ),
        (
            format!(r#"
                {ROUTE}timeouts = {{ connect = "0s", response = "1s", total = "2s" }}
            "#),
            &[],
            "routes[0].timeouts.connect: must be greater than zero",
        ),
        (
            format!(r#"
                {ROUTE}timeouts = {{ connect = "soon", response = "1s", total = "2s" }}
            "#),
            &[],
            "routes[0].timeouts.connect",
        ),
        (
            r#"
                [[routes]]
                name = "a"
                prefix = "/a"
                upstreams = []
            "#.into(),
            &[],
            "routes[0].upstreams: at least one upstream URL is required",
        ),
        (
            format!(r#"
                {ROUTE}methods = ["GE T"]
            "#),
            &[],
            "routes[0].methods[0]",
        ),
        (
            format!(r#"
                {ROUTE}[routes.request_headers.set]
                "bad header" = "x"
            "#),
            &[],
            "routes[0].request_headers.set: \"bad header\" is not a valid header name",
        ),
        (String::new(), &[("INTERCOM__SERVER__LISTEN", "nowhere")], "server.listen"),
        (String::new(), &[("INTERCOM__SERVER__DRAIN_TIMEOUT", "0s")], "server.drain_timeout"),
        (r#"
            [server]
            listen_typo = "x"
        "#.into(), &[], "unknown field `listen_typo`"),
        (r#"
            [telemetry]
            log_format = "xml"
        "#.into(), &[], "telemetry.log_format"),
        (r#"
            [telemetry.clients]
            volume_factor = 0.5
        "#.into(), &[], "telemetry.clients.volume_factor: must be more than 1"),
        (r#"
            [telemetry.clients]
            error_ratio_jump = 1.5
        "#.into(), &[], "telemetry.clients.error_ratio_jump"),
        (r#"
            [telemetry.clients]
            window = "0s"
        "#.into(), &[], "telemetry.clients.window: must be longer than 0"),
        (
            format!(r#"
                {ROUTE}[[routes.filters]]
                name = " "
            "#),
            &[],
            "routes[0].filters[0].name: must name a filter",
        ),
        (
            format!(r#"
                {ROUTE}[[routes.filters]]
                name = "f"
                claims = ["x"]
            "#),
            &[],
            "routes[0].filters[0].claims: needs auth = \"bearer\"",
        ),
        (
            format!(r#"
                {ROUTE}auth = "bearer"
            "#),
            &[],
            "routes[0].auth: \"bearer\" needs an [auth_server] section",
        ),
        (
            r#"
                [auth_server]
                issuer = "http://127.0.0.1:1"
                client_id = "i"
                client_secret = "file:missing"
            "#.into(),
            &[],
            "auth_server.client_secret: secret \"file:missing\"",
        ),
        (
            r#"
                [auth_server]
                issuer = "http://127.0.0.1:1"
                client_id = "i"
                client_secret = "plain-text-secret"
            "#.into(),
            &[],
            "auth_server.client_secret: is not a secret reference",
        ),
        (
            r#"
                [auth_server]
                issuer = "http://127.0.0.1:1"
                client_id = "i"
                client_secret = "file:x"
                [auth_server.jwt]
                algorithms = ["HS256"]
            "#.into(),
            &[],
            "auth_server.jwt.algorithms[0]",
        ),
        (
            format!(r#"
                {ROUTE}required_scopes = ["a*b"]
            "#),
            &[],
            "routes[0].required_scopes[0]",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                required_claims = {{ plan = [] }}
            "#),
            &[],
            "routes[0].required_claims: plan needs at least one value",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                required_claims = {{ "realm_access..roles" = ["a"] }}
            "#),
            &[],
            "routes[0].required_claims: \"realm_access..roles\" is not a claim path: a name is empty",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                denied_claims = {{ 'resource_access."billing.api' = ["a"] }}
            "#),
            &[],
            "routes[0].denied_claims: \"resource_access.\\\"billing.api\" is not a claim path: a quote is not closed",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                required_claims = {{ plan = "pro" }}
            "#),
            &[],
            "routes[0].required_claims",
        ),
        (
            format!(r#"
                {ROUTE}denied_claims = {{ groups = ["suspended"] }}
            "#),
            &[],
            "routes[0].denied_claims: needs auth = \"bearer\"",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                upstream_token = "authorization_server"
            "#),
            &[],
            "routes[0].upstream_token: \"authorization_server\" needs auth_server.introspection_format = \"jwt_body\" or \"json_with_jwt\"",
        ),
        (
            format!(r#"
                {AS}introspection_format = "jwt_body"
                {ROUTE}upstream_token = "authorization_server"
            "#),
            &[],
            "routes[0].upstream_token: \"authorization_server\" needs auth = \"bearer\"",
        ),
        (
            format!(r#"
                {AS}introspection_format = "json_with_jwt"
                {ROUTE}auth = "bearer"
                upstream_token = "authorization_server"
                exchange = {{ audience = "t", allowed_scopes = ["a"] }}
            "#),
            &[],
            "routes[0].upstream_token: \"authorization_server\" cannot be used with exchange",
        ),
        (
            format!(r#"
                {AS}introspection_format = "json_with_jwt"
                introspection_jwt_claim = ""
            "#),
            &[],
            "auth_server.introspection_jwt_claim: must name a claim",
        ),
        (format!(r#"
            {AS}introspection_format = "xml"
        "#), &[], "auth_server.introspection_format"),
        (format!(r#"
            {ROUTE}upstream_token = "theirs"
        "#), &[], "routes[0].upstream_token"),
        (
            r#"
                [session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
            "#.into(),
            &[],
            "session: needs an [auth_server] section",
        ),
        (
            format!(r#"
                {AS}[session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                store = "redis"
            "#),
            &[],
            "session.store: \"redis\" needs a [redis] section",
        ),
        (
            format!(r#"
                {AS}[session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                cookie_name = "sid"
            "#),
            &[],
            "session.cookie_name: must start with __Host-",
        ),
        (
            format!(r#"
                {AS}[session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                origins = ["https://app.example.com/spa"]
            "#),
            &[],
            "session.origins[0]: \"https://app.example.com/spa\" is not an origin",
        ),
        (
            format!(r#"
                {AS}[session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                scopes = ["profile"]
            "#),
            &[],
            "session.scopes: must include \"openid\"",
        ),
        (
            format!(r#"
                {AS}[redis]
                url = "redis://127.0.0.1:1"
                [replicas]
                shared_key = "file:k"
                [session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                store = "redis"
                idle_timeout = "30s"
            "#),
            &[],
            "session.memory_ttl: must be at most a tenth of idle_timeout",
        ),
        (
            format!(r#"
                {AS}[session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                client_auth = "private_key_jwt"
            "#),
            &[],
            "session.client_key: client_auth = \"private_key_jwt\" needs the client's private key",
        ),
        (
            format!(r#"
                {AS}[session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                client_key = "file:k"
            "#),
            &[],
            "session.client_key: is used only with client_auth = \"private_key_jwt\"",
        ),
        (
            format!(r#"
                {AS}[session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                client_auth = "private_key_jwt"
                client_key = "file:k"
                client_secret = "file:k"
            "#),
            &[],
            "session.client_secret: is not used with client_auth = \"private_key_jwt\"",
        ),
        (
            format!(r#"
                {AS}[session]
                redirect_uri = "http://127.0.0.1:1/auth/callback"
                encryption_key = "file:k"
                refresh_lease = "100ms"
            "#),
            &[],
            "session.refresh_lease: must be at least 300ms",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "session"
            "#),
            &[],
            "routes[0].auth: \"session\" needs a [session] section",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                on_missing = "login"
            "#),
            &[],
            "routes[0].on_missing: only session routes log in",
        ),
        (r#"
            [tokens]
            algorithm = "HS256"
        "#.into(), &[], "tokens.algorithm"),
        (
            format!(r#"
                {ROUTE}cors = {{ origins = ["*"], credentials = true }}
            "#),
            &[],
            "routes[0].cors.origins[0]: \"*\" cannot be used with credentials",
        ),
        (
            format!(r#"
                {ROUTE}cors = {{ origins = ["https://app.example.com/path"] }}
            "#),
            &[],
            "routes[0].cors.origins[0]",
        ),
        (
            format!(r#"
                {ROUTE}rate_limit = {{}}
            "#),
            &[],
            "routes[0].rate_limit: tier \"free\" has no windows: set rate_limit.tiers.free",
        ),
        (
            format!(r#"
                {ROUTE}rate_limit = {{ key = "identity" }}
            "#),
            &[],
            "routes[0].rate_limit.key: \"identity\" needs auth = \"bearer\"",
        ),
        (
            r#"
                [rate_limit.tiers]
                free = [{ requests = 0, per = "1m" }]
            "#.into(),
            &[],
            "rate_limit.tiers.free[0].requests: must be at least 1",
        ),
        (
            r#"
                [rate_limit.tiers]
                free = [{ requests = 5, per = "10ms" }]
            "#.into(),
            &[],
            "rate_limit.tiers.free[0].per: must be at least 1s",
        ),
        (
            r#"
                [rate_limit]
                on_redis_error = "maybe"
            "#.into(),
            &[],
            "rate_limit.on_redis_error",
        ),
        (
            r#"
                [redis]
                url = "redis://:hunter2@127.0.0.1:6379"
            "#.into(),
            &[],
            "redis.url: holds a password: move it to the secret store",
        ),
        (
            r#"
                [redis]
                url = "http://127.0.0.1:6379"
            "#.into(),
            &[],
            "redis.url",
        ),
        (
            r#"
                [redis]
                pool_size = 4
            "#.into(),
            &[],
            "redis.url: is required in standalone mode",
        ),
        (
            r#"
                [redis]
                mode = "cluster"
            "#.into(),
            &[],
            "redis.nodes: name at least one node of the cluster",
        ),
        (
            r#"
                [redis]
                mode = "cluster"
                url = "redis://127.0.0.1:7000"
            "#.into(),
            &[],
            "redis.url: is for mode = \"standalone\"",
        ),
        (
            r#"
                [redis]
                url = "redis://127.0.0.1:7000"
                nodes = ["redis://127.0.0.1:7001"]
            "#.into(),
            &[],
            "redis.nodes: are for mode = \"cluster\"",
        ),
        (
            r#"
                [redis]
                mode = "cluster"
                nodes = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001/2"]
            "#.into(),
            &[],
            "redis.nodes[1]: a cluster has only database 0",
        ),
        (
            r#"
                [redis]
                mode = "cluster"
                nodes = ["redis://127.0.0.1:7000", "rediss://127.0.0.1:7001"]
            "#.into(),
            &[],
            "redis.nodes[1]: every node needs the same scheme",
        ),
        (
            r#"
                [redis]
                mode = "sentinel"
                url = "redis://127.0.0.1:7000"
            "#.into(),
            &[],
            "redis.url: is not used with mode = \"sentinel\"",
        ),
        (
            r#"
                [redis]
                mode = "sentinel"
                master_name = "mymaster"
            "#.into(),
            &[],
            "redis.sentinels: name at least one sentinel",
        ),
        (
            r#"
                [redis]
                mode = "sentinel"
                sentinels = ["redis://127.0.0.1:26379"]
            "#.into(),
            &[],
            "redis.master_name: is required in sentinel mode",
        ),
        (
            r#"
                [redis]
                mode = "sentinel"
                sentinels = ["redis://127.0.0.1:26379", "rediss://127.0.0.1:26380"]
                master_name = "mymaster"
            "#.into(),
            &[],
            "redis.sentinels[1]: every sentinel needs the same scheme",
        ),
        (
            r#"
                [redis]
                url = "redis://127.0.0.1:7000"
                master_name = "mymaster"
            "#.into(),
            &[],
            "redis.master_name: is for mode = \"sentinel\"",
        ),
        (
            r#"
                [redis]
                url = "redis://127.0.0.1:7000"
                ca_file = "/etc/ssl/certs/ca-certificates.crt"
            "#.into(),
            &[],
            "redis.ca_file: is for TLS: the Redis URLs must be rediss://",
        ),
        (
            r#"
                [redis]
                url = "rediss://127.0.0.1:7000"
                client_cert = "file:redis_cert"
            "#.into(),
            &[],
            "redis.client_key: client_cert and client_key go together",
        ),
        (
            r#"
                [redis]
                mode = "turbo"
                url = "redis://127.0.0.1:7000"
            "#.into(),
            &[],
            "redis.mode",
        ),
        // The Redis key prefix moved to [redis]: the old key is refused, named.
        (
            r#"
                [exchange]
                key_prefix = "old"
            "#.into(),
            &[],
            "key_prefix",
        ),
        (
            format!(r#"
                {ROUTE}exchange = {{ audience = "b", allowed_scopes = ["x"], callers = ["app"] }}
            "#),
            &[],
            "routes[0].exchange: needs auth = \"bearer\"",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                exchange = {{ audience = "b", allowed_scopes = ["x"] }}
            "#),
            &[],
            "routes[0].exchange: name the callers",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                exchange = {{ audience = "b", allowed_scopes = [], callers = ["a"] }}
            "#),
            &[],
            "routes[0].exchange.allowed_scopes",
        ),
        (
            format!(r#"
                [redis]
                url = "redis://127.0.0.1:6379"
                {AS}{ROUTE}auth = "bearer"
                exchange = {{ audience = "b", allowed_scopes = ["x"], callers = ["a"] }}
            "#),
            &[],
            "replicas.shared_key: is required with [redis]",
        ),
        (
            format!(r#"
                [redis]
                url = "redis://127.0.0.1:6379"
                {AS}{ROUTE}auth = "bearer"
            "#),
            &[],
            "replicas.shared_key: is required with [redis]",
        ),
        (
            r#"
                [replicas]
                rotation_shared_key = "file:k"
            "#.into(),
            &[],
            "replicas.rotation_shared_key: needs replicas.shared_key",
        ),
        (
            r#"
                [exchange]
                refresh_ahead = 1.5
            "#.into(),
            &[],
            "exchange.refresh_ahead: must be a fraction between 0 and 1",
        ),
        (
            format!(r#"
                {AS}{ROUTE}auth = "bearer"
                exchange = {{ audience = "b", allowed_scopes = ["x"], callers = ["a"], mode = "steal" }}
            "#),
            &[],
            "routes[0].exchange.mode",
        ),
    ];
    for (extra, env, expected) in cases {
        let message = error_for(&extra, env);
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
}

#[test]
fn a_secret_written_where_a_reference_belongs_is_not_echoed() {
    let message = error_for(
        r#"
            [auth_server]
            issuer = "http://127.0.0.1:1"
            client_id = "i"
            client_secret = "s3cr3t-value"
        "#,
        &[],
    );
    assert!(!message.contains("s3cr3t-value"), "{message}");
}

/// Claim paths come through the layered configuration as written: names keep their
/// case, a quoted name keeps its dots, and TOML's dotted keys nest as paths.
#[test]
fn claim_paths_keep_their_case_and_dots() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "extra.toml",
        &format!(
            r#"
                {AS}{ROUTE}auth = "bearer"
                [routes.required_claims]
                tenantId = ["T1"]
                'resource_access."Billing.API".roles' = ["Reader"]
                realm_access.roles = ["admin"]
            "#
        ),
    );
    let s = Settings::load(
        dir.path(),
        Some(&dir.path().join("extra.toml")),
        &Vec::new(),
    )
    .unwrap();
    let paths: Vec<(Vec<String>, Vec<String>)> = s.routes[0]
        .required_claims
        .0
        .iter()
        .map(|r| (r.path.names().to_vec(), r.values.clone()))
        .collect();
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        paths,
        vec![
            (owned(&["realm_access", "roles"]), owned(&["admin"])),
            (
                owned(&["resource_access", "Billing.API", "roles"]),
                owned(&["Reader"])
            ),
            (owned(&["tenantId"]), owned(&["T1"])),
        ]
    );
}
