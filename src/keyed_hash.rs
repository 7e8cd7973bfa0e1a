//! The keyed hash replicas share (HMAC-SHA256 under a key from the secret store), so
//! they compute the same cache keys and revocation ids without any of them holding a
//! token or an identity in Redis. Without a shared key (no Redis) it is per process.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// A 32-byte keyed hash.
pub type Hash = [u8; 32];

/// HMAC-SHA256 with length-framed parts, so `("ab","c")` and `("a","bc")` differ.
#[derive(Clone)]
pub struct SharedHasher {
    mac: Hmac<Sha256>,
}

impl SharedHasher {
    pub fn new(key: &Secret) -> Self {
        Self {
            mac: Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
                .expect("HMAC takes any key length"),
        }
    }

    /// A hasher under a fresh random key, for a replica that shares nothing.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut key);
        Self {
            mac: Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    pub fn hash(&self, parts: &[&[u8]]) -> Hash {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// A hash from its hex (as [`hex::encode`] writes it), refusing anything else.
pub fn unhex(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    // Lowercase only, as written: one id, one spelling.
    (hex::encode(out) == text).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_framed_and_hex_round_trips() {
        let h = SharedHasher::new(&Secret::new("k"));
        assert_ne!(h.hash(&[b"ab", b"c"]), h.hash(&[b"a", b"bc"]));
        assert_eq!(
            h.hash(&[b"x"]),
            SharedHasher::new(&Secret::new("k")).hash(&[b"x"])
        );
        let x = h.hash(&[b"x"]);
        assert_eq!(unhex(&hex::encode(x)), Some(x));
        assert_eq!(unhex(&hex::encode_upper(x)), None);
        assert_eq!(unhex("zz"), None);
    }
}
