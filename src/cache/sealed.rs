//! Values the shared tier holds, sealed with AES-256-GCM under a key from the secret
//! store. Each value names its key id, so the key can rotate: a value sealed under the
//! previous key still opens while the registry keeps it. The Redis key is the
//! associated data, so a value cannot be moved to another key.

use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::secret::Secret;
use crate::secrets::registry::SecretCell;

const VERSION: &str = "v1";

/// Seals and opens values under the current (or previous) key.
pub struct Sealer {
    key: Arc<SecretCell>,
}

/// A key derived from the secret's value (any high-entropy text), with its id.
struct DerivedKey {
    id: String,
    cipher: Aes256Gcm,
}

fn derive(secret: &Secret) -> DerivedKey {
    let key: [u8; 32] = Sha256::new()
        .chain_update(b"intercom-cache-encryption\0")
        .chain_update(secret.expose())
        .finalize()
        .into();
    let id: [u8; 32] = Sha256::new()
        .chain_update(b"intercom-cache-key-id\0")
        .chain_update(key)
        .finalize()
        .into();
    DerivedKey {
        id: hex::encode(&id[..4]),
        cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
    }
}

impl Sealer {
    pub fn new(key: Arc<SecretCell>) -> Self {
        Self { key }
    }

    /// `v1.<key id>.<base64url(nonce ‖ ciphertext)>`, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Option<String> {
        let key = derive(&self.key.current());
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .ok()?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Some(format!(
            "{VERSION}.{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// The plaintext, if the value was sealed for `context` under a key still known.
    pub fn open(&self, value: &str, context: &[u8]) -> Option<Vec<u8>> {
        let mut parts = value.splitn(3, '.');
        let (version, id, body) = (parts.next()?, parts.next()?, parts.next()?);
        if version != VERSION {
            return None;
        }
        let key = std::iter::once(self.key.current())
            .chain(self.key.previous())
            .map(|s| derive(&s))
            .find(|k| k.id == id)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        key.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: context,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let cell = Arc::new(SecretCell::fixed(Secret::new("first key")));
        let sealer = Sealer::new(cell.clone());
        let value = sealer.seal(b"eyJhbGciOi.secret.token", b"k1").unwrap();
        assert!(value.starts_with("v1."));
        assert!(!value.contains("eyJ"));
        assert_eq!(
            sealer.open(&value, b"k1").unwrap(),
            b"eyJhbGciOi.secret.token"
        );
        assert!(sealer.open(&value, b"k2").is_none(), "bound to its key");
        let mut tampered = value.clone();
        tampered.pop();
        tampered.push(if value.ends_with('A') { 'B' } else { 'A' });
        assert!(sealer.open(&tampered, b"k1").is_none());
        // Rotated: the old value still opens with the previous key; new ones use the new.
        cell.replace_for_test(Secret::new("second key"));
        assert!(sealer.open(&value, b"k1").is_some());
        let newer = sealer.seal(b"x", b"k1").unwrap();
        assert_ne!(newer.split('.').nth(1), value.split('.').nth(1));
    }
}
