//! `[replicas]`: what replicas sharing one Redis must agree on.

use serde::Deserialize;

use crate::secret::SecretRef;

/// Replicas sharing one Redis hash what they share (revocation ids, logout `jti`s, cache
/// keys, rate-limit callers) under one key, so that a revocation announced by one is
/// recognised by all, and nothing in Redis can be reversed to an identity.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplicasSettings {
    /// Secret reference: the HMAC key every replica hashes shared ids under (required
    /// with `[redis]`; without Redis each process draws its own).
    pub shared_key: Option<SecretRef>,
    /// Secret reference: a second key while `shared_key` rotates. Revocations are also
    /// announced and stored under it, so replicas still on it recognise them.
    pub rotation_shared_key: Option<SecretRef>,
}
