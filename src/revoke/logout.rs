//! OpenID Connect Back-Channel Logout 1.0: the AS POSTs a signed logout token; a valid
//! one (signature by the AS's keys, `iss`, `aud` = Intercom's client, fresh `iat`, the
//! logout event, `sub` or `sid`, no `nonce`, a `jti` never seen before) revokes the
//! subject and/or session.

use std::time::Duration;

use futures_util::FutureExt;

use crate::broker::validate::{audience_matches, JwtError, SignatureCheck};
use crate::clock::now_secs;
use crate::keyed_hash::SharedHasher;
use crate::redis::SharedRedis;

/// The `events` member a logout token must carry.
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Why a logout token was refused (400 `invalid_request` to the AS).
#[derive(Debug, thiserror::Error)]
pub enum LogoutError {
    #[error("the logout token is not a valid JWT from the authorization server: {0}")]
    Token(#[from] JwtError),
    #[error("the logout token's {0} is wrong or missing")]
    Claim(&'static str),
    #[error("the logout token was already used")]
    Replayed,
}

/// Who logged out.
#[derive(Debug, PartialEq, Eq)]
pub struct Logout {
    pub sub: Option<String>,
    pub sid: Option<String>,
    /// The hashed `jti` (under each shared key), to forget it when the logout could not
    /// be shared (the AS then sends the same token again: no replay).
    pub jti_ids: Vec<String>,
}

/// Verifies logout tokens.
pub struct LogoutVerifier {
    pub signature: SignatureCheck,
    pub issuer: String,
    /// Intercom's clients at the AS (the browser-login client too, when it differs).
    pub client_ids: Vec<String>,
    pub leeway: Duration,
    /// Seen `jti`s (hashed), across replicas when Redis is there.
    pub redis: Option<std::sync::Arc<SharedRedis>>,
    pub hasher: SharedHasher,
    /// The other shared key while one rotates.
    pub rotation: Option<SharedHasher>,
    pub seen: moka::sync::Cache<String, ()>,
    /// `redis.key_prefix`, for the replay keys.
    pub key_base: String,
}

/// How long a `jti` is remembered; tokens older than this are refused anyway.
const MAX_AGE: u64 = 300;

impl LogoutVerifier {
    /// The verifier when back-channel logout is on (`revocation.backchannel_logout`)
    /// and there is an AS whose logout tokens to verify.
    pub fn for_settings(
        settings: &crate::settings::Settings,
        parts: Option<&crate::broker::parts::BrokerParts>,
        redis: Option<std::sync::Arc<SharedRedis>>,
        keys: (&SharedHasher, Option<&SharedHasher>),
    ) -> Option<Self> {
        if !settings.revocation.backchannel_logout {
            return None;
        }
        let auth = settings.auth_server.as_ref()?;
        Some(Self::new(settings, auth, parts?, redis, keys))
    }

    /// Verifies logout tokens of the AS in `parts`; seen `jti`s are remembered for
    /// twice [`MAX_AGE`] (at most 100,000 here, and in Redis when there is one).
    pub fn new(
        settings: &crate::settings::Settings,
        auth: &crate::settings::AuthServerSettings,
        parts: &crate::broker::parts::BrokerParts,
        redis: Option<std::sync::Arc<SharedRedis>>,
        (hasher, rotation): (&SharedHasher, Option<&SharedHasher>),
    ) -> Self {
        Self {
            signature: SignatureCheck {
                algorithms: auth.jwt.algorithms.clone(),
                jwks: parts.jwks.clone(),
            },
            issuer: parts.issuer.clone(),
            client_ids: std::iter::once(auth.client_id.clone())
                .chain(settings.session.as_ref().and_then(|s| s.client_id.clone()))
                .collect(),
            leeway: auth.jwt.leeway,
            redis,
            hasher: hasher.clone(),
            rotation: rotation.cloned(),
            seen: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(2 * MAX_AGE))
                .build(),
            key_base: crate::redis::keys::base(settings),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Logout, LogoutError> {
        let (payload, typ) = self.signature.verify(token).await?;
        if typ.is_some_and(|t| !t.eq_ignore_ascii_case("logout+jwt")) {
            return Err(LogoutError::Claim("typ"));
        }
        if payload.issuer() != Some(self.issuer.as_str()) {
            return Err(LogoutError::Claim("iss"));
        }
        if !audience_matches(&payload, &self.client_ids) {
            return Err(LogoutError::Claim("aud"));
        }
        let now = now_secs();
        let leeway = self.leeway.as_secs();
        let iat = payload
            .claim("iat")
            .and_then(|v| v.as_u64())
            .ok_or(LogoutError::Claim("iat"))?;
        if iat > now + leeway || iat + MAX_AGE + leeway < now {
            return Err(LogoutError::Claim("iat"));
        }
        if payload
            .claim("exp")
            .and_then(|v| v.as_u64())
            .is_some_and(|exp| exp + leeway < now)
        {
            return Err(LogoutError::Claim("exp"));
        }
        let event = payload
            .claim("events")
            .and_then(|e| e.as_object())
            .and_then(|e| e.get(LOGOUT_EVENT));
        if !event.is_some_and(|e| e.is_object()) {
            return Err(LogoutError::Claim("events"));
        }
        if payload.claim("nonce").is_some() {
            return Err(LogoutError::Claim("nonce"));
        }
        let text = |name: &str| {
            payload
                .claim(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let (sub, sid) = (text("sub"), text("sid"));
        if sub.is_none() && sid.is_none() {
            return Err(LogoutError::Claim("sub or sid"));
        }
        let jti = text("jti").ok_or(LogoutError::Claim("jti"))?;
        let jti_ids = self.first_use(&jti).await?;
        Ok(Logout { sub, sid, jti_ids })
    }

    /// Forgets a recorded `jti` (here, and in Redis when it answers).
    pub async fn forget(&self, jti_ids: &[String]) {
        for id in jti_ids {
            self.seen.invalidate(id);
        }
        if let Some(redis) = &self.redis {
            let mut del = deadpool_redis::redis::cmd("DEL");
            for id in jti_ids {
                del.arg(crate::redis::keys::logout_jti(&self.key_base, id));
            }
            let _ = redis.query::<()>("logout_jti", del).await;
        }
    }

    /// Records the `jti` and returns its hashes (under the shared key, and the rotation
    /// key while there is one, so replicas on either key see it); refuses one seen
    /// before (here, or by another replica).
    async fn first_use(&self, jti: &str) -> Result<Vec<String>, LogoutError> {
        let ids: Vec<String> = std::iter::once(&self.hasher)
            .chain(&self.rotation)
            .map(|h| hex::encode(h.hash(&[b"logout-jti", jti.as_bytes()])))
            .collect();
        if ids.iter().any(|id| self.seen.contains_key(id)) {
            return Err(LogoutError::Replayed);
        }
        for id in &ids {
            self.seen.insert(id.clone(), ());
        }
        let Some(redis) = &self.redis else {
            return Ok(ids);
        };
        let keys: Vec<String> = ids
            .iter()
            .map(|id| crate::redis::keys::logout_jti(&self.key_base, id))
            .collect();
        let ttl = MAX_AGE + 2 * self.leeway.as_secs();
        let first = redis
            .run("logout_jti", move |conn| {
                async move {
                    // One hash of the jti per key: in different slots on a cluster.
                    let sets: Vec<_> = keys
                        .iter()
                        .map(|key| {
                            let mut set = deadpool_redis::redis::pipe();
                            set.cmd("SET").arg(key).arg(1).arg("NX").arg("EX").arg(ttl);
                            set
                        })
                        .collect();
                    let set: Vec<(Option<String>,)> = crate::redis::each(conn, &sets).await?;
                    Ok(set.iter().all(|(s,)| s.is_some()))
                }
                .boxed()
            })
            .await;
        match first {
            Ok(false) => Err(LogoutError::Replayed),
            // Redis failing: the local record is what we have.
            _ => Ok(ids),
        }
    }
}
