//! CORS per route with `actix-cors`: each route with a policy gets its own scope,
//! wrapped by its own `Cors`, so preflights are answered here and never reach the
//! upstream, and credentials are only ever allowed for named origins. The scopes match
//! the canonical path ([`canonical_routing`]), as the route table does: `//api/x` gets
//! `/api`'s policy.

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Uri;
use actix_web::middleware::Next;

use super::path;
use crate::settings::{AllowedOrigin, CorsSettings};

/// Middleware: before the router picks a scope, the request's path becomes its
/// canonical form (re-encoded), so scopes and the route table see the same path. A path
/// that fails canonicalization is left as it is: the proxy refuses it with 400.
pub async fn canonical_routing(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let raw = req.uri().path();
    // Without `//` or an escape, an acceptable path is already canonical (whatever
    // else canonicalization refuses, the proxy refuses with 400).
    if !raw.contains("//") && !raw.contains('%') {
        return next.call(req).await;
    }
    if let Ok(canonical) = path::canonicalize(raw) {
        let encoded = path::encode(&canonical);
        if encoded != req.uri().path() {
            let target = match req.uri().query() {
                Some(q) => format!("{encoded}?{q}"),
                None => encoded,
            };
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = target.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    req.match_info_mut().get_mut().update(&uri);
                    req.head_mut().uri = uri;
                }
            }
        }
    }
    next.call(req).await
}

/// The `actix-cors` middleware for one route's policy (validated in settings).
pub fn middleware(policy: &CorsSettings) -> Cors {
    let mut cors = Cors::default();
    for origin in &policy.origins {
        cors = match origin {
            AllowedOrigin::Any => cors.allow_any_origin(),
            AllowedOrigin::Exact(origin) => cors.allowed_origin(origin.as_str()),
        };
    }
    // A request from an origin the policy does not name is refused outright, not
    // forwarded without a grant.
    cors = cors
        .allowed_methods(policy.methods.iter().map(|m| m.0.clone()))
        .max_age(policy.max_age_secs)
        .block_on_origin_mismatch(true);
    if !policy.headers.is_empty() {
        cors = cors.allowed_headers(policy.headers.iter().map(|h| h.0.clone()));
    }
    if !policy.expose_headers.is_empty() {
        cors = cors.expose_headers(policy.expose_headers.iter().map(|h| h.0.clone()));
    }
    if policy.credentials {
        cors = cors.supports_credentials();
    }
    cors
}
