//! Intercom's own `/.well-known` documents: the JWKS that verifies the internal JWTs,
//! and RFC 8414 metadata naming it.

use std::sync::Arc;

use actix_web::{web, HttpResponse};

use crate::broker::mint::Minter;

/// `GET /.well-known/jwks.json`: current, next and retired keys, cacheable for the
/// publish-ahead window.
pub async fn jwks(minter: web::Data<Arc<Minter>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/jwk-set+json")
        .insert_header((
            "cache-control",
            format!("public, max-age={}", minter.jwks_max_age().as_secs()),
        ))
        .body(minter.jwks().to_string())
}

/// `GET /.well-known/oauth-authorization-server`: the issuer and where its keys are.
pub async fn metadata(minter: web::Data<Arc<Minter>>) -> HttpResponse {
    let issuer = minter.issuer().trim_end_matches('/');
    HttpResponse::Ok().json(serde_json::json!({
        "issuer": minter.issuer(),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint_auth_methods_supported": ["none"],
    }))
}
