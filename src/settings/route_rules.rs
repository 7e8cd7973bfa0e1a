//! The rules one route must satisfy, some of which read other sections (a bearer route
//! needs `[auth_server]`, a route's tier needs windows in `[rate_limit]`).

use std::collections::HashSet;

use super::*;

/// Checks every route; each error names its key (`routes[i].field`).
pub(super) fn validate(settings: &Settings) -> Result<(), SettingsError> {
    let mut names = HashSet::new();
    let mut prefixes = HashSet::new();
    for (i, route) in settings.routes.iter().enumerate() {
        identity(settings, i, route, &mut names, &mut prefixes)?;
        upstream(i, route)?;
        access(settings, i, route)?;
        if let Some(cors) = &route.cors {
            self::cors(i, cors)?;
        }
        if let Some(limit) = &route.rate_limit {
            rate_limit(settings, i, route, limit)?;
        }
        let key = |field: &str| format!("routes[{i}].{field}");
        positive(&key("timeouts.connect"), route.timeouts.connect)?;
        positive(&key("timeouts.response"), route.timeouts.response)?;
        positive(&key("timeouts.total"), route.timeouts.total)?;
        positive(
            &key("timeouts.websocket_idle"),
            route.timeouts.websocket_idle,
        )?;
    }
    Ok(())
}

/// Its name and prefix: well formed, and each unique (a prefix per host).
fn identity<'a>(
    settings: &Settings,
    i: usize,
    route: &'a RouteSettings,
    names: &mut HashSet<&'a str>,
    prefixes: &mut HashSet<(String, String)>,
) -> Result<(), SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    if !route.internal_audiences.is_empty() && !settings.tokens.accept_internal {
        return Err(SettingsError::new(
            key("internal_audiences"),
            "needs tokens.accept_internal = true",
        ));
    }
    if route.name.is_empty()
        || !route
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(SettingsError::new(
            key("name"),
            format!("{:?} must be non-empty [A-Za-z0-9_-]", route.name),
        ));
    }
    if !names.insert(route.name.as_str()) {
        return Err(SettingsError::new(
            key("name"),
            format!("{:?} is used by another route", route.name),
        ));
    }
    if !route.prefix.starts_with('/')
        || (route.prefix.len() > 1 && route.prefix.ends_with('/'))
        || route.prefix.contains("//")
        || route.prefix.split('/').any(|s| s == "." || s == "..")
    {
        return Err(SettingsError::new(
            key("prefix"),
            format!(
                "{:?} must start with '/', not end with '/', and hold no empty or dot segments",
                route.prefix
            ),
        ));
    }
    let host_key = route.host.clone().unwrap_or_default().to_ascii_lowercase();
    if !prefixes.insert((host_key, route.prefix.clone())) {
        return Err(SettingsError::new(
            key("prefix"),
            format!(
                "{:?} is used by another route on the same host",
                route.prefix
            ),
        ));
    }
    Ok(())
}

/// Its upstreams (each URL was checked when read) and path rewrite.
fn upstream(i: usize, route: &RouteSettings) -> Result<(), SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    if route.upstreams.is_empty() {
        return Err(SettingsError::new(
            key("upstreams"),
            "at least one upstream URL is required",
        ));
    }
    if route.strip_prefix && route.rewrite.is_some() {
        return Err(SettingsError::new(
            key("rewrite"),
            "set either strip_prefix or rewrite, not both",
        ));
    }
    if let Some(rewrite) = &route.rewrite {
        if !rewrite.starts_with('/') {
            return Err(SettingsError::new(
                key("rewrite"),
                format!("{rewrite:?} must start with '/'"),
            ));
        }
    }
    transport(i, route)?;
    health(i, route)
}

/// Its health checks, ejections and retries.
fn health(i: usize, route: &RouteSettings) -> Result<(), SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    if let Some(check) = &route.health_check {
        if !check.path.starts_with('/') {
            return Err(SettingsError::new(
                key("health_check.path"),
                format!("{:?} must start with '/'", check.path),
            ));
        }
        positive(&key("health_check.interval"), check.interval)?;
        positive(&key("health_check.timeout"), check.timeout)?;
        if check.healthy_threshold == 0 || check.unhealthy_threshold == 0 {
            return Err(SettingsError::new(
                key("health_check"),
                "healthy_threshold and unhealthy_threshold must be at least 1",
            ));
        }
        if let Some(bad) = check
            .expected_status
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(SettingsError::new(
                key("health_check.expected_status"),
                format!("{bad} is not an HTTP status"),
            ));
        }
    }
    let passive = &route.passive_health;
    if let Some(first) = passive.ejection {
        positive(&key("passive_health.ejection"), first)?;
        if first > passive.max_ejection {
            return Err(SettingsError::new(
                key("passive_health.max_ejection"),
                "must not be shorter than passive_health.ejection",
            ));
        }
    }
    if !(0.0..=1.0).contains(&route.retry.budget) {
        return Err(SettingsError::new(
            key("retry.budget"),
            "must be a share between 0 and 1",
        ));
    }
    Ok(())
}

/// The scheme, TLS and protocol of its upstreams agree with each other.
fn transport(i: usize, route: &RouteSettings) -> Result<(), SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    let tls = route
        .upstreams
        .iter()
        .filter(|u| u.url.scheme() == "https")
        .count();
    if tls != 0 && tls != route.upstreams.len() {
        return Err(SettingsError::new(
            key("upstreams"),
            "mixes http:// and https:// instances: one route has one transport",
        ));
    }
    if tls == 0 && route.upstream_tls.is_some() {
        return Err(SettingsError::new(
            key("upstream_tls"),
            "needs https:// upstreams",
        ));
    }
    if tls != 0 && route.upstream_protocol == UpstreamProtocol::H2c {
        return Err(SettingsError::new(
            key("upstream_protocol"),
            "\"h2c\" is HTTP/2 over plain TCP: it needs http:// upstreams (over TLS, \"auto\" negotiates HTTP/2)",
        ));
    }
    if tls != 0 && route.discover {
        return Err(SettingsError::new(
            key("discover"),
            "needs http:// upstreams: a TLS upstream is verified by its name, so it is reached by name",
        ));
    }
    if route.websocket && route.upstream_protocol == UpstreamProtocol::H2c {
        return Err(SettingsError::new(
            key("websocket"),
            "a WebSocket upgrade is HTTP/1.1: it cannot go to an h2c upstream",
        ));
    }
    if let Some(t) = &route.upstream_tls {
        if t.client_cert.is_some() != t.client_key.is_some() {
            return Err(SettingsError::new(
                key("upstream_tls"),
                "client_cert and client_key go together",
            ));
        }
    }
    Ok(())
}

/// Who may call it: auth, scopes, the injected credential, the exchange target.
fn access(settings: &Settings, i: usize, route: &RouteSettings) -> Result<(), SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    if route.auth == RouteAuth::Bearer && settings.auth_server.is_none() {
        return Err(SettingsError::new(
            key("auth"),
            "\"bearer\" needs an [auth_server] section",
        ));
    }
    if route.auth == RouteAuth::Session && settings.session.is_none() {
        return Err(SettingsError::new(
            key("auth"),
            "\"session\" needs a [session] section",
        ));
    }
    if route.on_missing == OnMissingSession::Login && route.auth != RouteAuth::Session {
        return Err(SettingsError::new(
            key("on_missing"),
            "only session routes log in",
        ));
    }
    for (n, scope) in route.required_scopes.iter().enumerate() {
        if scope.is_empty() || scope.contains(' ') || scope[..scope.len() - 1].contains('*') {
            return Err(SettingsError::new(
                format!("routes[{i}].required_scopes[{n}]"),
                format!("{scope:?} must be one scope, with '*' only at its end"),
            ));
        }
    }
    for (field, rules) in [
        ("required_claims", &route.required_claims),
        ("denied_claims", &route.denied_claims),
    ] {
        if !rules.is_empty() && !route.auth.has_caller() {
            return Err(SettingsError::new(
                key(field),
                "needs auth = \"bearer\" or \"session\": claims come from the caller's verified token",
            ));
        }
    }
    if route.upstream_token == UpstreamToken::AuthorizationServer {
        authorization_server_token(settings, i, route)?;
    }
    claim_headers(settings, i, route)?;
    filters(i, route)?;
    credentials(settings, i, route)
}

/// `filters`: each names a filter; the claims it reads come from a verified caller.
fn filters(i: usize, route: &RouteSettings) -> Result<(), SettingsError> {
    for (n, filter) in route.filters.iter().enumerate() {
        let key = format!("routes[{i}].filters[{n}]");
        if filter.name.trim().is_empty() {
            return Err(SettingsError::new(
                format!("{key}.name"),
                "must name a filter this binary registered",
            ));
        }
        if !filter.claims.is_empty() && !route.auth.has_caller() {
            return Err(SettingsError::new(
                format!("{key}.claims"),
                "needs auth = \"bearer\" or \"session\": claims come from the caller's verified token",
            ));
        }
        if let Some(bad) = filter.claims.iter().find(|c| c.is_empty()) {
            return Err(SettingsError::new(
                format!("{key}.claims"),
                format!("{bad:?} is not a claim name"),
            ));
        }
    }
    Ok(())
}

/// Headers Intercom sets itself, or that carry framing, routing or credentials: never
/// a claim's.
const NOT_FOR_CLAIMS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// `claims_to_headers`: only on routes with a verified caller, never a header of
/// Intercom's own or one that frames, routes or authenticates the request.
fn claim_headers(
    settings: &Settings,
    i: usize,
    route: &RouteSettings,
) -> Result<(), SettingsError> {
    if route.claims_to_headers.0.is_empty() {
        return Ok(());
    }
    let key = format!("routes[{i}].claims_to_headers");
    if !route.auth.has_caller() {
        return Err(SettingsError::new(
            key,
            "needs auth = \"bearer\" or \"session\": claims come from the caller's verified token",
        ));
    }
    let t = &settings.tokens;
    let identity = [&t.user_id_header, &t.client_id_header, &t.scopes_header];
    for (name, _) in &route.claims_to_headers.0 {
        let name = name.0.as_str();
        let normalized = name.replace('_', "-");
        if NOT_FOR_CLAIMS.contains(&normalized.as_str())
            || identity
                .iter()
                .any(|h| h.as_str().replace('_', "-") == normalized)
        {
            return Err(SettingsError::new(
                format!("{key}.{name}"),
                "is a header Intercom sets itself or one that frames, routes or authenticates the request",
            ));
        }
    }
    Ok(())
}

/// What the upstream is sent in the caller's stead: an injected credential, or a token
/// exchanged for the caller's, never both.
fn credentials(settings: &Settings, i: usize, route: &RouteSettings) -> Result<(), SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    if let Some(inject) = &route.inject {
        match inject {
            InjectSettings::ClientCredentials { .. } if settings.auth_server.is_none() => {
                return Err(SettingsError::new(
                    key("inject"),
                    "\"client_credentials\" needs an [auth_server] section",
                ))
            }
            InjectSettings::Bearer { .. } | InjectSettings::ClientCredentials { .. }
                if route.auth.has_caller() =>
            {
                return Err(SettingsError::new(
                    key("inject"),
                    "a bearer credential would replace the internal JWT of an auth = \"bearer\" route",
                ))
            }
            _ => {}
        }
    }
    if let Some(exchange) = &route.exchange {
        if !route.auth.has_caller() {
            return Err(SettingsError::new(
                key("exchange"),
                "needs auth = \"bearer\" or \"session\": the caller's token is the subject",
            ));
        }
        if exchange.allowed_scopes.is_empty() {
            return Err(SettingsError::new(
                key("exchange.allowed_scopes"),
                "name the scopes the target may receive",
            ));
        }
        if exchange.callers.is_empty() && exchange.caller_scopes.is_empty() {
            return Err(SettingsError::new(
                key("exchange"),
                "name the callers (client ids) or caller_scopes allowed to call this target",
            ));
        }
        if route.inject.is_some() {
            return Err(SettingsError::new(
                key("exchange"),
                "a route either exchanges the caller's token or injects a credential",
            ));
        }
    }
    Ok(())
}

/// Its CORS policy: real origins (its methods and header names were parsed when read).
fn cors(i: usize, cors: &CorsSettings) -> Result<(), SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    if cors.origins.is_empty() {
        return Err(SettingsError::new(
            key("cors.origins"),
            "name at least one origin",
        ));
    }
    let any = cors.origins.iter().position(|o| *o == AllowedOrigin::Any);
    if let (Some(o), true) = (any, cors.credentials) {
        return Err(SettingsError::new(
            format!("routes[{i}].cors.origins[{o}]"),
            "\"*\" cannot be used with credentials = true: name the origins",
        ));
    }
    Ok(())
}

/// Its rate limit: valid windows, and windows for the tier it uses.
fn rate_limit(
    settings: &Settings,
    i: usize,
    route: &RouteSettings,
    limit: &RouteRateLimit,
) -> Result<(), SettingsError> {
    let key = |field: &str| format!("routes[{i}].{field}");
    for (tier, windows) in &limit.tiers {
        validate_windows(&key(&format!("rate_limit.tiers.{tier}")), windows)?;
    }
    let tier = match (route.auth, limit.key) {
        (RouteAuth::None, Some(RateLimitKey::Identity)) => {
            return Err(SettingsError::new(
                key("rate_limit.key"),
                "\"identity\" needs auth = \"bearer\": an open route has no verified identity",
            ))
        }
        (RouteAuth::None, _) | (_, Some(RateLimitKey::Address)) => settings
            .rate_limit
            .anonymous_tier
            .as_ref()
            .unwrap_or(&settings.rate_limit.default_tier),
        _ => &settings.rate_limit.default_tier,
    };
    if !limit.tiers.contains_key(tier) && !settings.rate_limit.tiers.contains_key(tier) {
        return Err(SettingsError::new(
            key("rate_limit"),
            format!("tier {tier:?} has no windows: set rate_limit.tiers.{tier}"),
        ));
    }
    Ok(())
}

/// `upstream_token = "authorization_server"`: the AS must hand out its JWT for each token,
/// and nothing else may take the `Authorization` header's place.
fn authorization_server_token(
    settings: &Settings,
    i: usize,
    route: &RouteSettings,
) -> Result<(), SettingsError> {
    let fail = |why: &str| {
        Err(SettingsError::new(
            format!("routes[{i}].upstream_token"),
            why,
        ))
    };
    if !route.auth.has_caller() {
        return fail("\"authorization_server\" needs auth = \"bearer\" or \"session\"");
    }
    let format = settings
        .auth_server
        .as_ref()
        .map(|a| a.introspection_format);
    if !format.is_some_and(IntrospectionFormat::carries_token_jwt) {
        return fail(
            "\"authorization_server\" needs auth_server.introspection_format = \"jwt_body\" or \"json_with_jwt\"",
        );
    }
    if route.exchange.is_some() {
        return fail(
            "\"authorization_server\" cannot be used with exchange: the target's token replaces it",
        );
    }
    if !route.internal_audiences.is_empty() {
        return fail("\"authorization_server\" cannot be used with internal_audiences: Intercom's own JWTs carry no token of the AS");
    }
    Ok(())
}
