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
        "[server]\nlisten = \"127.0.0.1:8081\"\nadmin_listen = \"127.0.0.1:9902\"\nupstream_pool_size = 16\n",
    );
    write(
        dir.path(),
        "extra.toml",
        "[server]\nadmin_listen = \"127.0.0.1:9903\"\n",
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
const AS: &str = "[auth_server]\nissuer = \"http://127.0.0.1:1\"\nclient_id = \"i\"\nclient_secret = \"file:x\"\n";

const ROUTE: &str =
    "[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstreams = [\"http://127.0.0.1:1\"]\n";

#[test]
fn validation_errors_name_the_key() {
    type Case<'a> = (String, &'a [(&'a str, &'a str)], &'a str);
    let cases: Vec<Case> = vec![
        (
            format!("{ROUTE}[[routes]]\nname = \"b\"\nprefix = \"/b\"\nupstreams = [\"http://127.0.0.1:1\"]\n[[routes]]\nname = \"c\"\nprefix = \"/c\"\nupstreams = [\"htp//x\"]\n"),
            &[],
            "routes[2].upstreams[0]: \"htp//x\" is not a valid URL",
        ),
        (
            format!("{ROUTE}[[routes]]\nname = \"a\"\nprefix = \"/b\"\nupstreams = [\"http://127.0.0.1:1\"]\n"),
            &[],
            "routes[1].name: \"a\" is used by another route",
        ),
        (
            format!("{ROUTE}[[routes]]\nname = \"b\"\nprefix = \"/a\"\nupstreams = [\"http://127.0.0.1:1\"]\n"),
            &[],
            "routes[1].prefix",
        ),
        (
            "[[routes]]\nname = \"a\"\nprefix = \"a\"\nupstreams = [\"http://127.0.0.1:1\"]\n".into(),
            &[],
            "routes[0].prefix",
        ),
        (
            format!("{ROUTE}timeouts = {{ connect = \"0s\", response = \"1s\", total = \"2s\" }}\n"),
            &[],
            "routes[0].timeouts.connect: must be greater than zero",
        ),
        (
            format!("{ROUTE}timeouts = {{ connect = \"soon\", response = \"1s\", total = \"2s\" }}\n"),
            &[],
            "routes[0].timeouts.connect",
        ),
        (
            "[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstreams = []\n".into(),
            &[],
            "routes[0].upstreams: at least one upstream URL is required",
        ),
        (
            format!("{ROUTE}methods = [\"GE T\"]\n"),
            &[],
            "routes[0].methods[0]",
        ),
        (
            format!("{ROUTE}[routes.request_headers.set]\n\"bad header\" = \"x\"\n"),
            &[],
            "routes[0].request_headers.set: \"bad header\" is not a valid header name",
        ),
        (String::new(), &[("INTERCOM__SERVER__LISTEN", "nowhere")], "server.listen"),
        (String::new(), &[("INTERCOM__SERVER__DRAIN_TIMEOUT", "0s")], "server.drain_timeout"),
        ("[server]\nlisten_typo = \"x\"\n".into(), &[], "unknown field `listen_typo`"),
        ("[telemetry]\nlog_format = \"xml\"\n".into(), &[], "telemetry.log_format"),
        (
            format!("{ROUTE}auth = \"bearer\"\n"),
            &[],
            "routes[0].auth: \"bearer\" needs an [auth_server] section",
        ),
        (
            "[auth_server]\nissuer = \"http://127.0.0.1:1\"\nclient_id = \"i\"\nclient_secret = \"file:missing\"\n".into(),
            &[],
            "auth_server.client_secret: secret \"file:missing\"",
        ),
        (
            "[auth_server]\nissuer = \"http://127.0.0.1:1\"\nclient_id = \"i\"\nclient_secret = \"plain-text-secret\"\n".into(),
            &[],
            "auth_server.client_secret: is not a secret reference",
        ),
        (
            "[auth_server]\nissuer = \"http://127.0.0.1:1\"\nclient_id = \"i\"\nclient_secret = \"file:x\"\n[auth_server.jwt]\nalgorithms = [\"HS256\"]\n".into(),
            &[],
            "auth_server.jwt.algorithms[0]",
        ),
        (
            format!("{ROUTE}required_scopes = [\"a*b\"]\n"),
            &[],
            "routes[0].required_scopes[0]",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\nrequired_claims = {{ plan = [] }}\n"),
            &[],
            "routes[0].required_claims: plan needs at least one value",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\nrequired_claims = {{ \"realm_access..roles\" = [\"a\"] }}\n"),
            &[],
            "routes[0].required_claims: \"realm_access..roles\" is not a claim path: a name is empty",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\ndenied_claims = {{ 'resource_access.\"billing.api' = [\"a\"] }}\n"),
            &[],
            "routes[0].denied_claims: \"resource_access.\\\"billing.api\" is not a claim path: a quote is not closed",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\nrequired_claims = {{ plan = \"pro\" }}\n"),
            &[],
            "routes[0].required_claims",
        ),
        (
            format!("{ROUTE}denied_claims = {{ groups = [\"suspended\"] }}\n"),
            &[],
            "routes[0].denied_claims: needs auth = \"bearer\"",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\nupstream_token = \"authorization_server\"\n"),
            &[],
            "routes[0].upstream_token: \"authorization_server\" needs auth_server.introspection_format = \"jwt_body\" or \"json_with_jwt\"",
        ),
        (
            format!("{AS}introspection_format = \"jwt_body\"\n{ROUTE}upstream_token = \"authorization_server\"\n"),
            &[],
            "routes[0].upstream_token: \"authorization_server\" needs auth = \"bearer\"",
        ),
        (
            format!("{AS}introspection_format = \"json_with_jwt\"\n{ROUTE}auth = \"bearer\"\nupstream_token = \"authorization_server\"\nexchange = {{ audience = \"t\", allowed_scopes = [\"a\"] }}\n"),
            &[],
            "routes[0].upstream_token: \"authorization_server\" cannot be used with exchange",
        ),
        (
            format!("{AS}introspection_format = \"json_with_jwt\"\nintrospection_jwt_claim = \"\"\n"),
            &[],
            "auth_server.introspection_jwt_claim: must name a claim",
        ),
        (format!("{AS}introspection_format = \"xml\"\n"), &[], "auth_server.introspection_format"),
        (format!("{ROUTE}upstream_token = \"theirs\"\n"), &[], "routes[0].upstream_token"),
        (
            "[session]\nredirect_uri = \"http://127.0.0.1:1/auth/callback\"\nencryption_key = \"file:k\"\n".into(),
            &[],
            "session: needs an [auth_server] section",
        ),
        (
            format!("{AS}[session]\nredirect_uri = \"http://127.0.0.1:1/auth/callback\"\nencryption_key = \"file:k\"\nstore = \"redis\"\n"),
            &[],
            "session.store: \"redis\" needs a [redis] section",
        ),
        (
            format!("{AS}[session]\nredirect_uri = \"http://127.0.0.1:1/auth/callback\"\nencryption_key = \"file:k\"\ncookie_name = \"sid\"\n"),
            &[],
            "session.cookie_name: must start with __Host-",
        ),
        (
            format!("{AS}[session]\nredirect_uri = \"http://127.0.0.1:1/auth/callback\"\nencryption_key = \"file:k\"\norigins = [\"https://app.example.com/spa\"]\n"),
            &[],
            "session.origins[0]: \"https://app.example.com/spa\" must be an origin",
        ),
        (
            format!("{AS}[session]\nredirect_uri = \"http://127.0.0.1:1/auth/callback\"\nencryption_key = \"file:k\"\nscopes = [\"profile\"]\n"),
            &[],
            "session.scopes: must include \"openid\"",
        ),
        (
            format!("{AS}[redis]\nurl = \"redis://127.0.0.1:1\"\n[replicas]\nshared_key = \"file:k\"\n[session]\nredirect_uri = \"http://127.0.0.1:1/auth/callback\"\nencryption_key = \"file:k\"\nstore = \"redis\"\nidle_timeout = \"30s\"\n"),
            &[],
            "session.memory_ttl: must be at most a tenth of idle_timeout",
        ),
        (
            format!("{AS}{ROUTE}auth = \"session\"\n"),
            &[],
            "routes[0].auth: \"session\" needs a [session] section",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\non_missing = \"login\"\n"),
            &[],
            "routes[0].on_missing: only session routes log in",
        ),
        ("[tokens]\nalgorithm = \"HS256\"\n".into(), &[], "tokens.algorithm"),
        (
            format!("{ROUTE}cors = {{ origins = [\"*\"], credentials = true }}\n"),
            &[],
            "routes[0].cors.origins[0]: \"*\" cannot be used with credentials",
        ),
        (
            format!("{ROUTE}cors = {{ origins = [\"https://app.example.com/path\"] }}\n"),
            &[],
            "routes[0].cors.origins[0]",
        ),
        (
            format!("{ROUTE}rate_limit = {{}}\n"),
            &[],
            "routes[0].rate_limit: tier \"free\" has no windows: set rate_limit.tiers.free",
        ),
        (
            format!("{ROUTE}rate_limit = {{ key = \"identity\" }}\n"),
            &[],
            "routes[0].rate_limit.key: \"identity\" needs auth = \"bearer\"",
        ),
        (
            "[rate_limit.tiers]\nfree = [{ requests = 0, per = \"1m\" }]\n".into(),
            &[],
            "rate_limit.tiers.free[0].requests: must be at least 1",
        ),
        (
            "[rate_limit.tiers]\nfree = [{ requests = 5, per = \"10ms\" }]\n".into(),
            &[],
            "rate_limit.tiers.free[0].per: must be at least 1s",
        ),
        (
            "[rate_limit]\non_redis_error = \"maybe\"\n".into(),
            &[],
            "rate_limit.on_redis_error",
        ),
        (
            "[redis]\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n".into(),
            &[],
            "redis.url: holds a password: move it to the secret store",
        ),
        (
            "[redis]\nurl = \"http://127.0.0.1:6379\"\n".into(),
            &[],
            "redis.url",
        ),
        // The Redis key prefix moved to [redis]: the old key is refused, named.
        (
            "[exchange]\nkey_prefix = \"old\"\n".into(),
            &[],
            "key_prefix",
        ),
        (
            format!("{ROUTE}exchange = {{ audience = \"b\", allowed_scopes = [\"x\"], callers = [\"app\"] }}\n"),
            &[],
            "routes[0].exchange: needs auth = \"bearer\"",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\nexchange = {{ audience = \"b\", allowed_scopes = [\"x\"] }}\n"),
            &[],
            "routes[0].exchange: name the callers",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\nexchange = {{ audience = \"b\", allowed_scopes = [], callers = [\"a\"] }}\n"),
            &[],
            "routes[0].exchange.allowed_scopes",
        ),
        (
            format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\n{AS}{ROUTE}auth = \"bearer\"\nexchange = {{ audience = \"b\", allowed_scopes = [\"x\"], callers = [\"a\"] }}\n"),
            &[],
            "replicas.shared_key: is required with [redis]",
        ),
        (
            format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\n{AS}{ROUTE}auth = \"bearer\"\n"),
            &[],
            "replicas.shared_key: is required with [redis]",
        ),
        (
            "[replicas]\nrotation_shared_key = \"file:k\"\n".into(),
            &[],
            "replicas.rotation_shared_key: needs replicas.shared_key",
        ),
        (
            "[exchange]\nrefresh_ahead = 1.5\n".into(),
            &[],
            "exchange.refresh_ahead: must be a fraction between 0 and 1",
        ),
        (
            format!("{AS}{ROUTE}auth = \"bearer\"\nexchange = {{ audience = \"b\", allowed_scopes = [\"x\"], callers = [\"a\"], mode = \"steal\" }}\n"),
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
        "[auth_server]\nissuer = \"http://127.0.0.1:1\"\nclient_id = \"i\"\nclient_secret = \"s3cr3t-value\"\n",
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
            "{AS}{ROUTE}auth = \"bearer\"\n[routes.required_claims]\ntenantId = [\"T1\"]\n\
             'resource_access.\"Billing.API\".roles' = [\"Reader\"]\nrealm_access.roles = [\"admin\"]\n"
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
