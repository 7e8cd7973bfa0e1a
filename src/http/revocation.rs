//! The three doors to revocation: `POST /admin/revoke` (admin listener, an admin
//! credential from the secret store), `POST /backchannel-logout` (the AS's logout
//! tokens) and `POST /revoke` (RFC 7009, passed through to the AS with the client's
//! own authentication, then revoked here too).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::errors::{ApiError, Problem};
use crate::revoke::logout::LogoutVerifier;
use crate::revoke::{Kind, Revoker, Target};
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
}

impl RevocationState {
    /// Spends one call of the client address's endpoint budget.
    async fn spend(&self, req: &HttpRequest) -> Result<(), Problem> {
        crate::proxy::spend_budget(
            req,
            self.limiter.as_deref(),
            &self.trusted_proxies,
            crate::limits::Budget::Endpoint,
        )
        .await
        .map_err(|e| e.at(req))
    }
}

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
    let Some(credential) = &state.admin_credential else {
        return Err(ApiError::NotFound.at(&req));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return Err(ApiError::MissingToken.at(&req));
    };
    // Constant time, and against the previous value too while a rotation rolls out.
    let accepted = std::iter::once(credential.current())
        .chain(credential.previous())
        .fold(false, |ok, s| s.matches(presented.as_bytes()) | ok);
    if !accepted {
        return Err(ApiError::InvalidToken("the admin credential is not valid".into()).at(&req));
    }
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
        verifier.forget(&logout.jti_id).await;
        return Err(ApiError::RevocationNotShared.at(&req));
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

#[derive(Deserialize)]
struct RevocationForm {
    token: String,
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
    let answer = call.send().await.map_err(|_| {
        ApiError::AuthServerUnavailable("the authorization server is unreachable".into()).at(&req)
    })?;
    let status = answer.status();
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE.as_str())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let bytes = crate::broker::authserver::read_limited(answer)
        .await
        .map_err(|e| {
            ApiError::AuthServerUnavailable(format!("the authorization server's {e}")).at(&req)
        })?;
    if status.is_success()
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
        .insert(super::access_log::UpstreamLatency(started.elapsed()));
    Ok(response)
}
