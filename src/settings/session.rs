//! `[session]`: browser sessions, with Intercom as the SPA's backend-for-frontend (an
//! OIDC confidential client at `[auth_server]`).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::*;
use crate::secret::SecretRef;

/// Browser sessions: the login flow, the session cookie, where sessions live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// Where the AS sends the browser back: the public URL of `/auth/callback`.
    pub redirect_uri: Url,
    /// The client that logs users in (default: `auth_server.client_id`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its secret, a reference (default: `auth_server.client_secret`).
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// How the login client proves itself at the token endpoint:
    /// `client_secret_basic` (the secret above) or `private_key_jwt` (RFC 7523: a
    /// fresh assertion per request, signed with `client_key`; no shared secret).
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
    /// With `private_key_jwt`: a secret reference to the client's private key, a JWK
    /// with a `kid` (its `alg` RS256, ES256 or EdDSA; RS256 when it names none). The AS
    /// holds the public half (the client's `jwks` or `jwks_uri`).
    #[serde(default)]
    pub client_key: Option<SecretRef>,
    /// Secret reference: the key that seals sessions and the login flow's cookie (any
    /// high-entropy text; rotating it ends the sessions sealed under the old one).
    pub encryption_key: SecretRef,
    /// Scopes asked at login (`offline_access` where the AS issues refresh tokens only then).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The session cookie's name; `__Host-` unless `insecure_dev_cookies`.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    #[serde(default)]
    pub same_site: SameSite,
    /// Development only: cookies without `Secure` and without the `__Host-` prefix, for
    /// a browser on plain `http://` other than localhost. Warns at start.
    #[serde(default)]
    pub insecure_dev_cookies: bool,
    /// A session unused this long ends.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after login, used or not.
    #[serde(default = "default_absolute", with = "humantime_serde")]
    pub absolute_timeout: Duration,
    /// The access token is refreshed this long before it expires.
    #[serde(default = "default_refresh_ahead", with = "humantime_serde")]
    pub refresh_ahead: Duration,
    /// The term of the lease that lets one replica at a time refresh a session's
    /// tokens; renewed every third of it while the refresh runs, so a slow AS keeps
    /// it and a replica that dies mid-refresh frees it within this time.
    #[serde(default = "default_refresh_lease", with = "humantime_serde")]
    pub refresh_lease: Duration,
    /// Where sessions live: `memory` (this replica only) or `redis` (every replica).
    #[serde(default)]
    pub store: SessionStoreKind,
    /// With `redis`: how long a replica keeps a session it read (`0s`: always ask
    /// Redis). Logouts reach every replica through the revocation fan-out.
    #[serde(default = "default_memory_ttl", with = "humantime_serde")]
    pub memory_ttl: Duration,
    /// The SPA's origins: `return_to` may name them, and state-changing calls must come
    /// from them (`Origin`, else `Referer`). Default: the origin of `redirect_uri`.
    #[serde(default)]
    pub origins: Vec<Origin>,
    /// Path prefixes `return_to` may name (default: every path).
    #[serde(default = "default_return_paths")]
    pub return_to_paths: Vec<String>,
    /// The header state-changing calls must carry (its value does not matter unless
    /// `csrf_token`): a custom header forces a CORS preflight on cross-origin calls.
    #[serde(default = "default_csrf_header")]
    pub csrf_header: HeaderNameSetting,
    /// Double-submit CSRF token: at login Intercom also sets `__Host-intercom-csrf`
    /// (readable by the SPA's script, `SameSite=Strict`), and the CSRF header's value
    /// must then be that token (also in `GET /auth/user` as `csrf_token`).
    #[serde(default)]
    pub csrf_token: bool,
    /// Where the AS sends the browser after RP-initiated logout.
    #[serde(default)]
    pub post_logout_redirect_uri: Option<Url>,
    /// The ID token claims `GET /auth/user` shows the SPA.
    #[serde(default = "default_user_claims")]
    pub user_claims: Vec<String>,
    /// Serve OIDC Front-Channel Logout at `/auth/frontchannel-logout` (`iss`, `sid`):
    /// the AS's logout page loads it to end the sessions of that login session.
    #[serde(default)]
    pub frontchannel_logout: bool,
    /// How often `intercom_sessions_active` counts the live sessions.
    #[serde(default = "default_count_every", with = "humantime_serde")]
    pub count_every: Duration,
}

fn default_count_every() -> Duration {
    Duration::from_secs(15)
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_cookie_name() -> String {
    "__Host-intercom-session".into()
}
fn default_idle() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_absolute() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_memory_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_refresh_ahead() -> Duration {
    Duration::from_secs(60)
}
fn default_refresh_lease() -> Duration {
    Duration::from_secs(5)
}
fn default_return_paths() -> Vec<String> {
    vec!["/".into()]
}
fn default_csrf_header() -> HeaderNameSetting {
    HeaderNameSetting(http::HeaderName::from_static("x-csrf"))
}
fn default_user_claims() -> Vec<String> {
    ["sub", "name", "email", "preferred_username"]
        .map(String::from)
        .to_vec()
}

/// The session cookie's `SameSite`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
}

/// How the login client authenticates to the AS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    PrivateKeyJwt,
}

/// Where sessions live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStoreKind {
    #[default]
    Memory,
    Redis,
}

impl SessionSettings {
    /// The allowed origins: `origins`, or the origin of `redirect_uri`.
    pub fn allowed_origins(&self) -> Vec<String> {
        if self.origins.is_empty() {
            vec![self.redirect_uri.origin().ascii_serialization()]
        } else {
            self.origins.iter().map(|o| o.to_string()).collect()
        }
    }

    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self, settings: &Settings) -> Result<(), SettingsError> {
        if settings.auth_server.is_none() {
            return Err(SettingsError::new(
                "session",
                "needs an [auth_server] section: users log in there",
            ));
        }
        if !matches!(self.redirect_uri.scheme(), "http" | "https") {
            return Err(SettingsError::new(
                "session.redirect_uri",
                "must be an http(s) URL",
            ));
        }
        match (self.client_auth, &self.client_key, &self.client_secret) {
            (ClientAuthMethod::PrivateKeyJwt, None, _) => {
                return Err(SettingsError::new(
                    "session.client_key",
                    "client_auth = \"private_key_jwt\" needs the client's private key",
                ))
            }
            (ClientAuthMethod::PrivateKeyJwt, _, Some(_)) => {
                return Err(SettingsError::new(
                    "session.client_secret",
                    "is not used with client_auth = \"private_key_jwt\": remove it",
                ))
            }
            (ClientAuthMethod::ClientSecretBasic, Some(_), _) => {
                return Err(SettingsError::new(
                    "session.client_key",
                    "is used only with client_auth = \"private_key_jwt\"",
                ))
            }
            _ => {}
        }
        if self.store == SessionStoreKind::Redis && settings.redis.is_none() {
            return Err(SettingsError::new(
                "session.store",
                "\"redis\" needs a [redis] section",
            ));
        }
        if !self.insecure_dev_cookies && !self.cookie_name.starts_with("__Host-") {
            return Err(SettingsError::new(
                "session.cookie_name",
                "must start with __Host- (or set insecure_dev_cookies in development)",
            ));
        }
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if self.cookie_name.is_empty() || !self.cookie_name.chars().all(token) {
            return Err(SettingsError::new(
                "session.cookie_name",
                "is not a valid cookie name",
            ));
        }
        for (i, path) in self.return_to_paths.iter().enumerate() {
            if !path.starts_with('/') || path.starts_with("//") {
                return Err(SettingsError::new(
                    format!("session.return_to_paths[{i}]"),
                    format!("{path:?} must be a path starting with a single '/'"),
                ));
            }
        }
        positive("session.idle_timeout", self.idle_timeout)?;
        if self.store == SessionStoreKind::Redis && self.memory_ttl > self.idle_timeout / 10 {
            return Err(SettingsError::new(
                "session.memory_ttl",
                "must be at most a tenth of idle_timeout (the idle clock moves in tenths)",
            ));
        }
        positive("session.absolute_timeout", self.absolute_timeout)?;
        if self.refresh_lease < Duration::from_millis(300) {
            return Err(SettingsError::new(
                "session.refresh_lease",
                "must be at least 300ms (it is renewed every third of it)",
            ));
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return Err(SettingsError::new(
                "session.scopes",
                "must include \"openid\"",
            ));
        }
        Ok(())
    }
}
