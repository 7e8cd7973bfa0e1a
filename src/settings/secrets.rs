//! `[secrets]`: where secret references resolve (a local file, Vault or OpenBao).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::*;

/// Where secret references resolve.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    /// A TOML file of `name = "value"`, for `file:NAME` references.
    pub file: Option<PathBuf>,
    /// Vault or OpenBao, for `vault:MOUNT/PATH#KEY` references.
    pub vault: Option<VaultSettings>,
    /// How often every referenced secret is checked for a new value.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            file: None,
            vault: None,
            poll_interval: Duration::from_secs(30),
        }
    }
}

/// How to reach and authenticate to Vault (or OpenBao).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSettings {
    /// e.g. `https://vault.internal:8200`
    pub address: VaultAddress,
    #[serde(default)]
    pub namespace: Option<String>,
    /// `token` or `approle`.
    pub auth: VaultAuth,
    /// Token auth: a file holding the token, or the name of an environment variable.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,
    /// AppRole auth: where the role id and secret id are read from.
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    #[serde(default)]
    pub role_id_file: Option<PathBuf>,
    #[serde(default)]
    pub role_id_env: Option<String>,
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_id_env: Option<String>,
    /// KV engine version of the mounts referenced: 2 (default) or 1.
    #[serde(default = "default_kv_version")]
    pub kv_version: u8,
    #[serde(default = "default_vault_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM bundle of CAs trusted for Vault's certificate, besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_approle_mount() -> String {
    "approle".into()
}
fn default_kv_version() -> u8 {
    2
}
fn default_vault_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuth {
    Token,
    Approle,
}

impl SecretsSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if let Some(vault) = &self.vault {
            if !matches!(vault.kv_version, 1 | 2) {
                return Err(SettingsError::new(
                    "secrets.vault.kv_version",
                    "must be 1 or 2",
                ));
            }
            positive("secrets.vault.timeout", vault.timeout)?;
        }
        positive("secrets.poll_interval", self.poll_interval)?;
        Ok(())
    }
}

/// Vault's base URL, `http(s)://host[:port]`, parsed when read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct VaultAddress(pub Url);

impl TryFrom<String> for VaultAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                Ok(VaultAddress(url))
            }
            _ => Err(format!(
                "{text:?} is not a valid URL like https://vault:8200"
            )),
        }
    }
}
