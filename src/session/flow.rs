//! The login flow's transient state and where it may end: `return_to` checked against
//! the configured origins and paths (no open redirect, whatever the spelling), and the
//! state of one login sealed into a short-lived cookie of its own, named after its
//! `state`, so two logins in two tabs never clobber each other.

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use url::Url;

/// Why a `return_to` was refused; never echoes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("return_to is not an allowed destination")]
pub struct BadReturnTo;

/// Where a login may send the browser back to.
#[derive(Debug, Clone)]
pub struct ReturnRules {
    /// Exact origins (`https://app.example.com`).
    pub origins: Vec<String>,
    /// Path prefixes, matched on whole segments.
    pub paths: Vec<String>,
}

impl ReturnRules {
    /// The destination as it will be sent in `Location`: a path (with query) on this
    /// site, or an absolute URL on an allowed origin. No fragment, no userinfo, no
    /// control characters, backslashes or encoded slashes anywhere.
    pub fn check(&self, return_to: &str) -> Result<String, BadReturnTo> {
        if return_to.is_empty()
            || return_to
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return Err(BadReturnTo);
        }
        let decoded = percent_decode_str(return_to).decode_utf8_lossy();
        if decoded.contains('\\')
            || decoded.chars().any(|c| c.is_control())
            || return_to.contains('#')
        {
            return Err(BadReturnTo);
        }
        if let Some(rest) = return_to.strip_prefix('/') {
            // A path: never `//host` (scheme-relative), in any encoding.
            if rest.starts_with('/') || decoded.starts_with("//") {
                return Err(BadReturnTo);
            }
            let url = Url::parse("https://intercom.invalid")
                .and_then(|base| base.join(return_to))
                .map_err(|_| BadReturnTo)?;
            if url.host_str() != Some("intercom.invalid") || !self.path_allowed(url.path()) {
                return Err(BadReturnTo);
            }
            let mut out = url.path().to_string();
            if let Some(query) = url.query() {
                out.push('?');
                out.push_str(query);
            }
            return Ok(out);
        }
        let url = Url::parse(return_to).map_err(|_| BadReturnTo)?;
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
            || !self.origins.contains(&url.origin().ascii_serialization())
            || !self.path_allowed(url.path())
        {
            return Err(BadReturnTo);
        }
        Ok(url.to_string())
    }

    fn path_allowed(&self, path: &str) -> bool {
        self.paths
            .iter()
            .any(|prefix| crate::http::path::is_under(path, prefix, false))
    }
}

/// One login in progress, sealed into its own cookie.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginState {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
    /// `prompt=none`: the AS's "login required" is an answer, not an error.
    pub silent: bool,
    pub started_at: u64,
}

/// How long a login may take from `/auth/login` to `/auth/callback`.
pub const LOGIN_MAX_SECS: u64 = 600;

/// The name of the cookie that holds the login with `state`: `prefix` plus the first
/// characters of the state (random), so concurrent logins each keep their own.
pub fn flow_cookie_name(prefix: &str, state: &str) -> String {
    let tag: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect();
    format!("{prefix}{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ReturnRules {
        ReturnRules {
            origins: vec!["https://app.example.com".into()],
            paths: vec!["/".into()],
        }
    }

    #[test]
    fn paths_and_allowed_origins_pass() {
        let r = rules();
        assert_eq!(r.check("/").unwrap(), "/");
        assert_eq!(r.check("/app/inbox?tab=2").unwrap(), "/app/inbox?tab=2");
        assert_eq!(
            r.check("https://app.example.com/x?y=1").unwrap(),
            "https://app.example.com/x?y=1"
        );
        let narrow = ReturnRules {
            paths: vec!["/app".into()],
            ..rules()
        };
        assert!(narrow.check("/app/x").is_ok());
        assert!(narrow.check("/apple").is_err());
        assert!(narrow.check("/app/../admin").is_err());
    }

    #[test]
    fn the_open_redirect_corpus_is_refused() {
        let r = rules();
        for evil in [
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https:evil.example",
            "https:/evil.example",
            "%2f%2fevil.example",
            "/%2f%2fevil.example",
            "/%2F/evil.example",
            "/%5cevil.example",
            "/%5Cevil.example",
            "https://app.example.com@evil.example/",
            "https://user:pw@app.example.com/",
            "https://evil.example/",
            "https://app.example.com.evil.example/",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "/\tevil",
            "/\n/evil.example",
            "/%0a/evil.example",
            "/%09/evil.example",
            " //evil.example",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "/x#@evil.example",
            "",
        ] {
            assert_eq!(r.check(evil), Err(BadReturnTo), "{evil:?} passed");
        }
    }

    #[test]
    fn each_login_has_its_own_cookie() {
        let a = flow_cookie_name("__Host-intercom-flow-", "abc-DEF_ghi123456789xyz");
        assert_eq!(a, "__Host-intercom-flow-abcDEFghi1234567");
        assert_ne!(a, flow_cookie_name("__Host-intercom-flow-", "zzz"));
    }
}
