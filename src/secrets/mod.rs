//! Secrets: references such as
//! `file:intercom_client_secret` or `vault:secret/intercom/billing#api_key` in
//! configuration, the stores that resolve them, and the registry that keeps each
//! referenced value fresh.
//!
//! Two stores: [`file::FileStore`], the embedded default (a local TOML file, re-read when
//! it changes), and [`vault::VaultStore`] (HashiCorp Vault or OpenBao through `vaultrs`).
//! A value never reaches a log line, a metric label, an error body or a panic message:
//! `Debug` and `Display` print `[REDACTED]`, and errors name the reference, not the value.

pub mod file;
pub mod registry;
pub mod vault;
pub mod vault_http;

use std::future::Future;
use std::sync::Arc;

use crate::readiness::{DependencyState, Readiness};
use crate::settings::{Settings, SettingsError};
use file::FileStore;
use registry::SecretRegistry;
use vault::VaultStore;

use crate::secret::{BadReference, Secret, SecretRef};

/// Why a secret could not be had. Names the reference, never a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    BadReference(#[from] BadReference),
    #[error("secret {reference:?} not found in {store}")]
    NotFound { reference: String, store: String },
    #[error("secret {reference:?}: no {store} store is configured")]
    NoStore {
        reference: String,
        store: &'static str,
    },
    #[error("secret store {store}: {reason}")]
    Store { store: String, reason: String },
    /// The store answered for this secret, but not with something usable (too large,
    /// malformed, not a string).
    #[error("secret {reference:?} could not be read from {store}: {reason}")]
    Unreadable {
        reference: String,
        store: String,
        reason: String,
    },
}

/// A value and a version that changes when the value does.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub value: Secret,
    pub version: String,
}

/// Resolves secret references.
pub trait SecretStore: Send + Sync {
    /// Reads the current value.
    fn read(
        &self,
        reference: &SecretRef,
    ) -> impl Future<Output = Result<Versioned, SecretError>> + Send;

    /// The current version without reading the value, where the store can tell
    /// (KV v2 metadata); `None` means "read to find out".
    fn version(
        &self,
        reference: &SecretRef,
    ) -> impl Future<Output = Result<Option<String>, SecretError>> + Send;
}

/// The configured stores, each serving its own kind of reference.
#[derive(Default)]
pub struct Stores {
    pub file: Option<file::FileStore>,
    pub vault: Option<std::sync::Arc<vault::VaultStore>>,
}

impl SecretStore for Stores {
    async fn read(&self, reference: &SecretRef) -> Result<Versioned, SecretError> {
        match reference {
            SecretRef::File(_) => match &self.file {
                Some(store) => store.read(reference).await,
                None => Err(SecretError::NoStore {
                    reference: reference.to_string(),
                    store: "file ([secrets] file)",
                }),
            },
            SecretRef::Vault { .. } => match &self.vault {
                Some(store) => store.read(reference).await,
                None => Err(SecretError::NoStore {
                    reference: reference.to_string(),
                    store: "vault ([secrets.vault])",
                }),
            },
        }
    }

    async fn version(&self, reference: &SecretRef) -> Result<Option<String>, SecretError> {
        match (reference, &self.file, &self.vault) {
            (SecretRef::File(_), Some(store), _) => store.version(reference).await,
            (SecretRef::Vault { .. }, _, Some(store)) => store.version(reference).await,
            _ => Ok(None),
        }
    }
}

/// Why the secrets could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// `key` is the configuration key whose secret failed.
    #[error("{key}: {error}")]
    Secret { key: String, error: SecretError },
}

/// Opens the secret stores and resolves every reference in the configuration.
pub async fn open(
    settings: &Settings,
    readiness: &Arc<Readiness>,
) -> Result<Arc<SecretRegistry>, OpenError> {
    let refs = settings.secret_references();
    let mut stores = Stores::default();
    if let Some(path) = &settings.secrets.file {
        stores.file = Some(FileStore::open(path).map_err(|error| OpenError::Secret {
            key: "secrets.file".into(),
            error,
        })?);
    }
    if let Some(vault) = &settings.secrets.vault {
        stores.vault =
            Some(
                VaultStore::connect(vault)
                    .await
                    .map_err(|error| OpenError::Secret {
                        key: "secrets.vault".into(),
                        error,
                    })?,
            );
    }
    let all: Vec<SecretRef> = refs.iter().map(|(_, r)| r.clone()).collect();
    let registry = match SecretRegistry::resolve(stores, &all).await {
        Ok(r) => Arc::new(r),
        Err(error) => {
            let failing = match &error {
                SecretError::NotFound { reference, .. }
                | SecretError::NoStore { reference, .. }
                | SecretError::Unreadable { reference, .. } => refs
                    .iter()
                    .find(|(_, r)| &r.to_string() == reference)
                    .map(|(k, _)| k.clone()),
                _ => None,
            };
            return Err(OpenError::Secret {
                key: failing.unwrap_or_else(|| "secrets".into()),
                error,
            });
        }
    };
    if !refs.is_empty() {
        readiness.report("secret_store", DependencyState::Ok, true, None);
        let readiness = Arc::downgrade(readiness);
        registry.spawn_watch(settings.secrets.poll_interval, move |ok, oldest| {
            if let Some(readiness) = readiness.upgrade() {
                let state = if ok {
                    DependencyState::Ok
                } else {
                    DependencyState::Degraded
                };
                let detail = (!ok).then(|| {
                    format!(
                        "serving last-known values; oldest is {} s old",
                        oldest.as_secs()
                    )
                });
                // Last-known values keep serving: degraded, never a reason to be unready.
                readiness.report("secret_store", state, false, detail);
            }
        });
    }
    Ok(registry)
}
