//! WebSocket tunnels: on a route with `websocket = true`, a handshake that passed the
//! same checks as any request (route, token, scopes, claims, rate limit) is sent to an
//! upstream instance with the rewritten headers (identity headers, the internal JWT);
//! when the upstream switches protocols, the bytes flow both ways untouched until either
//! side closes or nothing moved for `timeouts.websocket_idle`.
//!
//! Intercom answers the client's handshake itself (`Sec-WebSocket-Accept` from the
//! client's key) and relays the subprotocol and extensions the upstream chose, so the
//! two ends speak to each other frame for frame.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use awc::error::WsClientError;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWriteExt, ReadHalf};
use tokio::time::Instant;
use tokio_util::io::ReaderStream;

use super::forward::{Failure, OutboundRequest, RouteClients};
use super::routes::Route;
use crate::http::errors::ApiError;

/// Whether the client asks to switch to WebSocket (`Upgrade: websocket`).
pub fn is_requested(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"))
}

/// Opens the tunnel for an admitted handshake: 101 with the upstream's choices, then
/// the bytes. A malformed handshake is 400; an upstream that does not switch protocols
/// passes its status on (a 4xx or 5xx, without its body).
pub async fn open(
    req: &HttpRequest,
    clients: &RouteClients,
    route: &Route,
    outbound: OutboundRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    actix_http::ws::verify_handshake(req.head())
        .map_err(|why| ApiError::BadRequest(format!("not a WebSocket handshake: {why}")))?;
    let pool = route.upstreams.pool();
    let index = route
        .upstreams
        .pick(&pool, &[])
        .ok_or(ApiError::NoHealthyUpstream)?;
    let instance = pool.get(index);
    let mut request = clients
        .get(route)
        .ws(format!("{}{}", instance.base, outbound.path_and_query));
    // awc sets its own key, version, `Upgrade` and `Connection`; the subprotocols and
    // extensions offered travel with the other end-to-end headers.
    for (name, value) in outbound.headers.iter() {
        request = request.header(name.clone(), value.clone());
    }
    if let Some(host) = &instance.host {
        request = request.set_header(header::HOST, host.clone());
    }
    let (answer, framed) = match request.connect().await {
        Ok(connected) => connected,
        Err(WsClientError::InvalidResponseStatus(status)) => {
            return Ok(HttpResponse::build(status).finish());
        }
        Err(WsClientError::SendRequest(err)) => {
            let failure = Failure::record(route, instance, Failure::of(&err), &err);
            let unsent = matches!(
                failure,
                Failure::Refused | Failure::Tls(_) | Failure::ConnectTimeout
            );
            route.upstreams.failed(instance, unsent);
            return Err(failure.answer());
        }
        Err(err) => {
            tracing::warn!(route = %route.name, instance = %instance.authority, error = %err, "the upstream's WebSocket handshake is not valid");
            return Err(ApiError::UpstreamProtocol);
        }
    };
    let mut response = HttpResponse::SwitchingProtocols();
    response.upgrade("websocket");
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| actix_http::ws::hash_key(k.as_bytes()));
    if let Some(accept) = key.and_then(|k| HeaderValue::from_bytes(&k).ok()) {
        response.insert_header((header::SEC_WEBSOCKET_ACCEPT, accept));
    }
    for name in [
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        if let Some(value) = answer.headers().get(&name) {
            response.insert_header((name, value.clone()));
        }
    }
    let parts = framed.into_parts();
    let (upstream_read, mut upstream_write) = tokio::io::split(parts.io);
    let state = Rc::new(TunnelState {
        idle: route.timeouts.websocket_idle,
        last: Cell::new(Instant::now()),
        closed: Cell::new(false),
    });
    let pending = parts.write_buf.freeze();
    let client_to_upstream = {
        let state = state.clone();
        async move {
            if !pending.is_empty() && upstream_write.write_all(&pending).await.is_err() {
                return;
            }
            pump(payload, &mut upstream_write, &state).await;
            let _ = upstream_write.shutdown().await;
        }
    };
    actix_web::rt::spawn(client_to_upstream);
    let downstream = Downstream {
        early: Some(parts.read_buf.freeze()).filter(|b| !b.is_empty()),
        inner: ReaderStream::new(upstream_read),
        quiet: Box::pin(tokio::time::sleep(state.idle)),
        state,
        _open: OpenTunnel::new(&route.name),
    };
    Ok(response.streaming(downstream))
}

/// What the two directions of one tunnel share.
struct TunnelState {
    idle: Duration,
    /// When a byte last moved, either way.
    last: Cell<Instant>,
    /// Set when either direction ended, so the other stops too.
    closed: Cell<bool>,
}

impl TunnelState {
    fn moved(&self) {
        self.last.set(Instant::now());
    }

    /// The instant the tunnel counts as idle, given what moved last.
    fn idle_at(&self) -> Instant {
        self.last.get() + self.idle
    }
}

/// Copies the client's bytes upstream until the client closes, the tunnel idles out or
/// the other direction ended.
async fn pump(
    mut payload: web::Payload,
    upstream: &mut tokio::io::WriteHalf<awc::BoxedSocket>,
    state: &TunnelState,
) {
    loop {
        let quiet = tokio::time::sleep_until(state.idle_at());
        tokio::select! {
            chunk = payload.next() => match chunk {
                Some(Ok(bytes)) => {
                    state.moved();
                    if upstream.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            () = quiet => {
                if state.closed.get() || Instant::now() >= state.idle_at() {
                    break;
                }
            }
        }
        if state.closed.get() {
            break;
        }
    }
    state.closed.set(true);
}

/// The upstream's bytes, as the client's response body.
struct Downstream {
    /// Bytes the upstream sent right after its handshake, read with it.
    early: Option<Bytes>,
    inner: ReaderStream<ReadHalf<awc::BoxedSocket>>,
    quiet: Pin<Box<tokio::time::Sleep>>,
    state: Rc<TunnelState>,
    _open: OpenTunnel,
}

impl Stream for Downstream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(early) = self.early.take() {
            return Poll::Ready(Some(Ok(early)));
        }
        if self.state.closed.get() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.state.moved();
                return Poll::Ready(Some(Ok(bytes)));
            }
            Poll::Ready(_) => {
                self.state.closed.set(true);
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        loop {
            let at = self.state.idle_at();
            if self.quiet.deadline() != at {
                self.quiet.as_mut().reset(at);
            }
            match std::future::Future::poll(self.quiet.as_mut(), cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= self.state.idle_at() => {
                    self.state.closed.set(true);
                    return Poll::Ready(None);
                }
                // Bytes moved the other way meanwhile: wait on from then.
                Poll::Ready(()) => {}
            }
        }
    }
}

/// One open tunnel in `intercom_websocket_tunnels_open{route}`, for as long as it lives.
struct OpenTunnel(metrics::Gauge);

impl OpenTunnel {
    fn new(route: &str) -> Self {
        let gauge =
            metrics::gauge!("intercom_websocket_tunnels_open", "route" => route.to_string());
        gauge.increment(1.0);
        metrics::counter!("intercom_websocket_tunnels_total", "route" => route.to_string())
            .increment(1);
        Self(gauge)
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
