//! The envelope of every request on the public listener, as one middleware: the request
//! id, the request's span, the problem re-dress of bare errors, the security headers,
//! the id echoed back, and the access-log line with the route's metrics, in that order.
//!
//! One layer, not four: each step was its own middleware (a boxed future each, and a
//! body wrapper for the span), which cost more than the few header writes they do. It
//! is written out as a `Transform` rather than with `from_fn`, whose `Next` boxes the
//! inner service's future once more on every request.

use std::future::{ready, Ready};
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use super::security_headers::Hsts;
use super::{access_log, errors, request_id, security_headers};

/// Middleware: wraps the public app (compression and routing run inside it).
pub struct Envelope;

impl<S, B> Transform<S, ServiceRequest> for Envelope
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = EnvelopeService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(EnvelopeService {
            service: Rc::new(service),
        }))
    }
}

/// The envelope around one worker's app.
pub struct EnvelopeService<S> {
    service: Rc<S>,
}

impl<S, B> Service<ServiceRequest> for EnvelopeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let start = Instant::now();
        let id = request_id::assign_to(&req);
        let hsts = req.app_data::<Hsts>().map(|h| h.0.clone());
        let span = access_log::span(&id, &req);
        let inner = self.service.call(req).instrument(span.clone());
        Box::pin(async move {
            let res = match inner.await {
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
        })
    }
}
