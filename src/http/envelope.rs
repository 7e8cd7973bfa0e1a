//! The envelope of every request on the public listener, as one middleware: the request
//! id, the request's span, the problem re-dress of bare errors, the security headers,
//! the id echoed back, and the access-log line with the route's metrics, in that order.
//!
//! One layer, not five: each step was its own middleware (a boxed future each, and a
//! body wrapper for the span), which cost more than the few header writes they do.

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use tracing::Instrument;

use super::security_headers::Hsts;
use super::{access_log, errors, request_id, security_headers};

/// Middleware: wraps the public app (compression and routing run inside it).
pub async fn wrap<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let start = Instant::now();
    let id = request_id::assign_to(&req);
    let hsts = req.app_data::<Hsts>().map(|h| h.0.clone());
    let span = access_log::span(&id, &req);
    let res = match next.call(req).instrument(span.clone()).await {
        Ok(res) => res,
        Err(error) => {
            // actix turns handler errors into responses; this is an unanswered failure.
            tracing::error!(parent: &span, "request failed before a response was built");
            return Err(error);
        }
    };
    let mut res = errors::redress(res);
    security_headers::apply(&mut res, hsts);
    request_id::echo(&mut res, &id);
    access_log::record(&span, &res, start.elapsed());
    Ok(res)
}
