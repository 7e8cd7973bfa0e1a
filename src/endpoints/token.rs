//! `POST /token`: RFC 8693 token exchange for services that want the token rather than
//! the proxy. The caller authenticates with its bearer token, or as a client configured
//! in `[token_endpoint]` (HTTP Basic); the answer comes from the same target policies
//! and the same two-tier cache as the proxy's routes.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::broker::downstream::Subject;
use crate::broker::edge::UpstreamBearer;
use crate::broker::exchange::{ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT};
use crate::broker::failure::TokenRejected;
use crate::broker::Principal;
use crate::clock::now_secs;
use crate::http::credentials;
use crate::http::errors::{ApiError, Problem};
use crate::proxy::{gate, ProxyState};
use crate::secrets::registry::SecretCell;

/// The clients that may authenticate with HTTP Basic.
#[derive(Default)]
pub struct TokenClients(pub Vec<(String, Arc<SecretCell>)>);

impl TokenClients {
    /// The clients of `[token_endpoint]`, with their secrets' cells.
    pub fn from_settings(
        settings: &crate::settings::Settings,
        secrets: &crate::secrets::registry::SecretRegistry,
    ) -> Self {
        let clients = settings.token_endpoint.clients.iter();
        Self(
            clients
                .filter_map(|c| Some((c.client_id.clone(), secrets.stored(Some(&c.secret))?)))
                .collect(),
        )
    }

    /// The client named by `Authorization: Basic`, if its secret matches (constant time;
    /// the previous value too while it rotates). `None` when the header is not Basic.
    fn authenticate(&self, req: &HttpRequest) -> Option<Result<String, ApiError>> {
        let Ok((id, secret)) = credentials::basic_credentials(req)? else {
            return Some(Err(ApiError::InvalidClient));
        };
        let known = self.0.iter().find(|(client, _)| *client == id);
        let accepted = known.is_some_and(|(_, cell)| cell.accepts(secret.as_bytes()));
        Some(if accepted {
            Ok(id)
        } else {
            Err(ApiError::InvalidClient)
        })
    }
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

/// The audience an RFC 8693 request asks for, once its grant and token types are the
/// ones Intercom serves.
fn asked_audience(form: &ExchangeForm) -> Result<&str, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(why.to_string());
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
    form.audience
        .as_deref()
        .or(form.resource.as_deref())
        .ok_or_else(|| bad("name the target in audience or resource"))
}

/// A caller without client credentials: whoever its own bearer token says, admitted
/// through the same gate as the proxy's.
async fn bearer_caller(
    req: &HttpRequest,
    state: &ProxyState,
    edge: &crate::broker::edge::EdgeAuthenticator,
    audience: &Arc<str>,
) -> Result<Principal, Problem> {
    let (token, _) =
        credentials::extract_bearer(req, false).map_err(|e| ApiError::from(e).at(req))?;
    let gate = || gate::unknown_token_gate(req, state.limiter.as_deref(), &state.trusted_proxies);
    let upstream = UpstreamBearer::Minted(audience.clone());
    let caller = gate::admit(edge, state.revoker.as_deref(), &token, &upstream, gate)
        .await
        .map_err(|e| e.at(req))?;
    Ok(caller.token.principal.clone())
}

pub async fn exchange(
    req: HttpRequest,
    state: web::Data<ProxyState>,
    clients: web::Data<TokenClients>,
    form: web::Form<ExchangeForm>,
) -> Result<HttpResponse, Problem> {
    let bad = |why: &str| ApiError::BadRequest(why.to_string()).at(&req);
    gate::spend_budget(
        &req,
        state.limiter.as_deref(),
        &state.trusted_proxies,
        crate::limits::Budget::Endpoint,
    )
    .await
    .map_err(|e| e.at(&req))?;
    let audience = asked_audience(&form).map_err(|e| e.at(&req))?;
    let table = state.routes.load_full();
    let (route, target) = table
        .routes()
        .iter()
        .find_map(|r| Some((r, r.target.as_ref().filter(|t| &*t.audience == audience)?)))
        .ok_or_else(|| bad("no target is configured for this audience"))?;
    // The target's route decides which tokens it takes, here as on the proxy path.
    let taken = |principal: &Principal| {
        route
            .accepts(principal)
            .map_err(|why| ApiError::InvalidToken(TokenRejected::NotForRoute(why)).at(&req))
    };
    let (edge, downstream) = match (&state.edge, &state.downstream) {
        (Some(edge), Some(downstream)) => (edge, downstream),
        _ => return Err(ApiError::NotFound.at(&req)),
    };
    let revoker = state.revoker.as_deref();
    let gate = || gate::unknown_token_gate(&req, state.limiter.as_deref(), &state.trusted_proxies);
    let caller = match clients.authenticate(&req) {
        Some(Ok(client_id)) => Principal {
            client_id: Some(client_id),
            ..Principal::default()
        },
        Some(Err(e)) => return Err(e.at(&req)),
        None => {
            let caller = bearer_caller(&req, &state, edge, &target.audience).await?;
            taken(&caller)?;
            caller
        }
    };
    let upstream = UpstreamBearer::Minted(target.audience.clone());
    let subject = gate::admit(edge, revoker, &form.subject_token, &upstream, gate)
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
        .map_err(|e| ApiError::from(e).at(&req))?;
    Ok(issued(&entry))
}

/// The RFC 8693 answer for a token, never to be cached.
fn issued(entry: &crate::cache::tiered::ExchangeEntry) -> HttpResponse {
    let answer = ExchangeAnswer {
        access_token: &entry.token,
        issued_token_type: &entry.issued_token_type,
        token_type: "Bearer",
        expires_in: entry.exp.saturating_sub(now_secs()),
        scope: &entry.scope,
    };
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(answer)
}
