//! `[exchange]`: the two-tier cache of tokens for downstream audiences.

use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::secret::SecretRef;

/// The two-tier cache of tokens for downstream audiences.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeCacheSettings {
    /// Entries in each replica's memory tier.
    pub capacity: u64,
    /// Keep the memory tier (off only to measure the Redis tier alone).
    pub memory_tier: bool,
    /// An entry goes this long before its token's `exp`.
    #[serde(with = "humantime_serde")]
    pub skew: Duration,
    /// Past this fraction of its lifetime, a hit renews the entry in the background.
    pub refresh_ahead: f64,
    /// How long a refused exchange is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// The cross-replica lock that lets one replica renew an entry.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// Secret reference: the AES-256-GCM key of Redis values (needed with Redis).
    pub encryption_key: Option<SecretRef>,
}

impl Default for ExchangeCacheSettings {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            memory_tier: true,
            skew: Duration::from_secs(5),
            refresh_ahead: 0.75,
            negative_ttl: Duration::from_secs(10),
            lock_ttl: Duration::from_secs(5),
            encryption_key: None,
        }
    }
}

impl ExchangeCacheSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if !(0.0..1.0).contains(&self.refresh_ahead) || self.refresh_ahead == 0.0 {
            return Err(SettingsError::new(
                "exchange.refresh_ahead",
                "must be a fraction between 0 and 1",
            ));
        }
        positive("exchange.negative_ttl", self.negative_ttl)?;
        positive("exchange.lock_ttl", self.lock_ttl)?;
        Ok(())
    }
}
