//! Intercom: a token broker with a caching proxy in front of it.
//!
//! Services talk only to Intercom; it holds the credentials, turns the tokens it
//! receives into the tokens each downstream service should see, and forwards the call.
//! [`startup::Application`] is where it all comes together.
//!
//! # Module map
//!
//! Arrows point from a module to the ones it uses; there are no cycles (the test
//! `layering::the_module_graph_has_no_cycles` keeps it so).
//!
//! ```text
//! cli ──► startup, filter, settings, secrets, telemetry
//! startup ──► endpoints ──► proxy ──► http ──► broker ──► cache ──► redis ──► readiness
//!    │            │           │         │        │          │          └──► settings ──► secret
//!    │            │           │         │        │          └──► revocation_ids ──► keyed_hash ──► secret
//!    │            │           │         │        └──► secrets ──► settings, bounded
//!    │            │           │         └──► telemetry ──► settings
//!    │            │           ├──► revoke ──► broker, cache, redis
//!    │            │           ├──► session ──► broker, cache, redis, revoke, http (paths)
//!    │            │           ├──► limits ──► redis, keyed_hash
//!    │            │           └──► filter ──► broker, settings
//!    │            └──► revoke
//!    └──► tls
//! ```
//!
//! The leaves: `clock` (seconds since the epoch), `secret` (the redacting value and its
//! reference), `keyed_hash` (the one keyed hash), `revocation_ids` (the ids
//! caches index tokens by), `readiness` (dependency states), `bounded` (size-limited
//! reads of a peer's answers).

pub mod bounded;
pub mod broker;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod endpoints;
pub mod filter;
pub mod http;
pub mod keyed_hash;
pub mod limits;
pub mod proxy;
pub mod readiness;
pub mod redis;
pub mod revocation_ids;
pub mod revoke;
pub mod secret;
pub mod secrets;
pub mod session;
pub mod settings;
pub mod startup;
pub mod telemetry;
pub mod tls;
