//! Canonical request paths, computed before any route is matched.
//!
//! The upstream must see exactly the path that was matched, so anything whose meaning a
//! server behind us might read differently is refused rather than guessed at: dot
//! segments in any encoding, encoded separators, backslashes, double encoding, control
//! characters and invalid (including overlong) UTF-8; path parameters (`;`, which
//! servlet containers cut off: `/api/admin;x/users` is `/api/admin/users` to Tomcat);
//! segments ending in a dot or whitespace (which IIS and .NET trim); and characters
//! whose compatibility form (NFKC) is a separator, a dot segment or a `;` (full-width
//! and other look-alikes). Empty segments (`//`) collapse.

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

/// Why a path was refused; the text goes into the 400 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path holds an invalid percent-encoding")]
    BadEscape,
    #[error("the path holds an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path is not valid UTF-8")]
    InvalidUtf8,
    #[error("the path holds a control character")]
    Control,
    #[error("the path holds a dot segment")]
    DotSegment,
    #[error("the path is encoded more than once")]
    DoubleEncoded,
    #[error("the path holds a ';' (a path parameter)")]
    Parameter,
    #[error("a path segment ends in a dot or whitespace")]
    TrailingDot,
    #[error("the path holds a look-alike of '/', '\\', '.' or ';'")]
    LookAlike,
}

/// Characters re-encoded when the canonical path is forwarded: everything outside
/// RFC 3986 `pchar` and `/`.
const PATH_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Look-alikes that NFKC does not fold but some servers (and filesystems) still read
/// as a separator.
const SLASH_LOOKALIKES: [char; 6] = [
    '\u{2215}', '\u{2044}', '\u{29F8}', '\u{2216}', '\u{29F5}', '\u{29F9}',
];

/// Decodes and checks `raw` (the path as received, without the query) and returns the
/// canonical, decoded path.
pub fn canonicalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(PathError::BadEscape);
                }
                if hex.eq_ignore_ascii_case(b"2f") || hex.eq_ignore_ascii_case(b"5c") {
                    return Err(PathError::EncodedSeparator);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => i += 1,
        }
    }
    let decoded = percent_decode(bytes)
        .decode_utf8()
        .map_err(|_| PathError::InvalidUtf8)?;
    if decoded.chars().any(|c| c.is_control()) {
        return Err(PathError::Control);
    }
    if decoded.contains('\\') {
        return Err(PathError::Backslash);
    }
    if has_escape(decoded.as_bytes()) {
        return Err(PathError::DoubleEncoded);
    }
    let mut out = String::with_capacity(decoded.len());
    let trailing_slash = decoded.len() > 1 && decoded.ends_with('/');
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        check_segment(segment)?;
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Refuses a decoded segment that an upstream might read as something else.
fn check_segment(segment: &str) -> Result<(), PathError> {
    // Non-ASCII text is judged by its compatibility form: `．．` is `..`, `／` is `/`.
    let folded: std::borrow::Cow<str> = if segment.is_ascii() {
        segment.into()
    } else {
        use unicode_normalization::UnicodeNormalization;
        if segment.chars().any(|c| SLASH_LOOKALIKES.contains(&c)) {
            return Err(PathError::LookAlike);
        }
        let nfkc: String = segment.nfkc().collect();
        if nfkc.contains(['/', '\\', ';']) || nfkc.chars().any(char::is_control) {
            return Err(PathError::LookAlike);
        }
        nfkc.into()
    };
    let trimmed = folded.trim_end_matches(char::is_whitespace);
    if trimmed == "." || trimmed == ".." {
        return Err(PathError::DotSegment);
    }
    if segment.contains(';') {
        // `..;x` is `..`, and `admin;x` is `admin`, to servlet containers.
        let bare = segment.split(';').next().unwrap_or("");
        return Err(if matches!(bare.trim_end(), "." | "..") {
            PathError::DotSegment
        } else {
            PathError::Parameter
        });
    }
    if folded.ends_with('.') || folded.ends_with(char::is_whitespace) {
        return Err(PathError::TrailingDot);
    }
    Ok(())
}

/// True if the bytes still hold a `%XX` escape (the raw path was encoded twice).
fn has_escape(bytes: &[u8]) -> bool {
    bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// Encodes a canonical path for the request line sent upstream.
pub fn encode(canonical: &str) -> String {
    utf8_percent_encode(canonical, PATH_ENCODE).to_string()
}

/// True if `path` is `prefix` or lies below it, on whole segments; with
/// `ignore_case`, ASCII letters match either case (for upstreams that route so).
pub fn is_under(path: &str, prefix: &str, ignore_case: bool) -> bool {
    if prefix == "/" {
        return true;
    }
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let same = match ignore_case {
        true => head.eq_ignore_ascii_case(prefix),
        false => head == prefix,
    };
    let rest = &path[prefix.len()..];
    same && (rest.is_empty() || rest.starts_with('/'))
}

/// The host of a `Host` value without its port (an IPv6 literal keeps its brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep through the closing bracket.
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass_and_collapse_empty_segments() {
        assert_eq!(canonicalize("/api/v1/x").unwrap(), "/api/v1/x");
        assert_eq!(canonicalize("//api///x/").unwrap(), "/api/x/");
        assert_eq!(canonicalize("/").unwrap(), "/");
        assert_eq!(canonicalize("/a%20b").unwrap(), "/a b");
        assert_eq!(encode("/a b/ü"), "/a%20b/%C3%BC");
    }

    #[test]
    fn escapes_are_refused() {
        for raw in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/%2E%2E/admin",
            "/api/.%2e/admin",
            "/api/..;/admin",
            "/api/%2e%2e;x=1/admin",
            "/api/..%2fadmin",
            "/api/..%5cadmin",
            "/api/..\\admin",
            "/api/%252e%252e/admin",
            "/api/%c0%ae%c0%ae/admin",
            "/api/%e0%80%ae%e0%80%ae/admin",
            "/api/%ef%bc%8e%ef%bc%8e/admin",
            "/api/%u002e%u002e/admin",
            "/api/..%00/admin",
            "/api/./admin",
            "/api/.. /admin",
        ] {
            assert!(canonicalize(raw).is_err(), "{raw} was accepted");
        }
    }

    #[test]
    fn what_upstreams_read_differently_is_refused() {
        for raw in [
            "/api/admin;x/users",
            "/api/admin%3Bx/users",
            "/api/admin%3bx/users",
            "/api/admin;/users",
            "/api/admin./users",
            "/api/admin%2E/users",
            "/api/admin%20/users",
            "/api/admin%09/users",
            "/api/admin%E3%80%80/users",
            "/api%EF%BC%8Fadmin/users",
            "/api%E2%88%95admin/users",
            "/api%EF%BC%BCadmin/users",
            "/api%EF%B9%A8admin/users",
            "/api/admin%EF%BC%9Bx/users",
            "/api/admin%00/users",
            "/api/%EF%BC%8E%EF%BC%8E/admin",
        ] {
            assert!(canonicalize(raw).is_err(), "{raw} was accepted");
        }
        assert_eq!(canonicalize("/api/v1.2/x").unwrap(), "/api/v1.2/x");
        assert_eq!(canonicalize("/caf%C3%A9/x").unwrap(), "/café/x");
    }

    #[test]
    fn prefix_matching_is_by_segment() {
        assert!(is_under("/api", "/api", false));
        assert!(is_under("/api/x", "/api", false));
        assert!(!is_under("/apix", "/api", false));
        assert!(is_under("/anything", "/", false));
        assert!(!is_under("/API/x", "/api", false));
        assert!(is_under("/API/x", "/api", true));
        assert!(!is_under("/APIx", "/api", true));
        assert!(!is_under("/é", "/ab", true));
    }
}
