//! Intercom as an OpenID Connect confidential client, through the `openidconnect`
//! crate: the authorization URL (code flow, PKCE S256, `state`, `nonce`), the code
//! exchange with the ID token verified (signature by the AS's keys, `iss`, `aud`,
//! `nonce`, `exp`), refresh, RFC 7009 revocation and RP-initiated logout; the client
//! authenticates with its secret or with `private_key_jwt` (RFC 7523 assertions).

use std::sync::Arc;

use openidconnect::core::{CoreAuthPrompt, CoreClient, CoreResponseType};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse,
};
use url::Url;

use crate::broker::failure::Outage;
use crate::clock::now_secs;
use crate::secrets::registry::SecretCell;

type Metadata = crate::broker::authserver::Metadata;

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a login or a refresh failed. Never quotes a token or a code.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the authorization server refused: {0}")]
    Refused(String),
    #[error("the ID token failed verification: {0}")]
    IdToken(String),
    #[error("{0}")]
    Unavailable(Outage),
}

/// What a login client without the AS's token endpoint says.
const NO_TOKEN_ENDPOINT: &str = "the authorization server announces no token endpoint";

/// The least time between two fetches of the AS's keys for ID tokens.
pub const KEY_REFETCH_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(30);

/// What the AS issued at login or refresh.
pub struct Tokens {
    pub access_token: String,
    pub access_expires_at: u64,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    /// The verified ID token's claims (only when one came).
    pub id_claims: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A login begun: where to send the browser, and what the callback must check.
pub struct Authorization {
    pub url: Url,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// How the login client proves itself at the AS's token and revocation endpoints.
pub enum ClientAuth {
    /// `client_secret_basic`: the secret (it rotates).
    Secret(Arc<SecretCell>),
    /// `private_key_jwt`: a fresh assertion per request, signed with this private JWK
    /// (it rotates: read at each request).
    PrivateKeyJwt(Arc<SecretCell>),
}

/// RFC 7523 §2.2: the `client_assertion_type` of a JWT assertion.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid: one request's worth.
const ASSERTION_LIFETIME_SECS: u64 = 60;

impl ClientAuth {
    /// The stored key of `private_key_jwt`, parsed (what start-up checks, and each
    /// request signs with).
    pub fn signing_key(key: &SecretCell) -> Result<crate::broker::mint::SigningKey, String> {
        crate::broker::mint::SigningKey::from_private_jwk(key.current().expose(), "RS256")
            .map_err(|e| e.to_string())
    }

    /// A client assertion for `audience` (the token endpoint): `iss` and `sub` the
    /// client, a unique `jti`, valid a minute. `None` with a secret.
    fn assertion(&self, client_id: &str, audience: &str) -> Result<Option<String>, OidcError> {
        let ClientAuth::PrivateKeyJwt(key) = self else {
            return Ok(None);
        };
        let failed = |why: String| {
            OidcError::Unavailable(Outage::because(
                "the client assertion cannot be signed",
                why,
            ))
        };
        let key = Self::signing_key(key).map_err(failed)?;
        let now = now_secs();
        let mut payload = josekit::jwt::JwtPayload::new();
        payload.set_issuer(client_id);
        payload.set_subject(client_id);
        payload.set_audience(vec![audience]);
        payload.set_jwt_id(uuid::Uuid::new_v4().to_string());
        for (claim, value) in [("iat", now), ("exp", now + ASSERTION_LIFETIME_SECS)] {
            payload
                .set_claim(claim, Some(value.into()))
                .map_err(|e| failed(e.to_string()))?;
        }
        key.sign("JWT", &payload)
            .map(Some)
            .map_err(|e| failed(e.to_string()))
    }
}

/// The confidential client.
pub struct OidcClient {
    /// The AS's metadata and keys; the keys are fetched again when an ID token names
    /// one they lack (the AS rotated), at most once per [`KEY_REFETCH_COOLDOWN`].
    metadata: std::sync::RwLock<Metadata>,
    keys_fetched: std::sync::Mutex<Option<std::time::Instant>>,
    client_id: String,
    auth: ClientAuth,
    redirect_uri: RedirectUrl,
    scopes: Vec<String>,
    http: reqwest::Client,
    pub issuer: String,
}

impl OidcClient {
    /// The client `client_id` of the AS as discovered at start (its keys included).
    pub fn new(
        metadata: Metadata,
        http: reqwest::Client,
        client_id: &str,
        auth: ClientAuth,
        redirect_uri: &Url,
        scopes: &[String],
    ) -> Self {
        Self {
            issuer: metadata.issuer().to_string(),
            metadata: std::sync::RwLock::new(metadata),
            keys_fetched: std::sync::Mutex::new(None),
            client_id: client_id.to_string(),
            auth,
            redirect_uri: RedirectUrl::from_url(redirect_uri.clone()),
            scopes: scopes.iter().filter(|s| *s != "openid").cloned().collect(),
            http,
        }
    }

    /// A client with the secret's current value (it rotates); with `private_key_jwt`,
    /// one without a secret (it sends `client_id` in the body, beside the assertion).
    fn client(&self) -> Client {
        let secret = match &self.auth {
            ClientAuth::Secret(secret) => {
                Some(ClientSecret::new(secret.current().expose().to_string()))
            }
            ClientAuth::PrivateKeyJwt(_) => None,
        };
        CoreClient::from_provider_metadata(
            self.metadata.read().expect("metadata lock").clone(),
            ClientId::new(self.client_id.clone()),
            secret,
        )
        .set_redirect_uri(self.redirect_uri.clone())
    }

    /// The assertion for a request to the token endpoint (or to revocation, whose
    /// assertions name the token endpoint too, as RFC 7523 and OIDC Core say).
    fn assertion(&self) -> Result<Option<String>, OidcError> {
        let audience = self
            .metadata
            .read()
            .expect("metadata lock")
            .token_endpoint()
            .map(|u| u.to_string())
            .ok_or_else(|| OidcError::Unavailable(Outage::new(NO_TOKEN_ENDPOINT)))?;
        self.auth.assertion(&self.client_id, &audience)
    }

    /// True when the AS says it puts `iss` in authorization responses (RFC 9207).
    pub fn announces_iss(&self) -> bool {
        self.endpoints()
            .authorization_response_iss_parameter_supported
    }

    fn endpoints(&self) -> crate::broker::authserver::OAuthEndpoints {
        self.metadata
            .read()
            .expect("metadata lock")
            .additional_metadata()
            .clone()
    }

    /// Fetches the AS's keys again, unless that happened within the cooldown; true
    /// when new keys are in place.
    async fn refetch_keys(&self) -> bool {
        {
            let mut last = self.keys_fetched.lock().expect("key fetch lock");
            if last.is_some_and(|at| at.elapsed() < KEY_REFETCH_COOLDOWN) {
                return false;
            }
            *last = Some(std::time::Instant::now());
        }
        let uri = self
            .metadata
            .read()
            .expect("metadata lock")
            .jwks_uri()
            .clone();
        match openidconnect::core::CoreJsonWebKeySet::fetch_async(&uri, &self.http).await {
            Ok(keys) => {
                let mut metadata = self.metadata.write().expect("metadata lock");
                *metadata = metadata.clone().set_jwks(keys);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the authorization server's keys could not be fetched again");
                false
            }
        }
    }

    /// Verifies an ID token; when that fails, once more with the AS's keys fetched
    /// again (the AS may have rotated them since start).
    async fn verify_id_token<N: openidconnect::NonceVerifier + Copy>(
        &self,
        id_token: &openidconnect::core::CoreIdToken,
        nonce: N,
    ) -> Result<(), OidcError> {
        let check = |client: &Client| {
            id_token
                .claims(&client.id_token_verifier(), nonce)
                .map(|_| ())
                .map_err(|e| OidcError::IdToken(e.to_string()))
        };
        match check(&self.client()) {
            Ok(()) => Ok(()),
            Err(first) if self.refetch_keys().await => check(&self.client()).map_err(|_| first),
            Err(first) => Err(first),
        }
    }

    /// The authorization request: code flow, PKCE S256, fresh `state` and `nonce`;
    /// `prompt=none` when `silent`.
    pub fn authorize(&self, silent: bool) -> Authorization {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client();
        let mut request = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &self.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if silent {
            request = request.add_prompt(CoreAuthPrompt::None);
        }
        let (url, state, nonce) = request.url();
        Authorization {
            url,
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        }
    }

    /// Exchanges the code (with the PKCE verifier) and verifies the ID token.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Tokens, OidcError> {
        let client = self.client();
        let assertion = self.assertion()?;
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Unavailable(Outage::because(NO_TOKEN_ENDPOINT, e)))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()));
        if let Some(assertion) = assertion {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        let response = request
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the answer has no ID token".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        self.verify_id_token(id_token, &nonce).await?;
        Ok(tokens(&response, Some(id_token.to_string())))
    }

    /// Refreshes the tokens; `Refused` when the AS will not (`invalid_grant`: the
    /// session is over).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, OidcError> {
        let client = self.client();
        let refresh = RefreshToken::new(refresh_token.to_string());
        let assertion = self.assertion()?;
        let mut request = client
            .exchange_refresh_token(&refresh)
            .map_err(|e| OidcError::Unavailable(Outage::because(NO_TOKEN_ENDPOINT, e)))?;
        if let Some(assertion) = assertion {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        let response = request
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        // A new ID token is verified like the first (no nonce on refresh).
        let id_token = match response.id_token() {
            Some(token) => {
                let no_nonce = |_: Option<&Nonce>| Ok(());
                self.verify_id_token(token, no_nonce).await?;
                Some(token.to_string())
            }
            None => None,
        };
        Ok(tokens(&response, id_token))
    }

    /// RFC 7009: revokes a refresh token at the AS (best effort).
    pub async fn revoke_refresh_token(&self, token: &str) {
        let Some(endpoint) = self.endpoints().revocation_endpoint else {
            return;
        };
        let form = [("token", token), ("token_type_hint", "refresh_token")];
        let request = match &self.auth {
            ClientAuth::Secret(secret) => {
                crate::broker::post_as_client(&self.http, &endpoint, &self.client_id, secret, &form)
            }
            ClientAuth::PrivateKeyJwt(_) => {
                let assertion = match self.assertion() {
                    Ok(Some(assertion)) => assertion,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "refresh token revocation failed");
                        return;
                    }
                };
                let mut form = form.to_vec();
                form.extend([
                    ("client_id", self.client_id.as_str()),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", assertion.as_str()),
                ]);
                crate::telemetry::traces::propagate(self.http.post(&endpoint).form(&form))
            }
        };
        let sent = request.send().await;
        if let Err(e) = sent {
            tracing::warn!(error = %crate::broker::authserver::failure(&e), "refresh token revocation failed");
        }
    }

    /// RP-initiated logout at the AS's `end_session_endpoint`, when it has one.
    pub fn end_session_url(&self, id_token: Option<&str>, after: Option<&Url>) -> Option<Url> {
        let endpoint = self.endpoints().end_session_endpoint?;
        let mut url = Url::parse(&endpoint).ok()?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("client_id", &self.client_id);
            if let Some(hint) = id_token {
                query.append_pair("id_token_hint", hint);
            }
            if let Some(after) = after {
                query.append_pair("post_logout_redirect_uri", after.as_str());
            }
        }
        Some(url)
    }
}

fn token_error<E: std::error::Error>(
    error: RequestTokenError<
        E,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> OidcError {
    match error {
        RequestTokenError::ServerResponse(answer) => {
            OidcError::Refused(answer.error().as_ref().to_string())
        }
        other => OidcError::Unavailable(Outage::because(
            "the authorization server is unavailable",
            other,
        )),
    }
}

fn tokens(response: &openidconnect::core::CoreTokenResponse, id_token: Option<String>) -> Tokens {
    let lifetime = response
        .expires_in()
        .map_or(300, |d| d.as_secs())
        .min(crate::broker::MAX_LIFETIME_SECS);
    let id_claims = id_token.as_deref().and_then(payload_of);
    Tokens {
        access_token: response.access_token().secret().clone(),
        access_expires_at: now_secs() + lifetime,
        refresh_token: response.refresh_token().map(|t| t.secret().clone()),
        id_token,
        id_claims,
    }
}

/// The claims of a JWT already verified.
fn payload_of(jwt: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
