//! The Redis schema on one screen: every key family Intercom writes, under
//! `redis.key_prefix` (`<p>`, default `intercom`). Nothing here holds a token or an
//! identity: ids are keyed hashes ([`crate::keyed_hash`]).
//!
//! | family | key | type | hash tag | written by |
//! |---|---|---|---|---|
//! | exchanged token | `<p>:x:e:<hash>` | string (sealed) | none: one key per command | `cache::tiered` |
//! | revocation index | `<p>:x:i:<kind>:<id>` | set of entry keys | none: written and read on its own | `cache::tiered` |
//! | renewal lock | `<p>:x:l:<hash>` | string, `PX` | none | `cache::tiered` |
//! | denylist | `<p>:x:denylist` | sorted set (`kind:id` → time; `everything` → time) | one key | `revoke` |
//! | logout `jti` | `<p>:x:logout:<hash>` | string, `EX` | none: each hash (one per key of a rotation) on its own | `revoke::logout` |
//! | browser session | `<p>:s:<hash>` | string (sealed), `PX` | none: one key | `session::store` |
//! | sessions of a `sub` / `sid` | `<p>:s:i:<kind>:<hash>` | set of session keys, `PX` | none: written and read on its own | `session::store` |
//! | session refresh lease | `<p>:s:l:<hash>` | string (the holder's token), `NX PX`, renewed and released by compare-and-act scripts | none (one key per script) | `session` |
//! | live sessions | `<p>:s:active` | sorted set (session key → its end, ms) | one key | `session::store` |
//! | rate-limit window | `<p>:rl:{<caller>}:<route>:<window>` | string (GCRA TAT) | `{<caller>}`: one script touches all of a caller's windows on a route | `limits::gcra` |
//!
//! On a Redis Cluster every command and pipeline keeps to one slot: the rate-limit
//! script's keys share their tag, and everything else touches one key per command or
//! pipeline. Where one change spans families (an exchanged token and its indexes, the
//! sessions of an index), each key is written on its own, the index first, so a failure
//! leaves an index naming a key that is gone, never a key its revocation cannot find; a
//! `DEL` of many keys is split by slot by the cluster client. Nothing scans the keyspace:
//! a revocation of everything is the denylist's `everything` member, and exchanged
//! tokens made before it are passed over until they expire.
//!
//! Revocations travel on the pub/sub channel `revocation.channel`, which is not a key (on
//! a cluster every node delivers every message; a replica subscribes on one node and
//! moves to the next when it goes).

use crate::keyed_hash::Hash;
use crate::revocation_ids::Kind;
use crate::settings::Settings;

/// The prefix every key starts with: `redis.key_prefix`, or the default without Redis
/// (nothing is written then).
pub fn base(settings: &Settings) -> String {
    settings
        .redis
        .as_ref()
        .map_or_else(|| "intercom".to_string(), |r| r.key_prefix.clone())
}

/// An exchanged token, sealed.
pub fn exchange_entry(base: &str, key: &Hash) -> String {
    format!("{base}:x:e:{}", hex::encode(key))
}

/// The entries an identity's revocation evicts.
pub fn exchange_index(base: &str, kind: Kind, id: &str) -> String {
    format!("{base}:x:i:{}:{id}", kind.label())
}

/// The lock that lets one replica renew an entry.
pub fn exchange_lock(base: &str, key: &Hash) -> String {
    format!("{base}:x:l:{}", hex::encode(key))
}

/// The denylist.
pub fn denylist(base: &str) -> String {
    format!("{base}:x:denylist")
}

/// A logout token's `jti`, hashed, remembered so a replay is refused.
pub fn logout_jti(base: &str, id: &str) -> String {
    format!("{base}:x:logout:{id}")
}

/// One rate-limit window of one caller on one route.
pub fn rate_limit_window(base: &str, caller: &str, route: &str, window: &str) -> String {
    format!("{base}:rl:{{{caller}}}:{route}:{window}")
}

/// A browser session, by the keyed hash of its id.
pub fn session(base: &str, id: &Hash) -> String {
    format!("{base}:s:{}", hex::encode(id))
}

/// The sessions alive, each scored by when it ends: what the active-sessions gauge counts.
pub fn sessions_active(base: &str) -> String {
    format!("{base}:s:active")
}

/// The lease that lets one replica refresh a session's tokens.
pub fn session_lease(base: &str, id: &Hash) -> String {
    format!("{base}:s:l:{}", hex::encode(id))
}

/// The sessions of one `sub` or `sid` (`kind`), by a keyed hash of it.
pub fn session_index(base: &str, kind: &str, id: &Hash) -> String {
    format!("{base}:s:i:{kind}:{}", hex::encode(id))
}
