//! `[tokens]`: the internal JWTs Intercom mints, and the edge token cache.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use http::HeaderName;

use super::*;
use crate::secret::SecretRef;

/// Internal tokens and the token cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// `iss` of the internal JWTs: Intercom's public URL.
    pub issuer: String,
    /// `ES256` (default), `RS256` or `EdDSA`.
    pub algorithm: SigningAlgorithm,
    /// A secret reference to the signing key (a private JWK with a `kid`), shared by
    /// every replica; generated at start when unset.
    pub signing_key: Option<SecretRef>,
    /// A secret reference to the next signing key, published ahead of use.
    pub next_signing_key: Option<SecretRef>,
    /// Longest lifetime of an internal JWT (never past the original token's `exp`).
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// How often the signing key rotates.
    #[serde(with = "humantime_serde")]
    pub key_rotation: Duration,
    /// How long a new key is published before it signs: the JWKS `max-age`.
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
    /// Most cached tokens.
    pub cache_capacity: u64,
    /// Longest time a token's introspection result is cached (never past its `exp`).
    #[serde(with = "humantime_serde")]
    pub cache_max_ttl: Duration,
    /// How long an inactive token's answer is cached.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Most cached inactive tokens (a separate bound, so junk cannot evict good entries).
    pub negative_capacity: u64,
    /// Names of the identity headers sent upstream.
    #[serde(deserialize_with = "header_name_value")]
    pub user_id_header: HeaderName,
    #[serde(deserialize_with = "header_name_value")]
    pub client_id_header: HeaderName,
    #[serde(deserialize_with = "header_name_value")]
    pub scopes_header: HeaderName,
    /// Accept Intercom's own internal JWTs as bearer tokens (a service calling another
    /// through Intercom with the token it received); revocations apply to them too.
    pub accept_internal: bool,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: "http://127.0.0.1:8080".into(),
            algorithm: SigningAlgorithm::Es256,
            signing_key: None,
            next_signing_key: None,
            lifetime: Duration::from_secs(300),
            key_rotation: Duration::from_secs(24 * 3600),
            jwks_max_age: Duration::from_secs(300),
            cache_capacity: 100_000,
            cache_max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(10),
            negative_capacity: 10_000,
            user_id_header: HeaderName::from_static("x-user-id"),
            client_id_header: HeaderName::from_static("x-client-id"),
            scopes_header: HeaderName::from_static("x-scopes"),
            accept_internal: false,
        }
    }
}

impl TokenSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let t = self;
        Url::parse(&t.issuer).map_err(|_| {
            SettingsError::new(
                "tokens.issuer",
                format!("{:?} is not a valid URL", t.issuer),
            )
        })?;
        positive("tokens.lifetime", t.lifetime)?;
        positive("tokens.key_rotation", t.key_rotation)?;
        positive("tokens.cache_max_ttl", t.cache_max_ttl)?;
        positive("tokens.negative_ttl", t.negative_ttl)?;
        Ok(())
    }
}
