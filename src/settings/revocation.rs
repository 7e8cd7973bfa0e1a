//! `[revocation]`: the admin API, back-channel logout and the denylist.

use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::secret::SecretRef;

/// Revocation: the admin API, back-channel logout and the denylist.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationSettings {
    /// Secret reference: the bearer credential of `POST /admin/revoke` (off when unset).
    pub admin_credential: Option<SecretRef>,
    /// Serve `POST /backchannel-logout` for the AS's logout tokens.
    pub backchannel_logout: bool,
    /// The Redis pub/sub channel that carries revocations to every replica.
    pub channel: String,
    /// How long a revoked subject, client, session or token stays refused: at least
    /// the longest lifetime of a token issued before the revocation.
    #[serde(with = "humantime_serde")]
    pub denylist_ttl: Duration,
    /// A token issued up to this long after a revocation is still covered by it: the
    /// AS's clock and this replica's differ a little.
    #[serde(with = "humantime_serde")]
    pub clock_leeway: Duration,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            admin_credential: None,
            backchannel_logout: true,
            channel: "intercom:revocations".into(),
            denylist_ttl: Duration::from_secs(3600),
            clock_leeway: Duration::from_secs(1),
        }
    }
}

impl RevocationSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        positive("revocation.denylist_ttl", self.denylist_ttl)?;
        Ok(())
    }
}
