//! The one table that turns every error into an HTTP answer.
//!
//! Every 4xx/5xx body is `application/problem+json` (RFC 9457) with a stable `type`, and
//! 401/403 carry an RFC 6750 `WWW-Authenticate` challenge. Details never echo a header
//! value, a token or a secret.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use super::request_id::RequestId;
use crate::broker::failure::{CallerRefused, Outage, TokenRejected};

/// Every error Intercom answers with, whatever module it came from.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route matches this path")]
    NotFound,
    #[error("this route does not accept the method")]
    MethodNotAllowed { allow: Vec<String> },
    #[error("the request path is not acceptable: {0}")]
    BadPath(#[from] super::path::PathError),
    #[error("the request is malformed: {0}")]
    BadRequest(String),
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("the request body paused longer than the route allows")]
    RequestTimeout,
    #[error("the upstream refused the connection")]
    UpstreamConnect,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream answered with something that is not valid HTTP")]
    UpstreamProtocol,
    /// The TLS connection to the upstream failed; carries the reason's class.
    #[error("the TLS connection to the upstream failed: {}", .0.as_str())]
    UpstreamTls(crate::tls::TlsFailure),
    #[error("no healthy upstream instance is available")]
    NoHealthyUpstream,
    #[error("a bearer token is required")]
    MissingToken,
    #[error("client authentication failed")]
    InvalidClient,
    #[error("{0}")]
    InvalidToken(TokenRejected),
    /// Carries the scopes needed (the challenge's `scope` attribute).
    #[error("the token lacks the scope this route requires: {}", .0.join(" "))]
    InsufficientScope(Vec<String>),
    /// The target's policy (or the AS) does not let this caller call it: no scope would
    /// help.
    #[error("{0}")]
    CallerNotAllowed(CallerRefused),
    /// The caller's verified claims do not meet the route's `required_claims` or
    /// `denied_claims`.
    #[error("{0}")]
    ClaimRefused(crate::broker::claims::ClaimRefusal),
    /// The client reads what failed; the cause goes to the access-log line.
    #[error("{}", .0.what())]
    AuthServerUnavailable(Outage),
    #[error("too many requests: retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("the rate limiter cannot decide right now")]
    RateLimiterUnavailable,
    /// Applied on this replica, but Redis did not take it yet: it is queued and retried,
    /// and the sender (the AS) should retry too.
    #[error("the revocation is applied here but not yet shared with the other replicas")]
    RevocationNotShared,
    /// A session route without a live session (never a redirect for an API call).
    #[error("a session is required: log in at /auth/login")]
    SessionRequired,
    /// A page navigation to a `on_missing = "login"` route: 302 to this login URL.
    #[error("a session is required")]
    LoginRequired { location: String },
    /// A state-changing call on a session route without the CSRF header or from
    /// another origin.
    #[error("{0}")]
    CsrfRefused(&'static str),
    /// The browser login could not start or complete.
    #[error("{0}")]
    LoginFailed(String),
    #[error("the session store is unavailable")]
    SessionStoreUnavailable,
    #[error("an internal error occurred")]
    Internal,
    /// A filter of the binary's own refused the request, with its status.
    #[error("{0}")]
    FilterRefused(crate::filter::FilterRefusal),
    /// An answer built by a library layer (e.g. a CORS refusal), re-dressed.
    #[error("the request was refused ({0})")]
    Refused(StatusCode),
}

/// One row of the table: what the client sees for an error.
struct Row {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
}

impl ApiError {
    fn row(&self) -> Row {
        use ApiError::*;
        let (status, slug, title) = match self {
            NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            BadPath(_) => (StatusCode::BAD_REQUEST, "bad-path", "Bad request path"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
            ),
            UpstreamConnect => (
                StatusCode::BAD_GATEWAY,
                "upstream-unreachable",
                "Upstream unreachable",
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Upstream timeout",
            ),
            UpstreamProtocol => (
                StatusCode::BAD_GATEWAY,
                "upstream-protocol",
                "Bad upstream answer",
            ),
            UpstreamTls(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream-tls",
                "Upstream TLS failure",
            ),
            NoHealthyUpstream => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no-healthy-upstream",
                "No healthy upstream",
            ),
            MissingToken => (StatusCode::UNAUTHORIZED, "missing-token", "Unauthorized"),
            InvalidClient => (StatusCode::UNAUTHORIZED, "invalid-client", "Unauthorized"),
            InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid-token", "Unauthorized"),
            InsufficientScope(_) => (
                StatusCode::FORBIDDEN,
                "insufficient-scope",
                "Insufficient scope",
            ),
            CallerNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "caller-not-allowed",
                "Caller not allowed",
            ),
            ClaimRefused(_) => (
                StatusCode::FORBIDDEN,
                "claim-requirement-not-met",
                "Claim requirement not met",
            ),
            AuthServerUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "auth-server-unavailable",
                "Authorization server unavailable",
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            RateLimiterUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "rate-limiter-unavailable",
                "Rate limiter unavailable",
            ),
            RevocationNotShared => (
                StatusCode::SERVICE_UNAVAILABLE,
                "revocation-not-shared",
                "Revocation not shared yet",
            ),
            SessionRequired => (
                StatusCode::UNAUTHORIZED,
                "session-required",
                "Session required",
            ),
            LoginRequired { .. } => (StatusCode::FOUND, "login-required", "Login required"),
            CsrfRefused(_) => (
                StatusCode::FORBIDDEN,
                "csrf-refused",
                "Cross-site request refused",
            ),
            LoginFailed(_) => (StatusCode::BAD_REQUEST, "login-failed", "Login failed"),
            SessionStoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "session-store-unavailable",
                "Session store unavailable",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
            FilterRefused(why) => (
                why.refusal.status(),
                "refused-by-filter",
                why.refusal.status().canonical_reason().unwrap_or("Refused"),
            ),
            Refused(status) => (
                *status,
                if status.is_server_error() {
                    "internal"
                } else {
                    "refused"
                },
                status.canonical_reason().unwrap_or("Refused"),
            ),
        };
        Row {
            status,
            slug,
            title,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        self.row().status
    }

    /// The problem `type` URI the client gets.
    pub fn problem_type(&self) -> String {
        format!("{PROBLEM_TYPE_BASE}{}", self.row().slug)
    }

    /// Binds the error to the request it answers, for the `request_id` in the body.
    pub fn at(self, req: &HttpRequest) -> Problem {
        let request_id = req.extensions().get::<RequestId>().cloned();
        Problem {
            error: self,
            request_id,
        }
    }

    /// The RFC 6750 challenge for 401 and 403 answers.
    fn challenge(&self) -> Option<String> {
        let quoted = |s: &str| s.replace(['"', '\\'], "'");
        match self {
            ApiError::MissingToken => Some(format!("Bearer realm=\"{REALM}\"")),
            ApiError::InvalidClient => Some(format!("Basic realm=\"{REALM}\"")),
            ApiError::InvalidToken(why) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(&why.to_string())
            )),
            ApiError::InsufficientScope(scopes) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
                quoted(&scopes.join(" "))
            )),
            ApiError::CallerNotAllowed(why) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\"",
                quoted(&why.to_string())
            )),
            ApiError::FilterRefused(why) if why.refusal.status() == StatusCode::UNAUTHORIZED => {
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                    quoted(why.refusal.detail())
                ))
            }
            ApiError::FilterRefused(why) if why.refusal.status() == StatusCode::FORBIDDEN => {
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\"",
                    quoted(why.refusal.detail())
                ))
            }
            ApiError::ClaimRefused(why) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\"",
                quoted(&why.to_string())
            )),
            _ => None,
        }
    }

    /// The `Retry-After` seconds for answers that invite a retry.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            ApiError::SessionStoreUnavailable
            | ApiError::NoHealthyUpstream
            | ApiError::AuthServerUnavailable(_)
            | ApiError::RateLimiterUnavailable
            | ApiError::RevocationNotShared => Some(5),
            _ => None,
        }
    }
}

/// An error bound to its request: what handlers return.
#[derive(Debug)]
pub struct Problem {
    pub error: ApiError,
    pub request_id: Option<RequestId>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl From<super::credentials::BearerError> for ApiError {
    fn from(error: super::credentials::BearerError) -> Self {
        use super::credentials::BearerError;
        match error {
            BearerError::Missing => ApiError::MissingToken,
            BearerError::Malformed(why) => ApiError::InvalidToken(TokenRejected::Malformed(why)),
        }
    }
}

impl From<crate::broker::edge::EdgeError> for ApiError {
    fn from(error: crate::broker::edge::EdgeError) -> Self {
        use crate::broker::edge::EdgeError;
        match error {
            EdgeError::Invalid(why) => ApiError::InvalidToken(why),
            EdgeError::Unavailable(outage) => ApiError::AuthServerUnavailable(outage),
            EdgeError::OverBudget { retry_after } => ApiError::RateLimited { retry_after },
        }
    }
}

/// How a failed downstream token reads to the client.
impl From<crate::broker::downstream::DownstreamError> for ApiError {
    fn from(error: crate::broker::downstream::DownstreamError) -> Self {
        use crate::broker::downstream::DownstreamError;
        match error {
            DownstreamError::Denied(scopes) => ApiError::InsufficientScope(scopes),
            DownstreamError::NotAllowed(why) => ApiError::CallerNotAllowed(why),
            DownstreamError::InvalidSubject => {
                ApiError::InvalidToken(TokenRejected::RefusedByAuthServer)
            }
            DownstreamError::Unavailable(outage) => ApiError::AuthServerUnavailable(outage),
        }
    }
}

impl From<ApiError> for Problem {
    fn from(error: ApiError) -> Self {
        Problem {
            error,
            request_id: None,
        }
    }
}

/// The cause of an error answer that the client does not read and the operator needs
/// ("connection refused" vs "timed out" vs "TLS"): the access-log line's `cause`.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub std::sync::Arc<str>);

/// The RFC 9457 body.
#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// The `realm` of every `WWW-Authenticate` challenge.
pub const REALM: &str = "intercom";

/// The base of every problem `type` URI; stable, documented in the README.
pub const PROBLEM_TYPE_BASE: &str = "urn:intercom:problem:";

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.error.row().status
    }

    fn error_response(&self) -> HttpResponse {
        let row = self.error.row();
        let body = ProblemBody {
            kind: format!("{PROBLEM_TYPE_BASE}{}", row.slug),
            title: row.title,
            status: row.status.as_u16(),
            detail: self.error.to_string(),
            request_id: self.request_id.as_ref().map(RequestId::as_str),
        };
        let mut res = HttpResponse::build(row.status);
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        if let ApiError::LoginRequired { location } = &self.error {
            if let Ok(v) = HeaderValue::from_str(location) {
                res.insert_header((header::LOCATION, v));
            }
        }
        if let ApiError::MethodNotAllowed { allow } = &self.error {
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                res.insert_header((header::ALLOW, v));
            }
        }
        if let Some(challenge) = self.error.challenge() {
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                res.insert_header((header::WWW_AUTHENTICATE, v));
            }
        }
        if let Some(secs) = self.error.retry_after() {
            res.insert_header((header::RETRY_AFTER, secs));
        }
        if let ApiError::AuthServerUnavailable(outage) = &self.error {
            if let Some(cause) = outage.cause() {
                res.extensions_mut().insert(ErrorCause(cause.into()));
            }
        }
        res.body(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// An error answer that Intercom produced without this table (a library layer such as
/// actix-cors answers in plain text) is re-dressed as problem+json, except a page
/// Intercom wrote for a browser (`text/html`) (from
/// [`super::envelope`]). Upstream answers pass untouched.
pub fn redress<B>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::dev::ServiceResponse<actix_web::body::EitherBody<B>> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res.map_into_left_body();
    }
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    let proxied = res
        .response()
        .extensions()
        .get::<super::access_log::UpstreamLatency>()
        .is_some();
    // A page of Intercom's own for a browser (a failed login); library layers answer in
    // plain text.
    let page = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !is_problem && !proxied && !page {
        let (req, _) = res.into_parts();
        let answer = ApiError::Refused(status).at(&req).error_response();
        return actix_web::dev::ServiceResponse::new(req, answer).map_into_right_body();
    }
    res.map_into_left_body()
}

/// Extractor failures (bad JSON, query, path) go through the same table.
pub fn extractor_error(err: impl std::fmt::Display, req: &HttpRequest) -> actix_web::Error {
    ApiError::BadRequest(err.to_string()).at(req).into()
}

/// The default service: no route for this path.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, Problem> {
    Err(ApiError::NotFound.at(&req))
}
