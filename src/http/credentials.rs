//! The credentials a request presents: a bearer token (RFC 6750, in `Authorization` or,
//! where a route allows it, the `access_token` query parameter) or HTTP Basic client
//! credentials (RFC 6749 §2.3.1). Parsed here once for the proxy and every endpoint.

use actix_web::http::header;
use actix_web::HttpRequest;
use base64::Engine;

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
        // One pass over the bytes: a token that passes `check_token` is visible ASCII, so
        // the header's own ASCII check runs only to name why a token failed.
        let not_ascii = || value.to_str().is_err();
        let bytes = value.as_bytes();
        let (scheme, token) = match bytes.iter().position(|&b| b == b' ') {
            Some(space) => (&bytes[..space], &bytes[space + 1..]),
            None => (bytes, &b""[..]),
        };
        let checked = match scheme.eq_ignore_ascii_case(b"bearer") {
            true => check_token(token.trim_ascii_start()),
            false => Err(BearerError::Missing),
        };
        return match checked {
            Ok(token) => Ok((token, TokenSource::Header)),
            Err(_) if not_ascii() => Err(BearerError::Malformed(
                "the Authorization header is not ASCII",
            )),
            Err(e) => Err(e),
        };
    }
    if allow_query {
        if let Some(token) = query_token(req.query_string()) {
            return check_token(token.as_bytes()).map(|t| (t, TokenSource::Query));
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

/// The bytes of RFC 6750's `b64token`, `[A-Za-z0-9-._~+/]` (and `=` at its end), as a
/// table: a token is checked at a lookup per byte (JWT access tokens run to kilobytes).
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// RFC 6750 `b64token`: `[A-Za-z0-9-._~+/]+=*`, and not absurdly long.
fn check_token(token: &[u8]) -> Result<String, BearerError> {
    if token.is_empty() {
        return Err(BearerError::Malformed("the bearer token is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(BearerError::Malformed("the bearer token is too long"));
    }
    let padding = token.iter().rev().take_while(|&&b| b == b'=').count();
    let body = &token[..token.len() - padding];
    if body.is_empty() || !body.iter().all(|&b| B64TOKEN[b as usize]) {
        return Err(BearerError::Malformed(
            "the bearer token has invalid characters",
        ));
    }
    // Every byte is ASCII: the conversion cannot fail.
    String::from_utf8(token.to_vec())
        .map_err(|_| BearerError::Malformed("the bearer token has invalid characters"))
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

/// `Authorization: Basic` that does not decode to `id:secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedBasic;

/// The client id and secret of `Authorization: Basic` (the scheme in any case), each
/// form-decoded as RFC 6749 §2.3.1 wants; `None` when the header is not Basic.
pub fn basic_credentials(req: &HttpRequest) -> Option<Result<(String, String), MalformedBasic>> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok());
    Some(match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((id, secret)) => Ok((form_decode(id), form_decode(secret))),
        None => Err(MalformedBasic),
    })
}

/// One form-encoded value (`+` is a space, `%XX` a byte).
fn form_decode(text: &str) -> String {
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={text}"))
        .ok()
        .and_then(|mut pairs| pairs.pop())
        .map(|(_, v)| v)
        .unwrap_or_else(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn basic_credentials_are_form_decoded() {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode("my%20client:s%3Acret+x");
        let req = TestRequest::default()
            .insert_header(("authorization", format!("basic {encoded}")))
            .to_http_request();
        assert_eq!(
            basic_credentials(&req),
            Some(Ok(("my client".into(), "s:cret x".into())))
        );
        let bad = TestRequest::default()
            .insert_header(("authorization", "Basic !!!"))
            .to_http_request();
        assert_eq!(basic_credentials(&bad), Some(Err(MalformedBasic)));
        let bearer = TestRequest::default()
            .insert_header(("authorization", "Bearer abc"))
            .to_http_request();
        assert_eq!(basic_credentials(&bearer), None);
    }

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
        let bearer = |value: &[u8]| {
            let value = header::HeaderValue::from_bytes(value).unwrap();
            extract_bearer(
                &TestRequest::default()
                    .insert_header((header::AUTHORIZATION, value))
                    .to_http_request(),
                false,
            )
        };
        let malformed = |why| Err(BearerError::Malformed(why));
        assert_eq!(
            bearer(b"Bearer \tabc"),
            Ok(("abc".into(), TokenSource::Header))
        );
        assert_eq!(
            bearer(b"Bearer =="),
            malformed("the bearer token has invalid characters")
        );
        assert_eq!(
            bearer(b"Bearer a=b"),
            malformed("the bearer token has invalid characters")
        );
        assert_eq!(bearer(b"Bearer "), malformed("the bearer token is empty"));
        assert_eq!(bearer(b"Bearer"), malformed("the bearer token is empty"));
        // Not ASCII: named so, whatever the scheme says.
        assert_eq!(
            bearer(b"Bearer ab\xc3\xa9"),
            malformed("the Authorization header is not ASCII")
        );
        assert_eq!(
            bearer(b"B\xc3\xa9arer abc"),
            malformed("the Authorization header is not ASCII")
        );
        let query = TestRequest::with_uri("/x?a=1&access_token=tok&b=2").to_http_request();
        assert_eq!(extract_bearer(&query, false), Err(BearerError::Missing));
        assert_eq!(
            extract_bearer(&query, true),
            Ok(("tok".into(), TokenSource::Query))
        );
        assert_eq!(query_without_token("a=1&access_token=tok&b=2"), "a=1&b=2");
    }
}
