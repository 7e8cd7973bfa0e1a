//! Intercom's own HTTP surface: errors, request ids, the access log, health and metrics.
//! Thin by design: handlers translate, the work happens in the other modules.

pub mod access_log;
pub mod compression;
pub mod cors;
pub mod errors;
pub mod health;
pub mod request_id;
pub mod revocation;
pub mod security_headers;
pub mod token;
pub mod wellknown;
