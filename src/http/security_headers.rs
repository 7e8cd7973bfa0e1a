//! Security headers on every answer of the public listener: `nosniff`, framing denied,
//! no referrer, `X-XSS-Protection: 0` (current guidance: the old filter did harm), a
//! strict `Content-Security-Policy` on Intercom's own answers; `Server` and upstream
//! version headers dropped; HSTS under TLS. Upstream answers keep their own values
//! unless their route enforces Intercom's.

use actix_web::dev::ServiceResponse;
use actix_web::http::header::{HeaderName, HeaderValue};

use super::access_log::UpstreamLatency;

/// The `Strict-Transport-Security` value, when the listener speaks TLS.
#[derive(Debug, Clone)]
pub struct Hsts(pub HeaderValue);

impl Hsts {
    /// `max-age=N; includeSubDomains` when the listener speaks TLS and N is not 0.
    pub fn from_settings(tls: Option<&crate::settings::TlsSettings>) -> Option<Self> {
        let age = tls.map(|t| t.hsts_max_age_secs).filter(|age| *age > 0)?;
        HeaderValue::from_str(&format!("max-age={age}; includeSubDomains"))
            .ok()
            .map(Hsts)
    }
}

/// Set on a proxied response whose route enforces Intercom's security headers.
#[derive(Debug, Clone, Copy)]
pub struct EnforceSecurityHeaders;

const DEFAULTS: [(HeaderName, HeaderValue); 4] = [
    (
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ),
    (
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    ),
    (
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    ),
    (
        HeaderName::from_static("x-xss-protection"),
        HeaderValue::from_static("0"),
    ),
];

/// For Intercom's own answers (errors, JWKS, metadata): they never embed anything.
const OWN_CSP: (HeaderName, HeaderValue) = (
    HeaderName::from_static("content-security-policy"),
    HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
);

const HSTS: HeaderName = HeaderName::from_static("strict-transport-security");

/// Headers that advertise software and versions.
const FINGERPRINTS: [HeaderName; 5] = [
    HeaderName::from_static("server"),
    HeaderName::from_static("x-powered-by"),
    HeaderName::from_static("x-aspnet-version"),
    HeaderName::from_static("x-aspnetmvc-version"),
    HeaderName::from_static("x-runtime"),
];

/// Applies the headers to a response (from [`super::envelope`], on every answer).
pub fn apply<B>(res: &mut ServiceResponse<B>, hsts: Option<HeaderValue>) {
    if let Some(value) = hsts {
        res.headers_mut().insert(HSTS, value);
    }
    let (proxied, enforce) = {
        let ext = res.response().extensions();
        (
            ext.get::<UpstreamLatency>().is_some(),
            ext.get::<EnforceSecurityHeaders>().is_some(),
        )
    };
    let headers = res.headers_mut();
    for name in &FINGERPRINTS {
        // Usually absent: a lookup each is cheaper than collecting the names present.
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    let mut set = |(name, value): &(HeaderName, HeaderValue)| {
        if enforce || !proxied || !headers.contains_key(name) {
            headers.insert(name.clone(), value.clone());
        }
    };
    DEFAULTS.iter().for_each(&mut set);
    if !proxied {
        set(&OWN_CSP);
    }
}
