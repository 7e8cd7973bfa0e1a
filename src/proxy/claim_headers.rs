//! Claims to headers: a route's `claims_to_headers` sends the upstream values of the
//! caller's verified claims (introspection, a validated JWT, a session's ID token) as
//! headers. The client's copies are removed like the identity headers (the route lists
//! them with its internal headers).
//!
//! A value is sent as it is when it is printable ASCII; text with other characters is
//! sent in the RFC 8187 form `UTF-8''Jos%C3%A9`; a value holding a control character
//! (CR, LF, NUL, ...), an object, or a list of anything but plain words is refused: the
//! header is not sent. A list of plain words is sent comma-separated. Values are never
//! logged.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::broker::claims::{lookup, KeptClaims};
use crate::settings::{ClaimHeaderSettings, ClaimPath};

/// RFC 8187's `attr-char`s stay; everything else is percent-encoded.
const NOT_ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// What became of one header of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Encoded,
    Refused,
    Absent,
}

/// The counters of one route's claim headers, registered once.
#[derive(Debug)]
struct Outcomes {
    sent: metrics::Counter,
    encoded: metrics::Counter,
    refused: metrics::Counter,
    absent: metrics::Counter,
}

/// A route's claim headers, ready to set.
#[derive(Debug, Default)]
pub struct ClaimHeaders {
    entries: Vec<(HeaderName, ClaimPath)>,
    /// `None` on routes without claim headers.
    outcomes: Option<Outcomes>,
}

impl ClaimHeaders {
    pub fn new(route: &str, settings: &ClaimHeaderSettings) -> Self {
        let entries: Vec<(HeaderName, ClaimPath)> = settings
            .0
            .iter()
            .map(|(name, path)| (name.0.clone(), path.clone()))
            .collect();
        let outcomes = (!entries.is_empty()).then(|| {
            let counter = |outcome: &'static str| {
                metrics::counter!("intercom_claim_headers_total", "route" => route.to_string(), "outcome" => outcome)
            };
            Outcomes {
                sent: counter("sent"),
                encoded: counter("encoded"),
                refused: counter("refused"),
                absent: counter("absent"),
            }
        });
        Self { entries, outcomes }
    }

    /// Sets each header from `claims` (the access token's), else from `login` (a
    /// session's ID token); a header whose claim is absent or refused is not sent.
    pub fn apply(&self, headers: &mut HeaderMap, claims: &KeptClaims, login: &KeptClaims) {
        let Some(outcomes) = &self.outcomes else {
            return;
        };
        for (name, path) in &self.entries {
            let value = lookup(claims, path).or_else(|| lookup(login, path));
            let (outcome, header) = match value.map(render) {
                Some(Ok((value, encoded))) => {
                    let outcome = if encoded {
                        Outcome::Encoded
                    } else {
                        Outcome::Sent
                    };
                    (outcome, Some(value))
                }
                Some(Err(())) => (Outcome::Refused, None),
                None => (Outcome::Absent, None),
            };
            match outcome {
                Outcome::Sent => outcomes.sent.increment(1),
                Outcome::Encoded => outcomes.encoded.increment(1),
                Outcome::Refused => {
                    outcomes.refused.increment(1);
                    tracing::debug!(header = %name, claim = %path, "a claim header's value cannot be sent; the header is left out");
                }
                Outcome::Absent => outcomes.absent.increment(1),
            }
            if let Some(value) = header {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// A claim's value as a header value, and whether it had to be encoded.
fn render(value: &Value) -> Result<(HeaderValue, bool), ()> {
    let (text, encoded) = match value {
        Value::String(s) => encode(s)?,
        Value::Number(n) => (n.to_string(), false),
        Value::Bool(b) => (b.to_string(), false),
        Value::Array(items) => {
            let words = items
                .iter()
                .map(|item| match item {
                    Value::String(s) if is_word(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    _ => Err(()),
                })
                .collect::<Result<Vec<_>, ()>>()?;
            (words.join(","), false)
        }
        Value::Object(_) | Value::Null => return Err(()),
    };
    HeaderValue::from_str(&text)
        .map(|v| (v, encoded))
        .map_err(|_| ())
}

/// Printable ASCII without a comma or a space: a list element that needs no quoting.
fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// Printable ASCII as it is; other text (no control character) in RFC 8187's form.
fn encode(s: &str) -> Result<(String, bool), ()> {
    if s.chars().any(char::is_control) {
        return Err(());
    }
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok((s.to_string(), false));
    }
    Ok((
        format!("UTF-8''{}", utf8_percent_encode(s, NOT_ATTR_CHAR)),
        true,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rendered(value: Value) -> Result<(String, bool), ()> {
        render(&value).map(|(v, e)| (v.to_str().unwrap().to_string(), e))
    }

    #[test]
    fn values_are_sent_encoded_or_refused() {
        assert_eq!(rendered(json!("acme")), Ok(("acme".into(), false)));
        assert_eq!(rendered(json!("a b/c")), Ok(("a b/c".into(), false)));
        assert_eq!(rendered(json!(42)), Ok(("42".into(), false)));
        assert_eq!(rendered(json!(true)), Ok(("true".into(), false)));
        assert_eq!(
            rendered(json!("José")),
            Ok(("UTF-8''Jos%C3%A9".into(), true))
        );
        assert_eq!(
            rendered(json!(["admin", "ops"])),
            Ok(("admin,ops".into(), false))
        );
        for refused in [
            json!("a\r\nX-Injected: 1"),
            json!("nul\u{0}"),
            json!("tab\there"),
            json!({"nested": 1}),
            json!(null),
            json!(["a,b"]),
            json!(["two words"]),
            json!([{"x": 1}]),
        ] {
            assert_eq!(rendered(refused.clone()), Err(()), "{refused}");
        }
    }
}
