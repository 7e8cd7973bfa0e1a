//! The rules that cross sections.

use super::*;

/// Checks what no one section can: keys that must come together.
pub(super) fn validate(settings: &Settings) -> Result<(), SettingsError> {
    if settings.auth_server.is_some()
        && settings.revocation.denylist_ttl < settings.tokens.cache_max_ttl
    {
        // Revoked tokens stay in the edge cache until they expire; the denylist,
        // checked on every hit, must outlive them.
        return Err(SettingsError::new(
            "revocation.denylist_ttl",
            "must be at least tokens.cache_max_ttl",
        ));
    }
    if settings.redis.is_some() && settings.replicas.shared_key.is_none() {
        return Err(SettingsError::new(
            "replicas.shared_key",
            "is required with [redis]: replicas hash revocation ids, logout ids, cache keys and rate-limit callers under one shared key",
        ));
    }
    if settings.replicas.rotation_shared_key.is_some() && settings.replicas.shared_key.is_none() {
        return Err(SettingsError::new(
            "replicas.rotation_shared_key",
            "needs replicas.shared_key",
        ));
    }
    let exchanges = settings.routes.iter().any(|r| r.exchange.is_some());
    if exchanges && settings.redis.is_some() && settings.exchange.encryption_key.is_none() {
        return Err(SettingsError::new(
            "exchange.encryption_key",
            "is required with [redis]: replicas encrypt what they store",
        ));
    }
    Ok(())
}
