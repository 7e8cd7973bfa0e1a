//! Intercom: a token broker with a caching proxy in front of it.
//!
//! Services talk only to Intercom; it holds the credentials, turns the tokens it
//! receives into the tokens each downstream service should see, and forwards the call.
//! See `DESIGN.md` for the flows; [`startup::Application`] is where it all comes
//! together.

pub mod bounded;
pub mod broker;
pub mod cache;
pub mod http;
pub mod limits;
pub mod proxy;
pub mod redis;
pub mod revoke;
pub mod secrets;
pub mod settings;
pub mod startup;
pub mod telemetry;
pub mod tls;
