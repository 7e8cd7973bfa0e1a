//! `POST /token`: RFC 8693 token exchange for services that want the token rather than
//! the proxy. The caller authenticates with its bearer token; the answer comes from the
//! same target policies and the same two-tier cache as the proxy's routes.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::errors::{ApiError, Problem};
use crate::broker::downstream::Subject;
use crate::broker::exchange::{ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT};
use crate::broker::now_secs;
use crate::proxy::identity::{self, BearerError};
use crate::proxy::{self as proxy_mod, ProxyState};

/// The RFC 8693 request (form-encoded).
#[derive(Debug, Deserialize)]
pub struct ExchangeForm {
    grant_type: String,
    subject_token: String,
    subject_token_type: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    requested_token_type: Option<String>,
}

/// The RFC 8693 §2.2.1 answer.
#[derive(Serialize)]
struct ExchangeAnswer<'a> {
    access_token: &'a str,
    issued_token_type: &'a str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

pub async fn exchange(
    req: HttpRequest,
    state: web::Data<ProxyState>,
    form: web::Form<ExchangeForm>,
) -> Result<HttpResponse, Problem> {
    let bad = |why: &str| ApiError::BadRequest(why.to_string()).at(&req);
    if form.grant_type != TOKEN_EXCHANGE_GRANT {
        return Err(bad(
            "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange",
        ));
    }
    if form.subject_token_type != ACCESS_TOKEN_TYPE {
        return Err(bad(
            "subject_token_type must be urn:ietf:params:oauth:token-type:access_token",
        ));
    }
    if form
        .requested_token_type
        .as_deref()
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return Err(bad("only access tokens can be requested"));
    }
    let audience = form
        .audience
        .as_deref()
        .or(form.resource.as_deref())
        .ok_or_else(|| bad("name the target in audience or resource"))?;
    let target = state
        .routes
        .routes()
        .iter()
        .find_map(|r| r.target.as_ref().filter(|t| &*t.audience == audience))
        .ok_or_else(|| bad("no target is configured for this audience"))?;
    let (edge, downstream) = match (&state.edge, &state.downstream) {
        (Some(edge), Some(downstream)) => (edge, downstream),
        _ => return Err(ApiError::NotFound.at(&req)),
    };
    // The caller authenticates with its own bearer token; the policy is checked against it.
    let caller_token = match identity::extract_bearer(&req, false) {
        Ok((token, _)) => token,
        Err(BearerError::Missing) => return Err(ApiError::MissingToken.at(&req)),
        Err(BearerError::Malformed(why)) => return Err(ApiError::InvalidToken(why.into()).at(&req)),
    };
    let revoker = state.revoker.as_deref();
    let caller = proxy_mod::admit(edge, revoker, &caller_token, &target.audience)
        .await
        .map_err(|e| e.at(&req))?;
    let subject = if form.subject_token == caller_token {
        caller.token.principal.clone()
    } else {
        proxy_mod::admit(edge, revoker, &form.subject_token, &target.audience)
            .await
            .map_err(|e| e.at(&req))?
            .token
            .principal
            .clone()
    };
    // The caller must be allowed; the scopes are the subject's, downscoped.
    target
        .grant(&caller.token.principal, None)
        .map_err(|why| ApiError::InsufficientScope(why).at(&req))?;
    let asked: Option<Vec<String>> = form
        .scope
        .as_deref()
        .map(|s| s.split_whitespace().map(str::to_owned).collect());
    // The caller acts for the subject: the policy's caller is the caller's client.
    let mut subject_principal = subject;
    subject_principal.client_id = caller.token.principal.client_id.clone();
    let entry = downstream
        .token_for(
            &Subject {
                token: form.subject_token.clone(),
                principal: subject_principal,
            },
            target,
            asked.as_deref(),
        )
        .await
        .map_err(|e| proxy_mod::downstream_error(e).at(&req))?;
    let answer = ExchangeAnswer {
        access_token: &entry.token,
        issued_token_type: &entry.issued_token_type,
        token_type: "Bearer",
        expires_in: entry.exp.saturating_sub(now_secs()),
        scope: &entry.scope,
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(answer))
}
