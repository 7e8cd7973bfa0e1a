//! Why the broker did not admit a caller, as types: the reasons the one error table
//! (`http::errors`) turns into 401, 403 and 503 answers. A reason keeps its type until
//! that table, and an outage keeps its cause for the log line (never for the client).

use std::fmt;
use std::sync::Arc;

use super::validate::JwtError;

/// Why a token is refused: 401 `invalid_token`, with this text as the challenge's
/// `error_description`. Never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejected {
    /// Inactive at the AS (or recently found so: the negative cache).
    #[error("the token is not active")]
    Inactive,
    /// On the denylist.
    #[error("the token was revoked")]
    Revoked,
    /// A JWT that failed local validation, with the check it failed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// Valid, but the route takes no tokens of this kind or audience.
    #[error("{0}")]
    NotForRoute(&'static str),
    /// The credential is not well formed where it was sent (the header, the form).
    #[error("{0}")]
    Malformed(&'static str),
    /// The AS refused it as a subject token (`invalid_grant` on an exchange).
    #[error("the authorization server refused the token")]
    RefusedByAuthServer,
    /// The admin listener's credential did not match.
    #[error("the admin credential is not valid")]
    AdminCredential,
}

/// Who refuses to let this caller call a target: 403, and no scope would help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerRefused {
    /// The target's `callers` and `caller_scopes` do not name it.
    #[error("this caller may not call {0}")]
    ByPolicy(Arc<str>),
    /// The AS answered `invalid_target`.
    #[error("the authorization server does not issue tokens for this target to this caller")]
    ByAuthServer,
}

/// The authorization server, or what Intercom builds from its answers, could not give an
/// answer: 503 with `Retry-After`. The client reads `what`; the cause (the transport's
/// "connection refused", "timed out", "TLS: ...", a status code) goes to the request's
/// log line. Neither ever holds a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    what: &'static str,
    cause: Option<Arc<str>>,
}

impl Outage {
    /// An outage whose text says all there is.
    pub fn new(what: &'static str) -> Self {
        Self { what, cause: None }
    }

    /// An outage and the cause an operator needs.
    pub fn because(what: &'static str, cause: impl fmt::Display) -> Self {
        Self {
            what,
            cause: Some(cause.to_string().into()),
        }
    }

    /// What the client reads.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// What the log line adds.
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Some(cause) => write!(f, "{}: {cause}", self.what),
            None => f.write_str(self.what),
        }
    }
}

impl std::error::Error for Outage {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_shows_its_cause_to_the_log_and_not_to_the_client() {
        let outage = Outage::because("the authorization server is unreachable", "timed out");
        assert_eq!(outage.what(), "the authorization server is unreachable");
        assert_eq!(outage.cause(), Some("timed out"));
        assert_eq!(
            outage.to_string(),
            "the authorization server is unreachable: timed out"
        );
        assert_eq!(
            TokenRejected::from(JwtError::Expired).to_string(),
            "the token has expired"
        );
    }
}
