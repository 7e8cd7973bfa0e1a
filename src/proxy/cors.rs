//! CORS per route: the policy of the route a request falls under, as the route table in
//! force matches it (the canonical path, the host, whatever the method), answers
//! preflights here and decorates the answers; routes without a policy, and requests no
//! route takes, pass untouched. Each worker builds the `actix-cors` middleware of a
//! table's routes once, when it first serves that table, so a reload that changes a
//! policy takes effect with the table.

use std::cell::RefCell;
use std::future::{ready, Ready};
use std::rc::Rc;

use actix_cors::CorsMiddleware;
use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{web, Error};
use futures_util::future::{Either, LocalBoxFuture};

use super::routes::RouteTable;
use super::ProxyState;
use crate::http::path;

/// Middleware around the proxy (the public app's default service): what Intercom does
/// not answer itself. A request without a CORS policy passes with its own future.
pub struct RouteCors {
    pub proxy: web::Data<ProxyState>,
}

impl<S> Transform<S, ServiceRequest> for RouteCors
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error> + 'static,
{
    type Response = ServiceResponse;
    type Error = Error;
    type Transform = RouteCorsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RouteCorsService {
            inner: Inner(Rc::new(service)),
            proxy: self.proxy.clone(),
            built: RefCell::new(None),
        }))
    }
}

/// The app behind the CORS middleware, shared by every route's.
pub struct Inner<S>(Rc<S>);

impl<S> Clone for Inner<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S, B> Service<ServiceRequest> for Inner<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = S::Future;

    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&self, req: ServiceRequest) -> Self::Future {
        self.0.call(req)
    }
}

/// One worker's middleware of one table's routes (`by_index[i]` for route `i`).
struct Built<S> {
    generation: u64,
    by_index: Vec<Option<CorsMiddleware<Inner<S>>>>,
}

pub struct RouteCorsService<S> {
    inner: Inner<S>,
    proxy: web::Data<ProxyState>,
    built: RefCell<Option<Rc<Built<S>>>>,
}

impl<S> RouteCorsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error> + 'static,
{
    /// The middleware of `table`'s routes: those built before, unless the table is newer.
    fn for_table(&self, table: &RouteTable) -> Rc<Built<S>> {
        if let Some(built) = self.built.borrow().as_ref() {
            if built.generation == table.generation {
                return built.clone();
            }
        }
        let by_index = {
            let mut by_index: Vec<Option<CorsMiddleware<Inner<S>>>> =
                table.routes().iter().map(|_| None).collect();
            for route in table.routes() {
                let Some(policy) = &route.cors else {
                    continue;
                };
                let made = crate::http::cors::middleware(policy).new_transform(self.inner.clone());
                match made.into_inner() {
                    Ok(middleware) => by_index[route.index] = Some(middleware),
                    Err(()) => {
                        tracing::error!(route = %route.name, "the route's CORS policy cannot be built; its requests pass without CORS")
                    }
                }
            }
            by_index
        };
        let built = Rc::new(Built {
            generation: table.generation,
            by_index,
        });
        let newer = self
            .built
            .borrow()
            .as_ref()
            .is_none_or(|b| b.generation < built.generation);
        if newer {
            *self.built.borrow_mut() = Some(built.clone());
        }
        built
    }
}

impl<S> Service<ServiceRequest> for RouteCorsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error> + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = Error;
    type Future = Either<S::Future, LocalBoxFuture<'static, Result<ServiceResponse, Error>>>;

    actix_web::dev::forward_ready!(inner);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let table = self.proxy.routes.load();
        if !table.any_cors {
            return Either::Left(self.inner.call(req));
        }
        // The route the proxy would pick for the canonical path (a path that does not
        // canonicalize is the proxy's 400, without CORS).
        let index = path::canonicalize(req.uri().path())
            .ok()
            .and_then(|canonical| {
                let host = super::request_host(req.request());
                let route = table.matching(host, &canonical).next()?;
                route.cors.as_ref().map(|_| route.index)
            });
        let Some(index) = index else {
            return Either::Left(self.inner.call(req));
        };
        let built = self.for_table(&table);
        match &built.by_index[index] {
            Some(cors) => {
                let answer = cors.call(req);
                Either::Right(Box::pin(async move {
                    answer.await.map(|res| res.map_into_boxed_body())
                }))
            }
            None => Either::Left(self.inner.call(req)),
        }
    }
}
