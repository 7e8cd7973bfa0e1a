//! Upstream connections, measured: the TCP connector awc dials through, wrapped so that
//! each new connection's connect time (name resolution and TCP) is recorded, and each
//! open connection (busy, or idle in the pool) is counted, per route and instance
//! ([`MeteredStream`], which hyper's dialler uses too, see `multiplexed`). Idle
//! connections are the open ones less the requests in flight
//! (`intercom_upstream_requests_in_flight`) on HTTP/1.1.
//!
//! awc runs the TLS handshake itself, over this stream, and offers no hook: its time is
//! read from the TLS records the stream carries out ([`HandshakeClock`]), for both
//! clients alike.

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
    /// The route's upstreams speak TLS: time each connection's handshake.
    tls: bool,
}

impl<S> MeteredConnector<S> {
    pub fn new(inner: S, route: &str, tls: bool) -> Self {
        Self {
            inner,
            route: Arc::from(route),
            tls,
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
        let route = self.route.clone();
        let tls = self.tls;
        let started = Instant::now();
        let connecting = self.inner.call(req);
        Box::pin(async move {
            let connection = connecting.await?;
            let (io, uri) = connection.into_parts();
            Ok(Connection::new(
                uri,
                MeteredStream::connected(io, &route, instance, started, tls),
            ))
        })
    }
}

/// A TCP connection to an upstream, counted in `intercom_upstream_connections_open`
/// until it is dropped (closed by either side, or by the pool).
pub struct MeteredStream {
    io: TcpStream,
    open: metrics::Gauge,
    /// Until a TLS connection's handshake is over.
    handshake: Option<HandshakeClock>,
}

impl MeteredStream {
    /// A connection to `instance` of `route` that TCP made, dialled at `started`:
    /// records its connect time and counts it open; times its TLS handshake when `tls`.
    pub fn connected(
        io: TcpStream,
        route: &str,
        instance: String,
        started: Instant,
        tls: bool,
    ) -> Self {
        metrics::histogram!("intercom_upstream_connect_duration_seconds", "route" => route.to_string(), "instance" => instance.clone())
            .record(started.elapsed().as_secs_f64());
        let handshake = tls.then(|| HandshakeClock::start(metrics::histogram!("intercom_upstream_tls_handshake_duration_seconds", "route" => route.to_string(), "instance" => instance.clone())));
        let open = metrics::gauge!("intercom_upstream_connections_open", "route" => route.to_string(), "instance" => instance);
        open.increment(1.0);
        Self {
            io,
            open,
            handshake,
        }
    }

    /// Shows the clock what was written; stops it once the handshake is over.
    fn wrote<'a>(&mut self, written: impl IntoIterator<Item = &'a [u8]>) {
        if let Some(clock) = &mut self.handshake {
            if clock.over.is_none()
                && written
                    .into_iter()
                    .any(|bytes| clock.saw_application_data(bytes))
            {
                clock.over = Some(clock.started.elapsed().as_secs_f64());
            }
        }
    }

    /// Records the handshake's time once the server answers after it: a handshake the
    /// client gave up on (its alert is also type 23 in TLS 1.3) is never answered.
    fn read_some(&mut self) {
        if let Some(over) = self.handshake.as_ref().and_then(|c| c.over) {
            if let Some(clock) = self.handshake.take() {
                clock.histogram.record(over);
            }
        }
    }
}

/// Times a TLS handshake from the records the client writes. It starts when TCP is
/// connected (the ClientHello goes out at once) and is over at the first record the
/// client writes with content type `application_data` (23): in TLS 1.3 that is its
/// Finished (everything encrypted goes out as type 23), written once it has checked the
/// server's; in TLS 1.2 its Finished is a handshake record (22), and the first type 23 is
/// the request, sent the moment the handshake is done. It counts once the server
/// answers after that (see [`MeteredStream::read_some`]). Only the 5-byte record headers
/// are read, never a record's content.
struct HandshakeClock {
    started: Instant,
    histogram: metrics::Histogram,
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current record's body still to come.
    body_left: usize,
    /// The seconds the handshake took, once the client wrote application data; recorded
    /// when the server answers.
    over: Option<f64>,
}

impl HandshakeClock {
    fn start(histogram: metrics::Histogram) -> Self {
        Self {
            started: Instant::now(),
            histogram,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            over: None,
        }
    }

    /// Follows the record boundaries through `written` (records and headers may be
    /// split across writes); true at the first `application_data` record.
    fn saw_application_data(&mut self, mut written: &[u8]) -> bool {
        while !written.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(written.len());
                self.body_left -= n;
                written = &written[n..];
                continue;
            }
            let n = (5 - self.header_len).min(written.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&written[..n]);
            self.header_len += n;
            written = &written[n..];
            // The content type is the header's first byte.
            if self.header[0] == 23 {
                return true;
            }
            if self.header_len == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header_len = 0;
            }
        }
        false
    }
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
        let filled = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.handshake.is_some() && buf.filled().len() > filled {
            self.read_some();
        }
        read
    }
}

impl AsyncWrite for MeteredStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            if self.handshake.is_some() {
                self.wrote([&buf[..n]]);
            }
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            if self.handshake.is_some() {
                // The first `n` bytes across the slices went out.
                let sent = bufs.iter().map_while(|b| {
                    let take = n.min(b.len());
                    n -= take;
                    (take > 0).then(|| &b[..take])
                });
                self.wrote(sent);
            }
        }
        written
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

#[cfg(test)]
mod tests {
    use super::HandshakeClock;

    fn record(kind: u8, body: usize) -> Vec<u8> {
        let mut bytes = vec![kind, 3, 3];
        bytes.extend_from_slice(&(body as u16).to_be_bytes());
        bytes.extend(std::iter::repeat_n(kind, body));
        bytes
    }

    #[test]
    fn the_handshake_ends_at_the_first_application_data_record_however_the_writes_split() {
        // TLS 1.3: ClientHello, the compatibility ChangeCipherSpec, then the encrypted
        // Finished (type 23), whose body holds bytes that look like record types.
        let flight: Vec<u8> = [record(22, 300), record(20, 1), record(23, 53)].concat();
        let finished_at = 305 + 6;
        for split in 1..flight.len() {
            let mut clock = HandshakeClock::start(metrics::Histogram::noop());
            let done: Vec<bool> = flight
                .chunks(split)
                .map(|chunk| clock.saw_application_data(chunk))
                .collect();
            let first = done.iter().position(|d| *d).expect("the handshake ended");
            assert_eq!(first, finished_at / split, "writes of {split} bytes");
        }
        // TLS 1.2: the handshake records (22, 20, 22), then the request (23).
        let mut clock = HandshakeClock::start(metrics::Histogram::noop());
        assert!(!clock.saw_application_data(&record(22, 100)));
        assert!(
            !clock.saw_application_data(&[record(22, 70), record(20, 1), record(22, 40)].concat())
        );
        assert!(clock.saw_application_data(&record(23, 90)));
    }
}
