//! The proxy: route table, path canonicalization, header hygiene, identity and
//! credential injection, and the forwarder.
//!
//! [`proxy`] is the request path, one phase per step and in this order: canonicalize →
//! pick route → authenticate (revocations included) → authorize → the filters'
//! `authenticated` phase → rate limit → downstream token (routes with `exchange`) → body
//! limit → rewrite → the filters' `before_forwarding` phase → inject → forward
//! (once more if the upstream refuses an injected credential; a WebSocket handshake opens
//! a tunnel instead) → the filters' `response` phase → filter response; the access log
//! records it.

pub mod claim_headers;
pub mod connections;
pub mod cors;
pub mod discovery;
pub mod explain;
pub mod forward;
pub mod gate;
pub mod headers;
pub mod identity;
pub mod inject;
mod multiplexed;
pub mod probes;
pub mod routes;
pub mod transport;
pub mod tunnel;
pub mod upstreams;

use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use ipnet::IpNet;

use crate::broker::claims::KeptClaims;
use crate::broker::downstream::{DownstreamTokens, Subject};
use crate::broker::edge::{Admitted, EdgeAuthenticator};
use crate::broker::failure::TokenRejected;
use crate::filter::{FilterRequest, Phase};
use crate::http::access_log::{RouteTag, UpstreamLatency};
use crate::http::credentials;
use crate::http::errors::ApiError;
use crate::http::path;
use crate::http::request_id::{self, RequestId};
use crate::http::security_headers::EnforceSecurityHeaders;
use crate::limits::{Caller, RateLimiter};
use crate::revoke::Revoker;
use crate::secret::Secret;
use crate::secrets::registry::SecretRegistry;
use crate::session::Sessions;
use crate::settings::{OnMissingSession, RouteAuth};
use crate::telemetry::clients::ClientInsight;
use forward::{
    BodyFraming, LimitedBody, OutboundRequest, RequestBody, RouteClients, UpstreamAnswer,
    UpstreamClients,
};
use headers::ClientView;
use identity::IdentityHeaders;
use inject::Injection;
use routes::{Match, Route, RouteTable};

/// What the proxy shares across workers.
pub struct ProxyState {
    /// The routes of the configuration in force; a reload swaps in a new table, and a
    /// request keeps the table it started with.
    pub routes: arc_swap::ArcSwap<RouteTable>,
    pub trusted_proxies: Vec<IpNet>,
    /// The phantom-token flow; `None` when no authorization server is configured.
    pub edge: Option<Arc<EdgeAuthenticator>>,
    pub identity: IdentityHeaders,
    /// For injected credentials and their refresh on an upstream 401.
    pub secrets: Arc<SecretRegistry>,
    /// Rate limits and the budgets per client address; `None` when all are off.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Tokens for downstream audiences; `None` when no route exchanges.
    pub downstream: Option<Arc<DownstreamTokens>>,
    /// The denylist; `None` without an authorization server.
    pub revoker: Option<Arc<Revoker>>,
    /// Browser sessions, for `session` routes; `None` without `[session]`.
    pub sessions: Option<Arc<Sessions>>,
    /// Traffic by verified client and its anomalies; `None` when off.
    pub clients: Option<Arc<ClientInsight>>,
}

/// What the phases learn about one request, each filling its part in order; the answer
/// carries the route tag and the rate-limit headers, error or not.
#[derive(Default)]
struct RequestContext {
    /// The route matched, for the access log and the route's metrics.
    route: Option<RouteTag>,
    /// The caller, on `bearer` routes.
    caller: Option<AdmittedCaller>,
    /// `RateLimit-Policy` and `RateLimit`.
    rate_limit: Option<(header::HeaderValue, header::HeaderValue)>,
    /// The target's own token, on routes with `exchange`.
    downstream_token: Option<String>,
}

/// A caller the gate admitted, with the token it presented (the subject of an exchange).
struct AdmittedCaller {
    admitted: Admitted,
    token: String,
    /// On session routes: the ID token's claims that claim rules read (the access
    /// token's own claims come first).
    login_claims: KeptClaims,
}

impl RequestContext {
    fn admitted(&self) -> Option<&Admitted> {
        self.caller.as_ref().map(|c| &c.admitted)
    }
}

/// The default service of the public listener: every request not served by Intercom
/// itself goes through here.
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ProxyState>,
) -> HttpResponse {
    let table = state.routes.load_full();
    let clients = req
        .app_data::<UpstreamClients>()
        .expect("startup registers the upstream clients on every worker")
        .for_table(&table);
    let mut context = RequestContext::default();
    let result = proxy(&req, payload, &state, (&table, &clients), &mut context).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => error.at(&req).error_response(),
    };
    if let (Some(insight), Some(caller), Some(tag)) =
        (&state.clients, &context.caller, &context.route)
    {
        let principal = &caller.admitted.token.principal;
        if let Some(client) = &principal.client_id {
            insight.record(
                client,
                &tag.name,
                response.status().as_u16(),
                &principal.scopes,
            );
        }
    }
    if let Some(tag) = context.route {
        response.extensions_mut().insert(tag);
    }
    if let Some((policy, current)) = context.rate_limit {
        let headers = response.headers_mut();
        headers.insert(header::HeaderName::from_static("ratelimit-policy"), policy);
        headers.insert(header::HeaderName::from_static("ratelimit"), current);
    }
    response
}

async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    state: &ProxyState,
    (table, clients): (&RouteTable, &RouteClients),
    context: &mut RequestContext,
) -> Result<HttpResponse, ApiError> {
    let canonical = path::canonicalize(req.uri().path())?;
    if req
        .headers()
        .get_all(header::AUTHORIZATION)
        .nth(1)
        .is_some()
    {
        // Which one would the upstream read? Neither is guessed at.
        return Err(ApiError::BadRequest(
            "more than one Authorization header".into(),
        ));
    }
    let route = pick_route(req, table, &canonical)?;
    context.route = Some(RouteTag {
        name: route.name.clone(),
        metrics: route.metrics.clone(),
    });
    // An announced body over the limit is refused before anything costs the AS a call.
    let framing = refuse_oversized(req, route)?;
    context.caller = authenticate(req, state, route).await?;
    authorize(route, context.caller.as_ref())?;
    if route.filters.runs_at(Phase::Authenticated) {
        let view = filter_view(req, route, &canonical, context.caller.as_ref());
        route
            .filters
            .authenticated(&view)
            .await
            .map_err(ApiError::FilterRefused)?;
    }
    rate_limit(req, state, route, context).await?;
    context.downstream_token = downstream_token(state, route, context.caller.as_ref()).await?;
    // A WebSocket handshake keeps the connection's bytes for its tunnel.
    let (body, tunnel) = match route.websocket && tunnel::is_requested(req) {
        true => (RequestBody::Empty, Some(payload)),
        false => (limit(route, framing, payload).await?, None),
    };
    let mut outbound = rewrite(req, state, route, &canonical, framing, context.admitted());
    if let Some(caller) = &context.caller {
        let claims = &caller.admitted.token.principal.claims;
        let login = &caller.login_claims;
        route
            .claim_headers
            .apply(&mut outbound.headers, claims, login);
    }
    if let Some(token) = &context.downstream_token {
        // The target's own token replaces the internal JWT.
        if let Ok(value) = header::HeaderValue::from_str(&format!("Bearer {token}")) {
            outbound.headers.insert(header::AUTHORIZATION, value);
        }
    }
    if route.filters.runs_at(Phase::BeforeForwarding) {
        let view = filter_view(req, route, &canonical, context.caller.as_ref());
        route
            .filters
            .before_forwarding(&view, &mut outbound.headers)
            .await
            .map_err(ApiError::FilterRefused)?;
    }
    let injected = inject_credential(route, &mut outbound).await?;
    if let Some(payload) = tunnel {
        return tunnel::open(req, clients, route, outbound, payload).await;
    }
    // What is needed to send the request again if the credential is refused.
    let replay = match (&injected, &body) {
        (Some(_), RequestBody::Buffered(bytes)) => Some((outbound.clone(), Some(bytes.clone()))),
        (Some(_), _) if outbound.framing == BodyFraming::None => Some((outbound.clone(), None)),
        _ => None,
    };
    let mut answer = forward::send(clients, route, outbound, Some(body)).await?;
    if answer.status == StatusCode::UNAUTHORIZED {
        if let (Some(again), Some(sent), Some(inject)) = (replay, injected, &route.inject) {
            answer = retry_with_other_credential(clients, state, route, inject, again, &sent)
                .await?
                .unwrap_or(answer);
        }
    }
    if route.filters.runs_at(Phase::Response) {
        let view = filter_view(req, route, &canonical, context.caller.as_ref());
        route
            .filters
            .on_response(&view, answer.status, &mut answer.headers);
    }
    Ok(filter_response(route, answer, req))
}

/// What the route's filters see of the request.
fn filter_view<'a>(
    req: &'a HttpRequest,
    route: &'a Route,
    canonical: &'a str,
    caller: Option<&'a AdmittedCaller>,
) -> FilterRequest<'a> {
    FilterRequest {
        route: &route.name,
        method: req.method(),
        path: canonical,
        headers: req.headers(),
        principal: caller.map(|c| &c.admitted.token.principal),
    }
}

/// Sets the route's credential (a stored secret or a fetched token), replacing the
/// client's copy of that header; returns what was sent, for a retry on 401.
async fn inject_credential(
    route: &Route,
    outbound: &mut OutboundRequest,
) -> Result<Option<Secret>, ApiError> {
    let Some(inject) = &route.inject else {
        return Ok(None);
    };
    let secret = inject.value().await?;
    inject.apply(&mut outbound.headers, &secret);
    Ok(Some(secret))
}

/// An upstream refused an injected credential: ask the store again and retry once with
/// the fresh (or the previous) value, so no request fails while ops roll a secret.
async fn retry_with_other_credential(
    clients: &RouteClients,
    state: &ProxyState,
    route: &Route,
    inject: &Injection,
    (mut again, body): (OutboundRequest, Option<bytes::Bytes>),
    sent: &Secret,
) -> Result<Option<UpstreamAnswer>, ApiError> {
    let Some(other) = inject.retry_value(sent, &state.secrets).await else {
        return Ok(None);
    };
    inject.apply(&mut again.headers, &other);
    metrics::counter!("intercom_credential_retries_total", "route" => route.name.to_string())
        .increment(1);
    let body = body.map(RequestBody::Buffered);
    forward::send(clients, route, again, body).await.map(Some)
}

/// Picks the route for the canonical path, or answers 404 / 405.
fn pick_route<'a>(
    req: &HttpRequest,
    table: &'a RouteTable,
    canonical: &str,
) -> Result<&'a Route, ApiError> {
    match table.find(request_host(req), canonical, req.method()) {
        Match::Found(route) => Ok(route),
        Match::WrongMethod(allow) => Err(ApiError::MethodNotAllowed { allow }),
        Match::None => Err(ApiError::NotFound),
    }
}

/// Admits the bearer token of a `bearer` route (from the cache when possible), unless
/// it was revoked; keeps the token too, as the subject of a token exchange.
async fn authenticate(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
) -> Result<Option<AdmittedCaller>, ApiError> {
    let Some(CallerToken {
        token,
        login_claims,
        ..
    }) = caller_token(req, state, route).await?
    else {
        return Ok(None);
    };
    let edge = state.edge.as_ref().ok_or(ApiError::Internal)?;
    let admitted = gate::admit(
        edge,
        state.revoker.as_deref(),
        &token,
        &route.upstream_bearer,
        || gate::unknown_token_gate(req, state.limiter.as_deref(), &state.trusted_proxies),
    )
    .await?;
    Ok(Some(AdmittedCaller {
        admitted,
        token,
        login_claims,
    }))
}

/// The token a request presents on its route, and where it came from.
struct CallerToken {
    token: String,
    /// On session routes, the ID token's claims that claim rules read.
    login_claims: KeptClaims,
    /// `authorization_header`, `query` or `session`.
    source: &'static str,
}

/// The bearer token (header or, where allowed, query) or the session's access token;
/// `None` on routes without auth.
async fn caller_token(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
) -> Result<Option<CallerToken>, ApiError> {
    let (token, login_claims, source) = match route.auth {
        RouteAuth::None => return Ok(None),
        RouteAuth::Bearer => {
            let (token, source) = credentials::extract_bearer(req, route.allow_query_token)?;
            let source = match source {
                credentials::TokenSource::Header => "authorization_header",
                credentials::TokenSource::Query => "query",
            };
            (token, KeptClaims::new(), source)
        }
        RouteAuth::Session => {
            // Boxed: a session read may refresh at the AS under a lease in Redis, a deep
            // future (about 50 KiB); inline it made every proxied request's future as
            // large, copied into actix's boxed service call on each request.
            let (token, claims) = Box::pin(session_token(req, state, route)).await?;
            (token, claims, "session")
        }
    };
    Ok(Some(CallerToken {
        token,
        login_claims,
        source,
    }))
}

/// The access token of the browser session whose cookie came, refreshed when due.
/// State-changing methods must pass the CSRF rule first. Without a live session: 401,
/// or a redirect to the login for a page navigation on an `on_missing = "login"` route.
async fn session_token(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
) -> Result<(String, KeptClaims), ApiError> {
    let sessions = state.sessions.as_ref().ok_or(ApiError::Internal)?;
    let safe = matches!(
        *req.method(),
        actix_web::http::Method::GET
            | actix_web::http::Method::HEAD
            | actix_web::http::Method::OPTIONS
    );
    if !safe {
        gate::check_csrf(req, sessions)?;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if route.websocket && tunnel::is_requested(req) && !sessions.origin_allowed(origin) {
        // Cross-site WebSocket hijacking: the cookie would open the tunnel for any site.
        return Err(ApiError::CsrfRefused(
            "a WebSocket handshake must come from an allowed origin",
        ));
    }
    let cookie = req.cookie(&sessions.cookies.session);
    let session = match cookie {
        Some(cookie) => sessions.current(cookie.value()).await?,
        None => None,
    };
    match session {
        Some(session) => Ok((session.access_token, session.claims)),
        None if route.on_missing == OnMissingSession::Login
            && matches!(
                *req.method(),
                actix_web::http::Method::GET | actix_web::http::Method::HEAD
            ) =>
        {
            let here = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let query = serde_urlencoded::to_string([("return_to", here)]).unwrap_or_default();
            Err(ApiError::LoginRequired {
                location: format!("/auth/login?{query}"),
            })
        }
        None => Err(ApiError::SessionRequired),
    }
}

/// The target's token on a route with `exchange`: policy, then the two-tier cache or
/// the AS. Denied → 403 before any call to the AS.
async fn downstream_token(
    state: &ProxyState,
    route: &Route,
    caller: Option<&AdmittedCaller>,
) -> Result<Option<String>, ApiError> {
    let (
        Some(target),
        Some(AdmittedCaller {
            admitted, token, ..
        }),
    ) = (&route.target, caller)
    else {
        return Ok(None);
    };
    let downstream = state.downstream.as_ref().ok_or(ApiError::Internal)?;
    let subject = Subject {
        token: token.clone(),
        principal: admitted.token.principal.clone(),
        caller: admitted.token.principal.clone(),
    };
    downstream
        .token_for(&subject, target, None)
        .await
        .map(|entry| Some(entry.token.clone()))
        .map_err(ApiError::from)
}

/// Checks the route's scope and claim policies, on every request, cache hit or miss
/// alike.
fn authorize(route: &Route, caller: Option<&AdmittedCaller>) -> Result<(), ApiError> {
    let Some(caller) = caller else {
        return Ok(());
    };
    let principal = &caller.admitted.token.principal;
    route
        .accepts(principal)
        .map_err(|why| ApiError::InvalidToken(TokenRejected::NotForRoute(why)))?;
    route
        .scopes
        .check(&principal.scopes)
        .map_err(ApiError::InsufficientScope)?;
    let claims = if caller.login_claims.is_empty() {
        std::borrow::Cow::Borrowed(&principal.claims)
    } else {
        // A session's ID token claims fill in what its access token does not say.
        let mut merged = caller.login_claims.clone();
        merged.extend(principal.claims.clone());
        std::borrow::Cow::Owned(merged)
    };
    route.claims.check(&claims).map_err(ApiError::ClaimRefused)
}

/// Counts the request against the route's rate limit, by verified identity (or the
/// trusted client address), and refuses it with 429 when a window is spent.
async fn rate_limit(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
    context: &mut RequestContext,
) -> Result<(), ApiError> {
    let Some(limiter) = &state.limiter else {
        return Ok(());
    };
    let Some(policy) = route.rate_limit.as_deref() else {
        return Ok(());
    };
    let principal = context.admitted().map(|a| &a.token.principal);
    let caller = rate_limit_caller(req, state, policy, principal)?;
    let decision = limiter
        .check(policy, caller)
        .await
        .map_err(|_| ApiError::RateLimiterUnavailable)?;
    context.rate_limit = decision.headers;
    if decision.allowed {
        Ok(())
    } else {
        Err(ApiError::RateLimited {
            retry_after: crate::limits::ceil_secs(decision.retry_after).max(1),
        })
    }
}

/// Whom a request counts against: the verified identity (with its tier) on identity
/// routes, else the trusted client address.
fn rate_limit_caller<'a>(
    req: &HttpRequest,
    state: &ProxyState,
    policy: &crate::limits::policy::RoutePolicy,
    principal: Option<&'a crate::broker::Principal>,
) -> Result<Caller<'a>, ApiError> {
    let identity = principal.and_then(|p| p.sub.as_deref().or(p.client_id.as_deref()));
    match (policy.key, identity) {
        (crate::settings::RateLimitKey::Identity, Some(id)) => Ok(Caller::Identity {
            id,
            tier: principal.and_then(|p| p.tier.as_deref()),
        }),
        _ => {
            let peer = req.peer_addr().map(|a| a.ip());
            match headers::client_address(peer, req.headers(), &state.trusted_proxies) {
                Some(ip) => Ok(Caller::Address(ip)),
                None => Err(ApiError::BadRequest("no client address".into())),
            }
        }
    }
}

/// Bodies up to this size are held in memory on routes that inject a credential, so a
/// refused credential can be retried with the body.
const REPLAYABLE_BODY_BYTES: u64 = 64 * 1024;

/// The body's framing, refusing one whose `Content-Length` the route does not take
/// (before reading any of it, and before the token is checked).
fn refuse_oversized(req: &HttpRequest, route: &Route) -> Result<BodyFraming, ApiError> {
    let framing = BodyFraming::of(req.headers());
    match framing {
        BodyFraming::Sized(len) if len > route.max_body_bytes => Err(ApiError::PayloadTooLarge),
        _ => Ok(framing),
    }
}

/// Limits a body the route takes: a chunked one is cut off while streaming when it
/// passes the limit; a small one on a route that injects a credential is held for a retry.
async fn limit(
    route: &Route,
    framing: BodyFraming,
    payload: web::Payload,
) -> Result<RequestBody, ApiError> {
    if framing == BodyFraming::None {
        return Ok(RequestBody::Empty);
    }
    let body = LimitedBody::new(payload, route.max_body_bytes, route.timeouts.body_idle);
    match framing {
        BodyFraming::Sized(len) if route.inject.is_some() && len <= REPLAYABLE_BODY_BYTES => {
            Ok(RequestBody::Buffered(body.buffer().await?))
        }
        _ => Ok(RequestBody::Streamed(body)),
    }
}

/// The host the client asked for: the request target's authority, else `Host`.
pub(super) fn request_host(req: &HttpRequest) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// Builds the upstream request: new path, the client's headers less hop-by-hop ones,
/// `X-Forwarded-*`, then the route's rules.
fn rewrite(
    req: &HttpRequest,
    state: &ProxyState,
    route: &Route,
    canonical: &str,
    framing: BodyFraming,
    admitted: Option<&Admitted>,
) -> OutboundRequest {
    let mut path_and_query = path::encode(&route.upstream_path(canonical));
    if let Some(query) = req.uri().query() {
        // On bearer routes a token in the query never travels on, however it is spelled.
        let query = match route.auth {
            RouteAuth::Bearer | RouteAuth::Session => credentials::query_without_token(query),
            RouteAuth::None => query.to_string(),
        };
        if !query.is_empty() {
            path_and_query.push('?');
            path_and_query.push_str(&query);
        }
    }
    let mut headers: HeaderMap = req.headers().clone();
    headers::remove_hop_by_hop(&mut headers);
    if let Some(sessions) = &state.sessions {
        // Intercom's own cookies never travel upstream, on any route.
        headers::remove_cookies(
            &mut headers,
            &[&sessions.cookies.session, &sessions.cookies.csrf],
            &sessions.cookies.flow_prefix,
        );
    }
    state.identity.strip(&mut headers, &route.internal_headers);
    if let Some(admitted) = admitted {
        state.identity.inject(&mut headers, admitted);
    }

    let view = ClientView {
        peer: req.peer_addr().map(|a| a.ip()),
        // Not `connection_info()`: it believes the client's `X-Forwarded-Proto`.
        scheme: if req.app_config().secure() {
            "https"
        } else {
            "http"
        },
        host: request_host(req),
    };
    headers::remove_client_routing(
        &mut headers,
        headers::is_trusted(view.peer, &state.trusted_proxies),
        route.allow_method_override,
    );
    headers::set_forwarded(&mut headers, &view, &state.trusted_proxies);
    if let Some(id) = req.extensions().get::<RequestId>() {
        headers.insert(request_id::X_REQUEST_ID, id.0.clone());
    }
    route.request_headers.apply(&mut headers);
    OutboundRequest {
        method: req.method().clone(),
        path_and_query,
        headers,
        framing,
    }
}

/// Applies the route's response rules and records the upstream's latency.
fn filter_response(route: &Route, mut answer: UpstreamAnswer, req: &HttpRequest) -> HttpResponse {
    route.response_headers.apply(&mut answer.headers);
    if route.any_origin {
        answer
            .headers
            .remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    }
    let latency = answer.latency;
    let mut response = forward::into_response(answer, req.method());
    response.extensions_mut().insert(UpstreamLatency(latency));
    if route.enforce_security_headers {
        response.extensions_mut().insert(EnforceSecurityHeaders);
    }
    response
}

#[cfg(test)]
mod tests {
    /// The size of what `f` returns (for an async fn, its future), without calling it.
    fn returned_size<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// [`returned_size`] of a function of two arguments.
    fn returned_size_2<A, B, R>(_: impl Fn(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// actix moves each request's handler future into a box of its own: every byte of it
    /// is copied per request. A rare path awaited inline (a session refresh, a Redis
    /// pool's connect) once made this future 51 KiB, and the copy was most of a proxied
    /// request's instructions (scripts/bench/instructions); such paths are boxed.
    #[test]
    fn the_request_future_stays_small() {
        let proxy = returned_size(super::handle);
        assert!(proxy <= 8 * 1024, "the proxy's future is {proxy} bytes");
        let session = returned_size_2(crate::endpoints::session::status);
        assert!(
            session <= 8 * 1024,
            "/auth/session's future is {session} bytes"
        );
    }
}
