//! `POST /admin/explain`: what the proxy would do with a request, phase by phase, and
//! why, without forwarding it and without spending a rate-limit cell.
//!
//! The request described is run through the proxy's own phase functions (the same
//! canonicalization, route choice, gate, policies, filters and header rewriting), so the
//! explanation and the proxy cannot disagree. What the proxy would do that has effects
//! is done the way the proxy does it: a token the cache does not know is checked at the
//! AS (and the verdict cached), a browser session is read (and refreshed when due);
//! nothing is sent upstream, no token is exchanged, no credential is fetched, no cell is
//! spent, and the unknown-token budget is not charged.
//!
//! The answer never holds a token, a secret or a signature: `Authorization` and the
//! injected credential are described, the internal JWT is shown by its claims.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, Uri};
use actix_web::HttpRequest;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::routes::{Route, RouteTable};
use super::{AdmittedCaller, ProxyState};
use crate::broker::downstream::DownstreamError;
use crate::broker::edge::{CachedVerdict, UpstreamBearer};
use crate::filter::Phase;
use crate::http::errors::ApiError;
use crate::http::path::{is_under, strip_port};
use crate::settings::RouteAuth;

/// The request to explain, as `POST /admin/explain` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    #[serde(default = "default_method")]
    pub method: String,
    /// The request target: path and query, as the client would send it.
    pub path: String,
    /// The `Host` the client would name (when routes are per host).
    #[serde(default)]
    pub host: Option<String>,
    /// The client's headers (the token included); a name may carry a list of values.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValues>,
    /// The address the request comes from (default 127.0.0.1): trusted proxies and
    /// address rate limits read it.
    #[serde(default)]
    pub client_address: Option<IpAddr>,
}

fn default_method() -> String {
    "GET".into()
}

/// One header's value, or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

/// The explanation: `decision` (`forward` or `refuse`), the refusal's `status`, `type`
/// and phase, and each phase reached, in the proxy's order.
pub struct Explanation {
    pub body: Value,
}

/// Most routes listed under `not_matched`.
const NOT_MATCHED_SHOWN: usize = 100;

/// Explains `ask`; `Err` when the request described is itself malformed.
pub async fn explain(state: &ProxyState, ask: ExplainRequest) -> Result<Explanation, ApiError> {
    let req = described(ask)?;
    let mut phases = Phases::default();
    let table = state.routes.load_full();
    Ok(match run(&req, state, &table, &mut phases).await {
        Ok(()) => phases.forward(),
        Err((phase, error)) => phases.refuse(phase, &error),
    })
}

/// The phases reached so far.
#[derive(Default)]
struct Phases(Vec<Value>);

impl Phases {
    fn push(&mut self, phase: &str, outcome: &str, mut details: Value) {
        let mut entry = Map::new();
        entry.insert("phase".into(), phase.into());
        entry.insert("outcome".into(), outcome.into());
        if let Value::Object(more) = details.take() {
            entry.extend(more);
        }
        self.0.push(Value::Object(entry));
    }

    fn forward(self) -> Explanation {
        Explanation {
            body: json!({ "decision": "forward", "phases": self.0 }),
        }
    }

    fn refuse(mut self, phase: &'static str, error: &ApiError) -> Explanation {
        let (status, kind) = (error.status().as_u16(), error.problem_type());
        // The phase's own entry, when it pushed details before refusing, takes the
        // refusal; else a new entry says it.
        match self.0.last_mut() {
            Some(Value::Object(last)) if last["phase"] == phase && last["outcome"] == "refused" => {
            }
            _ => self.push(phase, "refused", json!({})),
        }
        if let Some(Value::Object(last)) = self.0.last_mut() {
            last.insert("status".into(), status.into());
            last.insert("type".into(), kind.clone().into());
            last.insert("detail".into(), error.to_string().into());
        }
        Explanation {
            body: json!({
                "decision": "refuse",
                "status": status,
                "type": kind,
                "detail": error.to_string(),
                "refused_by": phase,
                "phases": self.0,
            }),
        }
    }
}

type Refusal = (&'static str, ApiError);

/// The request as the proxy would see it.
fn described(ask: ExplainRequest) -> Result<HttpRequest, ApiError> {
    let bad = |why: String| ApiError::BadRequest(why);
    let method = Method::from_bytes(ask.method.as_bytes())
        .map_err(|_| bad(format!("method {:?} is not an HTTP method", ask.method)))?;
    if !ask.path.starts_with('/') || ask.path.parse::<Uri>().is_err() {
        return Err(bad("path must be a request target starting with '/'".into()));
    }
    let peer = SocketAddr::new(
        ask.client_address
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        0,
    );
    let mut req = actix_web::test::TestRequest::default()
        .method(method)
        .uri(&ask.path)
        .peer_addr(peer);
    if let Some(host) = &ask.host {
        let value =
            HeaderValue::from_str(host).map_err(|_| bad("host is not a header value".into()))?;
        req = req.insert_header((header::HOST, value));
    }
    for (name, values) in &ask.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(format!("headers: {name:?} is not a header name")))?;
        let values = match values {
            HeaderValues::One(v) => std::slice::from_ref(v),
            HeaderValues::Many(vs) => vs.as_slice(),
        };
        for value in values {
            // The value may be a token: the error names the header only.
            let value = HeaderValue::from_str(value).map_err(|_| {
                bad(format!(
                    "headers: the value of {name} is not a header value"
                ))
            })?;
            req = req.append_header((header.clone(), value));
        }
    }
    Ok(req.to_http_request())
}

/// The phases in the proxy's order; the first refusal ends them.
async fn run(
    req: &HttpRequest,
    state: &ProxyState,
    table: &RouteTable,
    phases: &mut Phases,
) -> Result<(), Refusal> {
    let canonical =
        super::path::canonicalize(req.uri().path()).map_err(|e| ("canonical_path", e.into()))?;
    phases.push("canonical_path", "ok", json!({ "path": canonical }));
    if req
        .headers()
        .get_all(header::AUTHORIZATION)
        .nth(1)
        .is_some()
    {
        let error = ApiError::BadRequest("more than one Authorization header".into());
        return Err(("canonical_path", error));
    }

    let chosen = super::pick_route(req, table, &canonical);
    let not_matched = not_matched(req, table, &canonical, chosen.as_ref().ok().copied());
    let route = match chosen {
        Ok(route) => route,
        Err(error) => {
            phases.push("route", "refused", json!({ "not_matched": not_matched }));
            return Err(("route", error));
        }
    };
    let (healthy, instances) = route.upstreams.healthy();
    phases.push(
        "route",
        "matched",
        json!({
            "route": &*route.name,
            "prefix": route.prefix,
            "auth": auth_name(route.auth),
            "instances": { "healthy": healthy, "total": instances },
            "not_matched": not_matched,
        }),
    );
    let framing = super::refuse_oversized(req, route).map_err(|e| ("body", e))?;

    let caller = authenticate(req, state, route, phases).await?;
    authorization(route, caller.as_ref(), phases)?;
    filters(req, route, &canonical, caller.as_ref(), phases).await?;
    rate_limit(req, state, route, caller.as_ref(), phases).await?;
    let audience = exchange(route, caller.as_ref(), phases)?;
    if healthy == 0 {
        phases.push("upstream_request", "refused", json!({}));
        return Err(("upstream_request", ApiError::NoHealthyUpstream));
    }
    upstream_request(
        req,
        state,
        route,
        (&canonical, framing),
        caller.as_ref(),
        audience,
        phases,
    )
    .await
}

/// Why each other route did not take the request, in table order.
fn not_matched(
    req: &HttpRequest,
    table: &RouteTable,
    canonical: &str,
    chosen: Option<&Route>,
) -> Value {
    let host = super::request_host(req).map(strip_port);
    let mut listed = Vec::new();
    let mut after_chosen = false;
    for route in table.routes() {
        if chosen.is_some_and(|c| std::ptr::eq(c, route)) {
            after_chosen = true;
            continue;
        }
        let reason = match &route.host {
            Some(want) if !host.is_some_and(|h| h.eq_ignore_ascii_case(want)) => {
                format!("the route is for host {want}")
            }
            _ if !is_under(canonical, &route.prefix, route.ignore_case) => {
                format!("the path is not under {}", route.prefix)
            }
            _ if !route.methods.is_empty() && !route.methods.contains(req.method()) => {
                let methods: Vec<String> = route.methods.iter().map(|m| m.to_string()).collect();
                format!("the route takes only {}", methods.join(", "))
            }
            _ if after_chosen => format!(
                "{} comes first (a host-specific route or a longer prefix)",
                chosen.map_or("", |c| &*c.name)
            ),
            _ => "a route before it took the request".into(),
        };
        listed.push(json!({ "route": &*route.name, "reason": reason }));
    }
    let more = listed.len().saturating_sub(NOT_MATCHED_SHOWN);
    listed.truncate(NOT_MATCHED_SHOWN);
    if more > 0 {
        listed.push(json!({ "more": more }));
    }
    Value::Array(listed)
}

fn auth_name(auth: RouteAuth) -> &'static str {
    match auth {
        RouteAuth::None => "none",
        RouteAuth::Bearer => "bearer",
        RouteAuth::Session => "session",
    }
}

/// The token's source and validation path, and who it speaks for.
async fn authenticate(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
    phases: &mut Phases,
) -> Result<Option<AdmittedCaller>, Refusal> {
    let refuse = |e: ApiError| ("authentication", e);
    let Some(super::CallerToken {
        token,
        login_claims,
        source,
    }) = super::caller_token(req, state, route)
        .await
        .map_err(refuse)?
    else {
        phases.push("authentication", "none", json!({}));
        return Ok(None);
    };
    let edge = state
        .edge
        .as_ref()
        .ok_or_else(|| refuse(ApiError::Internal))?;
    let validation = match edge.cached(&token).await {
        CachedVerdict::Admitted => "cache",
        CachedVerdict::Rejected(_) => "cache_negative",
        CachedVerdict::Absent => edge.validation_path(&token).as_str(),
    };
    let trail = json!({ "source": source, "validation": validation });
    let admitted = super::gate::admit(
        edge,
        state.revoker.as_deref(),
        &token,
        &route.upstream_bearer,
        || async { Ok(()) },
    )
    .await;
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(error) => {
            phases.push("authentication", "refused", trail);
            return Err(refuse(error));
        }
    };
    let p = &admitted.token.principal;
    let mut details = trail;
    details["principal"] = json!({
        "sub": p.sub,
        "client_id": p.client_id,
        "scopes": p.scopes,
        "exp": p.exp,
        "aud": p.aud,
        "tier": p.tier,
        "internal_jwt": p.internal,
    });
    phases.push("authentication", "admitted", details);
    Ok(Some(AdmittedCaller {
        admitted,
        token,
        login_claims,
    }))
}

/// The route's audience, scope and claim rules.
fn authorization(
    route: &Route,
    caller: Option<&AdmittedCaller>,
    phases: &mut Phases,
) -> Result<(), Refusal> {
    let Some(caller) = caller else {
        phases.push("authorization", "none", json!({}));
        return Ok(());
    };
    let details = json!({
        "required_scopes": route.scopes.required(),
        "scope_match": if route.scopes.any() { "any" } else { "all" },
        "granted_scopes": caller.admitted.token.principal.scopes,
        "accepted_audiences": route.accepted_audiences,
    });
    match super::authorize(route, Some(caller)) {
        Ok(()) => {
            phases.push("authorization", "allowed", details);
            Ok(())
        }
        Err(error) => {
            phases.push("authorization", "refused", details);
            Err(("authorization", error))
        }
    }
}

/// The route's `authenticated` filters, run as the proxy runs them.
async fn filters(
    req: &HttpRequest,
    route: &Route,
    canonical: &str,
    caller: Option<&AdmittedCaller>,
    phases: &mut Phases,
) -> Result<(), Refusal> {
    let names = route.filters.names(Phase::Authenticated);
    if names.is_empty() {
        phases.push("filters", "none", json!({}));
        return Ok(());
    }
    let view = super::filter_view(req, route, canonical, caller);
    let details = json!({ "filters": names });
    match route.filters.authenticated(&view).await {
        Ok(()) => {
            phases.push("filters", "passed", details);
            Ok(())
        }
        Err(refusal) => {
            let mut details = details;
            details["refused_by_filter"] = (*refusal.filter).into();
            phases.push("filters", "refused", details);
            Err(("filters", ApiError::FilterRefused(refusal)))
        }
    }
}

/// The caller's tier and the cells each window has left, read without spending.
async fn rate_limit(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
    caller: Option<&AdmittedCaller>,
    phases: &mut Phases,
) -> Result<(), Refusal> {
    let (Some(limiter), Some(policy)) = (&state.limiter, route.rate_limit.as_deref()) else {
        phases.push("rate_limit", "none", json!({}));
        return Ok(());
    };
    let principal = caller.map(|c| &c.admitted.token.principal);
    let who =
        super::rate_limit_caller(req, state, policy, principal).map_err(|e| ("rate_limit", e))?;
    let key = match who {
        crate::limits::Caller::Identity { .. } => "identity",
        crate::limits::Caller::Address(_) => "address",
    };
    let (tier, windows) = match limiter.peek(policy, who).await {
        Ok(read) => read,
        Err(_) => {
            phases.push(
                "rate_limit",
                "unknown",
                json!({ "key": key, "reason": "Redis cannot answer: on_redis_error decides" }),
            );
            return Ok(());
        }
    };
    let mut wait = std::time::Duration::ZERO;
    let shown: Vec<Value> = tier
        .windows
        .iter()
        .zip(&windows)
        .map(|(window, state)| {
            if let Some(s) = state.filter(|s| s.remaining == 0) {
                wait = wait.max(s.reset);
            }
            json!({
                "name": window.name,
                "requests": window.requests,
                "per_secs": window.per_secs,
                "remaining": state.map(|s| s.remaining),
            })
        })
        .collect();
    let details = json!({ "key": key, "tier": &*tier.tier, "windows": shown });
    if windows.iter().flatten().any(|s| s.remaining == 0) {
        phases.push("rate_limit", "refused", details);
        let retry_after = crate::limits::ceil_secs(wait).max(1);
        return Err(("rate_limit", ApiError::RateLimited { retry_after }));
    }
    phases.push("rate_limit", "allowed", details);
    Ok(())
}

/// The exchange target's audience and the scopes its policy would grant (no exchange is
/// made); the audience, for the upstream's `Authorization`.
fn exchange(
    route: &Route,
    caller: Option<&AdmittedCaller>,
    phases: &mut Phases,
) -> Result<Option<String>, Refusal> {
    let (Some(target), Some(caller)) = (&route.target, caller) else {
        phases.push("exchange", "none", json!({}));
        return Ok(None);
    };
    let principal = &caller.admitted.token.principal;
    let audience = target.audience.to_string();
    match target.grant(principal, principal, None) {
        Ok(scopes) => {
            phases.push(
                "exchange",
                "would_exchange",
                json!({ "audience": audience, "scopes": scopes }),
            );
            Ok(Some(audience))
        }
        Err(refused) => {
            phases.push("exchange", "refused", json!({ "audience": audience }));
            let error = DownstreamError::refused_by(target, refused).into();
            Err(("exchange", error))
        }
    }
}

/// The request the upstream would receive, with every credential described, never shown.
async fn upstream_request(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
    (canonical, framing): (&str, super::forward::BodyFraming),
    caller: Option<&AdmittedCaller>,
    audience: Option<String>,
    phases: &mut Phases,
) -> Result<(), Refusal> {
    let admitted = caller.map(|c| &c.admitted);
    let mut outbound = super::rewrite(req, state, route, canonical, framing, admitted);
    if let Some(caller) = caller {
        let claims = &caller.admitted.token.principal.claims;
        route
            .claim_headers
            .apply(&mut outbound.headers, claims, &caller.login_claims);
    }
    // What stands in for each credential, by the value it replaces.
    let mut described: Vec<(HeaderName, String)> = Vec::new();
    let mut jwt_claims = Value::Null;
    if let Some(admitted) = admitted {
        let what = match (&audience, &route.upstream_bearer) {
            (Some(audience), _) => {
                format!("Bearer <a token for the audience {audience}, exchanged at the AS>")
            }
            (None, UpstreamBearer::Minted(_)) => {
                jwt_claims = jwt_payload(admitted.bearer.to_str().unwrap_or(""));
                "Bearer <internal JWT: see internal_jwt_claims>".into()
            }
            (None, UpstreamBearer::AuthorizationServer) => {
                "Bearer <the authorization server's JWT for this token>".into()
            }
        };
        described.push((header::AUTHORIZATION, what));
    }
    if route.filters.runs_at(Phase::BeforeForwarding) {
        let view = super::filter_view(req, route, canonical, caller);
        if let Err(refusal) = route
            .filters
            .before_forwarding(&view, &mut outbound.headers)
            .await
        {
            phases.push(
                "upstream_request",
                "refused",
                json!({ "refused_by_filter": &*refusal.filter }),
            );
            return Err(("upstream_request", ApiError::FilterRefused(refusal)));
        }
    }
    let credential = route.inject.as_ref().map(|inject| {
        let (kind, header, source) = inject.describe();
        if let Ok(name) = HeaderName::from_bytes(header.as_bytes()) {
            described.retain(|(h, _)| h != name);
            described.push((name, format!("<{kind} credential from {source}>")));
        }
        json!({ "kind": kind, "header": header, "source": source })
    });
    let headers = shown_headers(&outbound.headers, &described);
    phases.push(
        "upstream_request",
        "would_forward",
        json!({
            "method": outbound.method.as_str(),
            "path": outbound.path_and_query,
            "headers": headers,
            "internal_jwt_claims": jwt_claims,
            "credential": credential,
        }),
    );
    Ok(())
}

/// The outbound headers, each credential replaced by its description and other
/// secrets (cookies, proxy credentials) by a mark.
fn shown_headers(headers: &HeaderMap, described: &[(HeaderName, String)]) -> Value {
    let mut shown: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if described.iter().any(|(h, _)| h == name) {
            continue;
        }
        let text = match *name {
            header::COOKIE | header::PROXY_AUTHORIZATION => "<redacted>".to_string(),
            header::AUTHORIZATION => "<the client's credential>".to_string(),
            _ => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        };
        shown
            .entry(name.as_str().to_string())
            .or_default()
            .push(text);
    }
    for (name, what) in described {
        shown
            .entry(name.as_str().to_string())
            .or_default()
            .push(what.clone());
    }
    serde_json::to_value(shown).unwrap_or(Value::Null)
}

/// The claims of `Bearer <JWT>`, without its header or signature.
fn jwt_payload(bearer: &str) -> Value {
    let jwt = bearer.strip_prefix("Bearer ").unwrap_or(bearer);
    jwt.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}
