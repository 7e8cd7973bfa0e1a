//! The redacting [`Secret`] type and the [`SecretRef`] that names one in configuration
//! (`file:NAME`, `vault:MOUNT/PATH#KEY`); the stores that resolve references are in
//! `crate::secrets`.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret value: redacted when printed, zeroized on drop, compared in constant time.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The value, for the one place that must send it (an HTTP client, a signer).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Constant-time comparison, so timing does not reveal how much of a guess matched.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.expose().as_bytes().ct_eq(candidate).into()
    }

    /// A version tag derived from the value (for stores without versions); a hash, so
    /// it reveals nothing usable.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.expose().as_bytes());
        hex::encode(&digest[..8])
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.expose().as_bytes())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Text that is not a secret reference. Carries nothing: a misplaced value must not
/// be echoed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("is not a secret reference (expected file:NAME or vault:MOUNT/PATH#KEY; the value is not shown)")]
pub struct BadReference;

/// A parsed reference to a secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// `file:NAME`: an entry of the local secrets file.
    File(String),
    /// `vault:MOUNT/PATH#KEY`: a key of a KV secret.
    Vault {
        mount: String,
        path: String,
        key: String,
    },
}

impl SecretRef {
    pub fn parse(text: &str) -> Result<Self, BadReference> {
        match text.split_once(':') {
            Some(("file", name)) if !name.is_empty() && !name.contains(char::is_whitespace) => {
                Ok(SecretRef::File(name.to_string()))
            }
            Some(("vault", rest)) => {
                let (location, key) = rest.split_once('#').ok_or(BadReference)?;
                let (mount, path) = location.split_once('/').ok_or(BadReference)?;
                if mount.is_empty() || path.is_empty() || key.is_empty() {
                    return Err(BadReference);
                }
                Ok(SecretRef::Vault {
                    mount: mount.to_string(),
                    path: path.trim_matches('/').to_string(),
                    key: key.to_string(),
                })
            }
            _ => Err(BadReference),
        }
    }
}

/// Parsed once, when the configuration is read; a bad one names its key, never its text.
impl<'de> serde::Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SecretRef::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::File(name) => write!(f, "file:{name}"),
            SecretRef::Vault { mount, path, key } => write!(f, "vault:{mount}/{path}#{key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_compare_exactly() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[REDACTED] [REDACTED]");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter3"));
        assert!(!s.matches(b"hunter"));
        assert_ne!(s.fingerprint(), Secret::new("hunter3").fingerprint());
    }

    #[test]
    fn references_parse() {
        assert_eq!(
            SecretRef::parse("file:a").unwrap(),
            SecretRef::File("a".into())
        );
        let v = SecretRef::parse("vault:secret/intercom/billing#api_key").unwrap();
        assert_eq!(
            v,
            SecretRef::Vault {
                mount: "secret".into(),
                path: "intercom/billing".into(),
                key: "api_key".into()
            }
        );
        assert_eq!(v.to_string(), "vault:secret/intercom/billing#api_key");
        for bad in [
            "vault",
            "vault:secret#k",
            "vault:secret/p",
            "file:",
            "plain",
            "vault:/p#k",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }
}
