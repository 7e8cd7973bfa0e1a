//! Why Intercom could not start, and which of those are configuration errors (exit 64).

use std::net::TcpListener;

/// Why Intercom could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Settings(#[from] crate::settings::SettingsError),
    #[error("authorization server: {0}")]
    Discovery(#[from] crate::broker::authserver::DiscoveryError),
    #[error("authorization server: no introspection_endpoint in its metadata")]
    NoIntrospection,
    #[error("signing keys: {0}")]
    Keys(#[from] crate::broker::mint::MintError),
    #[error("server.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("session: {0}")]
    Session(String),
    #[error("{key}: {error}")]
    Secret {
        key: String,
        error: crate::secrets::SecretError,
    },
    /// A setting that passed validation but cannot be used here (a file that does not
    /// load, an address that cannot be bound): a configuration error, naming its key.
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
}

impl From<crate::secrets::OpenError> for StartError {
    fn from(e: crate::secrets::OpenError) -> Self {
        match e {
            crate::secrets::OpenError::Settings(e) => StartError::Settings(e),
            crate::secrets::OpenError::Secret { key, error } => StartError::Secret { key, error },
        }
    }
}

impl From<crate::broker::parts::BuildError> for StartError {
    fn from(e: crate::broker::parts::BuildError) -> Self {
        use crate::broker::parts::BuildError;
        match e {
            BuildError::Discovery(e) => StartError::Discovery(e),
            BuildError::NoIntrospection => StartError::NoIntrospection,
            BuildError::Keys(e) => StartError::Keys(e),
            BuildError::Unresolved(key) => StartError::Config {
                key,
                message: "the secret was not resolved at start".into(),
            },
        }
    }
}

impl StartError {
    /// True when the configuration is at fault (exit 64), not the machine.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            StartError::Settings(_) | StartError::Secret { .. } | StartError::Config { .. }
        )
    }
}

/// Binds `addr` for the setting `key`; a failure names the key.
pub(super) fn bind(
    key: &'static str,
    addr: &std::net::SocketAddr,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|e| StartError::Config {
        key,
        message: format!("cannot listen on {addr}: {e}"),
    })
}
