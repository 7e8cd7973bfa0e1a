//! Identity at the edge: finding the bearer token (RFC 6750), and replacing it with the
//! internal JWT and identity headers on the way upstream. Client-sent copies of the
//! identity headers are removed in every spelling, on every route.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::HttpRequest;

use super::headers::{normalize_name, remove_spellings};
use crate::broker::edge::Admitted;
use crate::settings::TokenSettings;

/// Longest bearer token accepted; longer ones are refused without calling anyone.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Where the token came from, so the query copy can be removed before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
}

/// Why no usable token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerError {
    Missing,
    Malformed(&'static str),
}

/// Finds the bearer token: the `Authorization` header, or `access_token` in the query
/// when the route allows it.
pub fn extract_bearer(
    req: &HttpRequest,
    allow_query: bool,
) -> Result<(String, TokenSource), BearerError> {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Err(BearerError::Malformed("more than one Authorization header"));
        }
        let text = value
            .to_str()
            .map_err(|_| BearerError::Malformed("the Authorization header is not ASCII"))?;
        let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(BearerError::Missing);
        }
        return check_token(token.trim_start()).map(|t| (t, TokenSource::Header));
    }
    if allow_query {
        if let Some(token) = query_token(req.query_string()) {
            return check_token(&token).map(|t| (t, TokenSource::Query));
        }
    }
    Err(BearerError::Missing)
}

fn query_token(query: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

/// RFC 6750 `b64token`: `[A-Za-z0-9-._~+/]+=*`, and not absurdly long.
fn check_token(token: &str) -> Result<String, BearerError> {
    if token.is_empty() {
        return Err(BearerError::Malformed("the bearer token is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(BearerError::Malformed("the bearer token is too long"));
    }
    let body = token.trim_end_matches('=');
    if body.is_empty()
        || !body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
    {
        return Err(BearerError::Malformed(
            "the bearer token has invalid characters",
        ));
    }
    Ok(token.to_string())
}

/// The query without `access_token`, for forwarding.
pub fn query_without_token(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            // `access%5Ftoken`, `access_token%00`, `+access_token`: as a server decodes it.
            let decoded = percent_encoding::percent_decode_str(&name.replace('+', " "))
                .decode_utf8_lossy()
                .trim_matches(|c: char| c.is_whitespace() || c.is_control())
                .to_ascii_lowercase();
            decoded != "access_token"
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The names of the identity headers Intercom sets.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    user_id: HeaderName,
    client_id: HeaderName,
    scopes: HeaderName,
    normalized: [String; 3],
}

impl IdentityHeaders {
    pub fn from_settings(t: &TokenSettings) -> Self {
        let name = |n: &str| {
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                .expect("validated in settings")
        };
        Self {
            user_id: name(&t.user_id_header),
            client_id: name(&t.client_id_header),
            scopes: name(&t.scopes_header),
            normalized: [
                normalize_name(&t.user_id_header),
                normalize_name(&t.client_id_header),
                normalize_name(&t.scopes_header),
            ],
        }
    }

    /// Removes client-sent identity headers and the route's internal headers.
    pub fn strip(&self, headers: &mut HeaderMap, internal: &[String]) {
        let names = self.normalized.iter().chain(internal).map(String::as_str);
        remove_spellings(headers, names);
    }

    /// Replaces the client's token with the internal JWT and adds identity headers.
    pub fn inject(&self, headers: &mut HeaderMap, admitted: &Admitted) {
        let p = &admitted.token.principal;
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", admitted.jwt)) {
            headers.insert(header::AUTHORIZATION, v);
        }
        let mut set = |name: &HeaderName, value: Option<&str>| {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name.clone(), v);
            }
        };
        set(&self.user_id, p.sub.as_deref());
        set(&self.client_id, p.client_id.as_deref());
        set(&self.scopes, Some(&p.scopes.join(" ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn bearer_tokens_are_found_and_checked() {
        let req = TestRequest::default()
            .insert_header(("authorization", "bEaReR abc.DEF-_~+/=="))
            .to_http_request();
        assert_eq!(
            extract_bearer(&req, false),
            Ok(("abc.DEF-_~+/==".into(), TokenSource::Header))
        );
        let basic = TestRequest::default()
            .insert_header(("authorization", "Basic Zm9v"))
            .to_http_request();
        assert_eq!(extract_bearer(&basic, false), Err(BearerError::Missing));
        let bad = TestRequest::default()
            .insert_header(("authorization", "Bearer a\"b"))
            .to_http_request();
        assert!(matches!(
            extract_bearer(&bad, false),
            Err(BearerError::Malformed(_))
        ));
        let long = TestRequest::default()
            .insert_header(("authorization", format!("Bearer {}", "a".repeat(9000))))
            .to_http_request();
        assert!(matches!(
            extract_bearer(&long, false),
            Err(BearerError::Malformed(_))
        ));
        let query = TestRequest::with_uri("/x?a=1&access_token=tok&b=2").to_http_request();
        assert_eq!(extract_bearer(&query, false), Err(BearerError::Missing));
        assert_eq!(
            extract_bearer(&query, true),
            Ok(("tok".into(), TokenSource::Query))
        );
        assert_eq!(query_without_token("a=1&access_token=tok&b=2"), "a=1&b=2");
    }
}
