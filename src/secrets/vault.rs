//! HashiCorp Vault or OpenBao as the secret store, through `vaultrs`: token or AppRole
//! authentication, the token renewed before its TTL runs out (and a fresh login when it
//! can no longer be renewed), KV v2 (versions read from metadata) or KV v1, an optional
//! namespace.
//!
//! Every call goes through [`VaultHttp`], which reads answers with a size limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;
use vaultrs::api::auth::approle::requests::LoginWithApproleRequest;
use vaultrs::api::kv1::requests::GetSecretRequest;
use vaultrs::api::kv2::requests::{ReadSecretMetadataRequest, ReadSecretRequest};
use vaultrs::api::token::requests::{LookupTokenSelfRequest, RenewTokenSelfRequest};
use vaultrs::api::EndpointMiddleware;

use super::vault_http::{VaultCallError, VaultHttp};
use super::{Secret, SecretError, SecretRef, SecretStore, Versioned};
use crate::settings::{VaultAuth, VaultSettings};

/// A Vault (or OpenBao) KV store.
pub struct VaultStore {
    /// The token and namespace every call carries; the token changes on login.
    middleware: RwLock<EndpointMiddleware>,
    settings: VaultSettings,
    http: VaultHttp,
}

fn store_error(reason: impl std::fmt::Display) -> SecretError {
    SecretError::Store {
        store: "vault".into(),
        reason: reason.to_string(),
    }
}

/// Reads a credential from a file (trimmed) or an environment variable.
fn credential(
    file: &Option<std::path::PathBuf>,
    env: &Option<String>,
    what: &str,
) -> Result<String, SecretError> {
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| store_error(format!("{what} file {}: {e}", path.display())));
    }
    if let Some(name) = env {
        return std::env::var(name).map_err(|_| store_error(format!("{what}: ${name} is not set")));
    }
    Err(store_error(format!(
        "{what}: set a file or an environment variable"
    )))
}

impl VaultStore {
    /// Connects and authenticates.
    pub async fn connect(settings: &VaultSettings) -> Result<Arc<Self>, SecretError> {
        let token = match settings.auth {
            VaultAuth::Token => {
                credential(&settings.token_file, &settings.token_env, "vault token")?
            }
            VaultAuth::Approle => String::new(),
        };
        let store = Arc::new(Self {
            middleware: RwLock::new(EndpointMiddleware {
                token,
                version: "v1".into(),
                wrap: None,
                namespace: settings.namespace.clone(),
            }),
            settings: settings.clone(),
            http: VaultHttp::new(settings.address.0.as_str(), Self::client(settings)?),
        });
        let ttl = match settings.auth {
            VaultAuth::Approle => store.login().await?,
            VaultAuth::Token => store.lookup_ttl().await.unwrap_or(None),
        };
        store.spawn_renewal(ttl);
        Ok(store)
    }

    /// No redirects, the configured timeout, the system roots plus `ca_file`.
    fn client(settings: &VaultSettings) -> Result<reqwest::Client, SecretError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout);
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| store_error(format!("vault.ca_file {}: {e}", path.display())))?;
            for ca in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| store_error(format!("vault.ca_file {}: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(ca);
            }
        }
        builder.build().map_err(store_error)
    }

    /// AppRole login; returns the token's TTL.
    async fn login(&self) -> Result<Option<Duration>, SecretError> {
        let s = &self.settings;
        let role_id = credential(&s.role_id_file, &s.role_id_env, "approle role_id")?;
        let secret_id = credential(&s.secret_id_file, &s.secret_id_env, "approle secret_id")?;
        let endpoint = LoginWithApproleRequest::builder()
            .mount(&s.approle_mount)
            .role_id(role_id)
            .secret_id(secret_id)
            .build()
            .map_err(store_error)?;
        let mut middleware = self.middleware.write().await;
        let auth = self
            .http
            .auth(&middleware, endpoint)
            .await
            .map_err(|e| store_error(format!("approle login failed: {e}")))?;
        middleware.token = auth.client_token;
        metrics::counter!("intercom_vault_logins_total").increment(1);
        Ok(Some(Duration::from_secs(auth.lease_duration)).filter(|d| !d.is_zero()))
    }

    async fn lookup_ttl(&self) -> Result<Option<Duration>, SecretError> {
        let endpoint = LookupTokenSelfRequest::builder()
            .build()
            .map_err(store_error)?;
        let info = self
            .http
            .data(&*self.middleware.read().await, endpoint)
            .await
            .map_err(store_error)?;
        Ok(Some(Duration::from_secs(info.ttl)).filter(|d| !d.is_zero()))
    }

    /// Renews the token at two thirds of its TTL; logs in again (AppRole) when renewal
    /// fails or the token reached its maximum TTL.
    fn spawn_renewal(self: &Arc<Self>, ttl: Option<Duration>) {
        let Some(mut ttl) = ttl else { return };
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep((ttl * 2 / 3).max(Duration::from_millis(200))).await;
                let Some(store) = store.upgrade() else { return };
                let renewed = match RenewTokenSelfRequest::builder().build() {
                    Ok(endpoint) => {
                        let middleware = store.middleware.read().await;
                        store.http.auth(&middleware, endpoint).await
                    }
                    Err(e) => Err(VaultCallError::unbuilt(e)),
                };
                ttl = match renewed {
                    Ok(auth)
                        if auth.lease_duration > 0
                            && Duration::from_secs(auth.lease_duration) >= ttl / 2 =>
                    {
                        metrics::counter!("intercom_vault_token_renewals_total", "outcome" => "renewed").increment(1);
                        Duration::from_secs(auth.lease_duration)
                    }
                    other => {
                        metrics::counter!("intercom_vault_token_renewals_total", "outcome" => "relogin").increment(1);
                        if let Err(e) = &other {
                            tracing::warn!(error = %e, "vault token renewal failed");
                        }
                        match store.settings.auth {
                            VaultAuth::Approle => match store.login().await {
                                Ok(Some(t)) => t,
                                Ok(None) => return,
                                Err(e) => {
                                    tracing::warn!(error = %e, "vault login failed; retrying");
                                    Duration::from_secs(3)
                                }
                            },
                            // A static token cannot log in again: keep trying to renew.
                            VaultAuth::Token => Duration::from_secs(30),
                        }
                    }
                };
            }
        });
    }

    /// True when Vault answers unsealed.
    pub async fn healthy(&self) -> bool {
        self.http.healthy().await
    }

    /// Reads the metadata of a KV v2 secret: its current version.
    async fn current_version(&self, mount: &str, path: &str) -> Result<u64, VaultCallError> {
        let endpoint = ReadSecretMetadataRequest::builder()
            .mount(mount)
            .path(path)
            .build()
            .map_err(VaultCallError::unbuilt)?;
        let middleware = self.middleware.read().await;
        Ok(self.http.data(&middleware, endpoint).await?.current_version)
    }

    /// Reads the key-value map of a secret and its version (KV v2) or none (KV v1).
    async fn read_map(
        &self,
        mount: &str,
        path: &str,
    ) -> Result<(HashMap<String, serde_json::Value>, Option<String>), VaultCallError> {
        let untyped = |e: serde_json::Error| VaultCallError::unparsable(&e);
        if self.settings.kv_version == 1 {
            let endpoint = GetSecretRequest::builder()
                .mount(mount)
                .path(path)
                .build()
                .map_err(VaultCallError::unbuilt)?;
            let middleware = self.middleware.read().await;
            let answer = self.http.raw(&middleware, endpoint).await?;
            return Ok((serde_json::from_value(answer.data).map_err(untyped)?, None));
        }
        let version = self.current_version(mount, path).await?;
        let endpoint = ReadSecretRequest::builder()
            .mount(mount)
            .path(path)
            .version(Some(version))
            .build()
            .map_err(VaultCallError::unbuilt)?;
        let middleware = self.middleware.read().await;
        let answer = self.http.data(&middleware, endpoint).await?;
        Ok((
            serde_json::from_value(answer.data).map_err(untyped)?,
            Some(version.to_string()),
        ))
    }
}

impl SecretStore for VaultStore {
    async fn read(&self, reference: &SecretRef) -> Result<Versioned, SecretError> {
        let SecretRef::Vault { mount, path, key } = reference else {
            return Err(SecretError::BadReference(crate::secret::BadReference));
        };
        let not_found = || SecretError::NotFound {
            reference: reference.to_string(),
            store: "vault".into(),
        };
        let unreadable = |reason: String| SecretError::Unreadable {
            reference: reference.to_string(),
            store: "vault".into(),
            reason,
        };
        let (data, version) = self.read_map(mount, path).await.map_err(|e| match e {
            VaultCallError::NotFound => not_found(),
            e @ (VaultCallError::Parse(_)
            | VaultCallError::Empty(_)
            | VaultCallError::Unread(_)) => unreadable(e.to_string()),
            e => store_error(e),
        })?;
        let value = match data.get(key) {
            Some(serde_json::Value::String(s)) => Secret::new(s.clone()),
            Some(_) => return Err(unreadable("the value is not a string".into())),
            None => return Err(not_found()),
        };
        Ok(Versioned {
            version: version.unwrap_or_else(|| value.fingerprint()),
            value,
        })
    }

    async fn version(&self, reference: &SecretRef) -> Result<Option<String>, SecretError> {
        let SecretRef::Vault { mount, path, .. } = reference else {
            return Ok(None);
        };
        if self.settings.kv_version == 1 {
            return Ok(None);
        }
        let version = self
            .current_version(mount, path)
            .await
            .map_err(store_error)?;
        Ok(Some(version.to_string()))
    }
}
