//! Response compression: gzip, brotli or zstd as the client's `Accept-Encoding`
//! prefers, for the configured content types above a size threshold, and never for an
//! answer that already carries a `Content-Encoding`. The encoders are actix-http's.

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{
    self, AcceptEncoding, ContentEncoding, Encoding, Header, HeaderValue,
};
use actix_web::middleware::Next;

use crate::settings::CompressionSettings;

/// The policy, shared with every worker as app data.
#[derive(Debug, Clone)]
pub struct CompressionPolicy(pub CompressionSettings);

const SUPPORTED: [Encoding; 4] = [
    Encoding::Known(ContentEncoding::Zstd),
    Encoding::Known(ContentEncoding::Brotli),
    Encoding::Known(ContentEncoding::Gzip),
    Encoding::Known(ContentEncoding::Identity),
];

/// Middleware: picks the coding and wraps the body in actix-http's encoder.
pub async fn compress(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let policy = req.app_data::<CompressionPolicy>().cloned();
    let accepted = policy.as_ref().and_then(|_| {
        AcceptEncoding::parse(&req)
            .ok()
            .and_then(|accept| accept.negotiate(SUPPORTED.iter()))
    });
    let res = next.call(req).await?;
    let mut encoding = ContentEncoding::Identity;
    if let (Some(policy), Some(Encoding::Known(chosen))) = (policy, accepted) {
        let head = res.response();
        let content_type = head
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        // An event stream must flow event by event; an encoder would hold them back.
        let compressible = !content_type.starts_with("text/event-stream")
            && policy
                .0
                .content_types
                .iter()
                .any(|t| content_type.starts_with(t.as_str()));
        let large_enough = match head.body().size() {
            BodySize::Sized(n) => n >= policy.0.min_bytes,
            BodySize::Stream => true,
            BodySize::None => false,
        };
        let already = head.headers().contains_key(header::CONTENT_ENCODING);
        // A tunnel's bytes (101) are not a body to encode.
        let tunnel = head.status() == actix_web::http::StatusCode::SWITCHING_PROTOCOLS;
        if compressible && large_enough && !already && !tunnel {
            encoding = chosen;
        }
    }
    let mut res =
        res.map_body(|head, body| actix_http::encoding::Encoder::response(encoding, head, body));
    if encoding != ContentEncoding::Identity {
        res.headers_mut()
            .append(header::VARY, HeaderValue::from_static("accept-encoding"));
        metrics::counter!("intercom_compressed_responses_total", "encoding" => encoding.as_str().to_string())
            .increment(1);
    }
    Ok(res)
}
