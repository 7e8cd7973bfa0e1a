//! Upstream connections, measured: the TCP connector awc dials through, wrapped so that
//! each new connection's connect time (name resolution and TCP; a TLS handshake follows
//! inside awc and is not in it) is recorded, and each open connection (busy, or idle in
//! the pool) is counted, per route and instance. Idle connections are the open ones
//! less the requests in flight (`intercom_upstream_requests_in_flight`) on HTTP/1.1.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_rt::net::{ActixStream, Ready, TcpStream};
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use futures_util::future::LocalBoxFuture;
use http::Uri;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The TCP connector of one route's client, measuring what it connects.
#[derive(Clone)]
pub struct MeteredConnector<S> {
    inner: S,
    route: Arc<str>,
}

impl<S> MeteredConnector<S> {
    pub fn new(inner: S, route: &str) -> Self {
        Self {
            inner,
            route: Arc::from(route),
        }
    }
}

impl<S> Service<ConnectInfo<Uri>> for MeteredConnector<S>
where
    S: Service<ConnectInfo<Uri>, Response = Connection<Uri, TcpStream>, Error = ConnectError>,
    S::Future: 'static,
{
    type Response = Connection<Uri, MeteredStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::forward_ready!(inner);

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        // The instance as the route names it: the URL's authority, built from it.
        let instance = req
            .request()
            .authority()
            .map_or_else(String::new, |a| a.as_str().to_string());
        let route = self.route.to_string();
        let started = Instant::now();
        let connecting = self.inner.call(req);
        Box::pin(async move {
            let connection = connecting.await?;
            metrics::histogram!("intercom_upstream_connect_duration_seconds", "route" => route.clone(), "instance" => instance.clone())
                .record(started.elapsed().as_secs_f64());
            let open = metrics::gauge!("intercom_upstream_connections_open", "route" => route, "instance" => instance);
            open.increment(1.0);
            let (io, uri) = connection.into_parts();
            Ok(Connection::new(uri, MeteredStream { io, open }))
        })
    }
}

/// A TCP connection to an upstream, counted in `intercom_upstream_connections_open`
/// until it is dropped (closed by either side, or by the pool).
pub struct MeteredStream {
    io: TcpStream,
    open: metrics::Gauge,
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl std::fmt::Debug for MeteredStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.io.fmt(f)
    }
}

impl AsyncRead for MeteredStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeteredStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl ActixStream for MeteredStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_read_ready(&self.io, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_write_ready(&self.io, cx)
    }
}
