//! The browser's side of sessions: `/auth/login`, `/auth/callback`, `/auth/logout`,
//! `/auth/user` and `/auth/session`. Every answer is `Cache-Control: no-store` and
//! carries no token.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::http::errors::{ApiError, Problem};
use crate::proxy::gate;
use crate::session::{Callback, Sessions};

/// The query of `/auth/login`.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
    /// `none`: a silent login (the AS answers without showing a page).
    prompt: Option<String>,
}

fn redirect(location: &str) -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Found();
    res.insert_header((header::LOCATION, location.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    res
}

/// `GET /auth/login?return_to=...&prompt=none`: to the AS, with this login's cookie.
pub async fn login(
    req: HttpRequest,
    query: web::Query<LoginQuery>,
    sessions: web::Data<Arc<Sessions>>,
) -> Result<HttpResponse, Problem> {
    let silent = match query.prompt.as_deref() {
        None => false,
        Some("none") => true,
        Some(_) => {
            return Err(ApiError::BadRequest("prompt may only be none".into()).at(&req));
        }
    };
    let (url, cookie) = sessions
        .begin_login(query.return_to.as_deref(), silent)
        .map_err(|e| ApiError::from(e).at(&req))?;
    Ok(redirect(url.as_str())
        .insert_header((header::SET_COOKIE, cookie))
        .finish())
}

/// `GET /auth/callback`: completes the login this browser started, sets the session
/// cookie, and sends the browser to its `return_to`.
pub async fn callback(
    req: HttpRequest,
    query: web::Query<Callback>,
    sessions: web::Data<Arc<Sessions>>,
) -> Result<HttpResponse, Problem> {
    let landing = sessions
        .finish_login(&query, |name| {
            req.cookie(name).map(|c| c.value().to_string())
        })
        .await
        .map_err(|e| ApiError::from(e).at(&req))?;
    let mut res = redirect(&landing.location);
    for cookie in landing.set_cookies {
        res.append_header((header::SET_COOKIE, cookie));
    }
    Ok(res.finish())
}

/// `POST /auth/logout` (CSRF-protected): ends the session everywhere, revokes its
/// refresh token, and sends the browser to the AS's logout.
pub async fn logout(
    req: HttpRequest,
    sessions: web::Data<Arc<Sessions>>,
) -> Result<HttpResponse, Problem> {
    gate::check_csrf(&req, &sessions).map_err(|e| e.at(&req))?;
    let cookie = req.cookie(&sessions.cookies.session);
    let end_session = sessions
        .logout(cookie.as_ref().map(|c| c.value()))
        .await
        .map_err(|e| ApiError::from(e).at(&req))?;
    let location = end_session.map_or_else(|| "/".to_string(), |u| u.to_string());
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    // A script's fetch cannot follow a redirect to the AS: it gets the URL to go to.
    let mut res = if wants_json {
        HttpResponse::Ok()
    } else {
        HttpResponse::SeeOther()
    };
    res.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::SET_COOKIE, sessions.clear_session_cookie()));
    if wants_json {
        return Ok(res.json(serde_json::json!({ "end_session_url": location })));
    }
    Ok(res.insert_header((header::LOCATION, location)).finish())
}

/// The query of `/auth/frontchannel-logout`.
#[derive(Debug, Deserialize)]
pub struct FrontChannel {
    iss: Option<String>,
    sid: Option<String>,
}

/// `GET /auth/frontchannel-logout?iss=...&sid=...` (OIDC Front-Channel Logout, when
/// `session.frontchannel_logout` is on): loaded by the AS's logout page in an iframe.
pub async fn frontchannel_logout(
    req: HttpRequest,
    query: web::Query<FrontChannel>,
    sessions: web::Data<Arc<Sessions>>,
) -> Result<HttpResponse, Problem> {
    let (iss, sid) = (
        query.iss.as_deref().unwrap_or(""),
        query.sid.as_deref().unwrap_or(""),
    );
    sessions
        .front_channel_logout(iss, sid)
        .await
        .map_err(|e| ApiError::from(e).at(&req))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/html; charset=utf-8")
        .body(""))
}

async fn live(
    req: &HttpRequest,
    sessions: &Sessions,
) -> Result<crate::session::store::Session, Problem> {
    let cookie = req.cookie(&sessions.cookies.session);
    let session = match cookie {
        Some(cookie) => sessions
            .current(cookie.value())
            .await
            .map_err(|e| ApiError::from(e).at(req))?,
        None => None,
    };
    session.ok_or_else(|| ApiError::SessionRequired.at(req))
}

/// `GET /auth/user`: the claims the SPA may see and the session's remaining lifetime.
pub async fn user(
    req: HttpRequest,
    sessions: web::Data<Arc<Sessions>>,
) -> Result<HttpResponse, Problem> {
    let session = live(&req, &sessions).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(sessions.user_view(&session)))
}

/// `GET /auth/session`: 200 while the session lives, 401 after; for polling.
pub async fn status(
    req: HttpRequest,
    sessions: web::Data<Arc<Sessions>>,
) -> Result<HttpResponse, Problem> {
    let session = live(&req, &sessions).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "active": true, "expires_in": sessions.remaining(&session) })))
}

/// How a failed session lookup or login reads to the client (here, not in
/// `http::errors`: `session` sits above `http`).
impl From<crate::session::SessionError> for ApiError {
    fn from(error: crate::session::SessionError) -> Self {
        use crate::session::SessionError;
        match error {
            SessionError::BadReturnTo(e) => ApiError::LoginFailed(e.to_string()),
            SessionError::LoginFailed(why) => ApiError::LoginFailed(why),
            SessionError::Store(_) => ApiError::SessionStoreUnavailable,
            SessionError::Unavailable(why) => ApiError::AuthServerUnavailable(why),
        }
    }
}
