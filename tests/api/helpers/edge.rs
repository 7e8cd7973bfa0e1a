//! A running Intercom in front of a real authorization server and upstream, the
//! fixture of the token tests, and the calls they make on it.

use super::*;

/// An Intercom in front of a real AS and upstream. Keep every field bound: dropping
/// one stops that process.
pub struct Edge {
    pub auth: std::sync::Arc<TestAuthServer>,
    pub upstream: TestUpstream,
    pub app: TestApp,
    pub _secrets: tempfile::TempDir,
}

/// Starts Intercom with `auth` as its AS (`as_extra` in `[auth_server]`) and the routes
/// (and any other sections) that `rest` writes for the upstream.
pub async fn start_edge(
    auth: impl Into<std::sync::Arc<TestAuthServer>>,
    as_extra: &str,
    rest: impl FnOnce(&TestUpstream) -> String,
) -> Edge {
    let auth = auth.into();
    let upstream = TestUpstream::start("billing");
    let (dir, secrets) = secrets_file();
    let config = format!(
        "{}{}",
        auth_config(&auth, &secrets, as_extra),
        rest(&upstream)
    );
    let app = spawn_app(&config).await;
    Edge {
        auth,
        upstream,
        app,
        _secrets: dir,
    }
}

/// A bearer route to `upstream` (audience "billing").
pub fn bearer_route(name: &str, prefix: &str, upstream: &TestUpstream, extra: &str) -> String {
    bearer_route_to(name, prefix, &upstream.url(), extra)
}

/// A bearer route to the upstream at `url` (audience "billing").
pub fn bearer_route_to(name: &str, prefix: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
            [[routes]]
            name = "{name}"
            prefix = "{prefix}"
            upstreams = ["{url}"]
            auth = "bearer"
            audience = "billing"
            {extra}
        "#
    )
}

/// A GET with `Authorization: Bearer <token>`.
pub async fn get_with(
    app: &TestApp,
    path: &str,
    token: &str,
) -> awc::ClientResponse<
    impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
> {
    app.client
        .get(app.url(path))
        .insert_header(("authorization", format!("Bearer {token}")))
        .send()
        .await
        .unwrap()
}

/// The token in the `Authorization` header an upstream saw.
pub fn bearer_of(seen: &serde_json::Value) -> String {
    seen["headers"]["authorization"][0]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
