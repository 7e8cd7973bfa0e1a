//! Long-lived exchanges: WebSocket tunnels to a real WebSocket server (Python's
//! `websockets`) on a bearer route (the handshake checked like any request, the
//! internal JWT sent upstream with it, frames both ways, closes relayed, idle tunnels
//! closed, open tunnels counted), and server-sent events that flow event by event.

use std::time::{Duration, Instant};

use awc::ws;
use futures_util::{SinkExt, StreamExt};

use crate::helpers::*;

fn ws_route(name: &str, server: &TestWebSocketServer, extra: &str) -> String {
    let extra = format!("websocket = true\n{extra}");
    bearer_route_to(name, &format!("/{name}"), &server.url(), &extra)
}

/// The next text frame, skipping pings.
async fn next_text<S>(framed: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<ws::Frame, awc::error::WsProtocolError>> + Unpin,
{
    loop {
        match framed.next().await {
            Some(Ok(ws::Frame::Text(text))) => return String::from_utf8_lossy(&text).into_owned(),
            Some(Ok(ws::Frame::Ping(_) | ws::Frame::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[actix_web::test]
async fn websocket_tunnels_are_authenticated_and_carry_frames_both_ways() {
    let server = TestWebSocketServer::start();
    let edge = start_edge(TestAuthServer::shared().await, "", |_| {
        ws_route("chat", &server, "")
            + &ws_route("chat-idle", &server, "timeouts = { connect = \"2s\", response = \"30s\", total = \"300s\", websocket_idle = \"300ms\" }")
    })
    .await;
    let app = &edge.app;
    let token = edge
        .auth
        .client_token("reader", "reader-dev-secret", "invoice_read")
        .await;

    // No token: the handshake is refused before the upstream hears of it.
    let refused = awc::Client::new().ws(app.url("/chat/room")).connect().await;
    match refused {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => assert_eq!(status, 401),
        other => panic!("expected 401, got {:?}", other.map(|(r, _)| r.status())),
    }
    let gauge = "intercom_websocket_tunnels_open{route=\"chat\"}";
    let before = metric(&app.metrics().await, gauge);

    let (response, mut framed) = awc::Client::new()
        .ws(app.url("/chat/room?x=1"))
        .bearer_auth(&token)
        .header("x-user-id", "spoofed")
        .protocols(["chat.v1"])
        .max_frame_size(1 << 20)
        .connect()
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    // The handshake upstream: the path, the internal JWT, no client-sent identity.
    let seen: serde_json::Value = serde_json::from_str(&next_text(&mut framed).await).unwrap();
    assert_eq!(seen["path"], "/chat/room?x=1");
    let bearer = seen["headers"]["authorization"][0].as_str().unwrap();
    assert!(bearer.starts_with("Bearer ey"), "{bearer}");
    assert_ne!(bearer, format!("Bearer {token}"));
    assert_ne!(seen["headers"]["x-user-id"][0], "spoofed");
    assert_eq!(seen["headers"]["sec-websocket-protocol"][0], "chat.v1");
    assert_eq!(metric(&app.metrics().await, gauge), before + 1.0);

    // Frames both ways, a large one included.
    for message in ["hello", &"x".repeat(200_000)] {
        framed
            .send(ws::Message::Text(message.into()))
            .await
            .unwrap();
        assert_eq!(next_text(&mut framed).await, message);
    }
    // The upstream's close frame, code and reason, reaches the client.
    framed
        .send(ws::Message::Text("close".into()))
        .await
        .unwrap();
    match framed.next().await {
        Some(Ok(ws::Frame::Close(Some(reason)))) => {
            assert_eq!(reason.code, ws::CloseCode::Other(4000));
            assert_eq!(reason.description.as_deref(), Some("bye"));
        }
        other => panic!("expected the upstream's close, got {other:?}"),
    }
    let _ = framed.send(ws::Message::Close(None)).await;
    drop(framed);
    assert!(
        eventually(PATIENCE, async || metric(&app.metrics().await, gauge)
            == before)
        .await,
        "the closed tunnel is still counted"
    );

    // A tunnel where nothing moves is closed after websocket_idle.
    let (_, mut quiet) = awc::Client::new()
        .ws(app.url("/chat-idle/"))
        .bearer_auth(&token)
        .connect()
        .await
        .unwrap();
    next_text(&mut quiet).await;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match quiet.next().await {
                None | Some(Err(_)) | Some(Ok(ws::Frame::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel was not closed");
}

#[actix_web::test]
async fn a_websocket_handshake_on_a_route_without_websocket_is_not_tunnelled() {
    let server = TestWebSocketServer::start();
    let app = spawn_app(&format!(
        r#"
            [[routes]]
            name = "plain-ws"
            prefix = "/plain-ws"
            upstreams = ["{}"]
        "#,
        server.url()
    ))
    .await;
    // `Upgrade` is hop-by-hop: the upstream gets a plain GET and refuses it.
    let answer = awc::Client::new().ws(app.url("/plain-ws/")).connect().await;
    assert!(answer.is_err(), "tunnelled without websocket = true");
}

#[actix_web::test]
async fn server_sent_events_flow_event_by_event() {
    let upstream = TestUpstream::start("events");
    // Compression on, and asked for: an event stream is still not held back.
    let app = spawn_app(&format!(
        r#"
            [compression]
            enabled = true
            min_bytes = 1
            [[routes]]
            name = "sse"
            prefix = "/sse"
            strip_prefix = true
            upstreams = ["{}"]
        "#,
        upstream.url()
    ))
    .await;
    let mut res = app
        .client
        .get(app.url("/sse/events"))
        .insert_header(("accept-encoding", "gzip"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-encoding").is_none());
    // The upstream holds its last event until the test has read the first one: a proxy
    // that buffered would never deliver it.
    let first = tokio::time::timeout(PATIENCE, res.next()).await;
    let first = first.expect("the first event did not arrive while the stream was open");
    assert_eq!(&first.unwrap().unwrap()[..], b"data: first\n\n");
    // The request stays in flight on its instance while its body streams (what
    // least_request balances by), not only until the head arrived.
    let in_flight = "intercom_upstream_requests_in_flight{route=\"sse\"";
    assert_eq!(metric(&app.metrics().await, in_flight), 1.0);
    upstream.release_events();
    let rest = res.body().await.unwrap();
    assert_eq!(&rest[..], b"data: last\n\n");
    assert!(
        eventually(PATIENCE, async || metric(&app.metrics().await, in_flight)
            == 0.0)
        .await,
        "the ended stream is still in flight"
    );
}

#[actix_web::test]
async fn at_shutdown_open_tunnels_carry_frames_through_the_drain_and_close_at_its_end() {
    let server = TestWebSocketServer::start();
    let dir = tempfile::tempdir().unwrap();
    let drain = Duration::from_secs(4);
    let (mut intercom, port, _admin) = serve_process(dir.path(), |port, admin_port| {
        format!(
            r#"
                [server]
                listen = "127.0.0.1:{port}"
                admin_listen = "127.0.0.1:{admin_port}"
                shutdown_delay = "0s"
                drain_timeout = "{}s"
                [[routes]]
                name = "chat"
                prefix = "/chat"
                upstreams = ["{}"]
                websocket = true
            "#,
            drain.as_secs(),
            server.url()
        )
    })
    .await;
    let (response, mut framed) = awc::Client::new()
        .ws(format!("http://127.0.0.1:{port}/chat/room"))
        .connect()
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    next_text(&mut framed).await;

    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &intercom.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // The listener closes; the open tunnel keeps carrying frames while the drain runs.
    assert!(
        eventually(PATIENCE, async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        })
        .await,
        "the listener stayed open"
    );
    framed
        .send(ws::Message::Text("still here".into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut framed).await, "still here");
    // At the drain's end the tunnel is closed and Intercom exits cleanly.
    let ended = tokio::time::timeout(drain + PATIENCE, async {
        loop {
            match framed.next().await {
                None | Some(Err(_)) | Some(Ok(ws::Frame::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel outlived the drain");
    assert!(
        signalled.elapsed() >= drain,
        "the tunnel was closed before the drain timeout ({:?})",
        signalled.elapsed()
    );
    let exit = intercom.child.wait().unwrap();
    assert!(
        exit.success(),
        "exit status {exit:?}\n{}",
        intercom.log_text()
    );
}
