//! Request ids: a well-formed incoming `X-Request-Id` is kept, anything else is replaced
//! by a fresh UUID. The id goes into the request's span, upstream, and back to the client.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;

/// The header that carries the id both ways.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, in the request's extensions: a header value, so
/// sending it upstream and back to the client copies nothing (a client's own id is the
/// bytes it sent).
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// The id as text (it is always ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// An incoming id is kept only if it is 1–128 characters of `[A-Za-z0-9._:-]`, so it can
/// never inject into logs or headers.
pub fn is_well_formed(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Gives the request its id (the client's, if well formed, else a fresh UUID) and
/// stores it in the request's extensions, where errors and the proxy read it.
pub fn assign_to(req: &ServiceRequest) -> RequestId {
    let id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if is_well_formed(v.as_bytes()) => v.clone(),
        _ => {
            let mut buf = uuid::Uuid::encode_buffer();
            let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(text).expect("a UUID is a header value")
        }
    };
    let id = RequestId(id);
    req.extensions_mut().insert(id.clone());
    id
}

/// Returns the id to the client.
pub fn echo<B>(res: &mut ServiceResponse<B>, id: &RequestId) {
    res.headers_mut().insert(X_REQUEST_ID, id.0.clone());
}

/// Middleware (the admin listener's; the public one has [`super::envelope`]): assigns
/// the id before anything else runs and returns it on the response.
pub async fn assign(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = assign_to(&req);
    let mut res = next.call(req).await?;
    echo(&mut res, &id);
    Ok(res)
}
