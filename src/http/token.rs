//! `POST /token`: RFC 8693 token exchange for services that want the token rather than
//! the proxy. The caller authenticates with its bearer token, or as a client configured
//! in `[token_endpoint]` (HTTP Basic); the answer comes from the same target policies
//! and the same two-tier cache as the proxy's routes.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::errors::{ApiError, Problem};
use crate::broker::downstream::Subject;
use crate::broker::exchange::{ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT};
use crate::broker::{now_secs, Principal};
use crate::proxy::identity::{self, BearerError};
use crate::proxy::{self as proxy_mod, ProxyState};
use crate::secrets::registry::SecretCell;

/// The clients that may authenticate with HTTP Basic.
#[derive(Default)]
pub struct TokenClients(pub Vec<(String, Arc<SecretCell>)>);

impl TokenClients {
    /// The client named by `Authorization: Basic`, if its secret matches (constant time;
    /// the previous value too while it rotates). `None` when the header is not Basic.
    fn authenticate(&self, req: &HttpRequest) -> Option<Result<String, ApiError>> {
        let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
        let encoded = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Some(Err(ApiError::InvalidClient));
        };
        let (id, secret) = (form_decode(id), form_decode(secret));
        let known = self.0.iter().find(|(client, _)| *client == id);
        let accepted = known.is_some_and(|(_, cell)| {
            std::iter::once(cell.current())
                .chain(cell.previous())
                .fold(false, |ok, s| s.matches(secret.as_bytes()) | ok)
        });
        Some(if accepted {
            Ok(id)
        } else {
            Err(ApiError::InvalidClient)
        })
    }
}

/// RFC 6749 §2.3.1: client ids and secrets are form-encoded inside Basic.
fn form_decode(text: &str) -> String {
    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={text}"))
        .ok()
        .and_then(|mut pairs| pairs.pop())
        .map(|(_, v)| v)
        .unwrap_or_else(|| text.to_string())
}

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
    clients: web::Data<TokenClients>,
    form: web::Form<ExchangeForm>,
) -> Result<HttpResponse, Problem> {
    let bad = |why: &str| ApiError::BadRequest(why.to_string()).at(&req);
    proxy_mod::spend_budget(
        &req,
        state.limiter.as_deref(),
        &state.trusted_proxies,
        crate::limits::Budget::Endpoint,
    )
    .await
    .map_err(|e| e.at(&req))?;
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
    let (route, target) = state
        .routes
        .routes()
        .iter()
        .find_map(|r| Some((r, r.target.as_ref().filter(|t| &*t.audience == audience)?)))
        .ok_or_else(|| bad("no target is configured for this audience"))?;
    // The target's route decides which tokens it takes, here as on the proxy path.
    let taken = |principal: &Principal| {
        route
            .accepts(principal)
            .map_err(|why| ApiError::InvalidToken(why.into()).at(&req))
    };
    let (edge, downstream) = match (&state.edge, &state.downstream) {
        (Some(edge), Some(downstream)) => (edge, downstream),
        _ => return Err(ApiError::NotFound.at(&req)),
    };
    // The caller: a configured client (HTTP Basic), or whoever its bearer token says.
    let revoker = state.revoker.as_deref();
    let gate =
        || proxy_mod::unknown_token_gate(&req, state.limiter.as_deref(), &state.trusted_proxies);
    let caller = match clients.authenticate(&req) {
        Some(Ok(client_id)) => Principal {
            client_id: Some(client_id),
            ..Principal::default()
        },
        Some(Err(e)) => return Err(e.at(&req)),
        None => {
            let token = match identity::extract_bearer(&req, false) {
                Ok((token, _)) => token,
                Err(BearerError::Missing) => return Err(ApiError::MissingToken.at(&req)),
                Err(BearerError::Malformed(why)) => {
                    return Err(ApiError::InvalidToken(why.into()).at(&req))
                }
            };
            let caller = proxy_mod::admit(edge, revoker, &token, &target.audience, gate)
                .await
                .map_err(|e| e.at(&req))?;
            taken(&caller.token.principal)?;
            caller.token.principal.clone()
        }
    };
    let subject = proxy_mod::admit(edge, revoker, &form.subject_token, &target.audience, gate)
        .await
        .map_err(|e| e.at(&req))?;
    taken(&subject.token.principal)?;
    let asked: Option<Vec<String>> = form
        .scope
        .as_deref()
        .map(|s| s.split_whitespace().map(str::to_owned).collect());
    // The caller acts for the subject: the target's policy judges the caller (its
    // client, its own scopes) and grants from the subject's scopes.
    let entry = downstream
        .token_for(
            &Subject {
                token: form.subject_token.clone(),
                principal: subject.token.principal.clone(),
                caller,
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
