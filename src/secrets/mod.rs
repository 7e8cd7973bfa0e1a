//! Secrets: the redacting [`Secret`] type, references such as `file:intercom_client_secret`
//! in configuration, and the stores that resolve them.
//!
//! The embedded default is [`file::FileStore`], a local TOML file of `name = "value"`.
//! A value never reaches a log line, a metric label, an error body or a panic message:
//! `Debug` and `Display` print `[REDACTED]`, and errors name the reference, not the value.

pub mod file;

use secrecy::{ExposeSecret, SecretString};
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

/// Why a secret could not be had. Names the reference, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Carries nothing: a misplaced value must not be echoed.
    #[error("is not a secret reference (expected file:NAME; the value is not shown)")]
    BadReference,
    #[error("secret {reference:?} not found in {store}")]
    NotFound { reference: String, store: String },
    #[error("secret store {store}: {reason}")]
    Store { store: String, reason: String },
}

/// A parsed reference to a secret, such as `file:intercom_client_secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(String),
}

impl SecretRef {
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        match text.split_once(':') {
            Some(("file", name)) if !name.is_empty() => Ok(SecretRef::File(name.to_string())),
            _ => Err(SecretError::BadReference),
        }
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::File(name) => write!(f, "file:{name}"),
        }
    }
}

/// Resolves secret references. The trait is the seam for other stores (Vault).
pub trait SecretStore: Send + Sync {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError>;
}

/// The store when none is configured: every reference is missing.
pub struct EmptyStore;

impl SecretStore for EmptyStore {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        Err(SecretError::NotFound {
            reference: reference.to_string(),
            store: "no secret store ([secrets] file is not set)".into(),
        })
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
        assert_eq!(
            SecretRef::parse("file:a").unwrap(),
            SecretRef::File("a".into())
        );
        assert!(SecretRef::parse("vault").is_err());
    }
}
