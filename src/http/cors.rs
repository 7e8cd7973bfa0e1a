//! A route's CORS policy as an `actix-cors` middleware: preflights are answered here
//! and never reach the upstream, and credentials are only ever allowed for named
//! origins. `proxy::cors` picks the route's (on the canonical path, as the route table
//! matches it: `//api/x` gets `/api`'s policy).

use actix_cors::Cors;

use crate::settings::{AllowedOrigin, CorsSettings};

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
