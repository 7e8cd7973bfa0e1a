//! HashiCorp Vault or OpenBao as the secret store, through `vaultrs`: token or AppRole
//! authentication, the token renewed before its TTL runs out (and a fresh login when it
//! can no longer be renewed), KV v2 (versions read from metadata) or KV v1, an optional
//! namespace.
//!
//! Readiness uses `GET /v1/sys/health` as plain HTTP: `vaultrs::sys::health` cannot
//! parse OpenBao's answer (it lacks `performance_standby`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};

use super::{Secret, SecretError, SecretRef, SecretStore, Versioned};
use crate::settings::{VaultAuth, VaultSettings};

/// A Vault (or OpenBao) KV store.
pub struct VaultStore {
    client: RwLock<VaultClient>,
    settings: VaultSettings,
    http: reqwest::Client,
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
        let client = Self::client(settings, &token)?;
        let store = Arc::new(Self {
            client: RwLock::new(client),
            settings: settings.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(settings.timeout)
                .build()
                .map_err(store_error)?,
        });
        let ttl = match settings.auth {
            VaultAuth::Approle => store.login().await?,
            VaultAuth::Token => store.lookup_ttl().await.unwrap_or(None),
        };
        store.spawn_renewal(ttl);
        Ok(store)
    }

    fn client(settings: &VaultSettings, token: &str) -> Result<VaultClient, SecretError> {
        let mut builder = VaultClientSettingsBuilder::default();
        builder
            .address(&settings.address)
            .token(token)
            .timeout(Some(settings.timeout));
        if let Some(ns) = &settings.namespace {
            builder.namespace(Some(ns.clone()));
        }
        VaultClient::new(builder.build().map_err(store_error)?).map_err(store_error)
    }

    /// AppRole login; returns the token's TTL.
    async fn login(&self) -> Result<Option<Duration>, SecretError> {
        let s = &self.settings;
        let role_id = credential(&s.role_id_file, &s.role_id_env, "approle role_id")?;
        let secret_id = credential(&s.secret_id_file, &s.secret_id_env, "approle secret_id")?;
        let mut client = self.client.write().await;
        let auth = vaultrs::auth::approle::login(&*client, &s.approle_mount, &role_id, &secret_id)
            .await
            .map_err(|e| store_error(format!("approle login failed: {e}")))?;
        client.set_token(&auth.client_token);
        metrics::counter!("intercom_vault_logins_total").increment(1);
        Ok(Some(Duration::from_secs(auth.lease_duration)).filter(|d| !d.is_zero()))
    }

    async fn lookup_ttl(&self) -> Result<Option<Duration>, SecretError> {
        let client = self.client.read().await;
        let info = vaultrs::token::lookup_self(&*client)
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
                let renewed = {
                    let client = store.client.read().await;
                    vaultrs::token::renew_self(&*client, None).await
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

    /// `GET /v1/sys/health` as plain HTTP: true when Vault answers unsealed.
    pub async fn healthy(&self) -> bool {
        let url = format!(
            "{}/v1/sys/health",
            self.settings.address.trim_end_matches('/')
        );
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }
}

impl SecretStore for VaultStore {
    async fn read(&self, reference: &SecretRef) -> Result<Versioned, SecretError> {
        let SecretRef::Vault { mount, path, key } = reference else {
            return Err(SecretError::BadReference);
        };
        let client = self.client.read().await;
        let not_found = || SecretError::NotFound {
            reference: reference.to_string(),
            store: "vault".into(),
        };
        let (data, version): (HashMap<String, serde_json::Value>, Option<String>) =
            if self.settings.kv_version == 1 {
                let data = vaultrs::kv1::get(&*client, mount, path)
                    .await
                    .map_err(|e| match e {
                        vaultrs::error::ClientError::APIError { code: 404, .. } => not_found(),
                        e => store_error(e),
                    })?;
                (data, None)
            } else {
                let meta = vaultrs::kv2::read_metadata(&*client, mount, path)
                    .await
                    .map_err(|e| match e {
                        vaultrs::error::ClientError::APIError { code: 404, .. } => not_found(),
                        e => store_error(e),
                    })?;
                let data = vaultrs::kv2::read_version(&*client, mount, path, meta.current_version)
                    .await
                    .map_err(store_error)?;
                (data, Some(meta.current_version.to_string()))
            };
        let value = match data.get(key) {
            Some(serde_json::Value::String(s)) => Secret::new(s.clone()),
            Some(_) => return Err(store_error(format!("{reference} is not a string"))),
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
        let client = self.client.read().await;
        let meta = vaultrs::kv2::read_metadata(&*client, mount, path)
            .await
            .map_err(store_error)?;
        Ok(Some(meta.current_version.to_string()))
    }
}
