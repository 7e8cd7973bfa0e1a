//! The endpoints Intercom answers itself, besides the proxy: RFC 8693 token exchange
//! (`POST /token`), RFC 7009 revocation (`POST /revoke`), back-channel logout and the
//! admin revocation API, the admin explanation of a request, and the browser's login,
//! logout and session endpoints. They admit tokens through the same gate as the proxy.

pub mod explain;
pub mod revocation;
pub mod session;
pub mod token;

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::broker::failure::TokenRejected;
use crate::http::errors::ApiError;
use crate::secrets::registry::SecretCell;

/// The admin API's credential check: `Authorization: Bearer <revocation.admin_credential>`
/// (compared in constant time); without a configured credential the API is not there.
pub fn check_admin(req: &HttpRequest, credential: Option<&SecretCell>) -> Result<(), ApiError> {
    let Some(credential) = credential else {
        return Err(ApiError::NotFound);
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return Err(ApiError::MissingToken);
    };
    if !credential.accepts(presented.as_bytes()) {
        return Err(ApiError::InvalidToken(TokenRejected::AdminCredential));
    }
    Ok(())
}
