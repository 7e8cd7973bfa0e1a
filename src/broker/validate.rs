//! Local validation of JWTs signed by the authorization server: access tokens
//! (RFC 9068) and signed introspection answers (RFC 9701) share the checks here.
//!
//! `alg` must be on the allow-list (never `none`, never HMAC: a public key is not a
//! shared secret), the key comes from the AS's JWKS by `kid` (a lookup key, never a
//! path), and `iss`, `aud`, `exp`, `nbf` are checked with a small leeway.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use josekit::jws;
use josekit::jwt::{self, JwtPayload};

use super::jwks::{RemoteJwks, SharedVerifier};
use super::{Principal, TokenClaims};
use crate::clock::now_secs;

/// Why a JWT was refused. The text goes into `error_description`: it never quotes the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signing algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token's type is not accepted")]
    WrongType,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token has no expiry")]
    MissingExpiry,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is an ID token, not an access token")]
    IdToken,
}

/// True if the token has the shape of a JWS compact serialization with a JSON header.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .is_some_and(|h| h.get("alg").is_some())
}

/// Verifies JWS signatures against the AS's keys, for an `alg` allow-list.
pub struct SignatureCheck {
    pub algorithms: Vec<crate::settings::JwsAlgorithm>,
    pub jwks: Arc<RemoteJwks>,
}

impl SignatureCheck {
    /// Verifies the signature and returns the payload and the header's `typ`.
    pub async fn verify(&self, token: &str) -> Result<(JwtPayload, Option<String>), JwtError> {
        let header = jwt::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let alg = header
            .claim("alg")
            .and_then(|v| v.as_str())
            .ok_or(JwtError::Malformed)?
            .to_string();
        if !self.algorithms.iter().any(|a| a.as_str() == alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let kid = header
            .claim("kid")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let typ = header
            .claim("typ")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let verifier = self
            .jwks
            .verifier(kid.as_deref(), &alg, verifier_for)
            .await
            .ok_or(JwtError::UnknownKey)??;
        let (payload, _) =
            jwt::decode_with_verifier(token, &*verifier).map_err(|_| JwtError::BadSignature)?;
        Ok((payload, typ))
    }
}

fn verifier_for(alg: &str, key: &josekit::jwk::Jwk) -> Result<SharedVerifier, JwtError> {
    let v: Result<SharedVerifier, _> = match alg {
        "RS256" => jws::RS256.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        "RS384" => jws::RS384.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        "RS512" => jws::RS512.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        "PS256" => jws::PS256.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        "PS384" => jws::PS384.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        "PS512" => jws::PS512.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        "ES256" => jws::ES256.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        "ES384" => jws::ES384.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        "EdDSA" => jws::EdDSA.verifier_from_jwk(key).map(|v| Arc::new(v) as _),
        _ => return Err(JwtError::AlgorithmNotAllowed),
    };
    // A key of the wrong type for the algorithm is as good as no key.
    v.map_err(|_| JwtError::UnknownKey)
}

/// Checks the time claims: `exp` required, `nbf` and `iat` not in the future.
pub fn check_times(payload: &JwtPayload, leeway: Duration) -> Result<u64, JwtError> {
    let now = now_secs();
    let leeway = leeway.as_secs();
    let number = |name: &str| payload.claim(name).and_then(|v| v.as_u64());
    let exp = number("exp").ok_or(JwtError::MissingExpiry)?;
    if now > exp + leeway {
        return Err(JwtError::Expired);
    }
    if number("nbf").is_some_and(|nbf| nbf > now + leeway) {
        return Err(JwtError::NotYetValid);
    }
    Ok(exp)
}

/// True if the payload's `aud` (a string or a list) holds one of `accepted`.
pub fn audience_matches(payload: &JwtPayload, accepted: &[String]) -> bool {
    match payload.claim("aud") {
        Some(serde_json::Value::String(a)) => accepted.iter().any(|x| x == a),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str())
            .any(|a| accepted.iter().any(|x| x == a)),
        _ => false,
    }
}

/// Validates JWT access tokens from the trusted issuer.
pub struct JwtValidator {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub typ: Option<String>,
    pub leeway: Duration,
    pub signature: SignatureCheck,
    /// The tier claim and the claims routes check.
    pub claims: std::sync::Arc<super::claims::ClaimSelection>,
}

/// The `iss` a JWT claims, unverified: only to choose how to verify it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .and_then(|p| p.get("iss").and_then(|i| i.as_str()).map(str::to_owned))
}

impl JwtValidator {
    /// The validator of `[auth_server.jwt]` when it names audiences (without, JWTs are
    /// introspected like any other token).
    pub fn for_settings(
        jwt: &crate::settings::JwtSettings,
        issuer: &str,
        signature: SignatureCheck,
        claims: std::sync::Arc<super::claims::ClaimSelection>,
    ) -> Option<Self> {
        (!jwt.audiences.is_empty()).then(|| Self {
            issuer: issuer.to_string(),
            audiences: jwt.audiences.clone(),
            typ: jwt.typ.clone(),
            leeway: jwt.leeway,
            signature,
            claims,
        })
    }

    /// True if this token claims our trusted issuer (unverified: only to route it here
    /// rather than to introspection).
    pub fn claims_our_issuer(&self, token: &str) -> bool {
        unverified_issuer(token).is_some_and(|iss| iss == self.issuer)
    }

    pub async fn validate(&self, token: &str) -> Result<Principal, JwtError> {
        let (payload, typ) = self.signature.verify(token).await?;
        if let Some(want) = &self.typ {
            let got = typ.as_deref().unwrap_or("");
            let got = got.strip_prefix("application/").unwrap_or(got);
            if !got.eq_ignore_ascii_case(want) {
                return Err(JwtError::WrongType);
            }
        }
        if payload.issuer() != Some(self.issuer.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
        if !audience_matches(&payload, &self.audiences) {
            return Err(JwtError::WrongAudience);
        }
        if is_id_token(&payload, typ.as_deref()) {
            return Err(JwtError::IdToken);
        }
        let exp = check_times(&payload, self.leeway)?;
        let claims: TokenClaims = serde_json::from_value(serde_json::Value::Object(payload.into()))
            .map_err(|_| JwtError::Malformed)?;
        if !claims.is_access_token() {
            return Err(JwtError::WrongType);
        }
        // Only Intercom's own tokens carry a source link; the AS's are their own source.
        Ok(Principal {
            source_token_id: None,
            ..claims.into_principal(exp, &self.claims)
        })
    }
}

/// True for what OpenID Connect issues as an ID token, whatever its header says: one
/// with `nonce`, `at_hash` or `c_hash`, one typed as an ID token, or one whose audience
/// is the client it was issued to (`azp`), which an access token's never is.
fn is_id_token(payload: &JwtPayload, typ: Option<&str>) -> bool {
    let has = |name: &str| payload.claim(name).is_some();
    if has("nonce") || has("at_hash") || has("c_hash") {
        return true;
    }
    if typ.is_some_and(|t| t.eq_ignore_ascii_case("id_token+jwt")) {
        return true;
    }
    let azp = payload.claim("azp").and_then(|v| v.as_str());
    azp.is_some_and(|azp| audience_matches(payload, &[azp.to_string()]))
}

/// Validates Intercom's own internal JWTs presented back to it (a service calling
/// another through Intercom with the token it received), against its own keys.
pub struct InternalValidator {
    pub minter: Arc<super::mint::Minter>,
    pub leeway: Duration,
    /// The tier claim and the claims routes check.
    pub claims: std::sync::Arc<super::claims::ClaimSelection>,
}

impl InternalValidator {
    /// True if the token claims Intercom as its issuer (unverified).
    pub fn claims_our_issuer(&self, token: &str) -> bool {
        unverified_issuer(token).is_some_and(|iss| iss == self.minter.issuer())
    }

    pub fn validate(&self, token: &str) -> Result<Principal, JwtError> {
        let header = jwt::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let claim = |name: &str| {
            header
                .claim(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let alg = claim("alg").ok_or(JwtError::Malformed)?;
        if alg != self.minter.algorithm() {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        if claim("typ").as_deref() != Some("at+jwt") {
            return Err(JwtError::WrongType);
        }
        let kid = claim("kid").ok_or(JwtError::UnknownKey)?;
        let key = self.minter.public_key(&kid).ok_or(JwtError::UnknownKey)?;
        let verifier = verifier_for(&alg, &key)?;
        let (payload, _) =
            jwt::decode_with_verifier(token, &*verifier).map_err(|_| JwtError::BadSignature)?;
        if payload.issuer() != Some(self.minter.issuer()) {
            return Err(JwtError::WrongIssuer);
        }
        let exp = check_times(&payload, self.leeway)?;
        let claims: TokenClaims = serde_json::from_value(serde_json::Value::Object(payload.into()))
            .map_err(|_| JwtError::Malformed)?;
        Ok(Principal {
            internal: true,
            ..claims.into_principal(exp, &self.claims)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape_is_recognized() {
        assert!(!looks_like_jwt("opaque-token"));
        assert!(!looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.e30.x"));
        assert!(!looks_like_jwt("eyJhbGciOiJub25lIn0.e30.x.y"));
    }

    #[test]
    fn time_claims_are_checked_with_leeway() {
        let leeway = Duration::from_secs(10);
        let mut p = JwtPayload::new();
        assert_eq!(check_times(&p, leeway), Err(JwtError::MissingExpiry));
        p.set_claim("exp", Some((now_secs() - 5).into())).unwrap();
        assert!(check_times(&p, leeway).is_ok(), "within leeway");
        p.set_claim("exp", Some((now_secs() - 60).into())).unwrap();
        assert_eq!(check_times(&p, leeway), Err(JwtError::Expired));
        p.set_claim("exp", Some((now_secs() + 60).into())).unwrap();
        p.set_claim("nbf", Some((now_secs() + 60).into())).unwrap();
        assert_eq!(check_times(&p, leeway), Err(JwtError::NotYetValid));
    }
}
