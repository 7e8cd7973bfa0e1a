//! HTTP/2 to upstreams, multiplexed: hyper's client for the routes that may speak it
//! (`h2c`, and TLS routes whose upstream picks `h2` by ALPN). awc, the client of the
//! other routes, gives each request in flight an HTTP/2 connection of its own and
//! reuses it only once the request is over; hyper sends a worker's concurrent requests
//! to an instance as streams of one connection.
//!
//! Connections are dialled and measured as awc's are (connect time, open connections,
//! TLS handshake time: [`super::connections`]), with the route's TLS config (its CA, its
//! client certificate, its sessions). actix-web speaks `http` 0.2 and hyper `http` 1: the
//! method, the headers and the status cross by their bytes. hyper wants a `Send`
//! request body and actix's payload is not one: a streamed body crosses by a channel.
//! Trailers (gRPC's status) are not carried back: actix-web cannot send them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::error::PayloadError;
use actix_web::http::header::HeaderMap;
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::connections::MeteredStream;
use super::routes::Route;
use super::transport::Transport;
use super::upstreams::Instance;

/// The request body hyper sends.
pub type OutBody = UnsyncBoxBody<Bytes, io::Error>;

/// hyper's pooled client for one instance.
type InstanceClient = Client<Dialer, OutBody>;

/// One worker's hyper clients for one route: per instance, a connection shared by the
/// requests in flight.
pub struct MultiplexedClient {
    /// What every instance's dialer starts from.
    dialer: Dialer,
    h2c: bool,
    max_connections: usize,
    /// The route's `timeouts.response`: the longest wait for an answer's head.
    response_timeout: Duration,
    /// By the instance's address. One client per instance, not one for the route:
    /// hyper pools by the URL's authority, which is the host name (it goes in
    /// `:authority`, or `Host`) and may be shared by the instances discovery found.
    by_instance: RefCell<HashMap<String, Kept>>,
}

/// An instance's client, when it was made, and the permits that bound its requests in
/// flight to `server.upstream_pool_size` (hyper's pool has no such bound: on HTTP/1.1
/// each request in flight is a connection, as awc's `limit` bounds them).
struct Kept {
    client: InstanceClient,
    made: Instant,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Clients kept for instances before the set is cleared, at least (discovery replaces
/// instances: the set must not grow with every address a name ever had; it may hold
/// twice the route's instances of the moment).
const KEPT_INSTANCES: usize = 64;

/// How long an instance's client sends new requests: then a new one (new connections)
/// takes over, and the old one's connections close when their requests are done. As
/// awc's connection lifetime: an HTTP/2 connection that is never idle would otherwise
/// keep a rotated client certificate, or a moved instance, in use for ever.
const CLIENT_LIFETIME: Duration = Duration::from_secs(300);

impl MultiplexedClient {
    /// The client for `route` when hyper is what it needs: HTTP/2 may be spoken to its
    /// upstreams and no request on it upgrades (a WebSocket is an HTTP/1.1 upgrade).
    pub fn for_route(route: &Route, max_connections: usize) -> Option<Self> {
        let (tls, h2c) = match &route.transport {
            Transport::H2c => (None, true),
            Transport::Tls(config)
                if !route.websocket && config.alpn_protocols.iter().any(|p| p == b"h2") =>
            {
                (Some(config.clone()), false)
            }
            _ => return None,
        };
        let mut http = HttpConnector::new();
        // The scheme says nothing here: the dialer does TLS when the route has it.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(route.timeouts.connect));
        Some(Self {
            dialer: Dialer {
                http,
                address: http1::Uri::default(),
                route: route.name.clone(),
                tls: tls.map(tokio_rustls::TlsConnector::from),
                handshake_timeout: route.timeouts.connect,
            },
            h2c,
            max_connections,
            response_timeout: route.timeouts.response,
            by_instance: RefCell::new(HashMap::new()),
        })
    }

    /// The client of `instance` (one of `instances`), made on its first request, and its
    /// permits.
    fn client(
        &self,
        instance: &Instance,
        instances: usize,
    ) -> Result<(InstanceClient, Arc<tokio::sync::Semaphore>), Sent> {
        let mut permits = None;
        if let Some(kept) = self.by_instance.borrow().get(&instance.authority) {
            if kept.made.elapsed() < CLIENT_LIFETIME {
                return Ok((kept.client.clone(), kept.permits.clone()));
            }
            // The requests of the old client still hold their permits.
            permits = Some(kept.permits.clone());
        }
        let mut dialer = self.dialer.clone();
        // The scheme gives the port when the URL names none.
        let scheme = if dialer.tls.is_some() {
            "https"
        } else {
            "http"
        };
        dialer.address = format!("{scheme}://{}", instance.authority)
            .parse()
            .map_err(|_| Sent::Invalid)?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(self.max_connections)
            .http2_only(self.h2c)
            .build(dialer);
        let permits =
            permits.unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(self.max_connections)));
        let mut kept = self.by_instance.borrow_mut();
        if kept.len() >= KEPT_INSTANCES.max(2 * instances) {
            kept.clear();
        }
        kept.insert(
            instance.authority.clone(),
            Kept {
                client: client.clone(),
                made: Instant::now(),
                permits: permits.clone(),
            },
        );
        Ok((client, permits))
    }

    /// Sends one request to `instance` (of the route's `instances`) and waits for the
    /// answer's head, at most the route's `timeouts.response`. The URL's authority is
    /// the configured host (`:authority`, or `Host` on HTTP/1.1): `headers` carry no
    /// `Host`.
    pub async fn send(
        &self,
        instance: &Instance,
        instances: usize,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: OutBody,
    ) -> Result<(hyper::Response<Incoming>, OwnedSemaphorePermit), Sent> {
        let (client, permits) = self.client(instance, instances)?;
        let mut request = hyper::Request::new(body);
        *request.method_mut() =
            http1::Method::from_bytes(method.as_str().as_bytes()).map_err(|_| Sent::Invalid)?;
        *request.uri_mut() = format!("{}{path_and_query}", instance.named_base)
            .parse()
            .map_err(|_| Sent::Invalid)?;
        let out = request.headers_mut();
        out.reserve(headers.len());
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                http1::HeaderName::from_bytes(name.as_str().as_bytes()),
                http1::HeaderValue::from_bytes(value.as_bytes()),
            ) {
                out.append(name, value);
            }
        }
        // A request waiting for a permit waits within its response timeout.
        let sending = async {
            let permit = permits.acquire_owned().await.map_err(|_| Sent::Invalid)?;
            match client.request(request).await {
                Ok(response) => Ok((response, permit)),
                Err(error) => Err(Sent::Failed(error)),
            }
        };
        tokio::time::timeout(self.response_timeout, sending)
            .await
            .unwrap_or(Err(Sent::TimedOut))
    }
}

/// Why a request sent with hyper got no answer.
#[derive(Debug)]
pub enum Sent {
    /// The method or the URL cannot be said in `http` 1 (never for a request actix
    /// parsed).
    Invalid,
    /// No answer's head within `timeouts.response`.
    TimedOut,
    Failed(hyper_util::client::legacy::Error),
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sent::Invalid => f.write_str("the request cannot be expressed in hyper's types"),
            Sent::TimedOut => f.write_str("no answer in time"),
            Sent::Failed(error) => {
                write!(f, "{error}")?;
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
        }
    }
}

impl Sent {
    /// The client's own body failed (hyper says the body it was given broke).
    pub fn body_failed(&self) -> bool {
        self.hyper_error().is_some_and(hyper::Error::is_user)
    }

    /// The connection was not made (refused, timed out, or its TLS handshake failed).
    pub fn before_connecting(&self) -> bool {
        matches!(self, Sent::Failed(e) if e.is_connect())
    }

    /// The first `hyper::Error` among the causes.
    pub fn hyper_error(&self) -> Option<&hyper::Error> {
        self.causes().find_map(|e| e.downcast_ref::<hyper::Error>())
    }

    /// The first I/O error among the causes (a TLS failure is inside one).
    pub fn io_error(&self) -> Option<&io::Error> {
        self.causes().find_map(|e| e.downcast_ref::<io::Error>())
    }

    fn causes(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        let first: Option<&(dyn std::error::Error + 'static)> = match self {
            Sent::Failed(error) => std::error::Error::source(error),
            _ => None,
        };
        std::iter::successors(first, |e| e.source())
    }
}

/// No request body.
pub fn empty() -> OutBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A request body held in memory.
pub fn full(bytes: Bytes) -> OutBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A request body streamed from this worker (actix's payload, which is not `Send`):
/// pumped through a channel by a task of the worker.
pub fn pump<S, E>(mut stream: S) -> OutBody
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin + 'static,
    E: std::fmt::Display,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
    actix_web::rt::spawn(async move {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| io::Error::other(e.to_string()));
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((chunk.map(Frame::data), rx))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// An answer's status and headers in actix's types, hop-by-hop headers left in (the
/// caller removes them as for awc's answers).
pub fn head(response: &hyper::Response<Incoming>) -> (StatusCode, HeaderMap) {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::with_capacity(response.headers().len());
    for (name, value) in response.headers() {
        if let (Ok(name), Ok(value)) = (
            actix_web::http::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            actix_web::http::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    (status, headers)
}

/// An answer's body as the proxy streams it on: its data, until the route's `total`
/// deadline (what awc's timer does for its answers).
pub struct ResponseBody {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The request's place among the instance's requests in flight, until the body ends.
    _permit: OwnedSemaphorePermit,
}

impl ResponseBody {
    pub fn new(body: Incoming, within: Duration, permit: OwnedSemaphorePermit) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep(within)),
            _permit: permit,
        }
    }
}

impl futures_util::Stream for ResponseBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    // Trailers: actix-web cannot send them on.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(PayloadError::Io(io::Error::other(e)))))
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            return match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the upstream's answer took longer than the route's total timeout",
                ))))),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// Dials one instance for hyper: TCP to its address (measured), then TLS when the
/// route has it, the name checked being the URL's host.
#[derive(Clone)]
struct Dialer {
    http: HttpConnector,
    /// `http[s]://<the instance's address>`: what is dialled, whatever the URL's host.
    address: http1::Uri,
    route: Arc<str>,
    tls: Option<tokio_rustls::TlsConnector>,
    handshake_timeout: Duration,
}

impl tower_service::Service<http1::Uri> for Dialer {
    type Response = TokioIo<Dialed>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Dialed>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http1::Uri) -> Self::Future {
        let mut http = self.http.clone();
        let address = self.address.clone();
        let route = self.route.clone();
        let tls = self.tls.clone();
        let handshake_timeout = self.handshake_timeout;
        Box::pin(async move {
            let instance = address
                .authority()
                .map_or_else(String::new, |a| a.to_string());
            let started = Instant::now();
            let tcp = tower_service::Service::call(&mut http, address)
                .await
                .map_err(io::Error::other)?
                .into_inner();
            let stream = MeteredStream::connected(tcp, &route, instance, started, tls.is_some());
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Dialed::Plain(stream)));
            };
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(io::Error::other)?;
            let stream = tokio::time::timeout(handshake_timeout, tls.connect(name, stream))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(TokioIo::new(Dialed::Tls(Box::new(stream))))
        })
    }
}

/// A dialled connection, plain (h2c) or TLS.
enum Dialed {
    Plain(MeteredStream),
    Tls(Box<tokio_rustls::client::TlsStream<MeteredStream>>),
}

impl Connection for Dialed {
    fn connected(&self) -> Connected {
        match self {
            Dialed::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
    }
}

impl AsyncRead for Dialed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Dialed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Dialed::Plain(s) => s.is_write_vectored(),
            Dialed::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_flush(cx),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Dialed::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
