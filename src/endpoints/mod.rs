//! The endpoints Intercom answers itself, besides the proxy: RFC 8693 token exchange
//! (`POST /token`), RFC 7009 revocation (`POST /revoke`), back-channel logout and the
//! admin revocation API, and the browser's login, logout and session endpoints. They admit tokens through the same gate as the proxy.

pub mod revocation;
pub mod session;
pub mod token;
