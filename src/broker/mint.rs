//! Intercom's own signing keys and the internal JWTs (RFC 9068 `at+jwt`) it mints.
//!
//! Keys are generated at start and rotate on a timer, or come from the secret store
//! (`tokens.signing_key`, shared by every replica) and rotate when that secret does. A
//! generated key is published in the JWKS one rotation before it signs (so every
//! verifier has seen it, as long as the rotation interval is at least the JWKS
//! `max-age`); for stored keys `tokens.next_signing_key` publishes the next one ahead.
//! A key stays published after it stops signing until every token it signed has expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use josekit::jwk::Jwk;
use josekit::jws::{self, JwsHeader, JwsSigner};
use josekit::jwt::{self, JwtPayload};
use serde_json::json;

use super::Principal;
use crate::clock::now_secs;
use crate::secrets::registry::SecretCell;

/// One signing key.
pub struct SigningKey {
    pub kid: String,
    signer: Box<dyn JwsSigner + Send + Sync>,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    #[error("signing failed")]
    Signing,
}

impl SigningKey {
    /// A key from a private JWK (JSON) with a `kid`; its `alg`, or `default_alg`.
    pub fn from_private_jwk(json: &str, default_alg: &str) -> Result<Self, MintError> {
        let bad = |why: &str| MintError::KeyGeneration(format!("stored signing key: {why}"));
        let private = Jwk::from_bytes(json.as_bytes()).map_err(|_| bad("not a JWK"))?;
        let kid = private.key_id().ok_or_else(|| bad("no kid"))?.to_string();
        let alg = private.algorithm().unwrap_or(default_alg).to_string();
        let signer: Box<dyn JwsSigner + Send + Sync> = match alg.as_str() {
            "RS256" => Box::new(
                jws::RS256
                    .signer_from_jwk(&private)
                    .map_err(|_| bad("not an RS256 key"))?,
            ),
            "EdDSA" => Box::new(
                jws::EdDSA
                    .signer_from_jwk(&private)
                    .map_err(|_| bad("not an EdDSA key"))?,
            ),
            "ES256" => Box::new(
                jws::ES256
                    .signer_from_jwk(&private)
                    .map_err(|_| bad("not an ES256 key"))?,
            ),
            _ => return Err(bad("alg must be ES256, RS256 or EdDSA")),
        };
        let mut public = private
            .to_public_key()
            .map_err(|_| bad("no public parameters"))?;
        public.set_key_id(&kid);
        public.set_key_use("sig");
        public.set_algorithm(&alg);
        Ok(Self {
            kid,
            signer,
            public,
        })
    }

    /// `payload` signed as a compact JWS, its header naming this key (and `typ`).
    pub fn sign(&self, typ: &str, payload: &JwtPayload) -> Result<String, MintError> {
        let mut header = JwsHeader::new();
        header.set_token_type(typ);
        header.set_key_id(&self.kid);
        jwt::encode_with_signer(payload, &header, &*self.signer).map_err(|_| MintError::Signing)
    }

    /// Generates a key for `alg` (ES256, RS256 or EdDSA).
    pub fn generate(alg: &str) -> Result<Self, MintError> {
        let gen_err = |e: josekit::JoseError| MintError::KeyGeneration(e.to_string());
        let (private, mut public) = match alg {
            "RS256" => {
                let pair = jws::RS256.generate_key_pair(2048).map_err(gen_err)?;
                (pair.to_jwk_private_key(), pair.to_jwk_public_key())
            }
            "EdDSA" => {
                let pair = jws::EdDSA
                    .generate_key_pair(josekit::jwk::alg::ed::EdCurve::Ed25519)
                    .map_err(gen_err)?;
                (pair.to_jwk_private_key(), pair.to_jwk_public_key())
            }
            _ => {
                let pair = jws::ES256.generate_key_pair().map_err(gen_err)?;
                (pair.to_jwk_private_key(), pair.to_jwk_public_key())
            }
        };
        let mut raw = [0u8; 12];
        rand::Rng::fill(&mut rand::rng(), &mut raw);
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let signer: Box<dyn JwsSigner + Send + Sync> = match alg {
            "RS256" => Box::new(jws::RS256.signer_from_jwk(&private).map_err(gen_err)?),
            "EdDSA" => Box::new(jws::EdDSA.signer_from_jwk(&private).map_err(gen_err)?),
            _ => Box::new(jws::ES256.signer_from_jwk(&private).map_err(gen_err)?),
        };
        public.set_key_id(&kid);
        public.set_key_use("sig");
        public.set_algorithm(alg);
        Ok(Self {
            kid,
            signer,
            public,
        })
    }
}

struct KeySet {
    /// Published, not yet signing.
    next: Option<Arc<SigningKey>>,
    /// Signing.
    current: Arc<SigningKey>,
    /// Published until the given time (seconds since the epoch), no longer signing.
    retired: Vec<(Arc<SigningKey>, u64)>,
    /// For stored keys: the fingerprints of the secrets this set was built from.
    stored_from: Option<(String, Option<String>)>,
}

/// Stored keys: the secrets holding the signing and the next key.
struct StoredKeys {
    current: Arc<SecretCell>,
    next: Option<Arc<SecretCell>>,
}

/// The signing keys and the minting of internal JWTs.
pub struct Minter {
    keys: ArcSwap<KeySet>,
    stored: Option<StoredKeys>,
    algorithm: String,
    issuer: String,
    lifetime: Duration,
    jwks_max_age: Duration,
}

/// A minted internal token.
#[derive(Debug, Clone)]
pub struct Minted {
    pub jwt: Arc<str>,
    pub exp: u64,
}

impl Minter {
    pub fn new(
        algorithm: &str,
        issuer: &str,
        lifetime: Duration,
        jwks_max_age: Duration,
    ) -> Result<Self, MintError> {
        let keys = KeySet {
            next: Some(Arc::new(SigningKey::generate(algorithm)?)),
            current: Arc::new(SigningKey::generate(algorithm)?),
            retired: Vec::new(),
            stored_from: None,
        };
        Ok(Self {
            keys: ArcSwap::from_pointee(keys),
            stored: None,
            algorithm: algorithm.to_string(),
            issuer: issuer.to_string(),
            lifetime,
            jwks_max_age,
        })
    }

    /// Signs with the private JWK in `current` (and publishes the one in `next`), as the
    /// secret store has them; follows their rotation.
    pub fn from_store(
        current: Arc<SecretCell>,
        next: Option<Arc<SecretCell>>,
        algorithm: &str,
        issuer: &str,
        lifetime: Duration,
        jwks_max_age: Duration,
    ) -> Result<Self, MintError> {
        let stored = StoredKeys { current, next };
        let keys = Self::load_stored(&stored, algorithm)?;
        Ok(Self {
            keys: ArcSwap::from_pointee(keys),
            stored: Some(stored),
            algorithm: algorithm.to_string(),
            issuer: issuer.to_string(),
            lifetime,
            jwks_max_age,
        })
    }

    fn load_stored(stored: &StoredKeys, algorithm: &str) -> Result<KeySet, MintError> {
        let current_secret = stored.current.current();
        let next_secret = stored.next.as_ref().map(|c| c.current());
        Ok(KeySet {
            current: Arc::new(SigningKey::from_private_jwk(
                current_secret.expose(),
                algorithm,
            )?),
            next: match &next_secret {
                Some(s) => Some(Arc::new(SigningKey::from_private_jwk(
                    s.expose(),
                    algorithm,
                )?)),
                None => None,
            },
            retired: Vec::new(),
            stored_from: Some((
                current_secret.fingerprint(),
                next_secret.map(|s| s.fingerprint()),
            )),
        })
    }

    /// For stored keys: picks up a rotation of the secrets (the old signing key is
    /// retired, still published until its tokens expire).
    fn follow_store(&self) {
        let Some(stored) = &self.stored else { return };
        let seen = (
            stored.current.current().fingerprint(),
            stored.next.as_ref().map(|c| c.current().fingerprint()),
        );
        if self.keys.load().stored_from.as_ref() == Some(&seen) {
            return;
        }
        match Self::load_stored(stored, &self.algorithm) {
            Ok(mut fresh) => {
                let old = self.keys.load();
                let now = now_secs();
                fresh.retired = old
                    .retired
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .cloned()
                    .collect();
                if old.current.kid != fresh.current.kid {
                    fresh
                        .retired
                        .push((old.current.clone(), now + self.lifetime.as_secs() + 60));
                }
                self.keys.store(Arc::new(fresh));
                metrics::counter!("intercom_signing_key_rotations_total").increment(1);
                tracing::info!(kid = %self.current_kid(), "signing key rotated from the secret store");
            }
            Err(e) => {
                tracing::error!(error = %e, "the stored signing key is unusable; keeping the current one")
            }
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn jwks_max_age(&self) -> Duration {
        self.jwks_max_age
    }

    /// The kid that signs now.
    pub fn current_kid(&self) -> String {
        self.keys.load().current.kid.clone()
    }

    /// Promotes the published next key to signing, retires the current one (kept
    /// published for one token lifetime), and publishes a fresh next key.
    pub fn rotate(&self) -> Result<(), MintError> {
        if self.stored.is_some() {
            // Stored keys rotate when their secret does.
            self.follow_store();
            return Ok(());
        }
        let fresh = Arc::new(SigningKey::generate(&self.algorithm)?);
        let now = now_secs();
        let keep_until = now + self.lifetime.as_secs() + 60;
        self.keys.rcu(|old| {
            let mut retired: Vec<(Arc<SigningKey>, u64)> = old
                .retired
                .iter()
                .filter(|(_, until)| *until > now)
                .cloned()
                .collect();
            retired.push((old.current.clone(), keep_until));
            KeySet {
                next: Some(fresh.clone()),
                current: old.next.clone().unwrap_or_else(|| fresh.clone()),
                retired,
                stored_from: None,
            }
        });
        metrics::counter!("intercom_signing_key_rotations_total").increment(1);
        tracing::info!(kid = %self.current_kid(), "signing key rotated");
        Ok(())
    }

    /// Rotates every `interval` in the background.
    pub fn spawn_rotation(self: &Arc<Self>, interval: Duration) {
        let minter = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(m) = minter.upgrade() else { return };
                if let Err(e) = m.rotate() {
                    tracing::error!(error = %e, "signing key rotation failed; keeping the current key");
                }
            }
        });
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// A published key by `kid` (current, next, or retired and not yet expired).
    pub fn public_key(&self, kid: &str) -> Option<Jwk> {
        self.follow_store();
        let set = self.keys.load();
        let now = now_secs();
        std::iter::once(&set.current)
            .chain(set.next.iter())
            .chain(
                set.retired
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(k, _)| k),
            )
            .find(|k| k.kid == kid)
            .map(|k| k.public.clone())
    }

    /// The published keys as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.follow_store();
        let set = self.keys.load();
        let now = now_secs();
        let mut keys = vec![set.current.public.as_ref().clone()];
        if let Some(next) = &set.next {
            keys.push(next.public.as_ref().clone());
        }
        keys.extend(
            set.retired
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(k, _)| k.public.as_ref().clone()),
        );
        json!({ "keys": keys })
    }

    /// Mints the internal JWT for `principal` and `audience`: `exp` never later than the
    /// original token's, and at most `lifetime` away.
    pub fn mint(&self, principal: &Principal, audience: &str) -> Result<Minted, MintError> {
        self.mint_delegated(principal, audience, &principal.scopes, None)
    }

    /// Mints a JWT for `audience` with only `scopes`, and, when a service calls on the
    /// principal's behalf, `act` naming it (RFC 8693 §4.1).
    pub fn mint_delegated(
        &self,
        principal: &Principal,
        audience: &str,
        scopes: &[String],
        actor: Option<&str>,
    ) -> Result<Minted, MintError> {
        let started = Instant::now();
        self.follow_store();
        let key = self.keys.load().current.clone();
        let now = now_secs();
        let exp = principal.exp.min(now + self.lifetime.as_secs());
        let mut payload = JwtPayload::new();
        payload.set_issuer(&self.issuer);
        let subject = principal
            .sub
            .as_deref()
            .or(principal.client_id.as_deref())
            .unwrap_or("anonymous");
        payload.set_subject(subject);
        payload.set_audience(vec![audience]);
        payload.set_jwt_id(uuid::Uuid::new_v4().to_string());
        let claim = |p: &mut JwtPayload, k: &str, v: serde_json::Value| {
            p.set_claim(k, Some(v)).map_err(|_| MintError::Signing)
        };
        claim(&mut payload, "iat", now.into())?;
        claim(&mut payload, "exp", exp.into())?;
        if let Some(client_id) = &principal.client_id {
            claim(&mut payload, "client_id", client_id.as_str().into())?;
        }
        claim(&mut payload, "scope", scopes.join(" ").into())?;
        if let Some(actor) = actor {
            claim(&mut payload, "act", serde_json::json!({ "sub": actor }))?;
        }
        if let Some(t) = principal.auth_time {
            claim(&mut payload, "auth_time", t.into())?;
        }
        if let Some(acr) = &principal.acr {
            claim(&mut payload, "acr", acr.as_str().into())?;
        }
        if let Some(sid) = &principal.sid {
            claim(&mut payload, "sid", sid.as_str().into())?;
        }
        if let Some(source) = &principal.source_token_id {
            // A keyed hash (the replicas' shared key): it names no token to anyone else.
            claim(&mut payload, "src_tid", source.as_str().into())?;
        }
        let jwt = key.sign("at+jwt", &payload)?;
        metrics::histogram!("intercom_token_mint_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Minted {
            jwt: Arc::from(jwt),
            exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            sub: Some("alice".into()),
            client_id: Some("app".into()),
            scopes: vec!["a".into(), "b".into()],
            exp: now_secs() + 3600,
            ..Default::default()
        }
    }

    #[test]
    fn minted_tokens_verify_against_the_published_keys_across_rotation() {
        for alg in ["ES256", "RS256", "EdDSA"] {
            let minter = Minter::new(
                alg,
                "https://intercom.test",
                Duration::from_secs(300),
                Duration::from_secs(60),
            )
            .unwrap();
            let before = minter.mint(&principal(), "billing").unwrap();
            assert!(before.exp <= now_secs() + 300, "capped by the lifetime");
            minter.rotate().unwrap();
            let after = minter.mint(&principal(), "billing").unwrap();
            let jwks = josekit::jwk::JwkSet::from_bytes(minter.jwks().to_string()).unwrap();
            assert_eq!(jwks.keys().len(), 3, "next, current and the retired key");
            for token in [&before.jwt, &after.jwt] {
                let header = jwt::decode_header(token.as_ref()).unwrap();
                let kid = header.claim("kid").unwrap().as_str().unwrap();
                let key = jwks.get(kid)[0];
                let verifier: Box<dyn jws::JwsVerifier> = match alg {
                    "RS256" => Box::new(jws::RS256.verifier_from_jwk(key).unwrap()),
                    "EdDSA" => Box::new(jws::EdDSA.verifier_from_jwk(key).unwrap()),
                    _ => Box::new(jws::ES256.verifier_from_jwk(key).unwrap()),
                };
                let (payload, header) =
                    jwt::decode_with_verifier(token.as_ref(), &*verifier).unwrap();
                assert_eq!(header.token_type(), Some("at+jwt"));
                assert_eq!(payload.subject(), Some("alice"));
                assert_eq!(payload.audience(), Some(vec!["billing"]));
                assert_eq!(payload.claim("scope").unwrap(), "a b");
            }
        }
    }

    #[test]
    fn exp_never_passes_the_original_token() {
        let minter = Minter::new(
            "ES256",
            "https://i",
            Duration::from_secs(300),
            Duration::from_secs(60),
        )
        .unwrap();
        let mut p = principal();
        p.exp = now_secs() + 20;
        assert_eq!(minter.mint(&p, "x").unwrap().exp, p.exp);
    }
}
