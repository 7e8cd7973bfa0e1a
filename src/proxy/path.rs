//! Canonical request paths, computed before any route is matched.
//!
//! The upstream must see exactly the path that was matched, so anything whose meaning a
//! server behind us might read differently is refused rather than guessed at: dot
//! segments in any encoding, encoded separators, backslashes, double encoding, control
//! characters and invalid (including overlong) UTF-8. Empty segments (`//`) collapse.

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

/// Look-alikes of '.' that some servers fold to it (NFKC).
const DOT_LOOKALIKES: [char; 3] = ['\u{FF0E}', '\u{2024}', '\u{FE52}'];

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
        // `..;x` is `..` to servlet containers; `.` look-alikes are dots to some others.
        let bare = segment.split(';').next().unwrap_or("");
        let folded: String = bare
            .chars()
            .map(|c| if DOT_LOOKALIKES.contains(&c) { '.' } else { c })
            .collect();
        let trimmed = folded.trim_end_matches([' ', '\t']);
        if trimmed == "." || trimmed == ".." || bare.is_empty() && segment.starts_with(';') {
            return Err(PathError::DotSegment);
        }
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
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

/// True if `path` is `prefix` or lies below it, on whole segments.
pub fn is_under(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
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
    fn prefix_matching_is_by_segment() {
        assert!(is_under("/api", "/api"));
        assert!(is_under("/api/x", "/api"));
        assert!(!is_under("/apix", "/api"));
        assert!(is_under("/anything", "/"));
    }
}
