//! The forwarder: one pooled `awc` client per route and worker, bodies streamed both
//! ways, and upstream failures turned into 502 / 503 / 504.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpResponse};
use awc::error::{ConnectError, SendRequestError};

use actix_tls::connect::Resolver;

use super::connections::MeteredConnector;
use super::headers::remove_hop_by_hop;
use super::multiplexed::{self, MultiplexedClient};
use super::routes::{Route, RouteTable};
use super::transport::Transport;
use super::upstreams::{InFlight, Instance, Upstreams};
use crate::http::errors::ApiError;
use crate::tls::TlsFailure;

/// One worker's HTTP clients for one route table, per route (`awc::Client` is not
/// `Send`), each with its own connection pool, connect timeout and transport (TLS
/// config, h2c): awc's, and hyper's where HTTP/2 may be spoken (requests multiplexed,
/// see [`super::multiplexed`]; awc then serves only WebSocket upgrades, which HTTP/2
/// routes do not take).
pub struct RouteClients {
    generation: u64,
    clients: Vec<(awc::Client, Option<MultiplexedClient>)>,
}

impl RouteClients {
    fn new(table: &RouteTable, max_connections: usize) -> Self {
        let mut by_index: Vec<(usize, (awc::Client, Option<MultiplexedClient>))> = table
            .routes()
            .iter()
            .map(|route| {
                // Resolved and dialled as awc does by default, measured per instance.
                let tcp = actix_tls::connect::Connector::new(Resolver::default()).service();
                let connector = awc::Connector::new()
                    .connector(MeteredConnector::new(
                        tcp,
                        &route.name,
                        matches!(route.transport, Transport::Tls(_)),
                    ))
                    .timeout(route.timeouts.connect)
                    .handshake_timeout(route.timeouts.connect)
                    .limit(max_connections)
                    .conn_keep_alive(Duration::from_secs(30))
                    .conn_lifetime(Duration::from_secs(300));
                // Without a TLS config, awc's `https` pool is h2c (`dangerous-h2c`): only
                // h2c routes have `https` in their instances' base URLs (`Upstreams::new`).
                let connector = match &route.transport {
                    Transport::Tls(config) => connector.rustls_0_23(config.clone()),
                    Transport::Plain | Transport::H2c => connector,
                };
                // awc's timer bounds the wait for the response head; the same timer is
                // then reset to what is left of `total` for the body (see `send`).
                let client = awc::Client::builder()
                    .connector(connector)
                    .disable_redirects()
                    .no_default_headers()
                    .timeout(route.timeouts.response)
                    .finish();
                let multiplexed = MultiplexedClient::for_route(route, max_connections);
                (route.index, (client, multiplexed))
            })
            .collect();
        by_index.sort_by_key(|(i, _)| *i);
        Self {
            generation: table.generation,
            clients: by_index.into_iter().map(|(_, c)| c).collect(),
        }
    }

    /// The route's awc client (for a WebSocket upgrade, or every request of an
    /// HTTP/1.1 route).
    pub(super) fn get(&self, route: &Route) -> &awc::Client {
        &self.clients[route.index].0
    }

    /// The route's hyper client, when it multiplexes HTTP/2.
    fn multiplexed(&self, route: &Route) -> Option<&MultiplexedClient> {
        self.clients[route.index].1.as_ref()
    }
}

/// A worker's clients for the newest route table it has served; a request of an older
/// table (in flight across a reload) keeps the clients it started with.
pub struct UpstreamClients {
    current: std::cell::RefCell<Rc<RouteClients>>,
    max_connections: usize,
}

impl UpstreamClients {
    /// Builds the clients for one worker.
    pub fn new(table: &RouteTable, max_connections: usize) -> Self {
        Self {
            current: std::cell::RefCell::new(Rc::new(RouteClients::new(table, max_connections))),
            max_connections,
        }
    }

    /// The clients of `table`'s routes: those built before, unless the table is newer.
    pub fn for_table(&self, table: &RouteTable) -> Rc<RouteClients> {
        let current = self.current.borrow().clone();
        if current.generation == table.generation {
            return current;
        }
        let built = Rc::new(RouteClients::new(table, self.max_connections));
        if built.generation > current.generation {
            *self.current.borrow_mut() = built.clone();
        }
        built
    }
}

/// The client's request body, streamed, refused past the route's limit, and ended
/// when it pauses longer than the route's `body_idle`.
pub struct LimitedBody {
    inner: web::Payload,
    left: u64,
    exceeded: Rc<Cell<bool>>,
    idle: Duration,
    /// Fires when no chunk came for `idle`; set on the first read, reset by every chunk.
    quiet: Pin<Box<tokio::time::Sleep>>,
    reading: bool,
    idled: Rc<Cell<bool>>,
}

impl LimitedBody {
    pub fn new(inner: web::Payload, limit: u64, idle: Duration) -> Self {
        Self {
            inner,
            left: limit,
            exceeded: Rc::new(Cell::new(false)),
            idle,
            quiet: Box::pin(tokio::time::sleep(idle)),
            reading: false,
            idled: Rc::new(Cell::new(false)),
        }
    }
}

impl Stream for LimitedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !std::mem::replace(&mut self.reading, true) {
            // The pause counts from when Intercom starts reading, not from the request.
            let first = tokio::time::Instant::now() + self.idle;
            self.quiet.as_mut().reset(first);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                if len > self.left {
                    self.exceeded.set(true);
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                self.left -= len;
                let next = tokio::time::Instant::now() + self.idle;
                self.quiet.as_mut().reset(next);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Pending => match std::future::Future::poll(self.quiet.as_mut(), cx) {
                Poll::Ready(()) => {
                    self.idled.set(true);
                    Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body paused too long",
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

/// The body sent upstream: streamed, or held in memory when small enough to be sent
/// again (a retry with another credential, another instance).
pub enum RequestBody {
    /// The client framed no body: nothing to read, limit or time.
    Empty,
    Streamed(LimitedBody),
    Buffered(Bytes),
}

impl LimitedBody {
    /// Reads the whole (small) body into memory.
    pub async fn buffer(mut self) -> Result<Bytes, ApiError> {
        use futures_util::StreamExt;
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = self.next().await {
            match chunk {
                Ok(c) => buf.extend_from_slice(&c),
                Err(PayloadError::Overflow) => return Err(ApiError::PayloadTooLarge),
                Err(_) if self.idled.get() => return Err(ApiError::RequestTimeout),
                Err(_) => {
                    return Err(ApiError::BadRequest(
                        "the request body could not be read".into(),
                    ))
                }
            }
        }
        Ok(buf.freeze())
    }
}

/// The upstream's answer body as it is streamed on: the request stays in flight on its
/// instance (what `least_request` balances by) until the body ends or is dropped.
pub struct UpstreamBody {
    response: ResponseBody,
    in_flight: Option<InFlight>,
}

/// The client that brings the answer's body.
enum ResponseBody {
    Awc(awc::ClientResponse),
    Multiplexed(multiplexed::ResponseBody),
}

impl Stream for UpstreamBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = match &mut self.response {
            ResponseBody::Awc(response) => Pin::new(response).poll_next(cx),
            ResponseBody::Multiplexed(body) => Pin::new(body).poll_next(cx),
        };
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            self.in_flight = None;
        }
        next
    }
}

/// What the upstream answered, ready for the response filter.
pub struct UpstreamAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
    /// From sending the request to receiving the response head.
    pub latency: Duration,
}

/// How the client framed its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Sized(u64),
    Chunked,
}

impl BodyFraming {
    /// Reads the framing from the client's headers (before hop-by-hop removal).
    pub fn of(headers: &HeaderMap) -> Self {
        if headers.contains_key(header::TRANSFER_ENCODING) {
            return BodyFraming::Chunked;
        }
        match headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(0) | None => BodyFraming::None,
            Some(len) => BodyFraming::Sized(len),
        }
    }
}

/// The request as it goes upstream.
#[derive(Clone)]
pub struct OutboundRequest {
    pub method: Method,
    /// Path and query, already encoded.
    pub path_and_query: String,
    /// End-to-end headers only.
    pub headers: HeaderMap,
    pub framing: BodyFraming,
}

/// Sends the request to an instance of the route and returns the answer's head.
///
/// A request that failed before any answer goes to another healthy instance, at most
/// `retry.attempts` times and within the route's retry budget, when that is safe: the
/// body was held (or there is none), and either nothing reached the upstream (a refused
/// connection, a failed TLS handshake, a connect timeout) or the method is idempotent.
/// Never once the upstream began to answer, nor after a response timeout.
pub async fn send(
    clients: &RouteClients,
    route: &Route,
    outbound: OutboundRequest,
    mut body: Option<RequestBody>,
) -> Result<UpstreamAnswer, ApiError> {
    let client = clients.get(route);
    let upstreams = &route.upstreams;
    let has_body = outbound.framing != BodyFraming::None;
    let mut headers = outbound.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::HOST);

    let (exceeded, idled) = match &body {
        Some(RequestBody::Streamed(p)) => (Some(p.exceeded.clone()), Some(p.idled.clone())),
        _ => (None, None),
    };
    // A streamed body is consumed by the first attempt; anything else can be resent.
    let replayable = !has_body || !matches!(body, Some(RequestBody::Streamed(_)));
    // Headers are cloned per attempt only when a retry on another instance is possible.
    let mut spare_headers = Some(headers);
    // The instances that failed; empty (unallocated) on the usual first success.
    let mut tried: Vec<usize> = Vec::new();
    // Why the last instance tried failed: the answer when none is left.
    let mut last: Option<ApiError> = None;
    upstreams.budget.request();
    let pool = upstreams.pool();
    loop {
        let Some(index) = upstreams.pick(&pool, &tried) else {
            return Err(last.unwrap_or(ApiError::NoHealthyUpstream));
        };
        let instance = pool.get(index);
        let last_chance =
            !replayable || tried.len() as u32 >= route.retries || tried.len() + 1 == pool.len();
        let mut headers = if last_chance {
            spare_headers.take().unwrap_or_default()
        } else {
            spare_headers.clone().unwrap_or_default()
        };
        let span =
            tracing::debug_span!("upstream", route = %route.name, instance = %instance.authority);
        // Intercom's context replaces whatever the client sent (it is continued, if
        // believed, by the request's span).
        for (name, value) in crate::telemetry::traces::context_headers(&span) {
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                headers.insert(header::HeaderName::from_static(name), value);
            }
        }
        let started = Instant::now();
        let failure = match clients.multiplexed(route) {
            None => {
                let url = format!("{}{}", instance.base, outbound.path_and_query);
                if let Some(host) = &instance.host {
                    headers.insert(header::HOST, host.clone());
                }
                let mut request = client.request(outbound.method.clone(), url);
                *request.headers_mut() = headers;
                let sending = dispatch(request, &mut body, outbound.framing)?;
                let in_flight = upstreams.begin(instance);
                match tracing::Instrument::instrument(sending, span).await {
                    Ok(response) => {
                        let answer = answer(route, response, started.elapsed(), in_flight);
                        return Ok(settled(upstreams, instance, answer));
                    }
                    Err(SendRequestError::Body(_)) => {
                        return Err(body_error(exceeded.as_deref(), idled.as_deref()))
                    }
                    Err(err) => Failure::record(route, instance, Failure::of(&err), &err),
                }
            }
            Some(client) => {
                // The URL names the host (`:authority`, or `Host` on HTTP/1.1).
                if let BodyFraming::Sized(len) = outbound.framing {
                    headers.insert(header::CONTENT_LENGTH, len.into());
                }
                let sending = client.send(
                    instance,
                    pool.len(),
                    &outbound.method,
                    &outbound.path_and_query,
                    &headers,
                    multiplexed_body(&mut body, outbound.framing)?,
                );
                let in_flight = upstreams.begin(instance);
                match tracing::Instrument::instrument(sending, span).await {
                    Ok(response) => {
                        let answer =
                            multiplexed_answer(route, response, started.elapsed(), in_flight);
                        return Ok(settled(upstreams, instance, answer));
                    }
                    Err(err)
                        if err.body_failed()
                            || exceeded.as_deref().is_some_and(Cell::get)
                            || idled.as_deref().is_some_and(Cell::get) =>
                    {
                        return Err(body_error(exceeded.as_deref(), idled.as_deref()))
                    }
                    Err(err) => Failure::record(route, instance, Failure::of_sent(&err), &err),
                }
            }
        };
        let unsent = matches!(
            failure,
            Failure::Refused | Failure::Tls(_) | Failure::ConnectTimeout
        );
        upstreams.failed(instance, unsent);
        let error = failure.answer();
        let safe = match failure {
            Failure::Refused | Failure::Tls(_) | Failure::ConnectTimeout => replayable,
            Failure::Reset | Failure::Protocol => replayable && idempotent(&outbound.method),
            Failure::Timeout => false,
        };
        if last_chance || !safe {
            return Err(error);
        }
        if !upstreams.budget.take() {
            metrics::counter!("intercom_upstream_retries_total", "route" => route.name.to_string(), "outcome" => "over_budget").increment(1);
            return Err(error);
        }
        metrics::counter!("intercom_upstream_retries_total", "route" => route.name.to_string(), "outcome" => "retried").increment(1);
        tried.push(index);
        last = Some(error);
    }
}

/// An answer came: a 5xx counts against the instance's health, anything else for it.
fn settled(upstreams: &Upstreams, instance: &Instance, answer: UpstreamAnswer) -> UpstreamAnswer {
    if answer.status.is_server_error() {
        upstreams.failed(instance, false);
    } else {
        upstreams.succeeded(instance);
    }
    answer
}

/// The connection broke under the exchange.
fn broken(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

/// Methods that mean the same when sent twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// How an exchange with an upstream failed (the client's own body aside).
#[derive(Debug, Clone, Copy)]
pub(super) enum Failure {
    /// The connection was refused or broke before the request was sent.
    Refused,
    ConnectTimeout,
    Tls(TlsFailure),
    /// No response head within `timeouts.response`.
    Timeout,
    /// The connection closed or was reset under the request: it may have reached the
    /// upstream.
    Reset,
    /// The upstream answered with something that is not HTTP.
    Protocol,
}

impl Failure {
    /// Sorts the failure, counts it in `intercom_upstream_errors_total` and logs it.
    pub(super) fn record(
        route: &Route,
        instance: &Instance,
        failure: Self,
        err: &dyn std::fmt::Display,
    ) -> Self {
        metrics::counter!("intercom_upstream_errors_total", "route" => route.name.to_string(), "kind" => failure.kind(), "instance" => instance.authority.clone()).increment(1);
        tracing::warn!(route = %route.name, instance = %instance.authority, kind = failure.kind(), error = %err, "upstream exchange failed");
        failure
    }

    /// Sorts one of awc's failures.
    pub(super) fn of(err: &SendRequestError) -> Self {
        // A TLS 1.3 server refuses a client certificate after the handshake: its alert
        // arrives while the request is sent or its answer read.
        let io = match err {
            SendRequestError::Connect(ConnectError::Io(io)) | SendRequestError::Send(io) => {
                Some(io)
            }
            SendRequestError::Response(actix_http::error::ParseError::Io(io)) => Some(io),
            SendRequestError::H2(h2) => h2.get_io(),
            _ => None,
        };
        if let Some(tls) = io.and_then(TlsFailure::find) {
            return Failure::Tls(tls);
        }
        let broken = io.is_some_and(broken);
        match err {
            SendRequestError::Connect(ConnectError::Timeout) => Failure::ConnectTimeout,
            SendRequestError::Connect(ConnectError::Disconnected) => Failure::Reset,
            SendRequestError::Send(_) | SendRequestError::Response(_) if broken => Failure::Reset,
            SendRequestError::Connect(_) => Failure::Refused,
            SendRequestError::Timeout => Failure::Timeout,
            _ => Failure::Protocol,
        }
    }

    /// Sorts one of hyper's failures as awc's are sorted.
    fn of_sent(sent: &multiplexed::Sent) -> Self {
        use multiplexed::Sent;
        match sent {
            Sent::Invalid => return Failure::Protocol,
            Sent::TimedOut => return Failure::Timeout,
            Sent::Failed(_) => {}
        }
        let io = sent.io_error();
        if let Some(tls) = io.and_then(TlsFailure::find) {
            return Failure::Tls(tls);
        }
        if sent.before_connecting() {
            return if io.is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut) {
                Failure::ConnectTimeout
            } else {
                Failure::Refused
            };
        }
        match sent.hyper_error() {
            _ if io.is_some_and(broken) => Failure::Reset,
            Some(h) if h.is_incomplete_message() || h.is_closed() || h.is_canceled() => {
                Failure::Reset
            }
            _ => Failure::Protocol,
        }
    }

    /// The `kind` label of `intercom_upstream_errors_total`.
    fn kind(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::ConnectTimeout | Failure::Timeout => "timeout",
            Failure::Tls(_) => "tls",
            Failure::Reset => "reset",
            Failure::Protocol => "protocol",
        }
    }

    /// What the client is answered.
    pub(super) fn answer(self) -> ApiError {
        match self {
            Failure::Refused => ApiError::UpstreamConnect,
            Failure::ConnectTimeout | Failure::Timeout => ApiError::UpstreamTimeout,
            Failure::Tls(why) => ApiError::UpstreamTls(why),
            Failure::Reset | Failure::Protocol => ApiError::UpstreamProtocol,
        }
    }
}

/// The upstream's answer as the proxy streams it on: its body bounded by what is left of
/// the route's `total` (awc reset the head's timer), its head's headers moved out (not
/// copied) without the hop-by-hop ones.
fn answer(
    route: &Route,
    response: awc::ClientResponse,
    latency: Duration,
    in_flight: InFlight,
) -> UpstreamAnswer {
    let response = response.timeout(route.timeouts.total.saturating_sub(latency));
    let mut headers = HeaderMap::new();
    let response = response.map_body(|head, payload| {
        headers = std::mem::take(&mut head.headers);
        payload
    });
    UpstreamAnswer::new(
        response.status(),
        headers,
        ResponseBody::Awc(response),
        latency,
        in_flight,
    )
}

impl UpstreamAnswer {
    /// Either client's answer, its hop-by-hop headers removed; the request stays in
    /// flight until its body ends.
    fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        response: ResponseBody,
        latency: Duration,
        in_flight: InFlight,
    ) -> Self {
        remove_hop_by_hop(&mut headers);
        Self {
            status,
            headers,
            body: UpstreamBody {
                response,
                in_flight: Some(in_flight),
            },
            latency,
        }
    }
}

/// [`answer`] for hyper's answers: the body bounded by what is left of `total`.
fn multiplexed_answer(
    route: &Route,
    (response, permit): (
        hyper::Response<hyper::body::Incoming>,
        tokio::sync::OwnedSemaphorePermit,
    ),
    latency: Duration,
    in_flight: InFlight,
) -> UpstreamAnswer {
    let (status, headers) = multiplexed::head(&response);
    let within = route.timeouts.total.saturating_sub(latency);
    UpstreamAnswer::new(
        status,
        headers,
        ResponseBody::Multiplexed(multiplexed::ResponseBody::new(
            response.into_body(),
            within,
            permit,
        )),
        latency,
        in_flight,
    )
}

/// Sends `request` with the body, if the client framed one.
fn dispatch(
    request: awc::ClientRequest,
    body: &mut Option<RequestBody>,
    framing: BodyFraming,
) -> Result<awc::SendClientRequest, ApiError> {
    if framing == BodyFraming::None {
        return Ok(request.send());
    }
    Ok(match body_for_attempt(body)? {
        Attempt::Buffered(bytes) => request.send_body(bytes),
        Attempt::Streamed(stream) => match framing {
            BodyFraming::Sized(len) => request.send_body(SizedStream::new(len, stream)),
            _ => request.send_stream(stream),
        },
    })
}

/// [`dispatch`] for hyper: the body, if the client framed one.
fn multiplexed_body(
    body: &mut Option<RequestBody>,
    framing: BodyFraming,
) -> Result<multiplexed::OutBody, ApiError> {
    if framing == BodyFraming::None {
        return Ok(multiplexed::empty());
    }
    Ok(match body_for_attempt(body)? {
        Attempt::Buffered(bytes) => multiplexed::full(bytes),
        Attempt::Streamed(stream) => multiplexed::pump(stream),
    })
}

/// The body one attempt sends.
enum Attempt {
    Buffered(Bytes),
    Streamed(LimitedBody),
}

/// The body for one attempt, for either client: a buffered body is kept for another
/// attempt, a streamed one is consumed.
fn body_for_attempt(body: &mut Option<RequestBody>) -> Result<Attempt, ApiError> {
    match body.take() {
        Some(RequestBody::Buffered(bytes)) => {
            *body = Some(RequestBody::Buffered(bytes.clone()));
            Ok(Attempt::Buffered(bytes))
        }
        Some(RequestBody::Streamed(stream)) => Ok(Attempt::Streamed(stream)),
        Some(RequestBody::Empty) | None => Err(ApiError::Internal),
    }
}

/// Why the client's body could not be sent on: over the route's limit, paused past
/// `body_idle`, or broken.
fn body_error(exceeded: Option<&Cell<bool>>, idled: Option<&Cell<bool>>) -> ApiError {
    if exceeded.is_some_and(Cell::get) {
        ApiError::PayloadTooLarge
    } else if idled.is_some_and(Cell::get) {
        ApiError::RequestTimeout
    } else {
        ApiError::BadRequest("the request body could not be read".into())
    }
}

/// Turns the upstream's answer into the client's response, streaming the body.
pub fn into_response(answer: UpstreamAnswer, method: &Method) -> HttpResponse {
    let mut headers = answer.headers;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    headers.remove(header::CONTENT_LENGTH);
    let mut builder = HttpResponse::build(answer.status);
    let bodiless = *method == Method::HEAD
        || answer.status.is_informational()
        || answer.status == StatusCode::NO_CONTENT
        || answer.status == StatusCode::NOT_MODIFIED;
    let mut response = match length {
        _ if bodiless && length.is_none() => builder.finish(),
        Some(len) => builder.body(SizedStream::new(len, answer.body)),
        None => builder.streaming(answer.body),
    };
    *response.headers_mut() = headers;
    response
}
