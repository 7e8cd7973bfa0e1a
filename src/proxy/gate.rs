//! The one gate a token passes, on the proxy path and at `POST /token` and `POST /revoke`
//! alike: the edge's verdict (cache, local JWT or introspection), the denylist, and the
//! per-address budgets that keep junk tokens from turning into calls to the AS.

use std::future::Future;

use actix_web::HttpRequest;
use ipnet::IpNet;

use super::headers;
use crate::broker::edge::{Admitted, EdgeAuthenticator, EdgeError, UpstreamBearer};
use crate::broker::failure::{Outage, TokenRejected};
use crate::http::errors::ApiError;
use crate::limits::{Budget, RateLimiter};
use crate::revoke::Revoker;

/// The edge's verdict on a token, refused when a revocation covers it. `gate` is run
/// before the AS is asked about a token not seen yet (see [`unknown_token_gate`]).
pub async fn admit<G: Future<Output = Result<(), EdgeError>>>(
    edge: &EdgeAuthenticator,
    revoker: Option<&Revoker>,
    token: &str,
    upstream: &UpstreamBearer,
    gate: impl FnOnce() -> G,
) -> Result<Admitted, ApiError> {
    let admitted = edge.admit(token, upstream, gate).await?;
    let cached = &admitted.token;
    if revoker.is_some_and(|r| r.is_denied(&cached.ids, cached.principal.iat)) {
        return Err(ApiError::InvalidToken(TokenRejected::Revoked));
    }
    Ok(admitted)
}

/// A token not seen yet costs the AS a call: charged to the client address's budget
/// (once per distinct token, however many requests carry it at once), so junk tokens
/// cannot be turned into a flood of introspections.
pub async fn unknown_token_gate(
    req: &HttpRequest,
    limiter: Option<&RateLimiter>,
    trusted: &[IpNet],
) -> Result<(), EdgeError> {
    match spend_budget(req, limiter, trusted, Budget::UnknownToken).await {
        Ok(()) => Ok(()),
        Err(ApiError::RateLimited { retry_after }) => Err(EdgeError::OverBudget { retry_after }),
        Err(e) => Err(Outage::because("the budget of unknown tokens cannot be checked", e).into()),
    }
}

/// Spends one unit of a budget of the client's address (the trusted address, as rate
/// limits see it); past it, 429.
pub async fn spend_budget(
    req: &HttpRequest,
    limiter: Option<&RateLimiter>,
    trusted: &[IpNet],
    budget: Budget,
) -> Result<(), ApiError> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    let peer = req.peer_addr().map(|a| a.ip());
    let Some(ip) = headers::client_address(peer, req.headers(), trusted) else {
        return Ok(());
    };
    match limiter.check_budget(budget, ip).await {
        Ok(Some(decision)) if !decision.allowed => Err(ApiError::RateLimited {
            retry_after: crate::limits::ceil_secs(decision.retry_after).max(1),
        }),
        Ok(_) => Ok(()),
        Err(_) => Err(ApiError::RateLimiterUnavailable),
    }
}

/// The CSRF rule of state-changing requests on session routes and at `/auth/logout`
/// (see [`crate::session::Sessions::check_csrf`]).
pub fn check_csrf(req: &HttpRequest, sessions: &crate::session::Sessions) -> Result<(), ApiError> {
    let text = |name: &actix_web::http::header::HeaderName| {
        req.headers().get(name).and_then(|v| v.to_str().ok())
    };
    let session = req.cookie(&sessions.cookies.session);
    sessions
        .check_csrf(
            req.headers()
                .get(&sessions.csrf_header)
                .map(|v| v.as_bytes()),
            text(&actix_web::http::header::ORIGIN),
            text(&actix_web::http::header::REFERER),
            session.as_ref().map(|c| c.value()),
        )
        .map_err(ApiError::CsrfRefused)
}
