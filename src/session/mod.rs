//! Browser sessions: Intercom as the backend-for-frontend of single-page apps. It logs
//! the user in at the AS as a confidential client, keeps the tokens server side and
//! gives the browser one cookie; session routes then call APIs as bearer routes do.
//!
//! Actix-free: the endpoints (`endpoints::session`) and the proxy call in here with
//! cookie values and answer with what this returns.

pub mod flow;
pub mod oidc;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use subtle::ConstantTimeEq;
use url::Url;

use crate::broker::failure::Outage;
use crate::cache::sealed::Sealer;
use crate::clock::now_secs;
use crate::keyed_hash::SharedHasher;
use crate::revocation_ids::Ids;
use crate::revocation_ids::Kind;
use crate::revoke::{Revoker, Target};
use crate::settings::{SameSite, SessionSettings};
use flow::{LoginState, ReturnRules, LOGIN_MAX_SECS};
use oidc::{OidcClient, OidcError};
use store::{Session, SessionStore, StoreError};

/// Why a login, a logout or a session lookup failed. Never quotes a token, a code or a
/// session id.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    BadReturnTo(#[from] flow::BadReturnTo),
    /// The callback does not complete a login this browser started, or the AS refused.
    #[error("the login cannot complete: {0}")]
    LoginFailed(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unavailable(Outage),
}

/// The query of `/auth/callback`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
}

/// Where a finished login sends the browser, and the cookies it sets.
pub struct Landing {
    pub location: String,
    pub set_cookies: Vec<String>,
}

/// The errors of a silent login (`prompt=none`) that are answers: the user has no
/// session at the AS, or must interact.
const SILENT_ANSWERS: [&str; 4] = [
    "login_required",
    "interaction_required",
    "consent_required",
    "account_selection_required",
];

/// How cookies are written.
#[derive(Debug, Clone)]
pub struct CookieSpec {
    pub session: String,
    /// The double-submit CSRF cookie (set only with `session.csrf_token`).
    pub csrf: String,
    /// The prefix of each login's own cookie.
    pub flow_prefix: String,
    pub secure: bool,
    pub same_site: SameSite,
}

/// The session keys of one session id: its record and its refresh lease.
struct Keys {
    record: String,
    lease: String,
}

/// Browser sessions: the login flow, the store, refresh and logout.
pub struct Sessions {
    oidc: OidcClient,
    store: SessionStore,
    /// Seals each login's cookie.
    sealer: Sealer,
    hasher: SharedHasher,
    key_base: String,
    revoker: Option<Arc<Revoker>>,
    /// One refresh per session at a time in this replica.
    refreshing: moka::future::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    /// Where logins may return to; its origins are also the ones CSRF admits.
    pub rules: ReturnRules,
    pub cookies: CookieSpec,
    pub csrf_header: http::HeaderName,
    /// `session.csrf_token`: the CSRF header must carry the session's CSRF token.
    csrf_token: bool,
    idle: Duration,
    absolute: Duration,
    refresh_ahead: Duration,
    /// The refresh lease's term, renewed while a refresh runs.
    lease_ttl: Duration,
    /// How long a call waits for another replica's refresh.
    refresh_wait: Duration,
    post_logout: Option<Url>,
    user_claims: Vec<String>,
    /// The ID token claims routes' claim rules read, kept with each session.
    rule_claims: Vec<String>,
    /// `session.frontchannel_logout`: `/auth/frontchannel-logout` is served.
    pub front_channel: bool,
}

/// The parts a [`Sessions`] is built from.
pub struct SessionParts {
    pub oidc: OidcClient,
    pub store: SessionStore,
    pub encryption_key: Arc<crate::secrets::registry::SecretCell>,
    pub hasher: SharedHasher,
    pub key_base: String,
    pub revoker: Option<Arc<Revoker>>,
    /// The AS's request timeout: a call waits for another replica's refresh as long
    /// as that refresh can take.
    pub request_timeout: Duration,
    /// The claims routes' `required_claims` and `denied_claims` read.
    pub rule_claims: Vec<String>,
}

impl Sessions {
    pub fn new(settings: &SessionSettings, parts: SessionParts) -> Self {
        let secure = !settings.insecure_dev_cookies;
        if !secure {
            tracing::warn!("session.insecure_dev_cookies is on: session cookies lack Secure and __Host-; development only");
        }
        Self {
            oidc: parts.oidc,
            store: parts.store,
            sealer: Sealer::new(parts.encryption_key),
            hasher: parts.hasher,
            key_base: parts.key_base,
            revoker: parts.revoker,
            refreshing: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            rules: ReturnRules {
                origins: settings.allowed_origins(),
                paths: settings.return_to_paths.clone(),
            },
            cookies: CookieSpec {
                session: settings.cookie_name.clone(),
                csrf: if secure {
                    "__Host-intercom-csrf".into()
                } else {
                    "intercom-csrf".into()
                },
                flow_prefix: if secure {
                    "__Host-intercom-flow-".into()
                } else {
                    "intercom-flow-".into()
                },
                secure,
                same_site: settings.same_site,
            },
            csrf_header: settings.csrf_header.0.clone(),
            csrf_token: settings.csrf_token,
            idle: settings.idle_timeout,
            absolute: settings.absolute_timeout,
            refresh_ahead: settings.refresh_ahead,
            lease_ttl: settings.refresh_lease,
            refresh_wait: parts.request_timeout * 2 + Duration::from_secs(1),
            post_logout: settings.post_logout_redirect_uri.clone(),
            user_claims: settings.user_claims.clone(),
            rule_claims: parts.rule_claims,
            front_channel: settings.frontchannel_logout,
        }
    }

    fn keys(&self, session_id: &str) -> Keys {
        let hash = self.hasher.hash(&[b"session", session_id.as_bytes()]);
        Keys {
            record: crate::redis::keys::session(&self.key_base, &hash),
            lease: crate::redis::keys::session_lease(&self.key_base, &hash),
        }
    }

    /// A `Set-Cookie` value: `HttpOnly`, `Path=/`, no `Domain`, `Secure` unless
    /// development cookies are on.
    fn cookie(&self, name: &str, value: &str, max_age: Duration, same_site: SameSite) -> String {
        self.cookie_with(name, value, max_age, same_site, true)
    }

    /// [`Sessions::cookie`], readable by the page's script unless `http_only`.
    fn cookie_with(
        &self,
        name: &str,
        value: &str,
        max_age: Duration,
        same_site: SameSite,
        http_only: bool,
    ) -> String {
        let same_site = match same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
        };
        cookie::Cookie::build(name.to_string(), value.to_string())
            .path("/")
            .http_only(http_only)
            .secure(self.cookies.secure)
            .same_site(same_site)
            .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64))
            .finish()
            .to_string()
    }

    /// Keeps `intercom_sessions_active{store}` at the live sessions' count, every
    /// `every` (a Redis store counts the whole deployment: every replica reports the same
    /// number; a memory store, its own).
    pub fn count_active(self: &Arc<Self>, every: Duration) {
        let sessions = Arc::downgrade(self);
        let store = match &self.store {
            SessionStore::Memory { .. } => "memory",
            SessionStore::Redis { .. } => "redis",
        };
        let gauge = metrics::gauge!("intercom_sessions_active", "store" => store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                let Some(sessions) = sessions.upgrade() else {
                    return;
                };
                match sessions.store.active(sessions.idle).await {
                    Ok(count) => gauge.set(count as f64),
                    Err(e) => {
                        tracing::debug!(error = %e, "the live sessions cannot be counted now")
                    }
                }
            }
        });
    }

    /// The `Set-Cookie`s that remove the session cookie (and the CSRF cookie).
    pub fn clear_session_cookies(&self) -> Vec<String> {
        let mut cookies = vec![self.cookie(
            &self.cookies.session,
            "",
            Duration::ZERO,
            self.cookies.same_site,
        )];
        if self.csrf_token {
            cookies.push(self.csrf_cookie(""));
        }
        cookies
    }

    /// The double-submit cookie: the session's CSRF token, for the SPA's script to read
    /// and echo in the CSRF header (`SameSite=Strict`: no other site's request carries it).
    fn csrf_cookie(&self, token: &str) -> String {
        let max_age = if token.is_empty() {
            Duration::ZERO
        } else {
            self.absolute
        };
        self.cookie_with(&self.cookies.csrf, token, max_age, SameSite::Strict, false)
    }

    /// The CSRF token of the session `session_id`: a keyed hash of its id (the
    /// replicas' shared key), so any replica checks it without a lookup and no other
    /// site can compute it.
    fn csrf_token_of(&self, session_id: &str) -> String {
        hex::encode(self.hasher.hash(&[b"session-csrf", session_id.as_bytes()]))
    }

    /// Starts a login: where to send the browser, and the cookie that holds this login.
    pub fn begin_login(
        &self,
        return_to: Option<&str>,
        silent: bool,
    ) -> Result<(Url, String), SessionError> {
        let return_to = self.rules.check(return_to.unwrap_or("/"))?;
        let auth = self.oidc.authorize(silent);
        let state = LoginState {
            state: auth.state.clone(),
            nonce: auth.nonce,
            pkce_verifier: auth.pkce_verifier,
            return_to,
            silent,
            started_at: now_secs(),
        };
        let plain = serde_json::to_vec(&state).unwrap_or_default();
        let sealed = self.sealer.seal(&plain, FLOW_CONTEXT).ok_or_else(|| {
            SessionError::Unavailable(Outage::new("the login state cannot be sealed"))
        })?;
        let name = flow::flow_cookie_name(&self.cookies.flow_prefix, &auth.state);
        // Lax: the AS sends the browser back with a top-level GET.
        let cookie = self.cookie(
            &name,
            &sealed,
            Duration::from_secs(LOGIN_MAX_SECS),
            SameSite::Lax,
        );
        metrics::counter!("intercom_session_logins_total", "silent" => if silent { "yes" } else { "no" })
            .increment(1);
        Ok((auth.url, cookie))
    }

    /// Completes a login: the state must match this browser's login cookie, the code
    /// is exchanged with its PKCE verifier and the ID token verified; a new session (a
    /// new id: no fixation) is stored.
    pub async fn finish_login(
        &self,
        callback: &Callback,
        flow_cookie: impl Fn(&str) -> Option<String>,
    ) -> Result<Landing, SessionError> {
        let outcome = self.complete(callback, flow_cookie).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(SessionError::LoginFailed(_)) => "refused",
            Err(SessionError::BadReturnTo(_)) => "refused",
            Err(_) => "unavailable",
        };
        metrics::counter!("intercom_session_callbacks_total", "outcome" => label).increment(1);
        outcome
    }

    async fn complete(
        &self,
        callback: &Callback,
        flow_cookie: impl Fn(&str) -> Option<String>,
    ) -> Result<Landing, SessionError> {
        let failed = |why: &str| SessionError::LoginFailed(why.to_string());
        let (login, name) = self.login_of(callback, flow_cookie)?;
        let clear_flow = self.cookie(&name, "", Duration::ZERO, SameSite::Lax);
        if let Some(error) = &callback.error {
            if login.silent && SILENT_ANSWERS.contains(&error.as_str()) {
                return Ok(Landing {
                    location: format!("{}#intercom_login={error}", login.return_to),
                    set_cookies: vec![clear_flow],
                });
            }
            let code: String = error
                .chars()
                .filter(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            return Err(SessionError::LoginFailed(format!(
                "the authorization server answered {code}"
            )));
        }
        let code = callback.code.as_deref().ok_or_else(|| failed("no code"))?;
        let tokens = self
            .oidc
            .exchange_code(code, &login.pkce_verifier, &login.nonce)
            .await
            .map_err(|e| match e {
                OidcError::Unavailable(why) => SessionError::Unavailable(why),
                other => SessionError::LoginFailed(other.to_string()),
            })?;
        let id = self.create(self.session_of(tokens)?).await?;
        metrics::counter!("intercom_sessions_created_total").increment(1);
        let mut set_cookies = vec![
            self.cookie(
                &self.cookies.session,
                &id,
                self.absolute,
                self.cookies.same_site,
            ),
            clear_flow,
        ];
        if self.csrf_token {
            set_cookies.push(self.csrf_cookie(&self.csrf_token_of(&id)));
        }
        Ok(Landing {
            location: login.return_to,
            set_cookies,
        })
    }

    /// The login this callback completes, from this browser's sealed flow cookie (and
    /// that cookie's name): its state matches, it is recent, and `iss` is the AS's.
    fn login_of(
        &self,
        callback: &Callback,
        flow_cookie: impl Fn(&str) -> Option<String>,
    ) -> Result<(LoginState, String), SessionError> {
        let failed = |why: &str| SessionError::LoginFailed(why.to_string());
        let state = callback
            .state
            .as_deref()
            .ok_or_else(|| failed("no state"))?;
        let name = flow::flow_cookie_name(&self.cookies.flow_prefix, state);
        let sealed =
            flow_cookie(&name).ok_or_else(|| failed("no login was started here for this state"))?;
        let login: LoginState = self
            .sealer
            .open(&sealed, FLOW_CONTEXT)
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .ok_or_else(|| failed("the login state is unreadable"))?;
        if !bool::from(login.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(failed("the state does not match"));
        }
        if login.started_at + LOGIN_MAX_SECS < now_secs() {
            return Err(failed("the login took too long"));
        }
        match (&callback.iss, self.oidc.announces_iss()) {
            (Some(iss), _) if *iss != self.oidc.issuer => {
                return Err(failed("iss is not the authorization server's"))
            }
            (None, true) => {
                return Err(failed(
                    "the authorization server announced iss but sent none",
                ))
            }
            _ => {}
        }
        Ok((login, name))
    }

    /// A new session for the tokens of a completed login.
    fn session_of(&self, tokens: oidc::Tokens) -> Result<Session, SessionError> {
        let claims = tokens.id_claims.clone().unwrap_or_default();
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .ok_or_else(|| SessionError::LoginFailed("the ID token has no sub".into()))?
            .to_string();
        let now = now_secs();
        Ok(Session {
            sid: claims
                .get("sid")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            user: self
                .user_claims
                .iter()
                .filter_map(|name| Some((name.clone(), claims.get(name)?.clone())))
                .collect(),
            claims: self
                .rule_claims
                .iter()
                .filter_map(|name| Some((name.clone(), claims.get(name)?.clone())))
                .collect(),
            sub,
            access_token: tokens.access_token,
            access_expires_at: tokens.access_expires_at,
            refresh_token: tokens.refresh_token,
            id_token: tokens.id_token,
            created_at: now,
            last_seen: now,
            ends_at: now + self.absolute.as_secs(),
        })
    }

    /// Stores a new session, indexed by its `sub` and `sid` for logouts; its id.
    async fn create(&self, session: Session) -> Result<String, SessionError> {
        let id = new_session_id();
        let record = self.keys(&id).record;
        self.store
            .put(&record, &session, self.ttl(&session))
            .await?;
        let lifetime = self.absolute;
        self.store
            .index(&self.index_key("sub", &session.sub), &record, lifetime)
            .await?;
        if let Some(sid) = &session.sid {
            self.store
                .index(&self.index_key("sid", sid), &record, lifetime)
                .await?;
        }
        Ok(id)
    }

    fn index_key(&self, kind: &str, value: &str) -> String {
        let hash = self
            .hasher
            .hash(&[b"session-index", kind.as_bytes(), value.as_bytes()]);
        crate::redis::keys::session_index(&self.key_base, kind, &hash)
    }

    /// Ends every session of a `sub` or `sid` (`kind`), on every replica: a back-channel
    /// logout. (The denylist check in [`Sessions::current`] covers the window until
    /// this lands.)
    pub async fn end_all(&self, kind: &str, value: &str) -> Result<usize, SessionError> {
        let ended = self.store.end_indexed(&self.index_key(kind, value)).await?;
        metrics::counter!("intercom_session_logouts_total", "source" => "backchannel")
            .increment(ended as u64);
        Ok(ended)
    }

    /// OIDC Front-Channel Logout: ends every session of the AS's login session `sid`
    /// when `iss` is the AS's, on every replica (the sessions' index, and the denylist
    /// through the fan-out for copies in memory).
    pub async fn front_channel_logout(&self, iss: &str, sid: &str) -> Result<usize, SessionError> {
        if iss != self.oidc.issuer || sid.is_empty() {
            return Err(SessionError::LoginFailed(
                "iss is not the authorization server's, or sid is missing".into(),
            ));
        }
        let ended = self.store.end_indexed(&self.index_key("sid", sid)).await?;
        if let Some(revoker) = &self.revoker {
            revoker
                .revoke(
                    Target::One(Kind::Sid, sid.to_string()),
                    "frontchannel_logout",
                )
                .await;
        }
        metrics::counter!("intercom_session_logouts_total", "source" => "frontchannel")
            .increment(ended as u64);
        Ok(ended)
    }

    /// How long the store keeps `session`: to its idle or absolute end.
    fn ttl(&self, session: &Session) -> Duration {
        let now = now_secs();
        let absolute = session.ends_at.saturating_sub(now);
        Duration::from_secs(absolute.min(self.idle.as_secs()).max(1))
    }

    /// True when a revocation (back-channel logout of its `sub` or `sid`, an admin
    /// revocation) came after this session began, on any replica.
    fn revoked(&self, session: &Session) -> bool {
        self.revoker.as_ref().is_some_and(|revoker| {
            let ids = Ids::of(
                &self.hasher,
                Some(&session.sub),
                None,
                session.sid.as_deref(),
                &session.access_token,
            );
            revoker.is_denied(&ids, Some(session.created_at))
        })
    }

    /// The live session of `session_id`, its access token refreshed when due; `None`
    /// when there is none (never was, ended, timed out, revoked, refused refresh).
    pub async fn current(&self, session_id: &str) -> Result<Option<Session>, SessionError> {
        let keys = self.keys(session_id);
        let Some(mut session) = self.store.get(&keys.record).await? else {
            return Ok(None);
        };
        let now = now_secs();
        if now >= session.last_seen + self.idle.as_secs() {
            // A copy read earlier may not have seen the latest use: ask the store.
            match self.store.get_fresh(&keys.record).await? {
                Some(stored) => session = stored,
                None => return Ok(None),
            }
        }
        if now >= session.ends_at
            || now >= session.last_seen + self.idle.as_secs()
            || self.revoked(&session)
        {
            self.store.delete(&keys.record).await?;
            return Ok(None);
        }
        if session.access_expires_at <= now + self.refresh_ahead.as_secs() {
            // Boxed: the refresh (the AS, the lease) is rare and deep; the usual read stays small.
            return Box::pin(self.refresh(&keys, session)).await;
        }
        // The idle clock moves at most every tenth of the idle timeout (a write then),
        // under the refresh lease and on the stored copy: writing back a copy read
        // earlier could undo another replica's refresh (and its rotated token).
        if now - session.last_seen >= (self.idle.as_secs() / 10).max(1) {
            if let Some(lease) = self.store.take_lease(&keys.lease, self.lease_ttl).await? {
                let stored = self.store.get_fresh(&keys.record).await;
                if let Ok(Some(mut stored)) = stored {
                    stored.last_seen = now;
                    self.store
                        .put(&keys.record, &stored, self.ttl(&stored))
                        .await?;
                    session = stored;
                }
                self.store.release_lease(&lease).await?;
            }
        }
        Ok(Some(session))
    }

    /// One refresh per session: single-flight in this replica, a lease across
    /// replicas. Calls meanwhile use the current token while it is valid, else wait
    /// (bounded) for the refreshed one; the rotated refresh token is stored before
    /// the lease is released.
    async fn refresh(
        &self,
        keys: &Keys,
        session: Session,
    ) -> Result<Option<Session>, SessionError> {
        let lock = self
            .refreshing
            .get_with(keys.record.clone(), async {
                Arc::new(tokio::sync::Mutex::new(()))
            })
            .await;
        let valid = |s: &Session| s.access_expires_at > now_secs() + 1;
        let _guard = match lock.try_lock() {
            Ok(guard) => guard,
            Err(_) if valid(&session) => {
                refreshes("coalesced");
                return Ok(Some(session));
            }
            Err(_) => lock.lock().await,
        };
        // Another call may have refreshed while this one waited.
        let Some(session) = self.store.get_fresh(&keys.record).await? else {
            return Ok(None);
        };
        if session.access_expires_at > now_secs() + self.refresh_ahead.as_secs() {
            refreshes("coalesced");
            return Ok(Some(session));
        }
        let Some(refresh_token) = session.refresh_token.clone() else {
            if valid(&session) {
                return Ok(Some(session));
            }
            self.store.delete(&keys.record).await?;
            return Ok(None);
        };
        let deadline = Instant::now() + self.refresh_wait;
        loop {
            if let Some(lease) = self.store.take_lease(&keys.lease, self.lease_ttl).await? {
                // The lease may have just been released by a replica that refreshed:
                // read again, or the consumed refresh token would be presented twice
                // (and a rotating AS ends the whole grant for it).
                let work = async {
                    match self.store.get_fresh(&keys.record).await? {
                        None => Ok(None),
                        Some(latest)
                            if latest.access_token != session.access_token
                                || latest.refresh_token.as_ref() != Some(&refresh_token) =>
                        {
                            refreshes("coalesced");
                            Ok(Some(latest))
                        }
                        Some(latest) => self.refresh_at_as(keys, latest, &refresh_token).await,
                    }
                };
                let result = self.store.while_held(&lease, self.lease_ttl, work).await;
                self.store.release_lease(&lease).await?;
                return result;
            }
            // Another replica refreshes: its tokens land in the store.
            tokio::time::sleep(Duration::from_millis(25)).await;
            match self.store.get_fresh(&keys.record).await? {
                None => return Ok(None),
                Some(fresh) if fresh.access_token != session.access_token => {
                    refreshes("coalesced");
                    return Ok(Some(fresh));
                }
                Some(same) if valid(&same) => return Ok(Some(same)),
                Some(_) if Instant::now() > deadline => {
                    return Err(SessionError::Unavailable(Outage::new(
                        "another replica's refresh did not finish",
                    )))
                }
                Some(_) => {}
            }
        }
    }

    /// The refresh itself, with the lease held.
    async fn refresh_at_as(
        &self,
        keys: &Keys,
        mut session: Session,
        refresh_token: &str,
    ) -> Result<Option<Session>, SessionError> {
        match self.oidc.refresh(refresh_token).await {
            Ok(tokens) => {
                session.access_token = tokens.access_token;
                session.access_expires_at = tokens.access_expires_at;
                // Rotated, or the same one again.
                if let Some(rotated) = tokens.refresh_token {
                    session.refresh_token = Some(rotated);
                }
                if let Some(id_token) = tokens.id_token {
                    session.id_token = Some(id_token);
                }
                session.last_seen = now_secs();
                self.store
                    .put(&keys.record, &session, self.ttl(&session))
                    .await?;
                refreshes("refreshed");
                Ok(Some(session))
            }
            Err(OidcError::Refused(_)) | Err(OidcError::IdToken(_)) => {
                // invalid_grant: the session is over, cleanly, once.
                self.store.delete(&keys.record).await?;
                refreshes("refused");
                Ok(None)
            }
            Err(OidcError::Unavailable(why)) => {
                refreshes("unavailable");
                if session.access_expires_at > now_secs() {
                    Ok(Some(session))
                } else {
                    Err(SessionError::Unavailable(why))
                }
            }
        }
    }

    /// Ends the session: gone from the store (every replica), its refresh token revoked
    /// at the AS; returns where RP-initiated logout continues at the AS.
    pub async fn logout(&self, session_id: Option<&str>) -> Result<Option<Url>, SessionError> {
        let mut hint = None;
        if let Some(id) = session_id {
            let keys = self.keys(id);
            if let Some(session) = self.store.get_fresh(&keys.record).await? {
                self.store.delete(&keys.record).await?;
                if let Some(revoker) = &self.revoker {
                    // Every replica's recent reads of this session end with its token.
                    let token = session.access_token.clone();
                    revoker
                        .revoke(Target::One(Kind::Token, token), "session_logout")
                        .await;
                }
                if let Some(refresh) = &session.refresh_token {
                    self.oidc.revoke_refresh_token(refresh).await;
                }
                hint = session.id_token;
                metrics::counter!("intercom_session_logouts_total", "source" => "user")
                    .increment(1);
            }
        }
        Ok(self
            .oidc
            .end_session_url(hint.as_deref(), self.post_logout.as_ref()))
    }

    /// What `GET /auth/user` shows: the claims the SPA may see and the session's
    /// remaining lifetime; never a token (of the AS: with `session.csrf_token`, the
    /// session's CSRF token, which the page's script may read anyway).
    pub fn user_view(&self, session_id: &str, session: &Session) -> serde_json::Value {
        let mut view = serde_json::json!({
            "claims": session.user,
            "expires_in": self.remaining(session),
        });
        if self.csrf_token {
            view["csrf_token"] = self.csrf_token_of(session_id).into();
        }
        view
    }

    /// Seconds until the session ends (idle or absolute, whichever first).
    pub fn remaining(&self, session: &Session) -> u64 {
        let idle_end = session.last_seen + self.idle.as_secs();
        idle_end.min(session.ends_at).saturating_sub(now_secs())
    }

    /// The CSRF rule for a state-changing request on a session route or at logout: the
    /// custom header (`csrf`, its value), an `Origin` (else `Referer`) from the
    /// configured origins, and with `session.csrf_token` the header's value the CSRF
    /// token of the request's session (`session_id`, the cookie's value). The refusal
    /// says which part failed.
    pub fn check_csrf(
        &self,
        csrf: Option<&[u8]>,
        origin: Option<&str>,
        referer: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<(), &'static str> {
        let Some(csrf) = csrf else {
            return Err("a state-changing request needs the CSRF header");
        };
        let from = match (origin, referer) {
            (Some(origin), _) => Some(origin.to_string()),
            (None, Some(referer)) => Url::parse(referer)
                .ok()
                .map(|u| u.origin().ascii_serialization()),
            (None, None) => None,
        };
        if !self.origin_allowed(from.as_deref()) {
            return Err("a state-changing request must come from an allowed origin");
        }
        if self.csrf_token {
            let expected = session_id.map(|id| self.csrf_token_of(id));
            let matches = expected.is_some_and(|e| bool::from(e.as_bytes().ct_eq(csrf)));
            if !matches {
                return Err("the CSRF header must carry this session's CSRF token");
            }
        }
        Ok(())
    }

    /// Whether `origin` (the request's `Origin`) is one of the SPA's configured origins:
    /// a browser sends it with every WebSocket handshake, which cannot carry the CSRF
    /// header, so it is what keeps another site from opening a tunnel with the cookie.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        origin.is_some_and(|o| self.rules.origins.iter().any(|allowed| allowed == o))
    }
}

/// The associated data of a login's sealed cookie.
const FLOW_CONTEXT: &[u8] = b"intercom-login-flow";

/// 256 random bits, base64url.
fn new_session_id() -> String {
    let mut raw = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn refreshes(outcome: &'static str) {
    metrics::counter!("intercom_session_refreshes_total", "outcome" => outcome).increment(1);
}
