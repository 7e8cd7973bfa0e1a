//! Web origins in the configuration (CORS, the SPA's origins of sessions), parsed when
//! read: `scheme://host[:port]` exactly as a browser sends it in `Origin`, so a consumer
//! compares strings and never parses again.

use serde::Deserialize;

/// An origin, `https://app.example.com` (no path, no trailing slash, lower case, the
/// scheme's default port left out), as browsers serialize it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Origin(String);

impl Origin {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Origin {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let exact = url::Url::parse(&text).is_ok_and(|url| {
            matches!(url.scheme(), "http" | "https") && url.origin().ascii_serialization() == text
        });
        if exact {
            Ok(Origin(text))
        } else {
            Err(format!(
                "{text:?} is not an origin like https://app.example.com (scheme://host[:port], \
                 lower case, no path)"
            ))
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a CORS policy's `origins`: an origin, or `"*"` (any, without credentials).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AllowedOrigin {
    Any,
    Exact(Origin),
}

impl TryFrom<String> for AllowedOrigin {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text == "*" {
            return Ok(AllowedOrigin::Any);
        }
        Origin::try_from(text).map(AllowedOrigin::Exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_origins_as_browsers_send_them_are_accepted() {
        for good in [
            "https://app.example.com",
            "http://localhost:8080",
            "https://app.example.com:8443",
        ] {
            assert_eq!(Origin::try_from(good.to_string()).unwrap().as_str(), good);
        }
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://App.example.com",
            "https://app.example.com:443",
            "app.example.com",
            "ftp://app.example.com",
            "*",
            "",
        ] {
            assert!(Origin::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert_eq!(
            AllowedOrigin::try_from("*".to_string()),
            Ok(AllowedOrigin::Any)
        );
    }
}
