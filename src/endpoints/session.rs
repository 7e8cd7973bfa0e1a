//! The browser's side of sessions: `/auth/login`, `/auth/callback`, `/auth/logout`,
//! `/auth/user` and `/auth/session`. Every answer is `Cache-Control: no-store` and
//! carries no token.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
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
    let (url, cookie) = match sessions.begin_login(query.return_to.as_deref(), silent) {
        Ok(started) => started,
        Err(e) => return Ok(login_failed(&req, ApiError::from(e))),
    };
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
    let finished = sessions
        .finish_login(&query, |name| {
            req.cookie(name).map(|c| c.value().to_string())
        })
        .await;
    let landing = match finished {
        Ok(landing) => landing,
        Err(e) => return Ok(login_failed(&req, ApiError::from(e))),
    };
    let mut res = redirect(&landing.location);
    for cookie in landing.set_cookies {
        res.append_header((header::SET_COOKIE, cookie));
    }
    Ok(res.finish())
}

/// A login that could not start or complete: for a page navigation (`Accept:
/// text/html`), a page that says so and offers to try again; for a script, problem+json.
/// Either way the status and the detail are the problem's (never a token or the query).
fn login_failed(req: &HttpRequest, error: ApiError) -> HttpResponse {
    let navigation = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let detail = html_escape::encode_text(&error.to_string()).into_owned();
    let problem = actix_web::ResponseError::error_response(&error.at(req));
    if !navigation {
        return problem;
    }
    let id = req
        .extensions()
        .get::<crate::http::request_id::RequestId>()
        .map(|id| html_escape::encode_text(id.as_str()).into_owned())
        .unwrap_or_default();
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Login failed</title></head>\n\
         <body><h1>Login failed</h1>\n<p>{detail}</p>\n<p><a href=\"/auth/login\">Try again</a></p>\n\
         <p><small>Request id: {id}</small></p></body></html>\n"
    );
    // The problem's answer, headers and all (Retry-After, the access log's cause), with
    // the page for its body.
    let mut res = problem.set_body(page).map_into_boxed_body();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
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
    res.insert_header((header::CACHE_CONTROL, "no-store"));
    for cookie in sessions.clear_session_cookies() {
        res.append_header((header::SET_COOKIE, cookie));
    }
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

/// The request's live session, and its id (the cookie's value).
async fn live(
    req: &HttpRequest,
    sessions: &Sessions,
) -> Result<(String, crate::session::store::Session), Problem> {
    let cookie = req.cookie(&sessions.cookies.session);
    let session = match &cookie {
        Some(cookie) => sessions
            .current(cookie.value())
            .await
            .map_err(|e| ApiError::from(e).at(req))?,
        None => None,
    };
    match (cookie, session) {
        (Some(cookie), Some(session)) => Ok((cookie.value().to_string(), session)),
        _ => Err(ApiError::SessionRequired.at(req)),
    }
}

/// `GET /auth/user`: the claims the SPA may see and the session's remaining lifetime.
pub async fn user(
    req: HttpRequest,
    sessions: web::Data<Arc<Sessions>>,
) -> Result<HttpResponse, Problem> {
    let (id, session) = live(&req, &sessions).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(sessions.user_view(&id, &session)))
}

/// `GET /auth/session`: 200 while the session lives, 401 after; for polling.
pub async fn status(
    req: HttpRequest,
    sessions: web::Data<Arc<Sessions>>,
) -> Result<HttpResponse, Problem> {
    let (_, session) = live(&req, &sessions).await?;
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
