//! The hashed identities of a token (subject, client, session, the token itself) by
//! which revocations find it: the caches index entries by them, the denylist holds them.
//! A leaf, so the caches, the broker and the revoker share it without depending on each
//! other.

use serde::{Deserialize, Serialize};

use crate::keyed_hash::{Hash, SharedHasher};

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sub,
    ClientId,
    Sid,
    Token,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Sub, Kind::ClientId, Kind::Sid, Kind::Token];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Sub => "sub",
            Kind::ClientId => "client_id",
            Kind::Sid => "sid",
            Kind::Token => "token",
        }
    }
}

/// The hashed identities of a cached token, by which revocations find it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ids {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub token: String,
}

impl Ids {
    /// The ids of `token`, whose subject, client and session are given.
    pub fn of(
        hasher: &SharedHasher,
        sub: Option<&str>,
        client_id: Option<&str>,
        sid: Option<&str>,
        token: &str,
    ) -> Self {
        let h = |kind: Kind, value: &str| hex::encode(id_hash(hasher, kind, value));
        Self {
            sub: sub.map(|v| h(Kind::Sub, v)),
            client_id: client_id.map(|v| h(Kind::ClientId, v)),
            sid: sid.map(|v| h(Kind::Sid, v)),
            token: h(Kind::Token, token),
        }
    }

    pub fn get(&self, kind: Kind) -> Option<&str> {
        match kind {
            Kind::Sub => self.sub.as_deref(),
            Kind::ClientId => self.client_id.as_deref(),
            Kind::Sid => self.sid.as_deref(),
            Kind::Token => Some(&self.token),
        }
    }
}

/// The hash of one identity.
pub fn id_hash(hasher: &SharedHasher, kind: Kind, value: &str) -> Hash {
    hasher.hash(&[b"revocation-id", kind.label().as_bytes(), value.as_bytes()])
}
