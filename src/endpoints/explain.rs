//! `POST /admin/explain` on the admin listener: what the proxy would do with a request,
//! and why (see [`crate::proxy::explain`]).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::errors::{ApiError, Problem};
use crate::proxy::explain::{self, ExplainRequest};
use crate::proxy::ProxyState;
use crate::secrets::registry::SecretCell;

/// What the endpoint needs: the proxy it explains, and the admin credential.
pub struct ExplainState {
    pub proxy: web::Data<ProxyState>,
    pub admin_credential: Option<Arc<SecretCell>>,
}

/// `POST /admin/explain`: 200 with the explanation, whatever it decides.
pub async fn explain(
    req: HttpRequest,
    state: web::Data<ExplainState>,
    body: web::Json<ExplainRequest>,
) -> Result<HttpResponse, Problem> {
    super::check_admin(&req, state.admin_credential.as_deref()).map_err(|e| e.at(&req))?;
    let explanation = explain::explain(&state.proxy, body.into_inner())
        .await
        .map_err(|e: ApiError| e.at(&req))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(explanation.body))
}
