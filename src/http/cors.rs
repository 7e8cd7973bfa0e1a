//! CORS per route with `actix-cors`: each route with a policy gets its own scope,
//! wrapped by its own `Cors`, so preflights are answered here and never reach the
//! upstream, and credentials are only ever allowed for named origins.

use actix_cors::Cors;

use crate::settings::CorsSettings;

/// The `actix-cors` middleware for one route's policy (validated in settings).
pub fn middleware(policy: &CorsSettings) -> Cors {
    let mut cors = Cors::default();
    if policy.origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in &policy.origins {
            cors = cors.allowed_origin(origin);
        }
    }
    // A request from an origin the policy does not name is refused outright, not
    // forwarded without a grant.
    cors = cors
        .allowed_methods(policy.methods.iter().map(String::as_str))
        .max_age(policy.max_age_secs)
        .block_on_origin_mismatch(true);
    if !policy.headers.is_empty() {
        cors = cors.allowed_headers(policy.headers.iter().map(String::as_str));
    }
    if !policy.expose_headers.is_empty() {
        cors = cors.expose_headers(policy.expose_headers.iter().map(String::as_str));
    }
    if policy.credentials {
        cors = cors.supports_credentials();
    }
    cors
}
