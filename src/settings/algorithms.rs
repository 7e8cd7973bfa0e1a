//! The JWS algorithms of the configuration, as enums: what is not listed here cannot be
//! configured (no `none`, no HMAC), so no consumer checks an algorithm's name again.

use serde::Deserialize;

/// An algorithm Intercom accepts on JWTs signed by the AS: asymmetric only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum JwsAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDSA,
}

impl JwsAlgorithm {
    pub const ALL: [Self; 9] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
        Self::EdDSA,
    ];
}

impl TryFrom<String> for JwsAlgorithm {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| format!("{name:?} is not an accepted asymmetric JWS algorithm"))
    }
}

impl JwsAlgorithm {
    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// What Intercom signs its own internal JWTs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SigningAlgorithm {
    Es256,
    Rs256,
    EdDSA,
}

impl TryFrom<String> for SigningAlgorithm {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        [Self::Es256, Self::Rs256, Self::EdDSA]
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| format!("{name:?} is not one of ES256, RS256, EdDSA"))
    }
}

impl SigningAlgorithm {
    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
            Self::EdDSA => "EdDSA",
        }
    }
}
