//! The HTTP edge every handler shares: the problem table, request ids, the access log,
//! security headers, compression, CORS, credentials and path parsing, health and the
//! well-known documents. Thin by design: the work happens in the other modules.

pub mod access_log;
pub mod compression;
pub mod cors;
pub mod credentials;
pub mod envelope;
pub mod errors;
pub mod health;
pub mod path;
pub mod redirect;
pub mod request_id;
pub mod security_headers;
pub mod wellknown;
