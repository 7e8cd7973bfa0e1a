//! The three doors to revocation: `POST /admin/revoke` (admin listener, an admin
//! credential from the secret store), `POST /backchannel-logout` (the AS's logout
//! tokens) and `POST /revoke` (RFC 7009, passed through to the AS with the client's
//! own authentication, then revoked here too).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::broker::edge::UpstreamBearer;
use crate::broker::failure::Outage;
use crate::http::errors::{ApiError, Problem};
use crate::proxy::gate;
use crate::revocation_ids::Kind;
use crate::revoke::logout::LogoutVerifier;
use crate::revoke::{Revoker, Target};
use crate::secrets::registry::SecretCell;

/// What the revocation handlers share.
pub struct RevocationState {
    pub revoker: Arc<Revoker>,
    /// The bearer credential of the admin API; the API answers 404 without one.
    pub admin_credential: Option<Arc<SecretCell>>,
    /// For RFC 7009 pass-through.
    pub http: reqwest::Client,
    pub revocation_endpoint: Option<String>,
    /// Budgets per client address (`rate_limit.endpoints`).
    pub limiter: Option<Arc<crate::limits::RateLimiter>>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// To tie a token passed to `POST /revoke` to the client revoking it.
    pub edge: Option<Arc<crate::broker::edge::EdgeAuthenticator>>,
    /// Browser sessions, ended by back-channel logout.
    pub sessions: Option<Arc<crate::session::Sessions>>,
}

impl RevocationState {
    /// Spends one call of the client address's endpoint budget.
    async fn spend(&self, req: &HttpRequest) -> Result<(), Problem> {
        gate::spend_budget(
            req,
            self.limiter.as_deref(),
            &self.trusted_proxies,
            crate::limits::Budget::Endpoint,
        )
        .await
        .map_err(|e| e.at(req))
    }
}

/// True when `token` is a real, active token of `client`, as the edge admits it.
async fn owned_by(
    req: &HttpRequest,
    state: &web::Data<RevocationState>,
    token: &str,
    client: &str,
) -> bool {
    let Some(edge) = &state.edge else {
        return false;
    };
    let gate = || gate::unknown_token_gate(req, state.limiter.as_deref(), &state.trusted_proxies);
    let upstream = UpstreamBearer::Minted(Arc::from(REVOCATION_AUDIENCE));
    gate::admit(edge, None, token, &upstream, gate)
        .await
        .is_ok_and(|a| a.token.principal.client_id.as_deref() == Some(client))
}

/// The audience the tie check admits a token for (its internal JWT is never sent).
const REVOCATION_AUDIENCE: &str = "intercom-revocation";

/// `POST /admin/revoke` body: exactly one of these.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    all: bool,
}

impl RevokeRequest {
    fn target(self) -> Result<Target, ApiError> {
        let named: Vec<Target> = [
            self.sub.map(|v| Target::One(Kind::Sub, v)),
            self.client_id.map(|v| Target::One(Kind::ClientId, v)),
            self.sid.map(|v| Target::One(Kind::Sid, v)),
            self.token.map(|v| Target::One(Kind::Token, v)),
            self.all.then_some(Target::Everything),
        ]
        .into_iter()
        .flatten()
        .collect();
        match <[Target; 1]>::try_from(named) {
            Ok([target]) => match &target {
                Target::One(_, v) if v.is_empty() || v.len() > 8192 => Err(ApiError::BadRequest(
                    "the value to revoke must be 1 to 8192 characters".into(),
                )),
                _ => Ok(target),
            },
            Err(_) => Err(ApiError::BadRequest(
                "name exactly one of sub, client_id, sid, token, or all = true".into(),
            )),
        }
    }
}

/// `POST /admin/revoke`.
pub async fn admin_revoke(
    req: HttpRequest,
    state: web::Data<RevocationState>,
    body: web::Json<RevokeRequest>,
) -> Result<HttpResponse, Problem> {
    super::check_admin(&req, state.admin_credential.as_deref()).map_err(|e| e.at(&req))?;
    let target = body.into_inner().target().map_err(|e| e.at(&req))?;
    let revoked = state.revoker.revoke(target, "admin").await;
    // 202 while the revocation waits in the queue for Redis: applied here, shared later.
    let mut answer = match revoked.queued {
        true => HttpResponse::Accepted(),
        false => HttpResponse::Ok(),
    };
    Ok(answer
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(revoked))
}

#[derive(Deserialize)]
pub struct LogoutForm {
    logout_token: String,
}

/// `POST /backchannel-logout` (OpenID Connect Back-Channel Logout 1.0 §2.5).
pub async fn backchannel_logout(
    req: HttpRequest,
    state: web::Data<RevocationState>,
    verifier: web::Data<LogoutVerifier>,
    form: web::Form<LogoutForm>,
) -> Result<HttpResponse, Problem> {
    state.spend(&req).await?;
    let logout = verifier
        .verify(&form.logout_token)
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()).at(&req))?;
    if let Some(sessions) = &state.sessions {
        // The browser sessions of this user or login session end now, everywhere.
        let ends = [("sub", &logout.sub), ("sid", &logout.sid)];
        for (kind, value) in ends {
            if let Some(value) = value {
                if let Err(e) = sessions.end_all(kind, value).await {
                    tracing::warn!(error = %e, "sessions could not be ended; the denylist still refuses them");
                }
            }
        }
    }
    let mut queued = false;
    if let Some(sub) = logout.sub.clone() {
        queued |= state
            .revoker
            .revoke(Target::One(Kind::Sub, sub), "backchannel_logout")
            .await
            .queued;
    }
    if let Some(sid) = logout.sid.clone() {
        queued |= state
            .revoker
            .revoke(Target::One(Kind::Sid, sid), "backchannel_logout")
            .await
            .queued;
    }
    // Not shared yet: a 5xx makes the AS send the logout again (OIDC BCL §2.8), and
    // its retry must not count as a replay.
    if queued {
        verifier.forget(&logout.jti_ids).await;
        return Err(ApiError::RevocationNotShared.at(&req));
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

#[derive(Deserialize)]
struct RevocationForm {
    token: String,
    /// A public client names itself here (RFC 7009 §2.1); others authenticate with Basic.
    #[serde(default)]
    client_id: Option<String>,
}

/// The client a revocation request authenticates as (HTTP Basic, else `client_id`).
/// Whether the credentials are right is the AS's to say; this only names the client.
fn requesting_client(req: &HttpRequest, form: &RevocationForm) -> Option<String> {
    match crate::http::credentials::basic_credentials(req) {
        Some(Ok((id, _))) => Some(id),
        _ => form.client_id.clone(),
    }
}

/// `POST /revoke` (RFC 7009): the AS decides with the client's own credentials; when it
/// accepts, the token is revoked here and on every replica as well.
pub async fn revoke_passthrough(
    req: HttpRequest,
    state: web::Data<RevocationState>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let Some(endpoint) = &state.revocation_endpoint else {
        return Err(ApiError::NotFound.at(&req));
    };
    state.spend(&req).await?;
    let form: RevocationForm = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::BadRequest("a token parameter is required".into()).at(&req))?;
    // Only a real token of the client asking is revoked here too: the AS answers 200
    // for any string (RFC 7009 §2.2), and junk must not become denylist entries and
    // broadcasts. Checked before the AS revokes it (after, it is just inactive).
    let tied = match requesting_client(&req, &form) {
        Some(client) => owned_by(&req, &state, &form.token, &client).await,
        None => false,
    };
    let mut call = state
        .http
        .post(endpoint)
        .header(
            header::CONTENT_TYPE.as_str(),
            "application/x-www-form-urlencoded",
        )
        .body(body.to_vec());
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        call = call.header(header::AUTHORIZATION.as_str(), auth.as_bytes());
    }
    let started = std::time::Instant::now();
    let answer = call.send().await.map_err(|e| {
        ApiError::AuthServerUnavailable(Outage::because(
            "the authorization server is unreachable",
            crate::broker::authserver::failure(&e),
        ))
        .at(&req)
    })?;
    let status = answer.status();
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE.as_str())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let bytes = crate::bounded::read_limited(answer).await.map_err(|e| {
        ApiError::AuthServerUnavailable(Outage::because(
            "the authorization server's answer could not be read",
            e,
        ))
        .at(&req)
    })?;
    metrics::counter!("intercom_revocation_passthrough_total", "tied" => if tied { "yes" } else { "no" })
        .increment(1);
    if status.is_success()
        && tied
        && state
            .revoker
            .revoke(Target::One(Kind::Token, form.token), "rfc7009")
            .await
            .queued
    {
        return Err(ApiError::RevocationNotShared.at(&req));
    }
    let status = actix_web::http::StatusCode::from_u16(status.as_u16())
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(bytes);
    // The AS's own answer (an OAuth error, say) is relayed as it is.
    response
        .extensions_mut()
        .insert(crate::http::access_log::UpstreamLatency(started.elapsed()));
    Ok(response)
}
