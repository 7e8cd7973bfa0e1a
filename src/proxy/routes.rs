//! The route table: which route serves a canonical path, and the path it is sent
//! upstream with.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;

use super::claim_headers::ClaimHeaders;
use super::headers::CompiledRules;
use super::inject::Injection;
use super::transport::Transport;
use super::upstreams::{Ejection, Upstreams};
use crate::broker::claims::ClaimPolicy;
use crate::broker::edge::UpstreamBearer;
use crate::broker::policy::{ScopePolicy, TargetPolicy};
use crate::filter::FilterChain;
use crate::http::path::{is_under, strip_port};
use crate::limits::policy::RoutePolicy;
use crate::settings::{
    AllowedOrigin, CorsSettings, HealthCheckSettings, OnMissingSession, RouteAuth, RouteSettings,
    RouteTimeouts, SecurityHeaders, UpstreamToken,
};
use crate::telemetry::RequestMetrics;

/// How the matched prefix changes before forwarding.
#[derive(Debug, Clone)]
pub enum Rewrite {
    Keep,
    Strip,
    Replace(String),
}

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    pub index: usize,
    pub name: Arc<str>,
    pub prefix: String,
    /// Match the prefix ignoring ASCII case (Express, ASP.NET upstreams route so).
    pub ignore_case: bool,
    pub host: Option<String>,
    pub methods: Vec<Method>,
    pub upstreams: Arc<Upstreams>,
    /// Plain HTTP/1.1, TLS (with its verified roots and client certificate), or h2c.
    pub transport: Transport,
    /// WebSocket handshakes are tunnelled (after the same checks as any request).
    pub websocket: bool,
    /// Most retries of one request on another instance.
    pub retries: u32,
    /// The active probe of the instances, if any.
    pub health_check: Option<HealthCheckSettings>,
    /// Readiness fails while this route has no healthy instance.
    pub required: bool,
    /// Its host names resolve to its instances (`proxy::discovery`).
    pub discover: bool,
    pub rewrite: Rewrite,
    pub request_headers: CompiledRules,
    pub response_headers: CompiledRules,
    pub timeouts: RouteTimeouts,
    pub metrics: Arc<RequestMetrics>,
    pub auth: RouteAuth,
    /// On session routes, what a request without a session gets.
    pub on_missing: OnMissingSession,
    pub scopes: ScopePolicy,
    /// `required_claims` and `denied_claims`.
    pub claims: ClaimPolicy,
    /// `claims_to_headers`: verified claims sent upstream as headers.
    pub claim_headers: ClaimHeaders,
    /// What the upstream receives as its bearer: the internal JWT for the route's
    /// audience, or the AS's own JWT.
    pub upstream_bearer: UpstreamBearer,
    /// Headers a client may never send here, normalized (lowercase, `_` as `-`).
    pub internal_headers: Vec<String>,
    pub allow_query_token: bool,
    pub allow_method_override: bool,
    /// `aud` values the caller's token must name one of (any when empty).
    pub accepted_audiences: Vec<String>,
    /// `aud` values of internal JWTs accepted here (none when empty).
    pub internal_audiences: Vec<String>,
    /// The route's CORS policy, answered by `proxy::cors` before the proxy runs.
    pub cors: Option<CorsSettings>,
    /// The route's CORS policy admits any origin: an upstream's
    /// `Access-Control-Allow-Credentials` must not turn that into credentialed access.
    pub any_origin: bool,
    /// The credential injected upstream, if any.
    pub inject: Option<Injection>,
    pub max_body_bytes: u64,
    pub enforce_security_headers: bool,
    /// The downstream audience's policy, on routes that exchange the caller's token.
    pub target: Option<TargetPolicy>,
    /// The route's rate limit, if it has one.
    pub rate_limit: Option<Arc<RoutePolicy>>,
    /// The binary's own filters, by phase.
    pub filters: FilterChain,
}

/// What matching a request gave.
pub enum Match<'a> {
    Found(&'a Route),
    /// The path matched, but not the method; carries the methods it allows.
    WrongMethod(Vec<String>),
    None,
}

/// All routes, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Which configuration this is: 1 at start, one more at each reload applied.
    pub generation: u64,
    /// Some route has a CORS policy.
    pub any_cors: bool,
    routes: Vec<Route>,
    /// Positions in `routes` of the routes under each first path segment (lowercase),
    /// in table order, so a lookup visits the few routes a path can match, not all.
    by_segment: HashMap<String, Vec<usize>>,
    /// Positions of the routes with prefix `/`, under every path.
    everywhere: Vec<usize>,
}

/// The first segment of a path or prefix (`api` of `/api/v1`), empty for `/`.
fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

/// What start-up made for a route beside its settings.
#[derive(Debug, Default)]
pub struct Attachments {
    /// The credential injected upstream.
    pub inject: Option<Injection>,
    /// How the upstreams are reached (`Plain` when none was made: unit tests).
    pub transport: Transport,
    /// The route's rate limit, when it has one.
    pub rate_limit: Option<Arc<RoutePolicy>>,
    /// The route's filters (empty when it names none).
    pub filters: FilterChain,
}

impl RouteTable {
    /// Builds the table from validated settings and what start-up made for each route
    /// (`attached[i]` for `settings[i]`).
    pub fn new(
        settings: &[RouteSettings],
        cooldown: Duration,
        max_body_bytes: u64,
        attached: Vec<Attachments>,
    ) -> Self {
        let mut attached = attached.into_iter();
        let mut routes: Vec<Route> = settings
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let Attachments {
                    inject,
                    transport,
                    rate_limit,
                    filters,
                } = attached.next().unwrap_or_default();
                let ejection = Ejection {
                    consecutive_failures: r.passive_health.consecutive_failures,
                    first: r.passive_health.ejection.unwrap_or(cooldown),
                    max: r.passive_health.max_ejection,
                };
                let upstreams = Upstreams::new(
                    &r.name,
                    &r.upstreams,
                    &transport,
                    r.balance,
                    ejection,
                    &r.retry,
                );
                Route {
                    index,
                    name: Arc::from(r.name.as_str()),
                    prefix: r.prefix.clone(),
                    ignore_case: r.case_insensitive,
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    methods: r.methods.iter().map(|m| m.0.clone()).collect(),
                    upstreams,
                    transport,
                    websocket: r.websocket,
                    retries: r.retry.attempts,
                    health_check: r.health_check.clone(),
                    required: r.required,
                    discover: r.discover,
                    rewrite: match (&r.rewrite, r.strip_prefix) {
                        (Some(to), _) => Rewrite::Replace(to.trim_end_matches('/').to_string()),
                        (None, true) => Rewrite::Strip,
                        (None, false) => Rewrite::Keep,
                    },
                    request_headers: CompiledRules::compile(&r.request_headers),
                    response_headers: CompiledRules::compile(&r.response_headers),
                    timeouts: r.timeouts.clone(),
                    metrics: Arc::new(RequestMetrics::new(&r.name)),
                    auth: r.auth,
                    on_missing: r.on_missing,
                    scopes: ScopePolicy::new(&r.required_scopes, r.scope_match),
                    claims: ClaimPolicy::new(&r.name, &r.required_claims, &r.denied_claims),
                    claim_headers: ClaimHeaders::new(&r.name, &r.claims_to_headers),
                    upstream_bearer: match r.upstream_token {
                        UpstreamToken::Minted => UpstreamBearer::Minted(Arc::from(
                            r.audience.as_deref().unwrap_or(&r.name),
                        )),
                        UpstreamToken::AuthorizationServer => UpstreamBearer::AuthorizationServer,
                    },
                    internal_headers: r
                        .internal_headers
                        .iter()
                        .map(|h| h.0.as_str())
                        .chain(r.claims_to_headers.0.iter().map(|(h, _)| h.0.as_str()))
                        .map(super::headers::normalize_name)
                        .collect(),
                    allow_query_token: r.allow_query_token,
                    allow_method_override: r.allow_method_override,
                    accepted_audiences: r.accepted_audiences.clone(),
                    internal_audiences: r.internal_audiences.clone(),
                    cors: r.cors.clone(),
                    any_origin: r
                        .cors
                        .as_ref()
                        .is_some_and(|c| c.origins.contains(&AllowedOrigin::Any)),
                    inject,
                    max_body_bytes: r.max_body_bytes.unwrap_or(max_body_bytes),
                    enforce_security_headers: r.security_headers == SecurityHeaders::Enforce,
                    target: r.exchange.as_ref().map(TargetPolicy::new),
                    rate_limit,
                    filters,
                }
            })
            .collect();
        // Host-specific routes before host-less ones, then longer prefixes first.
        routes.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.prefix.len())));
        let mut by_segment: HashMap<String, Vec<usize>> = HashMap::new();
        let mut everywhere = Vec::new();
        for (position, route) in routes.iter().enumerate() {
            match first_segment(&route.prefix) {
                "" => everywhere.push(position),
                segment => by_segment
                    .entry(segment.to_ascii_lowercase())
                    .or_default()
                    .push(position),
            }
        }
        Self {
            generation: 1,
            any_cors: routes.iter().any(|r| r.cors.is_some()),
            routes,
            by_segment,
            everywhere,
        }
    }

    /// The table as generation `generation` of the configuration.
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The routes a canonical path and host (port ignored) fall under, whatever the
    /// method, in table order: among those under the path's first segment or under `/`.
    pub fn matching<'a, 'b>(
        &'a self,
        host: Option<&'b str>,
        path: &'b str,
    ) -> impl Iterator<Item = &'a Route> + 'b
    where
        'a: 'b,
    {
        let host = host.map(strip_port);
        let segment = first_segment(path);
        let under = match segment.bytes().any(|b| b.is_ascii_uppercase()) {
            true => self.by_segment.get(&segment.to_ascii_lowercase()),
            false => self.by_segment.get(segment),
        };
        let candidates = in_order(under.map_or(&[][..], Vec::as_slice), &self.everywhere);
        candidates
            .map(|position| &self.routes[position])
            .filter(move |route| {
                let host_ok = match &route.host {
                    Some(want) => host.is_some_and(|h| h.eq_ignore_ascii_case(want)),
                    None => true,
                };
                host_ok && is_under(path, &route.prefix, route.ignore_case)
            })
    }

    /// Finds the route for a canonical path, host (port ignored) and method: the first
    /// of [`RouteTable::matching`] that takes the method.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Match<'_> {
        let mut allowed: Vec<String> = Vec::new();
        for route in self.matching(host, path) {
            if route.methods.is_empty() || route.methods.contains(method) {
                return Match::Found(route);
            }
            if allowed.is_empty() {
                allowed = route.methods.iter().map(|m| m.to_string()).collect();
            }
        }
        if allowed.is_empty() {
            Match::None
        } else {
            Match::WrongMethod(allowed)
        }
    }
}

/// Merges two ascending lists of positions into one ascending sequence.
fn in_order<'a>(a: &'a [usize], b: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x < y => a.next().copied(),
        (_, Some(_)) => b.next().copied(),
        (Some(_), None) => a.next().copied(),
        (None, None) => None,
    })
}

impl Route {
    /// Refuses a token this route does not take: one whose `aud` is not among
    /// `accepted_audiences` (when named), or an internal JWT of Intercom's own minted for
    /// an upstream the route does not name in `internal_audiences` (one service must not
    /// replay a user's internal JWT against any API).
    pub fn accepts(&self, principal: &crate::broker::Principal) -> Result<(), &'static str> {
        let names = |list: &[String]| principal.aud.iter().any(|a| list.contains(a));
        if principal.internal && !names(&self.internal_audiences) {
            return Err("internal tokens from this upstream are not accepted on this route");
        }
        if !self.accepted_audiences.is_empty() && !names(&self.accepted_audiences) {
            return Err("the token is meant for another audience");
        }
        Ok(())
    }

    /// The path sent upstream for a canonical request path under this route's prefix.
    pub fn upstream_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        let rest = if self.prefix == "/" {
            path
        } else {
            &path[self.prefix.len()..]
        };
        let joined = match &self.rewrite {
            Rewrite::Keep => return path.into(),
            Rewrite::Strip => rest.to_string(),
            Rewrite::Replace(to) => format!("{to}{rest}"),
        };
        if joined.starts_with('/') {
            joined.into()
        } else {
            format!("/{joined}").into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{HttpMethod, UpstreamSetting};

    fn route(name: &str, prefix: &str) -> RouteSettings {
        RouteSettings {
            name: name.into(),
            prefix: prefix.into(),
            case_insensitive: false,
            host: None,
            methods: vec![],
            upstreams: vec![UpstreamSetting {
                url: url::Url::parse("http://127.0.0.1:1").unwrap(),
                weight: 1,
            }],
            balance: Default::default(),
            health_check: None,
            passive_health: Default::default(),
            retry: Default::default(),
            required: false,
            discover: false,
            upstream_tls: None,
            upstream_protocol: Default::default(),
            websocket: false,
            strip_prefix: false,
            rewrite: None,
            request_headers: Default::default(),
            response_headers: Default::default(),
            timeouts: Default::default(),
            auth: Default::default(),
            on_missing: Default::default(),
            required_scopes: vec![],
            scope_match: Default::default(),
            required_claims: Default::default(),
            denied_claims: Default::default(),
            audience: None,
            upstream_token: Default::default(),
            internal_headers: vec![],
            claims_to_headers: Default::default(),
            allow_query_token: false,
            allow_method_override: false,
            accepted_audiences: vec![],
            internal_audiences: vec![],
            inject: None,
            max_body_bytes: None,
            security_headers: Default::default(),
            cors: None,
            rate_limit: None,
            exchange: None,
            filters: Vec::new(),
        }
    }

    #[test]
    fn longest_prefix_and_host_win() {
        let mut hosted = route("hosted", "/api");
        hosted.host = Some("Billing.Example".into());
        let mut only_get = route("ro", "/ro");
        only_get.methods = vec![HttpMethod(Method::GET)];
        let mut strip = route("strip", "/s");
        strip.strip_prefix = true;
        let mut rewrite = route("rw", "/old");
        rewrite.rewrite = Some("/new/".into());
        let table = RouteTable::new(
            &[
                route("root", "/"),
                route("api", "/api"),
                route("api-v2", "/api/v2"),
                hosted,
                only_get,
                strip,
                rewrite,
            ],
            Duration::from_secs(1),
            1024,
            Vec::new(),
        );
        let name = |host: Option<&str>, p: &str| match table.find(host, p, &Method::GET) {
            Match::Found(r) => r.name.to_string(),
            _ => "-".into(),
        };
        assert_eq!(name(None, "/api/v2/x"), "api-v2");
        assert_eq!(name(None, "/api/v21"), "api");
        assert_eq!(name(None, "/other"), "root");
        assert_eq!(name(Some("billing.example:8080"), "/api/x"), "hosted");
        assert!(matches!(
            table.find(None, "/ro/x", &Method::POST),
            Match::Found(r) if r.name.as_ref() == "root"
        ));
        let Match::Found(s) = table.find(None, "/s/a/b", &Method::GET) else {
            panic!("strip route not found")
        };
        assert_eq!(s.upstream_path("/s/a/b"), "/a/b");
        assert_eq!(s.upstream_path("/s"), "/");
        let Match::Found(r) = table.find(None, "/old/a", &Method::GET) else {
            panic!("rewrite route not found")
        };
        assert_eq!(r.upstream_path("/old/a"), "/new/a");
    }

    #[test]
    fn the_segment_index_finds_what_a_scan_would() {
        let mut loud = route("loud", "/Loud");
        loud.case_insensitive = true;
        let exact = route("exact", "/Exact");
        let table = RouteTable::new(
            &[route("root", "/"), loud, exact, route("deep", "/a/b/c")],
            Duration::from_secs(1),
            1024,
            Vec::new(),
        );
        let name = |p: &str| match table.find(None, p, &Method::GET) {
            Match::Found(r) => r.name.to_string(),
            _ => "-".into(),
        };
        assert_eq!(name("/LOUD/x"), "loud");
        assert_eq!(name("/loud"), "loud");
        assert_eq!(name("/Exact/1"), "exact");
        // A case-sensitive prefix is not matched in another case: the scan's `/` wins.
        assert_eq!(name("/exact/1"), "root");
        assert_eq!(name("/a/b/c/d"), "deep");
        assert_eq!(name("/a/b"), "root");
        assert_eq!(name("/"), "root");
    }

    #[test]
    fn wrong_method_reports_allowed() {
        let mut only_get = route("ro", "/ro");
        only_get.methods = vec![HttpMethod(Method::GET), HttpMethod(Method::HEAD)];
        let table = RouteTable::new(&[only_get], Duration::from_secs(1), 1024, Vec::new());
        match table.find(None, "/ro", &Method::DELETE) {
            Match::WrongMethod(allow) => assert_eq!(allow, vec!["GET", "HEAD"]),
            _ => panic!("expected 405"),
        }
    }
}
