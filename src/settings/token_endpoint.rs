//! `[token_endpoint]`: clients that authenticate at `POST /token` with HTTP Basic.

use serde::Deserialize;

use super::*;
use crate::secret::SecretRef;

/// `POST /token`: besides a bearer token, services may authenticate as clients here.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpointSettings {
    /// Clients that authenticate with HTTP Basic (RFC 6749 §2.3.1).
    #[serde(default)]
    pub clients: Vec<TokenClientSettings>,
}

/// One client of `POST /token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClientSettings {
    pub client_id: String,
    /// Secret reference to its client secret.
    pub secret: SecretRef,
}

impl TokenEndpointSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let mut client_ids = std::collections::HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            if client.client_id.is_empty() || !client_ids.insert(client.client_id.as_str()) {
                return Err(SettingsError::new(
                    format!("token_endpoint.clients[{i}].client_id"),
                    format!("{:?} is empty or used twice", client.client_id),
                ));
            }
        }
        Ok(())
    }
}
